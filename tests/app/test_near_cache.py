"""Each worker's copy of user records: LRU, TTL, the epoch guard, and invalidation across
workers through Redis pub/sub (two apps on one real redis-server)."""

from __future__ import annotations

import asyncio
import copy
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from app.near_cache import NearCache, record_bytes
from app.redis_layout import ALL, StoredRatings, rating_value
from app.settings import Settings
from app.store import Rating, Store, UserRecord
from app.user_sums import BaseSums, HistorySums
from model.bundle import Bundle
from model.data import Dataset
from model.features import FeatureSpec
from tests.support.api_client import CONTEXT, load_users, service_settings, serving
from tests.support.redis_server import RedisServer


def _record(version: int = 0, ratings: bool = False) -> UserRecord:
    return UserRecord({"age": "30"}, {} if ratings else None, None, None, version)


def _listening(size: int = 3, ttl_s: float = 60.0) -> NearCache:
    near = NearCache(size, ttl_s)
    near.listening = True
    return near


def test_get_put_lru_and_model_ids() -> None:
    near = _listening(size=2)
    for uid in ("a", "b"):
        near.put("m1", uid, _record(), near.epoch)
    assert near.get("m1", "a", with_ratings=False) is not None  # a is now the newest
    near.put("m1", "c", _record(), near.epoch)
    assert near.get("m1", "b", with_ratings=False) is None  # least recently used: gone
    assert near.get("m1", "a", with_ratings=False) is not None
    assert near.get("m2", "a", with_ratings=False) is None  # another model's sums
    assert near.get("m1", "a", with_ratings=True) is None  # ratings were not read
    near.put("m1", "a", _record(ratings=True), near.epoch)
    assert near.get("m1", "a", with_ratings=True) is not None


def test_ttl_epoch_and_listening_guard() -> None:
    near = _listening(ttl_s=0.05)
    near.put("m", "a", _record(), near.epoch)
    time.sleep(0.06)
    assert near.get("m", "a", with_ratings=False) is None  # expired
    before = near.epoch
    near.invalidate(["x"])
    near.put("m", "a", _record(ratings=True), before)  # read began before a change
    assert near.get("m", "a", with_ratings=False) is None  # ... so it was not stored
    near.put("m", "a", _record(), near.epoch)
    near.stop_listening()
    assert len(near) == 0 and near.get("m", "a", with_ratings=False) is None
    near.put("m", "a", _record(), near.epoch)
    assert len(near) == 0  # nothing is kept while changes cannot be heard


def test_invalidate_and_update_sums() -> None:
    near = _listening()
    for uid in ("a", "b"):
        near.put("m", uid, _record(version=3), near.epoch)
    base = (BaseSums(1.0, np.ones(2), 2.0), BaseSums(0.5, np.ones(3), 1.0))  # two heads
    history = (HistorySums(1.0, np.ones(2), 1.0, 1), HistorySums(1.0, np.ones(3), 1.0, 1))
    near.update_sums("m", "a", base, history, version=2)  # history of an older version
    record = near.get("m", "a", with_ratings=False)
    assert record is not None and record.base is base and record.history is None
    near.update_sums("m", "a", None, history, version=3)
    record = near.get("m", "a", with_ratings=False)
    assert record is not None and record.history is history
    near.invalidate(["a"])
    assert near.get("m", "a", with_ratings=False) is None
    assert near.get("m", "b", with_ratings=False) is not None
    near.invalidate([ALL])
    assert len(near) == 0


