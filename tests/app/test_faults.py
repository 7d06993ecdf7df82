"""Faults caused for real on a real redis-server, and broken bundles on reload: the
service keeps answering (degraded where it must be), says so, and recovers by itself.

* stopped (clean SHUTDOWN, data saved) and restarted on the same port: reads degrade to
  what the request carries, then come back to the stored profile and history with no
  operator action (no /readyz probe, no reload of users);
* slow (`CLIENT PAUSE`: every call waits past FMREC_REDIS_TIMEOUT_S): users a worker
  holds a copy of are answered from it; for the others one request pays the timeout,
  the next ones skip Redis, answers stay right after the pause (no reply of the paused
  calls is ever taken for another's);
* full (`maxmemory` tiny, `noeviction`: every write fails with OOM): reads still use the
  stored profile and history, writes are refused with 503, nothing half-written;
* bundles that are corrupt or incompatible are refused on reload, the old one serving.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis

from app.redis_layout import ratings_key
from app.settings import Settings
from model.bundle import Bundle, content_hash
from model.data import Dataset
from model.features import FeatureSpec
from model.pipeline import fit_and_save
from model.train import TrainConfig
from tests.support.api_client import (
    CONTEXT,
    full_payload,
    load_users,
    metric,
    service_settings,
    serving,
)
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.anyio

USERS = ("9", "12", "30")


@pytest.fixture
def settings(small_bundle_path: Path, redis_server: RedisServer) -> Settings:
    return service_settings(bundle=small_bundle_path, redis_url=redis_server.url,
                            redis_timeout_s=0.3, redis_retry_s=0.3)


class Answers:
    """Per user: the ratings a request by id must get with the store (profile + history)
    and without it (the id alone)."""

    def __init__(self, bundle: Bundle, data: Dataset) -> None:
        self.movies = [{"id": str(i)} for i in bundle.catalog.ids[:20]]
        self.full = {u: bundle.predict(full_payload(data, u), self.movies, CONTEXT)
                     for u in USERS}
        self.id_only = {u: bundle.predict({"id": u}, self.movies, CONTEXT) for u in USERS}

    async def ask(self, client: httpx.AsyncClient, uid: str) -> tuple[str, dict[str, Any]]:
        """'full', 'id_only' (degraded) or 'other' (wrong: fails the test), and the body."""
        response = await client.post("/predict", json={
            "user": {"id": uid}, "context": CONTEXT, "movies": self.movies})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        got = np.array([p["rating"] for p in body["predictions"]])
        for kind in ("full", "id_only"):
            if np.allclose(got, getattr(self, kind)[uid], rtol=1e-5, atol=1e-5):
                return kind, body
        return "other", body

    async def recovers(self, client: httpx.AsyncClient, within_s: float) -> float:
        """Seconds until every user is answered from the store again (asking on a loop)."""
        start = time.monotonic()
        while True:
            kinds = [(await self.ask(client, u))[0] for u in USERS]
            assert "other" not in kinds
            if kinds == ["full"] * len(USERS):
                return time.monotonic() - start
            assert time.monotonic() - start < within_s, f"not recovered: {kinds}"
            await asyncio.sleep(0.05)


@pytest.fixture
def answers(small_bundle: Bundle, small_data: tuple[Dataset, FeatureSpec]) -> Answers:
    return Answers(small_bundle, small_data[0])


async def test_redis_stopped_and_restarted(settings: Settings, answers: Answers,
                                           redis_server: RedisServer,
                                           small_data: tuple[Dataset, FeatureSpec]) -> None:
    await load_users(settings, small_data[0])
    async with serving(settings) as (app, client):
        for uid in USERS:
            assert (await answers.ask(client, uid))[0] == "full"
        assert (await answers.ask(client, USERS[0]))[1]["user_cached"] is True
        near = app.state.service.store.near
        assert near.listening and len(near) > 0

        redis_server.client().shutdown(save=True)  # a clean stop: the data is on disk
        assert redis_server.process is not None
        redis_server.process.wait(timeout=10)
        for _ in range(100):  # the changes listener sees its connection close ...
            if not near.listening:
                break
            await asyncio.sleep(0.01)
        assert not near.listening and len(near) == 0  # ... and drops every copy
        start = time.monotonic()
        for _ in range(3):
            for uid in USERS:
                assert (await answers.ask(client, uid))[0] == "id_only"
        assert time.monotonic() - start < 5  # refused connections fail fast
        page = (await client.get("/metrics")).text
        assert metric(page, "fmrec_redis_errors_total") >= 1
        assert metric(page, "fmrec_degraded_requests_total") >= 9
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["store"] == "degraded"

        redis_server.start()  # same port; loads the saved data
        seconds = await answers.recovers(client, within_s=5)
        assert (await answers.ask(client, USERS[0]))[1]["user_cached"] is True
        for _ in range(300):  # resubscribed: copies are kept again
            if near.listening:
                break
            await asyncio.sleep(0.01)
        assert near.listening
    assert seconds < 5


async def test_paused_redis_leaves_near_copies_answering(
        settings: Settings, answers: Answers, redis_server: RedisServer,
        small_data: tuple[Dataset, FeatureSpec]) -> None:
    """While Redis is paused nobody can change a user, so each worker's copy stays right."""
    await load_users(settings, small_data[0])
    async with serving(settings) as (_, client):
        for uid in USERS:
            assert (await answers.ask(client, uid))[0] == "full"
        redis_server.client().client_pause(1000)
        start = time.monotonic()
        for uid in USERS:
            assert (await answers.ask(client, uid))[0] == "full"
        assert time.monotonic() - start < settings.redis_timeout_s  # Redis not waited on


