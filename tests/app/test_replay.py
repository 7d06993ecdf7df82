"""`fmrec replay` against a real uvicorn server and a persistent Redis (AOF) that loses
the store of a batch's first user mid-replay (SIGKILL) and gets it back: nothing lost,
nothing counted twice, sums still exact. Here on one redis-server;
tests/app/test_cluster_suites_replay.py runs the same test on a 3-master Redis Cluster,
where only one master dies and a batch is applied in part before the retry."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import httpx
import numpy as np
import pytest
import uvicorn

from app import replay as replay_module
from app.cli import main
from app.main import create_app
from app.redis_layout import sums_key, user_key
from app.settings import Settings
from model.bundle import Bundle
from model.data import Dataset
from model.features import FeatureSpec
from tests.support.api_client import load_users, service_settings
from tests.support.online_reference import (
    assert_same_history,
    cached_history,
    history_from_scratch,
    history_payload,
    stored_history,
)
from tests.support.redis_server import RedisServer, free_port


@contextmanager
def uvicorn_server(settings: Settings) -> Iterator[str]:
    """The app on a real socket, served by uvicorn in a thread; yields its URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_config=None, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def write_udata(path: Path, rows: list[tuple[str, str, float, int]]) -> None:
    path.write_text("".join(f"{u}\t{m}\t{r!r}\t{t}\n" for u, m, r, t in rows))


class DurableStore(Protocol):
    """What the replay test needs of its store: one redis-server or a cluster, with AOF."""

    @property
    def url(self) -> str: ...

    def client(self) -> Any: ...

    def kill_holder_of(self, key: str) -> None:
        """SIGKILL the process that holds `key`: only what its AOF holds survives."""

    def start(self) -> Any: ...


class OneRedis:
    """A redis-server (AOF, fsync always) as a DurableStore: it holds every key."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.server = RedisServer(directory, ["--appendonly", "yes", "--appendfsync", "always"])

    @property
    def url(self) -> str:
        return self.server.url

    def client(self) -> Any:
        return self.server.client()

    def kill_holder_of(self, key: str) -> None:
        self.server.kill()

    def start(self) -> OneRedis:
        self.server.start()
        return self


@pytest.fixture
def durable_store(tmp_path: Path) -> Iterator[DurableStore]:
    store = OneRedis(tmp_path / "redis").start()
    yield store
    store.server.kill()


# The batch before which the store of its first user is killed: mid-replay, deterministic
# (not raced against the replay's speed); it is restarted once the replay met a refusal.
FAULT_BATCH = 3


def fault_in_batch(store: DurableStore, monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Make the replay's FAULT_BATCH-th batch find its first user's store killed; restart
    it after the replay's first retry. The event is set once restarted. Later batches
    (and later replays in the test) pass through untouched."""
    real_post = replay_module.post_batch
    calls = 0
    restarted = threading.Event()

    def post_batch(client: httpx.Client, events: list[dict[str, Any]], retry_for_s: float,
                   report: replay_module.ReplayReport) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == FAULT_BATCH:
            store.kill_holder_of(user_key(events[0]["user_id"]))

            def restart_after_a_refusal() -> None:
                deadline = time.monotonic() + 60  # a bound, not a timing assumption
                while report.retries == 0 and time.monotonic() < deadline:
                    time.sleep(0.01)
                store.start()
                restarted.set()

            threading.Thread(target=restart_after_a_refusal, daemon=True).start()
        return real_post(client, events, retry_for_s, report)

    monkeypatch.setattr(replay_module, "post_batch", post_batch)
    return restarted


