"""Bad input gets a 4xx that names the field, never a 500; a missing bundle stops startup."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from app.main import create_app
from app.settings import Settings
from tests.support.api_client import service_settings, serving
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.anyio

MOVIES = [{"id": "1"}]


@pytest.fixture
def settings(small_bundle_path: Path, redis_server: RedisServer) -> Settings:
    return service_settings(bundle=small_bundle_path, redis_url=redis_server.url, max_n=20,
                    max_movies=5, max_history=10, max_body_bytes=4096)


def _locs(body: dict[str, Any]) -> list[list[Any]]:
    return [e["loc"] for e in body["detail"]]


BAD_REQUESTS = [
    ("/predict", {"user": {"id": "1"}, "movies": []}, ["body", "movies"]),
    ("/predict", {"user": {"id": "1"}, "movies": [{"id": "1"}] * 6}, ["body", "movies"]),
    ("/predict", {"user": {"id": "1"}}, ["body", "movies"]),
    ("/predict", {"user": {"id": "1"}, "movies": "1"}, ["body", "movies"]),
    ("/predict", {"user": {"age": "old"}, "movies": MOVIES}, ["body", "user", "age"]),
    ("/predict", {"user": {"id": True}, "movies": MOVIES}, ["body", "user", "id"]),
    ("/predict", {"user": {"id": "x" * 65}, "movies": MOVIES}, ["body", "user", "id"]),
    ("/predict", {"user": {"id": "1", "occupaton": "x"}, "movies": MOVIES},
     ["body", "user", "occupaton"]),
    ("/predict", {"user": {}, "movies": MOVIES}, ["body", "user"]),
    ("/predict", {"user": {"id": "1", "rated": ["1"] * 11}, "movies": MOVIES},
     ["body", "user", "rated"]),
    ("/predict", {"user": {"id": "1", "rated": "1,2"}, "movies": MOVIES},
     ["body", "user", "rated"]),
    ("/predict", {"user": {"id": "1"}, "movies": [{"id": "1", "year": 1.5}]},
     ["body", "movies", 0, "year"]),
    ("/predict", {"user": {"id": "1"}, "movies": [{"genres": ["Drama"]}]},
     ["body", "movies", 0, "id"]),
    ("/predict", {"user": {"id": "1"}, "context": {"time": "noon"}, "movies": MOVIES},
     ["body", "context", "time"]),
    ("/recommend", {"user": {"id": "1"}, "n": 0}, ["body", "n"]),
    ("/recommend", {"user": {"id": "1"}, "n": 21}, ["body", "n"]),
    ("/recommend", {"user": {"id": "1"}, "n": "ten"}, ["body", "n"]),
    ("/recommend", {"user": {"id": "1"}, "candidates": [str(i) for i in range(1, 7)]},
     ["body", "candidates"]),
    ("/recommend", {"user": {"id": "1"}, "candidates": ["1", "no-such-movie"]},
     ["body", "candidates", 1]),
    ("/recommend", {"user": {"id": "1"}, "genres": ["Comedy", "Nope"]},
     ["body", "genres", 1]),
    ("/recommend", {"user": {"id": "1"}, "exclude_rated": "maybe"}, ["body", "exclude_rated"]),
]


@pytest.mark.parametrize(("route", "body", "loc"), BAD_REQUESTS)
async def test_bad_request_names_the_field(settings: Settings, route: str, body: dict[str, Any],
                                           loc: list[Any]) -> None:
    async with serving(settings) as (_, client):
        response = await client.post(route, json=body)
    assert response.status_code == 422, response.text
    assert loc in _locs(response.json()), response.text


async def test_malformed_json_non_finite_numbers_and_huge_bodies(settings: Settings) -> None:
    headers = {"content-type": "application/json"}
    async with serving(settings) as (_, client):
        broken = await client.post("/predict", content=b'{"user": {"id": "1"}, "movies": [',
                                   headers=headers)
        assert broken.status_code == 422
        assert broken.json()["detail"][0]["type"] == "json_invalid"
        nan = await client.post("/predict", headers=headers, content=(
            b'{"user": {"id": "1"}, "context": {"time": NaN}, "movies": [{"id": "1"}]}'))
        assert nan.status_code == 422
        assert ["body", "context", "time"] in _locs(nan.json())
        huge = await client.post("/predict", headers=headers, content=b" " * 5000)
        assert huge.status_code == 413
        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
            for _ in range(10):
                yield b" " * 1000

        streamed = await client.post("/predict", headers=headers, content=chunks())
        assert streamed.status_code == 413
        assert (await client.get("/nowhere")).status_code == 404
        assert (await client.get("/predict")).status_code == 405


async def test_missing_bundle_refuses_to_start(tmp_path: Path, redis_server: RedisServer) -> None:
    app = create_app(service_settings(bundle=tmp_path / "nope", redis_url=redis_server.url))
    with pytest.raises(RuntimeError, match=r"fmrec train.*fmrec demo"):
        async with app.router.lifespan_context(app):
            pass

