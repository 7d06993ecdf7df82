"""Micro-batching: concurrent requests share model calls and get the answers they would get
alone; a full queue answers 503 + Retry-After. The batcher itself, on plain functions."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.batching import MicroBatcher, QueueFull
from app.settings import Settings
from model.data import Dataset
from model.features import FeatureSpec
from tests.support.api_client import CONTEXT, load_users, metric, service_settings, serving
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.anyio


def _requests() -> list[tuple[str, dict[str, Any]]]:
    """A mix of every kind of job: cached and inline users, listed and inline movies,
    candidates, whole-catalog rankings with and without genre filters."""
    out: list[tuple[str, dict[str, Any]]] = []
    for uid in range(1, 13):
        user: dict[str, Any] = {"id": str(uid)}
        if uid % 3 == 0:
            user = {"age": 20 + uid, "rated": [str(m) for m in range(uid, uid + 6)]}
        out.append(("/predict", {"user": user, "context": CONTEXT, "movies": [
            {"id": str(m)} for m in range(uid, uid + 7)] + [{"id": f"new{uid}", "year": 1990}]}))
        out.append(("/recommend", {"user": user, "context": CONTEXT, "n": 3 + uid,
                                   "genres": ["Drama"] if uid % 2 else None}))
        out.append(("/recommend", {"user": user, "n": 4, "context": CONTEXT,
                                   "candidates": [str(m) for m in range(1, 40, uid)]}))
    return out


async def _answers(settings: Settings, concurrent: bool) -> tuple[list[dict[str, Any]], str]:
    async with serving(settings) as (_, client):
        requests = _requests()
        if concurrent:
            responses = await asyncio.gather(*(client.post(r, json=b) for r, b in requests))
        else:
            responses = [await client.post(r, json=b) for r, b in requests]
        page = (await client.get("/metrics")).text
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    assert metric(page, "fmrec_degraded_requests_total") == 0  # all answered with the store
    return [r.json() for r in responses], page


async def test_batched_answers_equal_unbatched_ones(
        small_bundle_path: Path, redis_server: RedisServer,
        small_data: tuple[Dataset, FeatureSpec]) -> None:
    data, _ = small_data
    on = service_settings(bundle=small_bundle_path, redis_url=redis_server.url, max_batch_size=16)
    await load_users(on, data)
    batched, page = await _answers(on, concurrent=True)
    batches = metric(page, "fmrec_batch_size_count")
    assert batches <= len(batched) / 2  # several requests per model call, with no wait
    assert metric(page, 'fmrec_batch_size_bucket{le="16.0"}') == batches  # bounded

    await load_users(on, data)  # same cache state (cold) for the second run
    off = on.model_copy(update={"batching": False})
    single, page = await _answers(off, concurrent=True)
    assert metric(page, "fmrec_batch_size_count") == len(single)  # one call per request
    for a, b in zip(batched, single, strict=True):
        assert a.keys() == b.keys()
        if "items" in a:
            assert [i["movie_id"] for i in a["items"]] == [i["movie_id"] for i in b["items"]]
            np.testing.assert_allclose([i["score"] for i in a["items"]],
                                       [i["score"] for i in b["items"]], rtol=1e-6, atol=1e-5)
        else:
            np.testing.assert_allclose([p["rating"] for p in a["predictions"]],
                                       [p["rating"] for p in b["predictions"]], rtol=1e-6,
                                       atol=1e-5)


async def test_full_queue_answers_503_with_retry_after(
        small_bundle_path: Path, redis_server: RedisServer) -> None:
    settings = service_settings(bundle=small_bundle_path, redis_url=redis_server.url, max_queue=1,
                        max_batch_size=1)
    body = {"user": {"id": "1"}, "movies": [{"id": "1"}]}
    async with serving(settings) as (_, client):
        responses = await asyncio.gather(*(client.post("/predict", json=body)
                                           for _ in range(20)))
        page = (await client.get("/metrics")).text
    codes = [r.status_code for r in responses]
    assert 200 in codes and 503 in codes and set(codes) == {200, 503}
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.headers["retry-after"] == "1"
    assert "overloaded" in refused.json()["detail"]
    assert metric(page, "fmrec_queue_full_total") == codes.count(503)


# --- the batcher on its own ---------------------------------------------------------------

async def test_batcher_gathers_what_is_queued_and_keeps_order() -> None:
    sizes: list[int] = []
    release = threading.Event()

    def run(items: list[int]) -> list[int | Exception]:
        release.wait(5)  # the first call blocks until everything else is queued
        sizes.append(len(items))
        return [ValueError(f"bad {i}") if i == 13 else i * 10 for i in items]

    batcher: MicroBatcher[int, int] = MicroBatcher(run, max_batch_size=8)
    tasks = [asyncio.ensure_future(batcher.submit(0))]
    await asyncio.sleep(0.05)  # the first request is in the model call
    tasks += [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 20)]
    await asyncio.sleep(0.05)  # the others queue up behind it
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert [r for r in results if not isinstance(r, Exception)] == [
        i * 10 for i in range(20) if i != 13]
    assert isinstance(results[13], ValueError)  # one bad item fails alone
    assert sizes == [1, 8, 8, 3]


async def test_batcher_bounded_queue_and_failing_batches() -> None:
    def run(items: list[int]) -> list[int | Exception]:
        raise RuntimeError("model down")

    batcher: MicroBatcher[int, int] = MicroBatcher(run, max_queue=2)
    first = asyncio.ensure_future(batcher.submit(1))
    second = asyncio.ensure_future(batcher.submit(2))
    await asyncio.sleep(0)  # both queued, the worker not yet started
    with pytest.raises(QueueFull):
        await batcher.submit(3)
    for task in (first, second):
        with pytest.raises(RuntimeError, match="model down"):
            await task
    assert batcher.queued == 0


async def test_batcher_waits_to_fill_only_when_asked() -> None:
    sizes: list[int] = []

    def run(items: list[int]) -> list[int | Exception]:
        sizes.append(len(items))
        return list(items)

    waiting: MicroBatcher[int, int] = MicroBatcher(run, max_batch_size=4, max_wait_s=0.2)

    async def trickle() -> list[int]:
        tasks = []
        for i in range(4):
            tasks.append(asyncio.ensure_future(waiting.submit(i)))
            await asyncio.sleep(0.01)
        return list(await asyncio.gather(*tasks))

    assert await trickle() == [0, 1, 2, 3]
    assert sizes == [4]  # held open until full
    sizes.clear()
    eager: MicroBatcher[int, int] = MicroBatcher(run, max_batch_size=4)
    assert await eager.submit(7) == 7
    assert sizes == [1]  # alone and at once: no wait at low load
