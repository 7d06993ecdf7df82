"""The user's stars (feature group "stars", in fmrec's defaults) through the API: a stored
history and the same history inline with its stars give the same answers, which differ
from the history without stars; stars outside the rating range are refused."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from app.settings import Settings
from model.bundle import Bundle
from model.data import Dataset
from model.features import FeatureSpec
from tests.support.api_client import (
    CONTEXT,
    brute_force,
    full_payload,
    inline_user,
    latest_movie,
    load_users,
    serving,
)

pytestmark = pytest.mark.anyio



def _ratings(body: dict[str, Any]) -> list[float]:
    return [p["rating"] for p in body["predictions"]]


async def test_stored_and_inline_stars_answer_alike_and_the_stars_count(
        settings: Settings, small_bundle: Bundle, small_data: tuple[Dataset, FeatureSpec]
) -> None:
    data, _ = small_data
    await load_users(settings, data)
    assert small_bundle.heads["rating"].reads_stars
    movies = [{"id": str(m)} for m in small_bundle.catalog.ids[:30]]
    uid = "11"
    payload = full_payload(data, uid)
    context = {**CONTEXT, "last_movie": latest_movie(data, uid)}
    inline = inline_user(payload)
    assert all(isinstance(r, dict) for r in inline["rated"])
    without = {**inline, "rated": [r["id"] for r in inline["rated"]]}  # ids: no stars
    async with serving(settings) as (_, client):
        answers = {}
        for name, user in (("stored", {"id": uid}), ("inline", inline),
                           ("without", without)):
            response = await client.post("/predict", json={
                "user": user, "context": context, "movies": movies})
            assert response.status_code == 200, response.text
            answers[name] = _ratings(response.json())
        ranked = await client.post("/recommend", json={
            "user": inline, "context": context, "n": 10, "rank_by": "rating"})
    expected = small_bundle.predict(payload, movies, context)
    np.testing.assert_allclose(answers["stored"], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(answers["inline"], expected, rtol=1e-5, atol=1e-5)
    no_stars = {k: v for k, v in payload.items() if k != "rated_stars"}
    np.testing.assert_allclose(answers["without"], small_bundle.predict(
        no_stars, movies, context), rtol=1e-5, atol=1e-5)
    assert np.abs(np.subtract(answers["without"], expected)).max() > 1e-3  # stars count
    top = brute_force(small_bundle, payload, context, 10, exclude=set(payload["rated"]),
                      head="rating")
    assert [i["movie_id"] for i in ranked.json()["items"]] == [m for m, _ in top]


@pytest.mark.parametrize(("entry", "loc", "words"), [
    ({"id": "3", "stars": 9}, ["body", "user", "rated", 1, "stars"], "rating range"),
    ({"id": "3", "stars": "four"}, ["body", "user", "rated", 1, "movie", "stars"], "number"),
    ({"id": "3", "stars": 4, "when": 1}, ["body", "user", "rated", 1, "movie", "when"],
     "not permitted"),
    ({"stars": 4}, ["body", "user", "rated", 1, "movie", "id"], "required"),
])
async def test_bad_stars_are_refused_naming_the_entry(
        settings: Settings, entry: dict[str, Any], loc: list[Any], words: str) -> None:
    async with serving(settings) as (_, client):
        for route, extra in (("/predict", {"movies": [{"id": "1"}]}), ("/recommend", {})):
            response = await client.post(route, json={
                "user": {"rated": ["1", entry]}, **extra})
            assert response.status_code == 422, response.text
            errors = [e for e in response.json()["detail"] if e["loc"] == loc]
            assert errors and words in errors[0]["msg"], response.text


def _counted_parses(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every stored rating parsed from now on, appended to the list returned."""
    from app import redis_layout

    parsed: list[bytes] = []
    parse = redis_layout.parse_rating

    def counting(raw: bytes) -> redis_layout.Rating:
        parsed.append(raw)
        return parse(raw)

    monkeypatch.setattr(redis_layout, "parse_rating", counting)
    return parsed


