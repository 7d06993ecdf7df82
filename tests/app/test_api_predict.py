"""POST /predict over real HTTP (ASGI) and a real Redis, against Bundle.predict."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from app.redis_layout import sums_key
from app.settings import Settings
from model.bundle import Bundle
from model.data import Dataset
from model.features import FeatureSpec
from tests.support.api_client import (
    CONTEXT,
    full_payload,
    latest_movie,
    load_users,
    metric,
    serving,
)
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.anyio



def _ratings(body: dict[str, Any]) -> np.ndarray:
    return np.array([p["rating"] for p in body["predictions"]])


def _movies(bundle: Bundle, count: int) -> list[dict[str, Any]]:
    return [{"id": str(i)} for i in bundle.catalog.ids[:count]]


async def test_predict_by_id_matches_offline_reference(
        settings: Settings, small_bundle: Bundle, small_data: tuple[Dataset, FeatureSpec]) -> None:
    data, _ = small_data
    await load_users(settings, data)
    movies = _movies(small_bundle, 30)
    async with serving(settings) as (_, client):
        for uid in ("1", "2", "57"):
            response = await client.post("/predict", json={
                "user": {"id": uid}, "context": CONTEXT, "movies": movies})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["model_id"] == small_bundle.model_id
            assert [p["movie_id"] for p in body["predictions"]] == [m["id"] for m in movies]
            expected = small_bundle.predict(full_payload(data, uid), movies, CONTEXT)
            np.testing.assert_allclose(_ratings(body), expected, rtol=1e-5, atol=1e-5)


async def test_predict_inline_user_and_movies_match_reference(
        settings: Settings, small_bundle: Bundle) -> None:
    user = {"id": "someone-new", "age": 31, "gender": "F", "occupation": "writer",
            "zip": "02139", "rated": ["3", "17", "40", "5"]}
    movies = [{"id": "12"}, {"id": "not-in-catalog", "genres": ["Comedy", "Drama"], "year": 1994},
              {"id": "12", "genres": ["Horror"]}]
    async with serving(settings) as (_, client):
        response = await client.post("/predict", json={
            "user": user, "context": CONTEXT, "movies": movies})
    assert response.status_code == 200, response.text
    expected = small_bundle.predict(user, movies, CONTEXT)
    np.testing.assert_allclose(_ratings(response.json()), expected, rtol=1e-5, atol=1e-5)
    assert len(set(expected.round(4))) == 3  # the inline attributes did change the answer


async def test_unknown_user_and_movie_score_from_their_ids(
        settings: Settings, small_bundle: Bundle) -> None:
    movies = [{"id": "999999"}, {"id": "5"}]
    async with serving(settings) as (_, client):
        response = await client.post("/predict", json={
            "user": {"id": "never-seen"}, "context": CONTEXT, "movies": movies})
    assert response.status_code == 200, response.text
    assert response.json()["user_cached"] is False
    expected = small_bundle.predict({"id": "never-seen"}, movies, CONTEXT)
    np.testing.assert_allclose(_ratings(response.json()), expected, rtol=1e-5, atol=1e-5)


async def test_ratings_are_clipped_to_the_training_range(
        settings: Settings, small_bundle: Bundle) -> None:
    low, high = small_bundle.rating_range
    async with serving(settings) as (_, client):
        response = await client.post("/predict", json={
            "user": {"id": "1"}, "movies": _movies(small_bundle, 200)})
    ratings = _ratings(response.json())
    assert ratings.min() >= low and ratings.max() <= high


async def test_cache_hit_and_miss_give_identical_numbers(
        settings: Settings, small_bundle: Bundle, small_data: tuple[Dataset, FeatureSpec],
        redis_server: RedisServer) -> None:
    data, _ = small_data
    await load_users(settings, data)
    request = {"user": {"id": "3"}, "context": CONTEXT, "movies": _movies(small_bundle, 50)}
    async with serving(settings) as (_, client):
        first = (await client.post("/predict", json=request)).json()
        second = (await client.post("/predict", json=request)).json()
        page = (await client.get("/metrics")).text
    assert first["user_cached"] is False and second["user_cached"] is True
    assert _ratings(first).tolist() == _ratings(second).tolist()
    assert metric(page, "fmrec_cache_misses_total") == 1
    assert metric(page, "fmrec_cache_hits_total") == 1
    key = sums_key(small_bundle.model_id, "3")
    ttl = redis_server.client().ttl(key)
    assert 0 < ttl <= settings.cache_ttl_s


async def test_default_context_uses_latest_rated_movie(
        settings: Settings, small_bundle: Bundle, small_data: tuple[Dataset, FeatureSpec]) -> None:
    data, _ = small_data
    await load_users(settings, data)
    movies = _movies(small_bundle, 20)
    later = int(data.train.timestamp.max()) + 1  # after every rating: the latest is before
    async with serving(settings) as (_, client):
        for _ in range(2):  # miss, then hit: both take the last movie from the store
            response = await client.post("/predict", json={
                "user": {"id": "8"}, "context": {"time": later}, "movies": movies})
            context = {"time": later, "last_movie": latest_movie(data, "8")}
            expected = small_bundle.predict(full_payload(data, "8"), movies, context)
            np.testing.assert_allclose(_ratings(response.json()), expected, rtol=1e-5,
                                       atol=1e-5)
            without = small_bundle.predict(full_payload(data, "8"), movies, {"time": later})
            assert not np.allclose(_ratings(response.json()), without, atol=1e-4)


async def test_default_last_movie_is_the_latest_rated_before_the_time(
        settings: Settings, small_bundle: Bundle, small_data: tuple[Dataset, FeatureSpec]) -> None:
    """A time before the user's latest rating (a backfill) takes the movie rated last
    before it, as training does, from the store as from the cache; null means none."""
    data, _ = small_data
    await load_users(settings, data)
    movies = _movies(small_bundle, 20)
    train = data.train
    mine = np.flatnonzero(train.user == "8")
    at = int(np.sort(train.timestamp[mine])[len(mine) // 2])  # a rating of 8's is at `at`
    before = [r for r in mine if train.timestamp[r] < at]  # strictly: not the one at `at`
    earlier = str(train.item[max(before, key=lambda r: (int(train.timestamp[r]),
                                                         str(train.item[r])))])
    assert earlier != latest_movie(data, "8")
    payload = full_payload(data, "8")
    expected = small_bundle.predict(payload, movies, {"time": at, "last_movie": earlier})
    latest = small_bundle.predict(payload, movies,
                                  {"time": at, "last_movie": latest_movie(data, "8")})
    assert not np.allclose(expected, latest, atol=1e-4)  # the test can tell them apart
    async with serving(settings) as (_, client):
        for cached in (False, True):
            response = await client.post("/predict", json={
                "user": {"id": "8"}, "context": {"time": at}, "movies": movies})
            assert response.json()["user_cached"] is cached
            np.testing.assert_allclose(_ratings(response.json()), expected, rtol=1e-5,
                                       atol=1e-5)
        none = await client.post("/predict", json={
            "user": {"id": "8"}, "context": {"time": at, "last_movie": None}, "movies": movies})
    np.testing.assert_allclose(_ratings(none.json()),
                               small_bundle.predict(payload, movies, {"time": at}),
                               rtol=1e-5, atol=1e-5)


async def test_inline_fields_override_the_store(
        settings: Settings, small_bundle: Bundle, small_data: tuple[Dataset, FeatureSpec]) -> None:
    data, _ = small_data
    await load_users(settings, data)
    movies = _movies(small_bundle, 20)
    async with serving(settings) as (_, client):
        await client.post("/predict", json={"user": {"id": "4"}, "movies": movies})  # cache it
        history = await client.post("/predict", json={
            "user": {"id": "4", "rated": ["1", "2"]}, "context": CONTEXT, "movies": movies})
        attrs = await client.post("/predict", json={
            "user": {"id": "4", "occupation": "retired"}, "context": CONTEXT, "movies": movies})
    stored = full_payload(data, "4")
    inline = {k: v for k, v in stored.items() if k != "rated_stars"}  # ids: no stars
    expected = small_bundle.predict({**inline, "rated": ["1", "2"]}, movies, CONTEXT)
    np.testing.assert_allclose(_ratings(history.json()), expected, rtol=1e-5, atol=1e-5)
    expected = small_bundle.predict({**stored, "occupation": "retired"}, movies, CONTEXT)
    np.testing.assert_allclose(_ratings(attrs.json()), expected, rtol=1e-5, atol=1e-5)
    assert history.json()["user_cached"] is False and attrs.json()["user_cached"] is False