@pytest.mark.anyio
async def test_a_rating_on_one_worker_reaches_the_others_copy(
        small_bundle_path: Path, small_bundle: Bundle, redis_server: RedisServer,
        small_data: tuple[Dataset, FeatureSpec]) -> None:
    settings: Settings = service_settings(bundle=small_bundle_path, redis_url=redis_server.url)
    await load_users(settings, small_data[0])
    movies = [{"id": str(m)} for m in small_bundle.catalog.ids[:20]]
    request = {"user": {"id": "9"}, "context": CONTEXT, "movies": movies}
    new_movie = next(str(m) for m in small_bundle.catalog.ids
                     if str(m) not in set(small_data[0].train.item[
                         small_data[0].train.user == "9"]))
    async with serving(settings) as (_, a), serving(settings) as (b_app, b):
        for _ in range(2):
            before = (await b.post("/predict", json=request)).json()["predictions"]
        b_near = b_app.state.service.store.near
        assert b_near.get(small_bundle.model_id, "9", with_ratings=False) is not None
        rated = await a.post("/ratings", json={"events": [{
            "event_id": "near-1", "user_id": "9", "movie_id": new_movie, "rating": 5.0,
            "timestamp": 990_000_000}]})
        assert rated.status_code == 200 and rated.json()["accepted"] == 1
        on_a = (await a.post("/predict", json=request)).json()["predictions"]
        assert on_a != before  # the worker that took the rating sees it at once
        deadline = time.monotonic() + 2.0
        while (await b.post("/predict", json=request)).json()["predictions"] != on_a:
            assert time.monotonic() < deadline, "the other worker kept its stale copy"
            await asyncio.sleep(0.01)


def _big_record(n: int, k: int = 16, ratings: int = 50) -> UserRecord:
    return UserRecord(
        {"age": str(20 + n % 50), "gender": "F", "occupation": "writer", "zip": "55105"},
        {f"movie-{n}-{m}": Rating(4.0, 890_000_000 + m) for m in range(ratings)},
        (BaseSums(1.0, np.ones(k), 2.0), BaseSums(1.0, np.ones(2 * k), 2.0)),
        (HistorySums(1.0, np.ones(k), 1.0, ratings), HistorySums(1.0, np.ones(2 * k), 1.0,
                                                                 ratings)), n)


def test_new_users_do_not_grow_the_copy_past_its_byte_bound() -> None:
    """Callers choose how many new users come (and how long their histories are): the copy
    stays within FMREC_NEAR_CACHE_BYTES whatever the count allows."""
    one = record_bytes("user-0", _big_record(0))
    near = NearCache(100_000, 60.0, max_bytes=20 * one)
    near.listening = True
    for n in range(500):
        near.put("m", f"user-{n}", _big_record(n), near.epoch)
        assert near.bytes <= near.max_bytes
    assert 15 <= len(near) <= 20  # the newest, as many as fit
    assert near.get("m", "user-499", with_ratings=True) is not None
    assert near.get("m", "user-0", with_ratings=True) is None
    near.update_sums("m", "user-499", (BaseSums(0.0, np.zeros(16), 0.0),
                                       BaseSums(0.0, np.zeros(32), 0.0)), None, None)
    near.invalidate(["user-498"])
    held = [record_bytes(uid, entry[2]) for uid, entry in near._entries.items()]
    assert near.bytes == sum(held)  # the count follows replacements and removals
    near.invalidate([ALL])
    assert near.bytes == 0


def _stored_record(n: int, ratings: int = 100) -> UserRecord:
    """A record as the store reads it: the ratings hash unparsed (`StoredRatings`)."""
    record = _big_record(n, ratings=0)
    raw = {str(n * 7 + m).encode(): rating_value(4.0, 890_000_000 + m).encode()
           for m in range(ratings)}
    return replace(record, ratings=StoredRatings(raw))


@pytest.mark.parametrize("make", [_big_record, _stored_record])
def test_record_bytes_is_an_upper_estimate(make: Callable[[int], UserRecord]) -> None:
    """What the allocator really holds for cached records is at most their estimate,
    ratings parsed or as read from Redis."""
    records = [(f"user-{n}", make(n)) for n in range(300)]
    near = NearCache(100_000, 60.0, max_bytes=1 << 40)
    near.listening = True
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [(uid, copy.deepcopy(record)) for uid, record in records]
        for uid, record in kept:
            near.put("m", uid, record, near.epoch)
        del records
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert used <= near.bytes, (used, near.bytes)
    assert near.bytes <= 3 * used  # and not so loose that the bound means little


def test_settings_bound_the_copy_by_bytes(small_bundle_path: Path,
                                          redis_server: RedisServer) -> None:
    settings = service_settings(bundle=small_bundle_path, redis_url=redis_server.url,
                                near_cache_bytes=12345)
    store = Store.open(settings)
    try:
        assert store.near is not None and store.near.max_bytes == 12345
    finally:
        asyncio.run(store.close())
    assert Settings().near_cache_bytes <= 64 << 20  # fits a small container by default
