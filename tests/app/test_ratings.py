"""POST /ratings on a real redis-server: history stored, cached sums kept equal to a
recomputation from the whole history, answers equal to the offline reference, bad input
refused with nothing written, Redis trouble answered 503, a lost reply retried safely."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from app.redis_layout import ratings_key
from app.settings import Settings
from app.store import Rating
from model.bundle import Bundle
from model.data import Dataset
from model.features import FeatureSpec
from tests.support.api_client import brute_force, load_users, metric, service_settings, serving
from tests.support.online_reference import (
    Reference,
    assert_same_history,
    cached_history,
    event,
    history_from_scratch,
    stored_history,
)
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.anyio

T0 = 890_000_000
# last_movie left to the service: the user's latest rating before this time (the events
# are before it, many of the users' training ratings after it)
TIME = {"time": T0 + 100}


@pytest.fixture
def settings(small_bundle_path: Path, redis_server: RedisServer) -> Settings:
    return service_settings(bundle=small_bundle_path, redis_url=redis_server.url)


def payload(data: Dataset, uid: str, history: dict[str, Rating]) -> dict[str, Any]:
    """The user as the feature map reads it: attributes, every movie of `history` and
    its stars."""
    movies = sorted(history)
    return {"id": uid, **data.users.get(uid, {}), "rated": movies,
            "rated_stars": [[m, history[m].rating] for m in movies]}


def context_of(history: dict[str, Rating]) -> dict[str, Any]:
    before = [m for m in history if history[m].timestamp < TIME["time"]]
    if not before:
        return dict(TIME)
    return {**TIME, "last_movie": max(before, key=lambda m: (history[m].timestamp, m))}


async def post(client: httpx.AsyncClient, events: list[dict[str, Any]]) -> dict[str, Any]:
    response = await client.post("/ratings", json={"events": events})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def check_user(client: httpx.AsyncClient, bundle: Bundle, data: Dataset, uid: str,
                     history: dict[str, Rating]) -> None:
    """/predict and /recommend by id equal the offline reference with the full history."""
    movies = [{"id": str(m)} for m in bundle.catalog.ids[:40]] + [{"id": "not-a-movie"}]
    full = payload(data, uid, history)
    got = await client.post("/predict", json={"user": {"id": uid}, "context": TIME,
                                              "movies": movies})
    np.testing.assert_allclose([p["rating"] for p in got.json()["predictions"]],
                               bundle.predict(full, movies, context_of(history)),
                               rtol=1e-5, atol=1e-5)
    ranked = await client.post("/recommend", json={"user": {"id": uid}, "context": TIME,
                                                   "n": 15})
    expected = brute_force(bundle, full, context_of(history), 15, exclude=set(history))
    items = ranked.json()["items"]
    assert [i["movie_id"] for i in items] == [m for m, _ in expected]
    np.testing.assert_allclose([i["score"] for i in items], [s for _, s in expected],
                               rtol=1e-5, atol=1e-5)


async def test_random_events_keep_cached_sums_equal_to_a_recomputation(
        settings: Settings, small_bundle: Bundle, small_data: tuple[Dataset, FeatureSpec],
        redis_server: RedisServer) -> None:
    """Re-ratings, older and equal times, unknown movies, new users and retried events,
    in random batches; the cached parts always equal a recomputation from the history."""
    data, _ = small_data
    await load_users(settings, data)
    redis = redis_server.client()
    rng = np.random.default_rng(4)
    users = ["1", "2", "3", "40", "new-a", "new-b"]
    catalog = [str(m) for m in small_bundle.catalog.ids]
    low, high = small_bundle.rating_range
    reference = Reference({u: stored_history(redis, u) for u in users})
    model_id, k = small_bundle.model_id, small_bundle.widths
    sent: list[dict[str, Any]] = []

    def new_event() -> dict[str, Any]:
        uid = str(rng.choice(users))
        mine = sorted(reference.history.get(uid, {}))
        draw = rng.random()
        if draw < 0.2 and mine:
            movie = str(rng.choice(mine))  # a re-rating
        elif draw < 0.3:
            movie = f"x{rng.integers(0, 5)}"  # not in the catalog
        else:
            movie = str(rng.choice(catalog))
        rating = float(rng.uniform(low, high))
        return event(f"e{len(sent)}-{rng.integers(1 << 30)}", uid, movie, rating,
                     T0 + int(rng.integers(0, 40)))  # many equal and older times

    async with serving(settings) as (_, client):
        for uid in users[:4]:  # these have cached parts before the first event
            await client.post("/predict", json={"user": {"id": uid}, "movies": [{"id": "1"}]})
            assert cached_history(redis, model_id, uid, k) is not None
        for batch in range(40):
            events = [sent[int(rng.integers(len(sent)))] if sent and rng.random() < 0.15
                      else new_event() for _ in range(int(rng.integers(1, 12)))]
            body = await post(client, events)
            sent += events
            assert {key: body[key] for key in ("accepted", "duplicates", "stale")} == (
                reference.apply(events))
            assert body["unknown_movies"] == list(dict.fromkeys(
                e["movie_id"] for e in events if small_bundle.catalog.row(e["movie_id"]) is None))
            if batch == 20:  # reads: the new users' parts get cached from their history
                for uid in users:
                    await check_user(client, small_bundle, data, uid, reference.history[uid])
                reference.restarred.clear()
        assert sum(e["event_id"] in {s["event_id"] for s in sent[:n]}
                   for n, e in enumerate(sent)) > 5  # retried events did happen
        for uid in users:
            history = reference.history[uid]
            assert stored_history(redis, uid) == history
            cached = cached_history(redis, model_id, uid, k)
            if cached is None:  # dropped only by a re-rating with other stars since a read
                assert uid in reference.restarred, uid
            else:  # kept current by the events
                assert_same_history(cached, history_from_scratch(small_bundle, history))
            await check_user(client, small_bundle, data, uid, history)
            cached = cached_history(redis, model_id, uid, k)  # the read rebuilt it
            assert cached is not None, uid
            assert_same_history(cached, history_from_scratch(small_bundle, history))
        assert reference.restarred  # the test can tell
        page = (await client.get("/metrics")).text
        assert metric(page, 'fmrec_rating_events_total{outcome="accepted"}') == len(
            reference.seen)
        assert metric(page, 'fmrec_rating_events_total{outcome="duplicate"}') == (
            len(sent) - len(reference.seen))


async def test_one_batch_counts_and_semantics(
        settings: Settings, small_bundle: Bundle, small_data: tuple[Dataset, FeatureSpec],
        redis_server: RedisServer) -> None:
    data, _ = small_data
    await load_users(settings, data)
    redis = redis_server.client()
    before = stored_history(redis, "3")
    rated = min(before)
    new = next(str(m) for m in small_bundle.catalog.ids if str(m) not in before)
    old_time = before[rated].timestamp
    batch = [
        event("a", "3", new, 4.0, T0),
        event("a", "3", new, 1.0, T0 + 1),  # same id again: a duplicate, ignored
        event("b", "3", "zz-new", 2.5, T0 + 5),  # unknown to the catalog: stored all the same
        event("c", "3", rated, 1.0, old_time - 1),  # older than the stored rating: stale
        event("d", "3", rated, 5.0, old_time + 1),  # newer: replaces it; not a new movie
    ]
    async with serving(settings) as (_, client):
        await client.post("/predict", json={"user": {"id": "3"}, "movies": [{"id": "1"}]})
        body = await post(client, batch)
        assert body == {"model_id": small_bundle.model_id, "accepted": 4, "duplicates": 1,
                        "stale": 1, "unknown_movies": ["zz-new"]}
        after = stored_history(redis, "3")
        assert after == {**before, new: Rating(4.0, T0), "zz-new": Rating(2.5, T0 + 5),
                         rated: Rating(5.0, old_time + 1)}
        cached = cached_history(redis, small_bundle.model_id, "3", small_bundle.widths)
        if before[rated].rating != 5.0:  # "d" changed a star the model reads: dropped
            assert cached is None
            await check_user(client, small_bundle, data, "3", after)  # a read rebuilds it
            cached = cached_history(redis, small_bundle.model_id, "3", small_bundle.widths)
        assert cached is not None and cached[0].n == len(before) + 2
        assert_same_history(cached, history_from_scratch(small_bundle, after))
        again = await post(client, batch)  # the whole batch retried
        assert (again["accepted"], again["duplicates"], again["stale"]) == (0, 5, 0)
        assert stored_history(redis, "3") == after
        await check_user(client, small_bundle, data, "3", after)


async def test_recommend_after_a_rating_leaves_the_movie_out(
        settings: Settings, small_bundle: Bundle, small_data: tuple[Dataset, FeatureSpec],
        redis_server: RedisServer) -> None:
    data, _ = small_data
    await load_users(settings, data)
    redis = redis_server.client()
    history = stored_history(redis, "5")
    async with serving(settings) as (_, client):
        body = {"user": {"id": "5"}, "context": TIME, "n": 5}
        top = (await client.post("/recommend", json=body)).json()["items"][0]["movie_id"]
        now = max(r.timestamp for r in history.values()) + 10
        await post(client, [event("r1", "5", top, 5.0, now)])
        after = (await client.post("/recommend", json=body)).json()
        assert after["user_cached"] is True
        assert top not in {i["movie_id"] for i in after["items"]}
        history[top] = Rating(5.0, now)
        await check_user(client, small_bundle, data, "5", history)  # last_movie: `top`


async def test_a_user_never_seen_starts_from_their_first_rating(
        settings: Settings, small_bundle: Bundle, redis_server: RedisServer) -> None:
    redis = redis_server.client()
    movies = [{"id": str(m)} for m in small_bundle.catalog.ids[:20]]
    request = {"user": {"id": "newbie"}, "context": TIME, "movies": movies}
    history: dict[str, Rating] = {}
    async with serving(settings) as (_, client):
        unknown = await client.post("/predict", json=request)
        np.testing.assert_allclose([p["rating"] for p in unknown.json()["predictions"]],
                                   small_bundle.predict({"id": "newbie"}, movies, TIME),
                                   rtol=1e-5, atol=1e-5)
        # 18 ratings: the relevance head's history-size token changes at 2, 4, 8 and is
        # gone from 16 on (`Field.size_value`); each answer equals the history inline
        rated = [str(m) for m in small_bundle.catalog.ids[20:38]]
        for step, movie in enumerate(rated):
            rating = float(1 + step % 5)
            await post(client, [event(f"n{step}", "newbie", movie, rating, T0 + step)])
            history[movie] = Rating(rating, T0 + step)
            first = await client.post("/predict", json=request)
            second = await client.post("/predict", json=request)
            # the first read after the first rating computes from the stored history and
            # caches it; later events keep that cache current
            assert first.json()["user_cached"] is (step > 0)
            assert second.json()["user_cached"] is True
            inline = {"id": "newbie", "rated": sorted(history),
                      "rated_stars": [[m, history[m].rating] for m in sorted(history)]}
            expected = small_bundle.predict(inline, movies, context_of(history))
            for answer in (first, second):
                np.testing.assert_allclose([p["rating"] for p in answer.json()["predictions"]],
                                           expected, rtol=1e-5, atol=1e-5)
            ranked = (await client.post("/recommend", json={
                "user": {"id": "newbie"}, "context": TIME, "n": 10})).json()["items"]
            top = brute_force(small_bundle, inline, context_of(history), 10, set(history))
            assert [i["movie_id"] for i in ranked] == [m for m, _ in top]
            np.testing.assert_allclose([i["score"] for i in ranked], [s for _, s in top],
                                       rtol=1e-5, atol=1e-5)
            cached = cached_history(redis, small_bundle.model_id, "newbie", small_bundle.widths)
            assert cached is not None
            assert_same_history(cached, history_from_scratch(small_bundle, history))


async def test_bad_batches_are_refused_whole_and_write_nothing(
        small_bundle_path: Path, small_bundle: Bundle, redis_server: RedisServer) -> None:
    settings = service_settings(bundle=small_bundle_path, redis_url=redis_server.url,
                                max_events=4)
    redis = redis_server.client()
    good = [event(f"g{n}", "9", str(n + 1), 3.0, T0 + n) for n in range(3)]
    low, high = small_bundle.rating_range
    cases: list[tuple[Any, list[Any]]] = [
        ([*good, event("x", "9", "5", high + 0.5, T0)], ["body", "events", 3, "rating"]),
        ([event("x", "9", "5", low - 1, T0), *good], ["body", "events", 0, "rating"]),
        ([*good, *good], ["body", "events"]),  # more than FMREC_MAX_EVENTS
        ([{**good[0], "timestamp": -1}], ["body", "events", 0, "timestamp"]),
        ([{**good[0], "timestamp": 1_700_000_000_000}], ["body", "events", 0, "timestamp"]),
        ([{k: v for k, v in good[0].items() if k != "user_id"}],
         ["body", "events", 0, "user_id"]),
        ([{**good[0], "movie_id": ""}], ["body", "events", 0, "movie_id"]),
        ([{**good[0], "extra": 1}], ["body", "events", 0, "extra"]),
        ([], ["body", "events"]),
    ]
    async with serving(settings) as (_, client):
        for events, loc in cases:
            response = await client.post("/ratings", json={"events": events})
            assert response.status_code == 422, response.text
            assert response.json()["detail"][0]["loc"] == loc
        nan = b'{"events": [{"event_id": "n", "user_id": "9", "movie_id": "1", ' \
              b'"rating": NaN, "timestamp": 1}]}'
        response = await client.post("/ratings", content=nan,
                                     headers={"Content-Type": "application/json"})
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["body", "events", 0, "rating"]
        assert redis.dbsize() == 0  # nothing of any refused batch was written
        page = (await client.get("/metrics")).text
        assert metric(page, 'fmrec_rating_events_total{outcome="refused"}') == 4 + 4 + 6
        assert (await post(client, good))["accepted"] == 3


async def test_redis_down_is_503_and_a_lost_reply_is_not_counted_twice(
        small_bundle_path: Path, small_bundle: Bundle, redis_server: RedisServer) -> None:
    settings = service_settings(bundle=small_bundle_path, redis_url=redis_server.url,
                                redis_timeout_s=0.3, redis_retry_s=0.2)
    redis = redis_server.client()
    first = [event("s1", "9", "1", 3.0, T0)]
    batch = [event("s2", "9", "2", 4.0, T0 + 1), event("s3", "9", "3", 2.0, T0 + 2)]
    async with serving(settings) as (_, client):
        await post(client, first)  # the script is loaded now
        await client.post("/predict", json={"user": {"id": "9"}, "movies": [{"id": "1"}]})
        assert redis_server.process is not None
        os.kill(redis_server.process.pid, signal.SIGSTOP)  # Redis hangs: replies never come
        try:
            stalled = await client.post("/ratings", json={"events": batch})
        finally:
            os.kill(redis_server.process.pid, signal.SIGCONT)
        assert stalled.status_code == 503
        # the script may have run (it did here): the answer must not say nothing was stored
        assert "not stored" not in stalled.json()["detail"]
        assert "outcome unknown" in stalled.json()["detail"]
        assert "retry with the same event ids" in stalled.json()["detail"]
        assert stalled.headers["Retry-After"] == "1"
        # Redis ran the script once it woke up: only its reply was lost
        deadline = time.monotonic() + 5
        while redis.hlen(ratings_key("9")) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.25)  # the store's back-off after the timeout
        retried = await post(client, batch)
        assert (retried["accepted"], retried["duplicates"]) == (0, 2)
        history = stored_history(redis, "9")
        assert history == {"1": Rating(3.0, T0), "2": Rating(4.0, T0 + 1),
                           "3": Rating(2.0, T0 + 2)}
        cached = cached_history(redis, small_bundle.model_id, "9", small_bundle.widths)
        assert cached is not None
        assert_same_history(cached, history_from_scratch(small_bundle, history))

        redis_server.kill()
        down = await client.post("/ratings", json={"events": [event("s4", "9", "4", 1.0,
                                                                    T0)]})
        assert down.status_code == 503 and down.headers["Retry-After"] == "1"
        assert "store is unavailable" in down.json()["detail"]
        page = (await client.get("/metrics")).text
        assert metric(page, 'fmrec_rating_events_total{outcome="refused"}') == 3
