"""Property-based fuzzing of every endpoint of a real `fmrec serve` (uvicorn, real Redis):
zero 5xx.

* schemathesis derives requests from the OpenAPI schema the server publishes (its limits,
  its model's rating range and genres), valid ones and ones that break it (wrong types,
  missing fields, out-of-range numbers, odd strings), with the API key sent, reads
  protected; every schemathesis check runs on every operation: valid requests succeed,
  invalid ones are refused, statuses, content types, headers and bodies are the
  documented ones, keys are enforced where the schema says.
* hypothesis sends raw JSON of any shape to every POST endpoint, and random bytes.

* hypothesis also builds requests that are valid by construction (known and unknown
  users and movies, inline attributes, contexts, rating batches): every one must succeed
  (200), and a rating batch sent twice is all duplicates the second time.

Bounded for CI: FUZZ_EXAMPLES per endpoint and kind (default 60), about 30 s in all.
The tally (inputs per endpoint, status codes) is printed at the end of the module
(`pytest -s` shows it).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS, load_all_checks

from app.main import create_app
from app.settings import Settings
from model.bundle import Bundle
from model.data import Dataset
from model.features import FeatureSpec
from tests.support.api_client import load_users, service_settings
from tests.support.live_server import LiveServer
from tests.support.redis_server import RedisServer

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))
KEY = "fuzz-key-0123456789abcdef"
TALLY: collections.Counter[tuple[str, int]] = collections.Counter()
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, small_bundle_path: Path,
         small_data: tuple[Dataset, FeatureSpec]) -> Iterator[LiveServer]:
    """One server for the whole module, with the data's users in its Redis; limits kept
    small so the fuzzer reaches them."""
    tmp = tmp_path_factory.mktemp("fuzz")
    redis_server = RedisServer(tmp).start()
    asyncio.run(load_users(service_settings(redis_url=redis_server.url), small_data[0]))
    server = LiveServer({
        "FMREC_BUNDLE": str(small_bundle_path), "FMREC_REDIS_URL": redis_server.url,
        "FMREC_API_KEYS": KEY, "FMREC_PROTECT_READS": "true", "FMREC_MAX_MOVIES": "50",
        "FMREC_MAX_N": "20",
        "FMREC_MAX_HISTORY": "50", "FMREC_MAX_EVENTS": "20", "FMREC_MAX_BODY_BYTES": "65536",
        "FMREC_REDIS_TIMEOUT_S": "5", "FMREC_LOG_LEVEL": "warning",
    }, tmp / "serve.log").start()
    try:
        yield server
    finally:
        server.stop()
        redis_server.kill()
        total = sum(TALLY.values())
        errors = sum(n for (_, status), n in TALLY.items() if status >= 500)
        print(f"\nfuzz: {total} requests, {errors} 5xx")
        for (route, status), n in sorted(TALLY.items()):
            print(f"  {route:28s} {status}: {n}")
    assert "Traceback" not in server.log(), server.log()[-3000:]


# Every operation of the schema; the schema itself is the one the live server publishes at
# /openapi.json (its limits and its model's rating range and genres), fetched at run time.
# Negative cases only where there is something to break (a body or a key).
PATHS = create_app(Settings(api_keys=KEY, protect_reads=True)).openapi()["paths"]
CASES = [(f"{method.upper()} {path}", mode) for path, methods in PATHS.items()
         for method, operation in methods.items() for mode in (
             GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
         if mode == GenerationMode.POSITIVE or "requestBody" in operation
         or "security" in operation]
load_all_checks()
ALL_CHECKS = CHECKS.get_all()  # every built-in check, on every operation


@pytest.fixture(scope="module")
def published(live: LiveServer) -> Any:
    return schemathesis.openapi.from_url(f"{live.url}/openapi.json")


@pytest.mark.parametrize(("label", "mode"), CASES, ids=[f"{label}-{mode.value}"
                                                          for label, mode in CASES])
def test_schema_driven_requests_pass_every_check(live: LiveServer, published: Any, label: str,
                                                 mode: GenerationMode) -> None:
    """Valid requests (by the schema) succeed, invalid ones are refused, every answer's
    status, content type, headers and body are the documented ones, keys are enforced
    where the schema says: schemathesis' checks, all of them, and never a 5xx."""
    operation = published.find_operation_by_label(label)
    assert operation is not None, label
    headers = {"X-API-Key": KEY}

    @FUZZ
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        response = case.call(base_url=live.url, headers=headers, timeout=60)
        TALLY[(f"{label} ({mode.value})", response.status_code)] += 1
        assert response.status_code < 500, (case.as_curl_command(), response.text[:500])
        if not _refused_for_data(case, response):
            case.validate_response(response, checks=ALL_CHECKS, headers=headers,
                                   transport_kwargs={"base_url": live.url, "headers": headers,
                                                     "timeout": 60})

    check()


