"""The hot routes (app/hot_routes.py): plain scoring requests are answered without
FastAPI, everything else reaches FastAPI's route with the body intact, and both paths
give the same answers and the same refusals."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.types import Message, Receive, Scope, Send

from app.hot_routes import HotRoutes
from app.metrics import Metrics
from app.schemas import PredictResponse, RecommendResponse
from app.service import Service
from app.settings import Settings
from model.bundle import Bundle
from model.data import Dataset
from model.features import FeatureSpec
from tests.support.api_client import CONTEXT, load_users, metric, service_settings, serving
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.anyio
JSON = {"content-type": "application/json"}
# a content type the hot routes leave to FastAPI (which takes it as JSON): the reference
VIA_FASTAPI = {"content-type": "application/vnd.fmrec+json"}


@pytest.fixture
def settings(small_bundle_path: Path, redis_server: RedisServer) -> Settings:
    return service_settings(bundle=small_bundle_path, redis_url=redis_server.url)


class Fallback:
    """Stands for FastAPI: records what reached it, answers a marker."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bytes]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        self.seen.append((scope["path"], message.get("body", b"")))
        await JSONResponse({"fallback": True})(scope, receive, send)


async def hot_client(settings: Settings, fallback: Fallback
                     ) -> AsyncIterator[tuple[Service, httpx.AsyncClient]]:
    service = Service(settings, Metrics())
    await service.start()
    routes = {path: APIRoute(path, lambda: None) for path in ("/predict", "/recommend")}
    app = HotRoutes(fallback, service, routes)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://fmrec") as client:
            yield service, client
    finally:
        await service.stop()


async def test_plain_requests_never_reach_fastapi(
        settings: Settings, small_bundle: Bundle, small_data: tuple[Dataset, FeatureSpec]
) -> None:
    await load_users(settings, small_data[0])
    fallback = Fallback()
    movies = [{"id": str(m)} for m in small_bundle.catalog.ids[:5]]
    async for service, client in hot_client(settings, fallback):
        predicted = await client.post("/predict", headers=JSON, content=json.dumps(
            {"user": {"id": "1"}, "context": CONTEXT, "movies": movies}))
        assert predicted.status_code == 200, predicted.text
        assert [p["movie_id"] for p in predicted.json()["predictions"]] == [
            m["id"] for m in movies]
        recommended = await client.post("/recommend", headers={
            "content-type": "Application/JSON; charset=utf-8"},
            content=json.dumps({"user": {"id": "1"}, "n": 3}))
        assert recommended.status_code == 200, recommended.text
        assert len(recommended.json()["items"]) == 3
        assert fallback.seen == []
        # a limit refusal is answered here too, by the app's error handler
        over = await client.post("/recommend", headers=JSON, content=json.dumps(
            {"user": {"id": "1"}, "n": service.settings.max_n + 1}))
        assert over.status_code == 422 and over.json()["detail"][0]["loc"] == ["body", "n"]
        assert fallback.seen == []


@pytest.mark.parametrize(("path", "headers", "body"), [
    ("/predict", JSON, b'{"user": {"id": "1"}, "movies": [{"id": "1"}'),  # broken JSON
    ("/predict", JSON, b'{"user": {"id": "1"}, "movies": []}'),  # schema error
    ("/recommend", JSON, b'{"user": {"id": "1"}, "n": 0}'),
    ("/recommend", JSON, b""),  # no body
    ("/recommend", {"content-type": "text/plain"}, b'{"user": {"id": "1"}}'),
    ("/recommend", VIA_FASTAPI, b'{"user": {"id": "1"}}'),
])
async def test_anything_but_the_plain_case_reaches_fastapi_with_its_body(
        settings: Settings, path: str, headers: dict[str, str], body: bytes) -> None:
    fallback = Fallback()
    async for _, client in hot_client(settings, fallback):
        response = await client.post(path, headers=headers, content=body)
        assert response.json() == {"fallback": True}
        assert fallback.seen == [(path, body)]
        other = await client.get(path)  # not a POST: never the hot routes' business
        assert other.json() == {"fallback": True}


async def test_protected_reads_without_the_key_reach_fastapi(
        small_bundle_path: Path, redis_server: RedisServer) -> None:
    settings = service_settings(bundle=small_bundle_path, redis_url=redis_server.url,
                                api_keys="k1", protect_reads=True)
    body = json.dumps({"user": {"id": "1"}, "n": 2}).encode()
    fallback = Fallback()
    async for _, client in hot_client(settings, fallback):
        for key in (None, "wrong"):
            headers = JSON if key is None else {**JSON, "x-api-key": key}
            assert (await client.post("/recommend", headers=headers, content=body)).json() == {
                "fallback": True}
        allowed = await client.post("/recommend", headers={**JSON, "x-api-key": "k1"},
                                    content=body)
        assert allowed.status_code == 200 and len(allowed.json()["items"]) == 2
        assert fallback.seen == [("/recommend", body)] * 2


