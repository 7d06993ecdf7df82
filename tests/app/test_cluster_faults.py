"""A master of a real 3-master Redis Cluster (AOF, no replicas) killed mid-stream of
POST /ratings: users on the other masters keep being answered, users on the lost slots get
503 + Retry-After (never a 500), and once the master is back, every stored history is
exactly the acknowledged events: nothing lost, nothing twice."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from app.redis_layout import ratings_key
from app.store import Rating
from model.bundle import Bundle
from tests.support.api_client import service_settings, serving
from tests.support.live_server import LiveServer
from tests.support.online_reference import (
    assert_same_history,
    cached_history,
    event,
    history_from_scratch,
    stored_history,
)
from tests.support.redis_cluster import RedisCluster3

pytestmark = pytest.mark.anyio

T0 = 900_000_000
USERS = [f"cf{n}" for n in range(24)]  # new users: their histories are the events alone


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisCluster3]:
    cluster = RedisCluster3(tmp_path, appendonly=True).start()
    yield cluster
    cluster.stop()


def batches(bundle: Bundle, victims: set[str]) -> list[list[dict[str, Any]]]:
    """Round-robin batches of one user's two events, and every fifth batch two users'
    (one on the victim master, one elsewhere): a cluster applies those per slot."""
    movies = [str(m) for m in bundle.catalog.ids[:60]]
    others = [u for u in USERS if u not in victims]
    out = []
    for step in range(30):
        user = USERS[step % len(USERS)]
        pair = [event(f"{user}-{step}-{k}", user, movies[(3 * step + k) % len(movies)],
                      float(1 + (step + k) % 5), T0 + step) for k in range(2)]
        if step % 5 == 4:
            a, b = sorted(victims)[step % len(victims)], others[step % len(others)]
            pair = [event(f"{a}-{step}-m", a, movies[step], 4.0, T0 + step),
                    event(f"{b}-{step}-m", b, movies[step + 1], 2.0, T0 + step)]
        out.append(pair)
    return out


async def test_a_master_killed_mid_stream_loses_and_doubles_nothing(
        cluster: RedisCluster3, small_bundle_path: Path, small_bundle: Bundle) -> None:
    settings = service_settings(bundle=small_bundle_path, redis_url=cluster.url,
                                redis_cluster=True, redis_timeout_s=2.0, redis_retry_s=0.2)
    victim = cluster.node_of(ratings_key(USERS[0]))
    victims = {u for u in USERS if cluster.node_of(ratings_key(u)) == victim}
    assert 0 < len(victims) < len(USERS)
    acknowledged: dict[str, dict[str, Any]] = {}
    refused: list[list[dict[str, Any]]] = []
    movies = [{"id": str(m)} for m in small_bundle.catalog.ids[:10]]
    async with serving(settings) as (_, client):
        for step, batch in enumerate(batches(small_bundle, victims)):
            if step == 10:
                await asyncio.to_thread(cluster.nodes[victim].kill)  # SIGKILL
            answer = await client.post("/ratings", json={"events": batch})
            lost = step >= 10 and any(e["user_id"] in victims for e in batch)
            if lost:
                assert answer.status_code == 503, answer.text
                assert answer.headers["Retry-After"].isdigit()
                refused.append(batch)
            else:
                assert answer.status_code == 200, answer.text
                assert answer.json()["accepted"] == len(batch)
                acknowledged.update((e["event_id"], e) for e in batch)
            for user in {e["user_id"] for e in batch}:  # reads: never a 500
                read = await client.post("/predict", json={"user": {"id": user},
                                                            "movies": movies})
                assert read.status_code == 200, read.text
        assert refused, "no batch reached the dead master: the test proved nothing"

        await asyncio.to_thread(cluster.restart)  # same port, its AOF replayed
        await asyncio.sleep(0.3)  # the store's back-off for that master
        for batch in refused:  # the client retries with the same event ids
            answer = await client.post("/ratings", json={"events": batch})
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["accepted"] + body["duplicates"] == len(batch)
            # a refused batch's events on the live masters were applied (per slot): once
            assert body["duplicates"] == sum(1 for e in batch if e["user_id"] not in victims)
            acknowledged.update((e["event_id"], e) for e in batch)
        again = await client.post("/ratings", json={"events": refused[-1]})  # a lost reply
        assert again.json()["duplicates"] == len(refused[-1])

    admin = cluster.client()
    for user in USERS:
        mine: dict[str, Rating] = {}
        for e in sorted(acknowledged.values(), key=lambda e: e["timestamp"]):
            if e["user_id"] == user:
                mine[e["movie_id"]] = Rating(e["rating"], e["timestamp"])
        assert stored_history(admin, user) == mine, user
        cached = cached_history(admin, small_bundle.model_id, user, small_bundle.widths)
        if cached is not None:
            assert_same_history(cached, history_from_scratch(small_bundle, mine))
    claims = [k for node in cluster.nodes for k in node.client().keys("fmrec:*:event:*")]
    assert len(claims) == len(acknowledged)


async def test_two_replicas_of_the_service_on_one_cluster(
        cluster: RedisCluster3, small_bundle_path: Path, small_bundle: Bundle,
        tmp_path: Path) -> None:
    """Two `fmrec serve` processes on one cluster, as behind a load balancer: an event
    written through one is in the very next read through the other. Near copies off:
    with them on, the other replica's copy goes within the sharded channel's delivery
    time, not before its next read (that bound: test_cluster_suites_online.py)."""
    env = {"FMREC_BUNDLE": str(small_bundle_path), "FMREC_REDIS_URL": cluster.url,
           "FMREC_REDIS_CLUSTER": "true", "FMREC_ALLOW_UNAUTHENTICATED_WRITES": "true",
           "FMREC_REDIS_TIMEOUT_S": "5", "FMREC_NEAR_CACHE_SIZE": "0"}
    one = LiveServer(env, tmp_path / "one.log")
    two = LiveServer(env, tmp_path / "two.log")
    one.start()
    try:
        two.start()
        movies = [{"id": str(m)} for m in small_bundle.catalog.ids[:20]]
        context = {"time": T0 + 100}
        user = "replica-user"
        rated: list[str] = []
        with httpx.Client(timeout=30) as http:
            for n, movie in enumerate(str(m) for m in small_bundle.catalog.ids[20:26]):
                writer, reader = (one, two) if n % 2 == 0 else (two, one)
                request = {"user": {"id": user}, "movies": movies, "context": context}
                before = http.post(f"{reader.url}/predict", json=request).json()
                written = http.post(f"{writer.url}/ratings", json={"events": [event(
                    f"rep-{n}", user, movie, 5.0, T0 + n)]})
                assert written.status_code == 200 and written.json()["accepted"] == 1
                rated.append(movie)
                after = http.post(f"{reader.url}/predict", json=request).json()
                assert after["predictions"] != before["predictions"], n
                stars = [[m, 5.0] for m in sorted(rated)]
                expected = small_bundle.predict({"id": user, "rated": sorted(rated),
                                                 "rated_stars": stars}, movies,
                                                {**context, "last_movie": movie})
                np.testing.assert_allclose([p["rating"] for p in after["predictions"]],
                                           expected, rtol=1e-5, atol=1e-5)
    finally:
        one.stop()
        two.stop()