def _refused_for_data(case: Any, response: Any) -> bool:
    """The refusals of schema-valid requests that the schema announces (a 422 naming the
    field): /recommend candidates outside the model's catalog (a catalog of any size is
    not put in a schema), and /admin/reload of a path that holds no good bundle."""
    if response.status_code != 422:
        return False
    errors = response.json()["detail"]
    if case.path == "/admin/reload":
        return [e["type"] for e in errors] == ["bundle_error"]
    return case.path == "/recommend" and all(
        e["loc"][:2] == ["body", "candidates"] and "not in the catalog" in e["msg"]
        for e in errors)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=80),
    lambda children: st.lists(children, max_size=6)
    | st.dictionaries(st.sampled_from(["user", "movies", "id", "events", "n", "context",
                                      "rated", "genres", "candidates", "bundle", "time",
                                      "rating", "event_id", "user_id", "movie_id"])
                      | st.text(max_size=10), children, max_size=6),
    max_leaves=30)
POSTS = ["/predict", "/recommend", "/ratings", "/admin/reload"]


@pytest.fixture(scope="module")
def client(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, headers={"X-API-Key": KEY}, timeout=60) as http:
        yield http


def _post(client: httpx.Client, route: str, content: bytes) -> None:
    response = client.post(route, content=content, headers={"content-type": "application/json"})
    TALLY[(f"POST {route} (raw)", response.status_code)] += 1
    assert response.status_code < 500, (route, content[:300], response.text[:300])


@pytest.mark.parametrize("route", POSTS)
@FUZZ
@given(body=JSON)
def test_any_json_body_never_gets_a_5xx(client: httpx.Client, route: str, body: Any) -> None:
    _post(client, route, json.dumps(body).encode())


@pytest.mark.parametrize("route", POSTS)
@settings(FUZZ, max_examples=max(1, EXAMPLES // 2))
@given(body=st.binary(max_size=300))
def test_any_bytes_never_get_a_5xx(client: httpx.Client, route: str, body: bytes) -> None:
    _post(client, route, body)


# --- valid by construction: must be 200 ---------------------------------------------------

# ids as sent back: the service strips surrounding whitespace, so none is generated
IDS = st.integers(1, 260).map(str) | st.text(min_size=1, max_size=12).filter(
    lambda text: text == text.strip() != "")
GENRES = st.lists(st.sampled_from(["Action", "Comedy", "Drama", "Romance", "Thriller"]),
                  max_size=3)
USERS = st.fixed_dictionaries({"id": IDS}, optional={
    "age": st.integers(0, 150), "gender": st.sampled_from(["M", "F", "x"]),
    "occupation": st.sampled_from(["writer", "engineer", "none"]),
    "zip": st.from_regex(r"[0-9]{5}", fullmatch=True), "rated": st.lists(IDS, max_size=20)})
CONTEXTS = st.fixed_dictionaries({}, optional={
    "time": st.floats(0, 2e9), "last_movie": IDS})
MOVIES = st.fixed_dictionaries({"id": IDS}, optional={
    "genres": GENRES, "year": st.integers(1900, 2030)})


@FUZZ
@given(user=USERS, context=CONTEXTS, movies=st.lists(MOVIES, min_size=1, max_size=50))
def test_valid_predictions_always_succeed(client: httpx.Client, user: dict[str, Any],
                                          context: dict[str, Any],
                                          movies: list[dict[str, Any]]) -> None:
    response = client.post("/predict", json={"user": user, "context": context,
                                             "movies": movies})
    TALLY[("POST /predict (valid)", response.status_code)] += 1
    assert response.status_code == 200, response.text
    assert [p["movie_id"] for p in response.json()["predictions"]] == [
        m["id"] for m in movies]


@FUZZ
@given(user=USERS, context=CONTEXTS, n=st.integers(1, 20), genres=GENRES,
       exclude=st.booleans())
def test_valid_recommendations_always_succeed(client: httpx.Client, user: dict[str, Any],
                                              context: dict[str, Any], n: int,
                                              genres: list[str], exclude: bool) -> None:
    response = client.post("/recommend", json={"user": user, "context": context, "n": n,
                                               "genres": genres, "exclude_rated": exclude})
    TALLY[("POST /recommend (valid)", response.status_code)] += 1
    assert response.status_code == 200, response.text
    scores = [item["score"] for item in response.json()["items"]]
    assert len(scores) <= n and scores == sorted(scores, reverse=True)


BATCHES = itertools.count()


@FUZZ
@given(data=st.data())
def test_valid_rating_batches_always_succeed_once(client: httpx.Client, small_bundle: Bundle,
                                                  data: st.DataObject) -> None:
    low, high = small_bundle.rating_range
    batch = next(BATCHES)
    events = data.draw(st.lists(st.fixed_dictionaries({
        "user_id": IDS, "movie_id": IDS, "rating": st.floats(low, high),
        "timestamp": st.integers(0, 253_402_300_799)}), min_size=1, max_size=20))
    for n, event in enumerate(events):
        event["event_id"] = f"fuzz-{batch}-{n}"
    first = client.post("/ratings", json={"events": events})
    again = client.post("/ratings", json={"events": events})
    for response in (first, again):
        TALLY[("POST /ratings (valid)", response.status_code)] += 1
        assert response.status_code == 200, response.text
    assert first.json()["accepted"] == len(events) >= first.json()["stale"]
    assert again.json()["duplicates"] == len(events) and again.json()["accepted"] == 0
