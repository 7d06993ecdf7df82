"""The serving benchmark's peers do the work they claim: the bare endpoint parses bodies
exactly as fmrec does, and the naive full-row FM gives fmrec's answers (a speed-up over a
peer that computed something else would mean nothing). No timing is asserted here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from app.settings import Settings
from bench import bare_app, bare_asgi
from bench.naive_app import create_app as naive_app
from bench.serve import prometheus_totals
from model.blocks import user_histories
from model.bundle import Bundle
from model.data import Dataset
from model.features import FeatureSpec
from tests.support.api_client import (
    CONTEXT,
    brute_force,
    full_payload,
    latest_movie,
    load_users,
    service_settings,
    serving,
)
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.anyio

INLINE_USER = {"id": "someone-new", "age": 31, "gender": "F", "occupation": "writer",
               "zip": "02139", "rated": ["3", "17", "40", "5"]}


@asynccontextmanager
async def asgi(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            yield client


@pytest.fixture
def settings(small_bundle_path: Path, redis_server: RedisServer) -> Settings:
    return service_settings(bundle=small_bundle_path, redis_url=redis_server.url)


def _ratings(body: dict[str, Any]) -> np.ndarray:
    return np.array([p["rating"] for p in body["predictions"]])


async def test_bare_app_parses_with_fmrecs_request_models() -> None:
    async with asgi(bare_app.app) as client:
        ok = await client.post("/predict", json={"user": {"id": 7}, "movies": [{"id": "1"}]})
        assert ok.status_code == 200 and ok.json() == bare_app.PREDICTED
        ok = await client.post("/recommend", json={"user": INLINE_USER, "n": 5})
        assert ok.status_code == 200 and ok.json() == bare_app.RECOMMENDED
        misspelt = await client.post("/predict", json={
            "user": {"id": "7", "occupaton": "writer"}, "movies": [{"id": "1"}]})
        assert misspelt.status_code == 422
        assert misspelt.json()["detail"][0]["loc"] == ["body", "user", "occupaton"]
        empty = await client.post("/predict", json={"user": {"id": "7"}, "movies": []})
        assert empty.status_code == 422


async def test_bare_asgi_app_parses_with_fmrecs_request_models() -> None:
    transport = httpx.ASGITransport(app=bare_asgi.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        ok = await client.post("/predict", json={"user": {"id": 7}, "movies": [{"id": "1"}]})
        assert ok.status_code == 200 and ok.json() == bare_app.PREDICTED
        ok = await client.post("/recommend", json={"user": INLINE_USER, "n": 5})
        assert ok.status_code == 200 and ok.json() == bare_app.RECOMMENDED
        for path, body in (("/predict", {"user": {"id": "7"}, "movies": []}),
                           ("/recommend", {"user": {"id": "7", "occupaton": "writer"}})):
            assert (await client.post(path, json=body)).status_code == 422


async def test_naive_predict_equals_the_bundles_predictions(
        settings: Settings, small_bundle: Bundle, small_data: tuple[Dataset, FeatureSpec]
) -> None:
    data, _ = small_data
    await load_users(settings, data)
    movies = [{"id": str(i)} for i in small_bundle.catalog.ids[:25]]
    movies += [{"id": "not-in-catalog", "genres": ["Comedy"], "year": 1994},
               {"id": "12", "genres": ["Horror"]}]
    async with asgi(naive_app(settings)) as client:
        inline = await client.post("/predict", json={
            "user": INLINE_USER, "context": CONTEXT, "movies": movies})
        assert inline.status_code == 200, inline.text
        expected = small_bundle.predict(INLINE_USER, movies, CONTEXT)
        np.testing.assert_allclose(_ratings(inline.json()), expected, rtol=1e-5, atol=1e-5)
        assert len(set(expected.round(3))) > 10  # the scores really differ by movie
        for uid in ("1", "57"):  # profile and history read from the store
            by_id = await client.post("/predict", json={
                "user": {"id": uid}, "context": CONTEXT, "movies": movies[:25]})
            assert by_id.status_code == 200, by_id.text
            np.testing.assert_allclose(
                _ratings(by_id.json()),
                small_bundle.predict(full_payload(data, uid), movies[:25], CONTEXT),
                rtol=1e-5, atol=1e-5)


async def test_naive_recommend_equals_brute_force_and_fmrec(
        settings: Settings, small_bundle: Bundle, small_data: tuple[Dataset, FeatureSpec]
) -> None:
    """By id (profile, history and the last movie from the store) and inline."""
    data, _ = small_data
    await load_users(settings, data)
    histories = user_histories(data.train)
    # no last_movie: both default it to the latest rating, the time being after them all
    at = {"time": int(data.train.timestamp.max()) + 1}
    bodies: list[dict[str, Any]] = [{"user": {"id": uid}, "n": 10, "context": at,
                                     "rank_by": "rating"} for uid in ("1", "2", "57")]
    bodies.append({"user": INLINE_USER, "n": 7, "context": CONTEXT, "genres": ["Comedy"],
                   "rank_by": "rating"})  # the naive FM has the rating head only
    backfill = {"time": CONTEXT["time"]}  # before some of 8's ratings: the latest before it
    bodies.append({"user": {"id": "8"}, "n": 10, "context": backfill, "rank_by": "rating"})
    async with asgi(naive_app(settings)) as client:
        naive = [(await client.post("/recommend", json=body)).json()["items"]
                 for body in bodies]
    async with serving(settings) as (_, client):
        fmrec = [(await client.post("/recommend", json=body)).json()["items"]
                 for body in bodies]
    for body, mine, theirs in zip(bodies, naive, fmrec, strict=True):
        user = body["user"]
        if "rated" in user:
            payload, rated, context = user, user["rated"], body["context"]
        else:
            payload, rated = full_payload(data, user["id"]), histories[user["id"]]
            context = {**body["context"], "last_movie": latest_movie(
                data, user["id"], before=body["context"]["time"])}
        expected = brute_force(small_bundle, payload, context, body["n"], exclude=set(rated),
                               genres=body.get("genres"), head="rating")
        assert len(expected) == body["n"]
        for got in (mine, theirs):
            assert [i["movie_id"] for i in got] == [m for m, _ in expected]
            np.testing.assert_allclose([i["score"] for i in got], [s for _, s in expected],
                                       rtol=1e-5, atol=1e-5)


def test_prometheus_totals_sum_labels() -> None:
    text = ("# HELP x\nfmrec_cache_hits_total 3.0\nfmrec_request_seconds_count{route=\"/a\"} 2"
            "\nfmrec_request_seconds_count{route=\"/b\"} 5.0\n")
    assert prometheus_totals(text) == {"fmrec_cache_hits_total": 3.0,
                                       "fmrec_request_seconds_count": 7.0}