async def test_slow_redis_costs_one_timeout_and_answers_stay_right(
        settings: Settings, answers: Answers, redis_server: RedisServer,
        small_data: tuple[Dataset, FeatureSpec]) -> None:
    await load_users(settings, small_data[0])
    pause_s = 1.5
    settings = settings.model_copy(update={"near_cache_size": 0})  # every read goes to Redis
    async with serving(settings) as (_, client):
        for uid in USERS:
            assert (await answers.ask(client, uid))[0] == "full"
        redis_server.client().client_pause(int(pause_s * 1000))  # every client waits
        paused_at = time.monotonic()
        kind, _ = await answers.ask(client, USERS[1])
        first = time.monotonic() - paused_at
        assert kind == "id_only"
        assert settings.redis_timeout_s <= first < pause_s  # the timeout, not the pause
        start = time.monotonic()
        for uid in USERS:  # inside the back-off: Redis not asked, no timeout paid
            assert (await answers.ask(client, uid))[0] == "id_only"
        assert time.monotonic() - start < settings.redis_timeout_s
        await asyncio.sleep(max(0.0, paused_at + pause_s - time.monotonic()))
        await answers.recovers(client, within_s=5)
        for _ in range(3):  # many calls on the reconnected pool: every reply is its own
            for uid in USERS:
                assert (await answers.ask(client, uid))[0] == "full"
        page = (await client.get("/metrics")).text
        assert metric(page, "fmrec_redis_errors_total") >= 1


async def test_full_redis_keeps_reads_and_refuses_writes(
        settings: Settings, answers: Answers, redis_server: RedisServer,
        small_data: tuple[Dataset, FeatureSpec]) -> None:
    await load_users(settings, small_data[0])  # drops every cached sum: reads write them
    admin = redis_server.client()
    async with serving(settings) as (_, client):
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", "1")
        keys_before = admin.dbsize()
        for _ in range(3):
            for uid in USERS:  # the profile and history are read; caching them fails
                kind, body = await answers.ask(client, uid)
                assert kind == "full" and body["user_cached"] is False
        batch = {"events": [{"event_id": f"full-{n}", "user_id": USERS[0], "movie_id": str(n),
                             "rating": 3.0, "timestamp": 990_000_000} for n in range(5)]}
        refused = await client.post("/ratings", json=batch)
        assert refused.status_code == 503
        assert "retry with the same event ids" in refused.json()["detail"]
        assert admin.dbsize() == keys_before  # nothing written, nothing half-written
        page = (await client.get("/metrics")).text
        assert metric(page, "fmrec_redis_errors_total") >= 1
        assert metric(page, "fmrec_degraded_requests_total") == 0

        admin.config_set("maxmemory", "0")
        await answers.recovers(client, within_s=5)
        for uid in USERS:
            assert (await answers.ask(client, uid))[1]["user_cached"] is True
        accepted = await client.post("/ratings", json=batch)
        assert accepted.status_code == 200 and accepted.json()["accepted"] == 5


