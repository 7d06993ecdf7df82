"""Every input limit at its boundary: the limit itself is accepted, one past it is a 4xx
whose message names the field (422 `detail[].loc`) or the limit (413). Small limits are
configured so the boundaries are cheap to reach; the defaults are the same code."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from app.schemas import MAX_GENRES, MAX_ID_CHARS
from app.settings import Settings
from tests.support.api_client import service_settings, serving
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.anyio

MAX_MOVIES, MAX_N, MAX_HISTORY, MAX_EVENTS, MAX_BODY = 5, 7, 10, 4, 2048
USER = {"id": "1"}
MOVIES = [{"id": "1"}]


@pytest.fixture
def settings(small_bundle_path: Path, redis_server: RedisServer) -> Settings:
    return service_settings(bundle=small_bundle_path, redis_url=redis_server.url,
                            max_movies=MAX_MOVIES, max_n=MAX_N, max_history=MAX_HISTORY,
                            max_events=MAX_EVENTS, max_body_bytes=MAX_BODY)


def ids(n: int) -> list[str]:
    return [str(i) for i in range(1, n + 1)]


def predict(**user: Any) -> dict[str, Any]:
    return {"user": {**USER, **user}, "movies": MOVIES}


def recommend(**fields: Any) -> dict[str, Any]:
    return {"user": USER, "n": 3, **fields}  # the default n (10) is over MAX_N here


def movie(**fields: Any) -> dict[str, Any]:
    return {"user": USER, "movies": [{"id": "new", **fields}]}


EVENT_IDS = itertools.count()


def rating(n: int = 0, **fields: Any) -> dict[str, Any]:
    return {"event_id": f"lim-{next(EVENT_IDS)}", "user_id": "lim-user",
            "movie_id": str(n + 1), "rating": 3.0, "timestamp": 890_000_000, **fields}


def events(n: int, **fields: Any) -> dict[str, Any]:
    return {"events": [rating(i, **fields) for i in range(n)]}


# (route, body at the limit, body one past it, loc of the error, words of the message)
BOUNDARIES: list[tuple[str, dict[str, Any], dict[str, Any], list[Any], str]] = [
    ("/predict", {"user": USER, "movies": [{"id": i} for i in ids(MAX_MOVIES)]},
     {"user": USER, "movies": [{"id": i} for i in ids(MAX_MOVIES + 1)]},
     ["body", "movies"], f"at most {MAX_MOVIES} movies"),
    ("/recommend", recommend(candidates=ids(MAX_MOVIES)),
     recommend(candidates=ids(MAX_MOVIES + 1)), ["body", "candidates"],
     f"at most {MAX_MOVIES} candidates"),
    ("/recommend", recommend(n=MAX_N), recommend(n=MAX_N + 1), ["body", "n"],
     f"at most {MAX_N}"),
    ("/recommend", recommend(n=1), recommend(n=0), ["body", "n"], "greater than or equal"),
    ("/predict", predict(rated=ids(MAX_HISTORY)), predict(rated=ids(MAX_HISTORY + 1)),
     ["body", "user", "rated"], f"at most {MAX_HISTORY} rated"),
    ("/predict", predict(id="u" * MAX_ID_CHARS), predict(id="u" * (MAX_ID_CHARS + 1)),
     ["body", "user", "id"], f"at most {MAX_ID_CHARS}"),
    ("/predict", {"user": USER, "movies": [{"id": "m" * MAX_ID_CHARS}]},
     {"user": USER, "movies": [{"id": "m" * (MAX_ID_CHARS + 1)}]},
     ["body", "movies", 0, "id"], f"at most {MAX_ID_CHARS}"),
    ("/predict", predict(rated=["r" * MAX_ID_CHARS]), predict(rated=["r" * (MAX_ID_CHARS + 1)]),
     ["body", "user", "rated", 0, "id"], f"at most {MAX_ID_CHARS}"),
    ("/predict", {**predict(), "context": {"last_movie": "l" * MAX_ID_CHARS}},
     {**predict(), "context": {"last_movie": "l" * (MAX_ID_CHARS + 1)}},
     ["body", "context", "last_movie"], f"at most {MAX_ID_CHARS}"),
    ("/predict", predict(occupation="o" * 64), predict(occupation="o" * 65),
     ["body", "user", "occupation"], "at most 64"),
    ("/predict", predict(gender="g" * 64), predict(gender="g" * 65),
     ["body", "user", "gender"], "at most 64"),
    ("/predict", predict(zip="9" * 16), predict(zip="9" * 17), ["body", "user", "zip"],
     "at most 16"),
    ("/predict", predict(age=150), predict(age=151), ["body", "user", "age"], "150"),
    ("/predict", predict(age=0), predict(age=-1), ["body", "user", "age"], "0"),
    ("/predict", movie(year=9999), movie(year=10000), ["body", "movies", 0, "year"], "9999"),
    ("/predict", movie(year=0), movie(year=-1), ["body", "movies", 0, "year"], "0"),
    ("/predict", movie(genres=["Drama"] * MAX_GENRES), movie(genres=["Drama"] * (MAX_GENRES + 1)),
     ["body", "movies", 0, "genres"], f"at most {MAX_GENRES}"),
    ("/recommend", recommend(genres=["Drama"] * MAX_GENRES),
     recommend(genres=["Drama"] * (MAX_GENRES + 1)), ["body", "genres"], f"at most {MAX_GENRES}"),
    ("/admin/reload", {"bundle": "/no/such/" + "b" * 4087}, {"bundle": "/no/such/" + "b" * 4088},
     ["body", "bundle"], "at most 4096"),
    ("/ratings", events(MAX_EVENTS), events(MAX_EVENTS + 1), ["body", "events"],
     f"at most {MAX_EVENTS} events"),
    ("/ratings", events(1), {"events": []}, ["body", "events"], "at least 1"),
    ("/ratings", events(1, timestamp=0), events(1, timestamp=-1),
     ["body", "events", 0, "timestamp"], "greater than or equal to 0"),
    ("/ratings", events(1, timestamp=253_402_300_799), events(1, timestamp=253_402_300_800),
     ["body", "events", 0, "timestamp"], "less than or equal"),
    ("/ratings", events(1, event_id="e" * MAX_ID_CHARS),
     events(1, event_id="e" * (MAX_ID_CHARS + 1)), ["body", "events", 0, "event_id"],
     f"at most {MAX_ID_CHARS}"),
    ("/ratings", events(1, user_id="u" * MAX_ID_CHARS),
     events(1, user_id="u" * (MAX_ID_CHARS + 1)), ["body", "events", 0, "user_id"],
     f"at most {MAX_ID_CHARS}"),
    ("/ratings", events(1, movie_id="m" * MAX_ID_CHARS),
     events(1, movie_id="m" * (MAX_ID_CHARS + 1)), ["body", "events", 0, "movie_id"],
     f"at most {MAX_ID_CHARS}"),
]


@pytest.mark.parametrize(("route", "at_limit", "past_limit", "loc", "words"), BOUNDARIES,
                         ids=[f"{b[0]}:{'.'.join(map(str, b[3][1:]))}:{n}"
                              for n, b in enumerate(BOUNDARIES)])
async def test_limit_boundary(settings: Settings, route: str, at_limit: dict[str, Any],
                              past_limit: dict[str, Any], loc: list[Any], words: str) -> None:
    roomy = settings.model_copy(update={"max_body_bytes": 1 << 20})  # long-string cases
    async with serving(roomy) as (_, client):
        accepted = await client.post(route, json=at_limit)
        refused = await client.post(route, json=past_limit)
    if route == "/admin/reload":  # a valid request, refused by the loader (no such bundle)
        assert accepted.status_code == 422
        assert accepted.json()["detail"][0]["type"] == "bundle_error"  # one 422 shape
    else:
        assert accepted.status_code == 200, accepted.text
    assert refused.status_code == 422, refused.text
    errors = [e for e in refused.json()["detail"] if e["loc"] == loc]
    assert errors, refused.text
    assert words in errors[0]["msg"], errors[0]


async def test_rating_range_boundary(settings: Settings, small_bundle: Any,
                                    redis_server: RedisServer) -> None:
    """Ratings outside the model's rating range are refused, naming the event; the range's
    ends are accepted; a refused batch writes nothing."""
    low, high = small_bundle.rating_range
    async with serving(settings) as (_, client):
        for value in (low, high):
            accepted = await client.post("/ratings", json=events(1, rating=value))
            assert accepted.status_code == 200, accepted.text
        before = redis_server.client().dbsize()
        for value in (low - 0.01, high + 0.01, -1e308, 1e308):
            batch = events(3)
            batch["events"][2]["rating"] = value
            refused = await client.post("/ratings", json=batch)
            assert refused.status_code == 422, refused.text
            assert refused.json()["detail"][0]["loc"] == ["body", "events", 2, "rating"]
            assert "rating range" in refused.json()["detail"][0]["msg"]
        assert redis_server.client().dbsize() == before


NON_FINITE = [b"NaN", b"Infinity", b"-Infinity", b"1e400"]


@pytest.mark.parametrize("number", NON_FINITE)
async def test_non_finite_numbers_are_refused(settings: Settings, number: bytes) -> None:
    """JSON's non-standard NaN / Infinity literals and overflowing floats, in every numeric
    field: 422 naming the field, never a NaN carried into a score."""
    cases = [
        ("/predict", b'{"user": {"id": "1"}, "context": {"time": %s}, "movies": [{"id": "1"}]}',
         ["body", "context", "time"]),
        ("/predict", b'{"user": {"id": "1", "age": %s}, "movies": [{"id": "1"}]}',
         ["body", "user", "age"]),
        ("/predict", b'{"user": {"id": "1"}, "movies": [{"id": "x", "year": %s}]}',
         ["body", "movies", 0, "year"]),
        ("/recommend", b'{"user": {"id": "1"}, "n": %s}', ["body", "n"]),
        ("/ratings", b'{"events": [{"event_id": "e", "user_id": "u", "movie_id": "1", '
         b'"rating": %s, "timestamp": 1}]}', ["body", "events", 0, "rating"]),
        ("/ratings", b'{"events": [{"event_id": "e", "user_id": "u", "movie_id": "1", '
         b'"rating": 3, "timestamp": %s}]}', ["body", "events", 0, "timestamp"]),
    ]
    async with serving(settings) as (_, client):
        for route, template, loc in cases:
            response = await client.post(route, content=template % number,
                                         headers={"content-type": "application/json"})
            assert response.status_code == 422, (route, response.text)
            assert loc in [e["loc"] for e in response.json()["detail"]], response.text


STRING_FIELDS = [
    ("/predict", predict(id="\ud800"), ["body", "user", "id"]),
    ("/predict", predict(gender="\udfff"), ["body", "user", "gender"]),
    ("/predict", predict(zip="\ud800"), ["body", "user", "zip"]),
    ("/predict", predict(rated=["1", "\ud800"]), ["body", "user", "rated", 1, "id"]),
    ("/predict", movie(genres=["\ud800"]), ["body", "movies", 0, "genres", 0]),
    ("/predict", {**predict(), "context": {"last_movie": "\ud800"}},
     ["body", "context", "last_movie"]),
    ("/recommend", recommend(candidates=["\ud800"]), ["body", "candidates", 0]),
    ("/recommend", recommend(genres=["\ud800"]), ["body", "genres", 0]),
    ("/admin/reload", {"bundle": "\ud800"}, ["body", "bundle"]),
    ("/ratings", events(1, event_id="\ud800"), ["body", "events", 0, "event_id"]),
    ("/ratings", events(1, user_id="\udfff"), ["body", "events", 0, "user_id"]),
    ("/ratings", events(1, movie_id="\ud800"), ["body", "events", 0, "movie_id"]),
]


@pytest.mark.parametrize(("route", "body", "loc"), STRING_FIELDS)
async def test_invalid_unicode_is_refused(settings: Settings, route: str, body: dict[str, Any],
                                          loc: list[Any]) -> None:
    """A lone surrogate (legal JSON escape, not encodable text) is a 422 naming the field;
    the error body echoing it must itself be valid JSON."""
    content = json.dumps(body).encode()  # json.dumps writes "\ud800" as an escape
    async with serving(settings) as (_, client):
        response = await client.post(route, content=content,
                                     headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert loc in [e["loc"] for e in response.json()["detail"]], response.text


def _padded(size: int) -> bytes:
    body = json.dumps(predict()).encode()
    return body + b" " * (size - len(body))


async def test_body_limit_boundary(settings: Settings) -> None:
    headers = {"content-type": "application/json"}
    async with serving(settings) as (_, client):
        at = await client.post("/predict", content=_padded(MAX_BODY), headers=headers)
        assert at.status_code == 200, at.text
        over = await client.post("/predict", content=_padded(MAX_BODY + 1), headers=headers)
        assert over.status_code == 413
        assert over.json()["detail"] == f"request body over {MAX_BODY} bytes"

        async def chunks(data: bytes) -> AsyncIterator[bytes]:  # no Content-Length
            for start in range(0, len(data), 500):
                yield data[start:start + 500]

        streamed_at = await client.post("/predict", content=chunks(_padded(MAX_BODY)),
                                        headers=headers)
        assert streamed_at.status_code == 200, streamed_at.text
        streamed_over = await client.post("/predict", content=chunks(_padded(MAX_BODY + 1)),
                                          headers=headers)
        assert streamed_over.status_code == 413
        lying = await client.post("/admin/reload", content=_padded(MAX_BODY + 1),
                                  headers={**headers, "content-length": "10"})
        assert lying.status_code < 500


async def test_malformed_bodies_are_4xx(settings: Settings) -> None:
    """Bodies the JSON parser itself refuses: deep nesting, over-long integer literals,
    invalid UTF-8, the wrong content type."""
    bad = [b"[" * 50_000 + b"]" * 50_000, b'{"user": {"id": ' + b"9" * 1000 + b"}}",
           b'{"user": {"id": "\xff\xfe"}, "movies": [{"id": "1"}]}', b"", b"null", b"[]"]
    async with serving(settings.model_copy(update={"max_body_bytes": 1 << 20})) as (_, client):
        for content in bad:
            response = await client.post("/predict", content=content,
                                         headers={"content-type": "application/json"})
            assert 400 <= response.status_code < 500, (content[:40], response.text)
            assert response.json()["detail"], response.text
        text = await client.post("/predict", content=json.dumps(predict()).encode(),
                                 headers={"content-type": "text/plain"})
        assert 400 <= text.status_code < 500


BLANK_IDS = [
    ("/predict", lambda v: predict(id=v), ["body", "user", "id"]),
    ("/predict", lambda v: predict(rated=["1", v]), ["body", "user", "rated", 1, "id"]),
    ("/predict", lambda v: {**predict(), "context": {"last_movie": v}},
     ["body", "context", "last_movie"]),
    ("/predict", lambda v: {"user": USER, "movies": [{"id": "1"}, {"id": v}]},
     ["body", "movies", 1, "id"]),
    ("/recommend", lambda v: recommend(candidates=["1", v]), ["body", "candidates", 1]),
    ("/recommend", lambda v: {"user": {"id": v}, "n": 3}, ["body", "user", "id"]),
    ("/ratings", lambda v: events(1, event_id=v), ["body", "events", 0, "event_id"]),
    ("/ratings", lambda v: events(1, user_id=v), ["body", "events", 0, "user_id"]),
    ("/ratings", lambda v: events(1, movie_id=v), ["body", "events", 0, "movie_id"]),
]


@pytest.mark.parametrize(("route", "body", "loc"), BLANK_IDS,
                         ids=[".".join(map(str, b[2][1:])) for b in BLANK_IDS])
async def test_whitespace_only_ids_are_refused(settings: Settings, redis_server: RedisServer,
                                               route: str, body: Any, loc: list[Any]) -> None:
    """Ids are stripped; one that strips to nothing is a 422 naming the field, never ""
    (two different blank event ids would collide on one claim and one event be lost)."""
    async with serving(settings) as (_, client):
        before = redis_server.client().dbsize()
        for blank in ("   ", "\t", "\n \r"):
            response = await client.post(route, json=body(blank))
            assert response.status_code == 422, (blank, response.text)
            errors = [e for e in response.json()["detail"] if e["loc"] == loc]
            assert errors and "whitespace" in errors[0]["msg"], response.text
        assert redis_server.client().dbsize() == before  # nothing written


async def test_two_blank_event_ids_are_not_one_duplicate(settings: Settings) -> None:
    async with serving(settings) as (_, client):
        response = await client.post("/ratings", json={"events": [
            rating(event_id="   "), rating(1, event_id="\t")]})
    assert response.status_code == 422, response.text