async def test_a_cached_recommend_parses_no_stored_rating_unless_it_explains(
        settings: Settings, small_data: tuple[Dataset, FeatureSpec],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A cached user's sums hold its history, stars included, so /recommend needs only
    which movies it rated (the exclusion); the stars are parsed when an explanation by a
    head that reads them does. Counted, not timed: parsing every rating was a quarter of
    the route's CPU."""
    data, _ = small_data
    await load_users(settings, data)
    parsed = _counted_parses(monkeypatch)
    uid = "11"
    n_rated = int(np.sum(data.train.user.astype(str) == uid))
    async with serving(settings) as (_, client):
        for _ in range(2):  # the first computes and caches the user's sums
            response = await client.post("/recommend", json={"user": {"id": uid}, "n": 5})
            assert response.status_code == 200, response.text
            assert response.json()["user_cached"] == (_ == 1)
            rated = set(data.train.item.astype(str)[data.train.user.astype(str) == uid])
            assert not rated & {i["movie_id"] for i in response.json()["items"]}
        parsed.clear()
        for _ in range(3):
            response = await client.post("/recommend", json={"user": {"id": uid}, "n": 5})
            assert response.status_code == 200 and response.json()["user_cached"]
        assert parsed == []
        response = await client.post("/recommend", json={  # the relevance head: no stars
            "user": {"id": uid}, "n": 5, "explain": True})
        assert response.status_code == 200 and parsed == []
        response = await client.post("/recommend", json={
            "user": {"id": uid}, "n": 5, "explain": True, "rank_by": "rating"})
        assert response.status_code == 200, response.text
        assert all(i["because"] for i in response.json()["items"])
        assert len(parsed) >= n_rated


async def test_a_cached_predict_parses_its_history_once_per_version(
        settings: Settings, small_bundle: Bundle, small_data: tuple[Dataset, FeatureSpec],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The neighbourhood's residuals come from the user's stored stars: the first
    /predict parses them, later ones reuse them (`app.residuals`) until a rating changes
    the history, and every answer is the offline one. Counted, not timed."""
    data, _ = small_data
    await load_users(settings, data)
    parsed = _counted_parses(monkeypatch)
    uid, movies = "11", [{"id": str(m)} for m in small_bundle.catalog.ids[:20]]
    payload = full_payload(data, uid)
    assert small_bundle.neighbours is not None
    assert np.any(small_bundle.neighbour_correction(payload, movies) != 0)  # exercised
    body = {"user": {"id": uid}, "context": CONTEXT, "movies": movies}
    async with serving(settings) as (_, client):
        for n in range(4):
            response = await client.post("/predict", json=body)
            assert response.status_code == 200, response.text
            np.testing.assert_allclose([p["rating"] for p in response.json()["predictions"]],
                                       small_bundle.predict(payload, movies, CONTEXT),
                                       atol=1e-5)
            if n == 0:
                assert len(parsed) >= len(payload["rated"])
                parsed.clear()
        assert parsed == []
        for movie in movies[:3]:  # one movie at a time: the plain-Python sums
            one = await client.post("/predict", json={**body, "movies": [movie]})
            assert one.json()["predictions"][0]["rating"] == pytest.approx(
                float(small_bundle.predict(payload, [movie], CONTEXT)[0]), abs=1e-5)
        assert parsed == []
        new = next(str(m) for m in small_bundle.catalog.ids if str(m) not in payload["rated"])
        event = {"event_id": "e-neighbours", "user_id": uid, "movie_id": new,
                 "rating": 1.0, "timestamp": 880_000_000}
        added = await client.post("/ratings", json={"events": [event]})
        assert added.status_code == 200, added.text
        response = await client.post("/predict", json=body)
        assert len(parsed) > len(payload["rated"])  # the new version: parsed again
        newer = {**payload, "rated": [*payload["rated"], new],
                 "rated_stars": [*payload["rated_stars"], [new, 1.0]]}
        np.testing.assert_allclose([p["rating"] for p in response.json()["predictions"]],
                                   small_bundle.predict(newer, movies, CONTEXT), atol=1e-5)
