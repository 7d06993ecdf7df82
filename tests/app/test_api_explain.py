"""POST /explain over real HTTP (ASGI) with a real Redis: the contributions add up to the
score, which is /predict's and /recommend's for the same request and the pairwise FM's."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest

from app.explain import NEIGHBOURS_FIELD
from app.settings import Settings
from model.bundle import Bundle
from model.data import Dataset
from model.explain import FMParams
from model.features import FeatureSpec, with_session
from tests.support.api_client import CONTEXT, full_payload, load_users, serving
from tests.support.reference import fm_pairwise

pytestmark = pytest.mark.anyio



def _pairwise(bundle: Bundle, user: dict[str, Any], movie: dict[str, Any],
              head: str = "rating") -> float:
    """A head's FM by definition over the whole row (the fields the head reads): every
    pair of feature occurrences."""
    fmap = bundle.heads[head].fmap
    blocks = [fmap.encode("user", [user]),
              fmap.encode("context", [with_session(CONTEXT, user.get("id"))]),
              fmap.encode("item", [movie])]
    params = FMParams.of(getattr(bundle.model, head).fm)
    return fm_pairwise(params.w0, params.w.astype(np.float64), params.V.astype(np.float64),
                       np.concatenate([b.indices for b in blocks]),
                       np.concatenate([b.values for b in blocks]).astype(np.float64))


async def _served_score(client: httpx.AsyncClient, user: dict[str, Any], movie: str,
                        head: str = "rating") -> tuple[float, float]:
    """(/recommend's unclipped score under `head`, /predict's rating) of one movie."""
    ranked = await client.post("/recommend", json={
        "user": user, "context": CONTEXT, "candidates": [movie], "exclude_rated": False,
        "rank_by": head})
    predicted = await client.post("/predict", json={
        "user": user, "context": CONTEXT, "movies": [{"id": movie}]})
    assert ranked.status_code == 200 and predicted.status_code == 200
    return ranked.json()["items"][0]["score"], predicted.json()["predictions"][0]["rating"]


def _neighbours(body: dict[str, Any]) -> float:
    """What the rating head's neighbourhood adds to an explained score (0 if nothing)."""
    return sum(g["contribution"] for g in body["fields"] if g["field"] == NEIGHBOURS_FIELD)


def _check_sum(body: dict[str, Any]) -> None:
    total = body["bias"] + sum(f["contribution"] for g in body["fields"]
                               for f in g["features"])
    assert total == pytest.approx(body["score"], abs=1e-5)
    for g in body["fields"]:
        assert g["contribution"] == pytest.approx(
            sum(f["contribution"] for f in g["features"]), abs=1e-9)


@pytest.mark.parametrize("head", ["rating", "relevance"])
async def test_explain_adds_up_to_predict_and_the_pairwise_fm(
        settings: Settings, small_bundle: Bundle, small_data: tuple[Dataset, FeatureSpec],
        head: str) -> None:
    data, _ = small_data
    await load_users(settings, data)
    catalog = small_bundle.catalog
    corrected = 0
    async with serving(settings) as (_, client):
        for uid, movie in (("1", "3"), ("2", "150"), ("30", "77"), ("99", "1")):
            request = {"user": {"id": uid}, "context": CONTEXT, "movies": [{"id": movie}],
                       "head": head}
            for _ in range(2):  # the second time the user's sums are cached
                response = await client.post("/explain", json=request)
                assert response.status_code == 200, response.text
                body = response.json()
                assert body["head"] == head
                _check_sum(body)
                score, rating = await _served_score(client, {"id": uid}, movie, head)
                # /recommend ranks by the FM; /predict's rating adds the neighbourhood
                assert body["score"] - _neighbours(body) == pytest.approx(score, abs=1e-5)
                if head == "rating":
                    assert body["rating"] == pytest.approx(rating, abs=1e-5)
                else:
                    assert body["rating"] is None
            row = catalog.row(movie)
            assert row is not None
            assert body["score"] - _neighbours(body) == pytest.approx(
                _pairwise(small_bundle, full_payload(data, uid), catalog.payload(row), head),
                abs=1e-5)
            neighbours = [g for g in body["fields"] if g["field"] == NEIGHBOURS_FIELD]
            if head == "relevance":
                assert not neighbours
            elif neighbours:  # each one a movie the user rated, by title
                corrected += 1
                titles = {str(catalog.titles[catalog.row(m)])
                          for m in full_payload(data, uid)["rated"]}
                assert {f["value"] for f in neighbours[0]["features"]} <= titles
            assert body["movie_id"] == movie and body["title"] == catalog.titles[row]
            rated = {f["value"] for g in body["fields"] if g["field"] == "user.rated"
                     for f in g["features"]}
            assert rated == {str(catalog.titles[catalog.row(m)])
                             for m in full_payload(data, uid)["rated"]}
    assert head == "relevance" or corrected >= 3  # the neighbourhood is exercised