def test_replay_survives_a_redis_restart_and_counts_nothing_twice(
        tmp_path: Path, small_bundle_path: Path, small_bundle: Bundle,
        small_data: tuple[Dataset, FeatureSpec], durable_store: DurableStore,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    data, _ = small_data
    settings = service_settings(bundle=small_bundle_path, redis_url=durable_store.url,
                                redis_timeout_s=2.0, redis_retry_s=0.2)
    asyncio.run(load_users(settings, data))
    test = data.test
    rows = [(str(test.user[n]), str(test.item[n]), float(test.rating[n]),
             int(test.timestamp[n])) for n in range(len(test))]
    rows += rows[:40]  # the same ratings again, under new event ids: no new movies
    ratings_file = tmp_path / "u.test"
    write_udata(ratings_file, rows)
    users = sorted({u for u, _, _, _ in rows})
    redis = durable_store.client()
    watched = users[:6]

    with uvicorn_server(settings) as url:
        for uid in watched:  # cached parts before the replay: kept current by it
            httpx.post(f"{url}/predict", json={"user": {"id": uid},
                                               "movies": [{"id": "1"}]}, timeout=10)
            assert cached_history(redis, small_bundle.model_id, uid, small_bundle.widths)
        restarted = fault_in_batch(durable_store, monkeypatch)
        code = main(["replay", str(ratings_file), "--url", url, "--batch-size", "20"])
        report = json.loads(capsys.readouterr().out)
        assert code == 0 and restarted.is_set()
        assert report["retries"] >= 1  # it met the 503s while the store was down
        redis = durable_store.client()  # a cluster client maps the restarted master anew
        assert report["events"] == len(rows) and report["events_per_s"] > 0
        # on a cluster the refused batch's users on live masters were applied: on the
        # retry they are duplicates, never twice stored (the histories below say so)
        assert report["accepted"] + report["duplicates"] == len(rows)
        assert report["duplicates"] <= 20  # at most the one batch in flight

        again = main(["replay", str(ratings_file), "--url", url, "--batch-size", "50"])
        second = json.loads(capsys.readouterr().out)
        assert again == 0
        assert (second["accepted"], second["duplicates"]) == (0, len(rows))

        train_pairs = set(zip(data.train.user, data.train.item, strict=True))
        all_pairs = train_pairs | {(u, m) for u, m, _, _ in rows}
        stored = {uid: stored_history(redis, uid) for uid in users}
        assert sum(map(len, stored.values())) == len(
            [p for p in all_pairs if p[0] in set(users)])
        claims = set(redis.scan_iter(match="fmrec:*:event:*", count=1000))  # every master
        assert len(claims) == len(rows)
        for uid in users:
            mine = {m: r for (u, m), r in zip(
                [(u, m) for u, m, _, _ in rows], [(r, t) for _, _, r, t in rows],
                strict=True) if u == uid}
            for movie, (rating, stamp) in mine.items():
                assert stored[uid][movie].rating == rating
                assert stored[uid][movie].timestamp == stamp
        for uid in watched:
            cached = cached_history(redis, small_bundle.model_id, uid, small_bundle.widths)
            assert cached is not None and cached[0].n == len(stored[uid])
            assert_same_history(cached, history_from_scratch(small_bundle, stored[uid]))
            assert redis.ttl(sums_key(small_bundle.model_id, uid)) > 0
        movies = [{"id": str(m)} for m in small_bundle.catalog.ids[:20]]
        uid = watched[0]
        before = [m for m in stored[uid] if stored[uid][m].timestamp < 890_000_000]
        last = max(before, key=lambda m: (stored[uid][m].timestamp, m))  # as trained
        got = httpx.post(f"{url}/predict", json={
            "user": {"id": uid}, "context": {"time": 890_000_000}, "movies": movies},
            timeout=10).json()
        full = {"id": uid, **data.users[uid], **history_payload(stored[uid])}
        expected = small_bundle.predict(full, movies, {"time": 890_000_000,
                                                       "last_movie": last})
        np.testing.assert_allclose([p["rating"] for p in got["predictions"]], expected,
                                   rtol=1e-5, atol=1e-5)




def _one_line_error(capsys: pytest.CaptureFixture[str], code: int, *needles: str) -> None:
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("fmrec: error: "), err
    for needle in needles:
        assert needle in err, err


def test_replay_bad_input_is_a_one_line_error(
        tmp_path: Path, small_bundle_path: Path, redis_server: RedisServer,
        capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["replay", str(tmp_path / "missing.test")])
    _one_line_error(capsys, code, "missing file", "missing.test")
    bad = tmp_path / "bad.test"
    bad.write_text("1\t2\tfive\t100\n")
    _one_line_error(capsys, main(["replay", str(bad)]), "bad.test:1", "numbers")
    good = tmp_path / "good.test"
    write_udata(good, [("1", "2", 4.0, 100), ("1", "3", 9.0, 101)])
    unreachable = f"http://127.0.0.1:{free_port()}"
    _one_line_error(capsys, main(["replay", str(good), "--url", unreachable]),
                    "cannot reach the server", unreachable)
    _one_line_error(capsys, main(["replay", str(good), "--url", "ftp://x"]), "ftp")
    settings = service_settings(bundle=small_bundle_path, redis_url=redis_server.url)
    with uvicorn_server(settings) as url:  # 9.0 is outside the model's rating range
        capsys.readouterr()  # the server's start-up log lines
        _one_line_error(capsys, main(["replay", str(good), "--url", url]),
                        "HTTP 422", "rating range")
    assert redis_server.client().dbsize() == 0  # the refused batch wrote nothing
