"""Many writers, readers and cache evictions for the same users at once, through two app
instances (two workers) sharing one real redis-server: no event is lost or counted twice,
and the cached sums end equal to a recomputation from the stored history."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from app.redis_layout import sums_key
from model.bundle import Bundle
from model.data import Dataset
from model.features import FeatureSpec
from tests.support.api_client import load_users, service_settings, serving
from tests.support.online_reference import (
    Reference,
    assert_same_history,
    cached_history,
    event,
    history_from_scratch,
    history_payload,
    stored_history,
)
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.anyio

USERS = ("7", "8")
WRITERS = 8


async def test_concurrent_writers_readers_and_evictions(
        small_bundle_path: Path, small_bundle: Bundle, small_data: tuple[Dataset, FeatureSpec],
        redis_server: RedisServer) -> None:
    data, _ = small_data
    settings = service_settings(bundle=small_bundle_path, redis_url=redis_server.url)
    await load_users(settings, data)
    redis = redis_server.client()
    rng = np.random.default_rng(11)
    start = {u: stored_history(redis, u) for u in USERS}
    catalog = [str(m) for m in small_bundle.catalog.ids]
    # distinct times, so the final history does not depend on the order of arrival;
    # a third of the movies are re-ratings of what the user rated before
    times = 890_000_000 + rng.permutation(4000)
    events = []
    for n in range(WRITERS * 30):
        uid = USERS[n % 2]
        movie = str(rng.choice(sorted(start[uid]) if rng.random() < 0.3 else catalog))
        events.append(event(f"c{n}", uid, movie, float(rng.uniform(1, 5)), int(times[n])))
    slices = [events[w::WRITERS] for w in range(WRITERS)]
    # each writer also sends a few of its neighbour's events: retries racing the original
    extra = [slices[(w + 1) % WRITERS][:5] for w in range(WRITERS)]
    batches = sum(-(-len(slices[w] + extra[w]) // 3) for w in range(WRITERS))
    writing, sent = True, 0

    async def writer(client: httpx.AsyncClient, mine: list[dict[str, Any]]) -> list[int]:
        nonlocal sent
        counts = [0, 0]
        for at in range(0, len(mine), 3):
            response = await client.post("/ratings", json={"events": mine[at:at + 3]})
            sent += 1
            assert response.status_code == 200, response.text
            counts[0] += response.json()["accepted"]
            counts[1] += response.json()["duplicates"]
        return counts

    async def reader(client: httpx.AsyncClient, uid: str) -> None:
        while writing:
            for path, body in (("/predict", {"movies": [{"id": "1"}, {"id": "2"}]}),
                               ("/recommend", {"n": 5})):
                response = await client.post(path, json={"user": {"id": uid}, **body})
                assert response.status_code == 200, response.text

    async def evictor() -> None:
        """Cached parts expire at any moment, so reads recompute them while events land.
        It stops before the writers do: a stale write-back must not be wiped out."""
        while sent < 0.6 * batches:
            await asyncio.sleep(0.01)
            redis.delete(sums_key(small_bundle.model_id, str(rng.choice(USERS))))

    async with AsyncExitStack() as stack:
        clients = [(await stack.enter_async_context(serving(settings)))[1] for _ in range(2)]
        readers = [asyncio.create_task(reader(clients[n % 2], uid))
                   for n, uid in enumerate(USERS * 2)] + [asyncio.create_task(evictor())]
        counts = await asyncio.gather(*[
            writer(clients[w % 2], slices[w] + extra[w]) for w in range(WRITERS)])
        writing = False
        await asyncio.gather(*readers)

        assert sum(c[0] for c in counts) == len(events)  # each event counted exactly once
        assert sum(c[1] for c in counts) == sum(map(len, extra))
        reference = Reference(start)
        reference.apply(sorted(events, key=lambda e: e["timestamp"]))
        for uid in USERS:
            history = stored_history(redis, uid)
            assert history == reference.history[uid]
            for client in clients:  # recomputes if the last eviction left no cache
                await client.post("/predict", json={"user": {"id": uid}, "movies": [{"id": "1"}]})
            cached = cached_history(redis, small_bundle.model_id, uid, small_bundle.widths)
            assert cached is not None and cached[0].n == len(history)
            assert_same_history(cached, history_from_scratch(small_bundle, history))
            movies = [{"id": m} for m in catalog[:30]]
            before = [m for m in history if history[m].timestamp < 890_000_000]  # as trained
            last = max(before, key=lambda m: (history[m].timestamp, m))
            context = {"time": 890_000_000, "last_movie": last}
            full = {"id": uid, **data.users[uid], **history_payload(history)}
            expected = small_bundle.predict(full, movies, context)
            for client in clients:
                got = await client.post("/predict", json={
                    "user": {"id": uid}, "context": {"time": 890_000_000}, "movies": movies})
                assert got.json()["user_cached"] is True
                np.testing.assert_allclose([p["rating"] for p in got.json()["predictions"]],
                                           expected, rtol=1e-5, atol=1e-5)


async def test_a_write_back_computed_before_an_event_is_refused(
        small_bundle_path: Path, small_bundle: Bundle, redis_server: RedisServer) -> None:
    """The race the version exists for, step by step: a read misses and computes the
    history part; an event lands (no cached part to update); the write-back must not
    then cache the part without that event."""
    from app.online import apply_events
    from app.schemas import RatingEvent
    from app.store import Store

    settings = service_settings(bundle=small_bundle_path, redis_url=redis_server.url)
    redis = redis_server.client()
    store = Store.open(settings)
    model_id, k = small_bundle.model_id, small_bundle.widths
    try:
        await apply_events([RatingEvent(**event("w1", "u", "1", 3.0, 100))], small_bundle, store)
        read = await store.read_user(model_id, "u", widths=k, with_ratings=True)
        assert read.history is None and read.ratings is not None
        stale = history_from_scratch(small_bundle, read.ratings)
        await apply_events([RatingEvent(**event("w2", "u", "2", 4.0, 200))], small_bundle, store)
        await store.write_sums(model_id, "u", None, stale, version=read.version)
        assert cached_history(redis, model_id, "u", k) is None  # refused: a miss, not stale
        again = await store.read_user(model_id, "u", widths=k, with_ratings=True)
        assert again.history is None and again.ratings is not None and len(again.ratings) == 2
        fresh = history_from_scratch(small_bundle, again.ratings)
        await store.write_sums(model_id, "u", None, fresh, version=again.version)
        cached = cached_history(redis, model_id, "u", k)
        assert cached is not None
        assert_same_history(cached, fresh)
        # another model's cached part (events update only the serving model's) is not
        # read once an event changed the history: its version is behind
        await store.write_sums("other-model", "u", None, fresh, version=again.version)
        other = await store.read_user("other-model", "u", widths=k, with_ratings=False)
        assert other.history is not None
        await apply_events([RatingEvent(**event("w3", "u", "3", 4.0, 300))], small_bundle, store)
        other = await store.read_user("other-model", "u", widths=k, with_ratings=False)
        assert other.history is None
        cached = cached_history(redis, model_id, "u", k)
        assert cached is not None and cached[0].n == 3
    finally:
        await store.close()