# --- ratings: refused while Redis cannot take them, never lost, never counted twice --------

async def test_ratings_through_every_fault_are_stored_exactly_once(
        settings: Settings, redis_server: RedisServer) -> None:
    """Two writers post batches of new events while Redis is stopped and restarted, paused
    and filled up. A batch refused (503 + Retry-After) is sent again, as a client must;
    a batch whose reply was lost comes back as duplicates. In the end every event is
    stored exactly once, with its own value."""
    users, per_batch, batches = 5, 4, 40
    events = [{"event_id": f"flt-{n}", "user_id": f"flt-u{n % users}", "movie_id": str(n),
               "rating": 1.0 + n % 4, "timestamp": 890_000_000 + n}
              for n in range(per_batch * batches)]
    chunks = [events[i:i + per_batch] for i in range(0, len(events), per_batch)]
    refused: list[int] = []
    answered: list[dict[str, Any]] = []

    async def writer(client: httpx.AsyncClient, mine: list[list[dict[str, Any]]]) -> None:
        for chunk in mine:
            while True:
                response = await client.post("/ratings", json={"events": chunk})
                if response.status_code == 200:
                    answered.append(response.json())
                    break
                assert response.status_code == 503, response.text
                assert int(response.headers["retry-after"]) >= 1
                refused.append(1)
                await asyncio.sleep(0.05)  # (a real client waits Retry-After)
            await asyncio.sleep(0.03)

    admin = redis_server.client()

    async def faults() -> list[str]:
        done = []
        await asyncio.sleep(0.3)
        await asyncio.to_thread(admin.shutdown, save=True)
        assert redis_server.process is not None
        await asyncio.to_thread(redis_server.process.wait, 10)
        done.append("stopped")
        await asyncio.sleep(0.5)
        await asyncio.to_thread(redis_server.start)
        done.append("restarted")
        await asyncio.sleep(0.3)
        await asyncio.to_thread(redis_server.client().client_pause, 800)
        done.append("paused")
        await asyncio.sleep(1.0)
        fresh = redis_server.client()
        await asyncio.to_thread(fresh.config_set, "maxmemory-policy", "noeviction")
        await asyncio.to_thread(fresh.config_set, "maxmemory", "1")
        done.append("full")
        await asyncio.sleep(0.5)
        await asyncio.to_thread(fresh.config_set, "maxmemory", "0")
        return done

    async with serving(settings) as (_, client):
        injected, *_ = await asyncio.gather(
            faults(), writer(client, chunks[0::2]), writer(client, chunks[1::2]))
    assert injected == ["stopped", "restarted", "paused", "full"]
    assert refused, "no fault reached a writer: the test proved nothing"
    client_ = redis.Redis(port=redis_server.port, decode_responses=True)
    for uid in {e["user_id"] for e in events}:
        stored = client_.hgetall(ratings_key(uid))
        mine = {e["movie_id"]: f"{e['rating']!r}:{e['timestamp']}" for e in events
                if e["user_id"] == uid}
        assert stored == mine
    assert len(client_.keys("fmrec:*:event:*")) == len(events)
    assert sum(a["accepted"] + a["duplicates"] for a in answered) == len(events)
    assert sum(a["accepted"] for a in answered) <= len(events)


# --- bundles that must not replace the one serving -------------------------------------------

def _rehash(bundle: Path) -> None:
    """Recompute model_id, so only the deeper checks can catch what was changed."""
    (bundle / "model_id").write_text(content_hash(bundle) + "\n")


