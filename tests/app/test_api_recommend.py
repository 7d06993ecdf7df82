"""POST /recommend equals a brute-force ranking of every candidate (score_pairs + sort)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from app.settings import Settings
from model.blocks import user_histories
from model.bundle import Bundle
from model.data import Dataset
from model.features import FeatureSpec
from tests.support.api_client import (
    CONTEXT,
    brute_force,
    full_payload,
    head_scores,
    load_users,
    serving,
)

pytestmark = pytest.mark.anyio



def _check(body: dict[str, Any], expected: list[tuple[str, float]], bundle: Bundle,
           user: dict[str, Any], context: dict[str, Any]) -> None:
    """Ranked as brute force ranks; each item's relevance and rating are its scores
    under the two heads (the rating clipped)."""
    items = body["items"]
    assert [i["movie_id"] for i in items] == [movie for movie, _ in expected]
    np.testing.assert_allclose([i["score"] for i in items], [s for _, s in expected],
                               rtol=1e-5, atol=1e-5)
    relevance, rating = (head_scores(bundle, user, context, h) for h in ("relevance", "rating"))
    for item in items:
        row = bundle.catalog.row(item["movie_id"])
        assert row is not None and item["title"] == bundle.catalog.titles[row]
        assert item["relevance"] == pytest.approx(float(relevance[row]), abs=1e-5)
        assert item["rating"] == pytest.approx(float(bundle.clip(rating[row])), abs=1e-5)
        assert item["score"] == item[body["rank_by"]] if body["rank_by"] == "relevance" \
            else item["score"] == pytest.approx(float(rating[row]), abs=1e-5)


async def test_recommend_equals_brute_force(
        settings: Settings, small_bundle: Bundle, small_data: tuple[Dataset, FeatureSpec]) -> None:
    data, _ = small_data
    await load_users(settings, data)
    async with serving(settings) as (_, client):
        for uid in ("1", "2", "30", "99"):
            rated = set(user_histories(data.train)[uid])
            for n in (1, 10, 25):
                response = await client.post("/recommend", json={
                    "user": {"id": uid}, "context": CONTEXT, "n": n})
                assert response.status_code == 200, response.text
                expected = brute_force(small_bundle, full_payload(data, uid), CONTEXT, n,
                                       exclude=rated)
                _check(response.json(), expected, small_bundle, full_payload(data, uid),
                       CONTEXT)
                assert not rated & {i["movie_id"] for i in response.json()["items"]}


async def test_recommend_without_exclusion_and_with_genres(
        settings: Settings, small_bundle: Bundle, small_data: tuple[Dataset, FeatureSpec]) -> None:
    data, _ = small_data
    await load_users(settings, data)
    payload = full_payload(data, "5")
    rated = set(payload["rated"])
    async with serving(settings) as (_, client):
        everything = await client.post("/recommend", json={
            "user": {"id": "5"}, "context": CONTEXT, "n": 40, "exclude_rated": False})
        _check(everything.json(), brute_force(small_bundle, payload, CONTEXT, 40),
               small_bundle, payload, CONTEXT)
        assert rated & {i["movie_id"] for i in everything.json()["items"]}
        genres = ["film-noir", "Western"]  # genre names match case-insensitively
        filtered = await client.post("/recommend", json={
            "user": {"id": "5"}, "context": CONTEXT, "n": 15, "genres": genres})
        expected = brute_force(small_bundle, payload, CONTEXT, 15, exclude=rated,
                               genres=genres)
        _check(filtered.json(), expected, small_bundle, payload, CONTEXT)


async def test_recommend_among_candidates(
        settings: Settings, small_bundle: Bundle, small_data: tuple[Dataset, FeatureSpec]) -> None:
    data, _ = small_data
    await load_users(settings, data)
    payload = full_payload(data, "6")
    rated = set(payload["rated"])
    candidates = [str(i) for i in range(1, 60)] + ["3", "3"]  # duplicates count once
    async with serving(settings) as (_, client):
        for n, genres in ((5, None), (100, None), (8, ["Drama"])):
            response = await client.post("/recommend", json={
                "user": {"id": 6}, "context": CONTEXT, "n": n, "candidates": candidates,
                "genres": genres})
            assert response.status_code == 200, response.text
            expected = brute_force(small_bundle, payload, CONTEXT, n, exclude=rated,
                                   genres=genres, candidates=candidates)
            _check(response.json(), expected, small_bundle, payload, CONTEXT)


async def test_cold_start_recommend_with_inline_history(
        settings: Settings, small_bundle: Bundle) -> None:
    user = {"age": 22, "gender": "M", "occupation": "student", "zip": "94110",
            "rated": ["1", "2", "3", "10"]}
    async with serving(settings) as (_, client):
        response = await client.post("/recommend", json={
            "user": user, "context": CONTEXT, "n": 12})
    assert response.status_code == 200, response.text
    expected = brute_force(small_bundle, user, CONTEXT, 12, exclude=set(user["rated"]))
    _check(response.json(), expected, small_bundle, user, CONTEXT)


@pytest.mark.parametrize("rank_by", ["rating", "relevance"])
async def test_rank_by_either_head(settings: Settings, small_bundle: Bundle,
                                   small_data: tuple[Dataset, FeatureSpec], rank_by: str) -> None:
    """rank_by picks the head that ranks, over the catalog and among candidates; the
    answer says which, and the default is relevance."""
    data, _ = small_data
    await load_users(settings, data)
    payload = full_payload(data, "7")
    rated = set(payload["rated"])
    candidates = [str(i) for i in range(1, 80)]
    async with serving(settings) as (_, client):
        for extra in ({}, {"candidates": candidates}):
            body = {"user": {"id": "7"}, "context": CONTEXT, "n": 9, "rank_by": rank_by, **extra}
            response = await client.post("/recommend", json=body)
            assert response.status_code == 200, response.text
            assert response.json()["rank_by"] == rank_by
            expected = brute_force(small_bundle, payload, CONTEXT, 9, exclude=rated,
                                   candidates=extra.get("candidates"), head=rank_by)
            _check(response.json(), expected, small_bundle, payload, CONTEXT)
        default = await client.post("/recommend", json={"user": {"id": "7"}, "n": 3})
        assert default.json()["rank_by"] == "relevance"


async def test_exhausted_catalog_returns_fewer_items(
        settings: Settings, small_bundle: Bundle) -> None:
    catalog = small_bundle.catalog
    rows = [r for r in range(len(catalog)) if "Film-Noir" in catalog.genres[r]]
    seen = [str(catalog.ids[r]) for r in rows[:-2]]
    user = {"id": "nobody", "rated": seen}
    async with serving(settings) as (_, client):
        response = await client.post("/recommend", json={
            "user": user, "context": CONTEXT, "n": 50, "genres": ["Film-Noir"]})
    items = response.json()["items"]
    assert sorted(i["movie_id"] for i in items) == sorted(
        str(catalog.ids[r]) for r in rows[-2:])