async def test_a_client_gone_mid_body_gets_nothing(settings: Settings) -> None:
    fallback = Fallback()
    service = Service(settings, Metrics())
    await service.start()
    sent: list[Message] = []
    messages = iter([{"type": "http.request", "body": b'{"user":', "more_body": True},
                     {"type": "http.disconnect"}])

    async def receive() -> Message:
        return next(messages)

    async def send(message: Message) -> None:
        sent.append(message)

    try:
        scope = {"type": "http", "method": "POST", "path": "/predict",
                 "headers": [(b"content-type", b"application/json")]}
        await HotRoutes(fallback, service, {})(scope, receive, send)
    finally:
        await service.stop()
    assert sent == [] and fallback.seen == []


def _bodies(bundle: Bundle) -> list[tuple[str, dict[str, Any]]]:
    movies = [{"id": str(m)} for m in bundle.catalog.ids[:4]]
    genre = bundle.catalog.genre_names[1]
    return [
        ("/predict", {"user": {"id": "2"}, "context": CONTEXT, "movies": movies}),
        ("/predict", {"user": {"id": "cold", "age": 30, "rated": ["1", "2"]},
                      "context": CONTEXT, "movies": [*movies, {"id": "new", "year": 1990}]}),
        ("/recommend", {"user": {"id": "2"}, "context": CONTEXT, "n": 5, "genres": [genre]}),
        ("/recommend", {"user": {"id": "2"}, "context": CONTEXT, "n": 3,
                        "candidates": [m["id"] for m in movies], "exclude_rated": False}),
        ("/recommend", {"user": {"id": "2"}, "context": CONTEXT, "n": 4, "rank_by": "rating",
                        "explain": True}),
        ("/recommend", {"user": {"id": "2"}, "n": 3, "genres": ["no such genre"]}),
        ("/recommend", {"user": {"id": "2"}, "n": 3, "rank_by": "popularity"}),  # not a head
        ("/predict", {"user": {"id": "2"}, "movies": movies * 1000}),  # over max_movies
    ]


DOCUMENTED: dict[str, type[BaseModel]] = {"/predict": PredictResponse,
                                          "/recommend": RecommendResponse}


async def test_both_paths_answer_alike_and_are_timed_under_the_route(
        settings: Settings, small_bundle: Bundle, small_data: tuple[Dataset, FeatureSpec]
) -> None:
    await load_users(settings, small_data[0])
    async with serving(settings) as (_, client):
        for path, body in _bodies(small_bundle):
            await client.post(path, json=body)  # computes and caches the user's sums
            fast = await client.post(path, headers=JSON, content=json.dumps(body))
            reference = await client.post(path, headers=VIA_FASTAPI, content=json.dumps(body))
            assert (fast.status_code, fast.json()) == (
                reference.status_code, reference.json()), path
            if fast.status_code == 200:  # the documented schema, every field, nothing else
                documented = DOCUMENTED[path].model_validate_json(fast.content)
                assert documented.model_dump(mode="json") == fast.json(), path
        page = (await client.get("/metrics")).text
    timed = metric(page, 'fmrec_request_seconds_count{method="POST",route="/recommend",'
                         'status="200"}')
    assert timed == 3 * 3  # three /recommend bodies answered 200, three times each


async def test_both_doors_flag_unknown_movies_and_count_them(
        settings: Settings, small_bundle: Bundle, small_data: tuple[Dataset, FeatureSpec]
) -> None:
    """A movie by id that the catalog lacks is still scored (hashing) but flagged
    known: false, by the hot route and FastAPI's alike, and /metrics counts it."""
    await load_users(settings, small_data[0])
    catalog_id = str(small_bundle.catalog.ids[0])
    assert small_bundle.catalog.row("zzz") is None
    movies = [{"id": catalog_id}, {"id": "zzz"}, {"id": "zzz", "genres": ["War"]},
              {"id": catalog_id, "year": 1990}]
    body = json.dumps({"user": {"id": "1"}, "context": CONTEXT, "movies": movies})
    async with serving(settings) as (_, client):
        answers = [await client.post("/predict", headers=headers, content=body)
                   for headers in (JSON, VIA_FASTAPI)]
        for answer in answers:
            assert answer.status_code == 200, answer.text
            assert [p["known"] for p in answer.json()["predictions"]] == [
                True, False, True, True]
        assert answers[0].json()["predictions"] == answers[1].json()["predictions"]
        page = (await client.get("/metrics")).text
        assert metric(page, "fmrec_unknown_movies_total") == 2
        for headers in (JSON, VIA_FASTAPI):
            items = (await client.post("/recommend", headers=headers, content=json.dumps(
                {"user": {"id": "1"}, "n": 3}))).json()["items"]
            assert [i["known"] for i in items] == [True] * 3
        assert metric((await client.get("/metrics")).text, "fmrec_unknown_movies_total") == 2