async def test_explain_inline_user_and_movie(settings: Settings, small_bundle: Bundle) -> None:
    user = {"id": "newcomer", "age": 22, "gender": "M", "occupation": "student",
            "zip": "94110", "rated": ["1", "2", "3", "10"]}
    movie = {"id": "not-in-catalog", "genres": ["Drama", "War"], "year": 1971}
    async with serving(settings) as (_, client):
        response = await client.post("/explain", json={
            "user": user, "context": CONTEXT, "movies": [movie]})
        assert response.status_code == 200, response.text
        body = response.json()
        _check_sum(body)
        assert body["title"] is None
        assert body["score"] == pytest.approx(_pairwise(small_bundle, user, movie), abs=1e-5)
        fields = {g["field"] for g in body["fields"]}
        assert {"user.age", "user.zip", "item.genres", "item.year", "context.time"} <= fields
        predicted = await client.post("/predict", json={
            "user": user, "context": CONTEXT, "movies": [movie]})
        assert body["rating"] == pytest.approx(
            predicted.json()["predictions"][0]["rating"], abs=1e-5)


async def test_explain_refuses_bad_input_naming_the_field(settings: Settings) -> None:
    async with serving(settings) as (_, client):
        two = await client.post("/explain", json={
            "user": {"id": "1"}, "movies": [{"id": "1"}, {"id": "2"}]})
        assert two.status_code == 422
        assert two.json()["detail"][0]["loc"] == ["body", "movies"]
        none = await client.post("/explain", json={"user": {"id": "1"}, "movies": []})
        assert none.status_code == 422 and none.json()["detail"][0]["loc"][:2] == [
            "body", "movies"]
        typo = await client.post("/explain", json={
            "user": {"id": "1", "occupaton": "x"}, "movies": [{"id": "1"}]})
        assert typo.status_code == 422 and "occupaton" in typo.json()["detail"][0]["loc"]
        garbage = await client.post("/explain", content=b"{", headers={
            "content-type": "application/json"})
        assert garbage.status_code == 422


def _rated_contributions(body: dict[str, Any]) -> dict[str, float]:
    """/explain's contributions of the history by movie id: a movie and its stars, and a
    repeated movie, summed."""
    out: dict[str, float] = {}
    for g in body["fields"]:
        if g["field"] in ("user.rated", "user.rated_stars"):
            for f in g["features"]:
                movie = f["feature"].split("=", 1)[1]
                out[movie] = out.get(movie, 0.0) + f["contribution"]
    return out


async def _check_because(client: httpx.AsyncClient, user: dict[str, Any],
                         genres: list[str] | None = None, rank_by: str = "relevance") -> int:
    """Each item's `because` is the top 2 of its own /explain's rated movies under the
    head that ranked; returns how many items named a reason."""
    response = await client.post("/recommend", json={
        "user": user, "context": CONTEXT, "n": 8, "explain": True, "genres": genres,
        "rank_by": rank_by})
    assert response.status_code == 200, response.text
    named = 0
    for item in response.json()["items"]:
        explained = await client.post("/explain", json={
            "user": user, "context": CONTEXT, "movies": [{"id": item["movie_id"]}],
            "head": rank_by})
        # /recommend ranks by the FM; the rating head's explanation adds the neighbourhood
        assert explained.json()["score"] - _neighbours(explained.json()) == pytest.approx(
            item["score"], abs=1e-5)
        per_movie = _rated_contributions(explained.json())
        best = sorted(per_movie.values(), reverse=True)[:2]
        because = item["because"]
        assert [b["contribution"] for b in because] == pytest.approx(best, abs=1e-5)
        for b in because:
            assert b["contribution"] == pytest.approx(per_movie[b["movie_id"]], abs=1e-5)
        named += len(because)
    return named


async def test_because_you_rated_is_each_items_top_rated_contributions(
        settings: Settings, small_bundle: Bundle, small_data: tuple[Dataset, FeatureSpec]
        ) -> None:
    data, _ = small_data
    await load_users(settings, data)
    catalog = small_bundle.catalog
    async with serving(settings) as (_, client):
        for uid in ("1", "44"):
            assert await _check_because(client, {"id": uid}) == 16
            assert await _check_because(client, {"id": uid}, rank_by="rating") == 16
        assert await _check_because(client, {"id": "3"}, genres=["Drama"]) > 0
        # a repeat counts twice; a movie the catalog lacks still has its feature
        inline = {"age": 30, "rated": ["1", "2", "2", "9", "not-in-catalog"]}
        assert await _check_because(client, inline) == 16
        body = (await client.post("/recommend", json={
            "user": {"id": "1"}, "context": CONTEXT, "explain": True})).json()
        for item in body["items"]:
            for b in item["because"]:
                row = catalog.row(b["movie_id"])
                assert row is not None and b["title"] == catalog.titles[row]
        plain = (await client.post("/recommend", json={
            "user": {"id": "1"}, "context": CONTEXT})).json()
        assert [i["movie_id"] for i in plain["items"]] == [
            i["movie_id"] for i in body["items"]]
        assert all(i["because"] is None for i in plain["items"])
        nobody = (await client.post("/recommend", json={
            "user": {"id": "never-rated"}, "context": CONTEXT, "explain": True})).json()
        assert nobody["items"] and all(i["because"] == [] for i in nobody["items"])


async def test_explain_labels_any_valid_time(settings: Settings) -> None:
    """A time past year 9999 is valid input (the feature map clips it): its label must not
    be a 500 (the fuzzer found one)."""
    async with serving(settings) as (_, client):
        for time in (1e12, 0, 253_402_300_800):
            response = await client.post("/explain", json={
                "user": {"id": "1", "rated": ["1", "1", "zz"]}, "movies": [{"id": "3"}],
                "context": {"time": time, "last_movie": None}})
            assert response.status_code == 200, response.text
            _check_sum(response.json())