def _broken(source: Path, root: Path) -> dict[str, tuple[Path, str]]:
    """Bundles consistent with their model_id but unusable: (path, words of the error)."""
    def copy(name: str) -> Path:
        path = root / name
        shutil.copytree(source, path)
        return path

    out = {}
    path = copy("format")
    meta = json.loads((path / "metrics.json").read_text())
    meta["format_version"] = 1  # the one-head bundles of earlier fmrec
    (path / "metrics.json").write_text(json.dumps(meta))
    out["format"] = (path, "has format 1, this code reads format 2")
    path = copy("k")
    meta = json.loads((path / "metrics.json").read_text())
    meta["heads"]["rating"]["k"] *= 2
    (path / "metrics.json").write_text(json.dumps(meta))
    out["k"] = (path, "inconsistent k of head rating (metrics.json 8, catalog 4, SavedModel 4)")
    path = copy("heads")
    meta = json.loads((path / "metrics.json").read_text())
    del meta["heads"]["relevance"]
    (path / "metrics.json").write_text(json.dumps(meta))
    out["heads"] = (path, "does not describe head 'relevance'")
    path = copy("saved_model")
    (path / "saved_model" / "saved_model.pb").write_bytes(b"\x08\x01garbage" * 10)
    out["saved_model"] = (path, "cannot load")
    path = copy("catalog")
    (path / "catalog.npz").write_bytes(b"PK\x03\x04 not a zip")
    out["catalog"] = (path, "cannot load")
    path = copy("spec_json")
    (path / "spec.json").write_text('{"fields": [')
    out["spec_json"] = (path, "unreadable feature spec")
    path = copy("hash_bits")
    spec = json.loads((path / "spec.json").read_text())
    spec["hash_bits"] += 1  # features would land in other buckets than in training
    (path / "spec.json").write_text(json.dumps(spec))
    out["hash_bits"] = (path, "feature spec mismatch")
    for path, _ in out.values():
        _rehash(path)
    return out


@pytest.fixture(scope="module")
def wider_bundle_path(tmp_path_factory: pytest.TempPathFactory,
                      small_data: tuple[Dataset, FeatureSpec]) -> Path:
    """A valid model with another k: a new model, not an incompatible one."""
    data, spec = small_data
    out = tmp_path_factory.mktemp("bundle") / "k8"
    fit_and_save(data, spec, TrainConfig(k=8, epochs=2, batch_size=512, learning_rate=0.02,
                                         members=1), out, progress=False)
    return out


async def test_corrupt_or_incompatible_bundles_are_refused_on_reload(
        settings: Settings, small_bundle: Bundle, small_bundle_path: Path, tmp_path: Path,
        answers: Answers, wider_bundle_path: Path) -> None:
    broken = _broken(small_bundle_path, tmp_path)
    async with serving(settings) as (_, client):
        before = await answers.ask(client, "9")
        for name, (path, words) in broken.items():
            response = await client.post("/admin/reload", json={"bundle": str(path)})
            assert response.status_code == 422, (name, response.text)
            assert words in response.json()["detail"][0]["msg"], (name, response.text)
            assert response.json()["model_id"] == small_bundle.model_id
            assert await answers.ask(client, "9") == before
            info = (await client.get("/model")).json()
            assert info["model_id"] == small_bundle.model_id
            assert info["last_reload_error"]["bundle"] == str(path)
        page = (await client.get("/metrics")).text
        assert metric(page, 'fmrec_reloads_total{outcome="failed"}') == len(broken)

        wider = Bundle(wider_bundle_path)  # another k is just another model: served
        response = await client.post("/admin/reload", json={"bundle": str(wider_bundle_path)})
        assert response.status_code == 200, response.text
        got = await client.post("/predict", json={"user": {"id": "9", "rated": ["1", "2"]},
                                                  "context": CONTEXT,
                                                  "movies": answers.movies})
        np.testing.assert_allclose(
            [p["rating"] for p in got.json()["predictions"]],
            wider.predict({"id": "9", "rated": ["1", "2"]}, answers.movies, CONTEXT),
            rtol=1e-5, atol=1e-5)
        assert got.json()["model_id"] == wider.model_id
