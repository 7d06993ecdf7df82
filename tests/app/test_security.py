"""Access control: who may call what (app/security.py), and secrets kept out of logs.

Write/admin endpoints need a key (401 none sent, 403 wrong), reads only with
FMREC_PROTECT_READS; with no keys configured, writes are refused unless explicitly opened.
"""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from app import security
from app.security import NO_KEYS, demo_opens_writes, key_matches
from app.settings import Settings
from tests.support.api_client import serving
from tests.support.live_server import LiveServer
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.anyio

KEY1 = "k1-" + secrets.token_hex(16)
KEY2 = "k2-" + secrets.token_hex(16)
WRONG = "wrong-" + secrets.token_hex(16)
PREDICT = {"user": {"id": "1"}, "movies": [{"id": "1"}]}
RECOMMEND = {"user": {"id": "1"}, "n": 3}


@pytest.fixture
def make_settings(small_bundle_path: Path, redis_server: RedisServer) -> Any:
    """Settings with the real access defaults (tests/support/api_client opens writes; not here)."""
    def make(**values: Any) -> Settings:
        return Settings(bundle=small_bundle_path, redis_url=redis_server.url,
                        redis_timeout_s=5.0, **values)
    return make


async def _reload(client: httpx.AsyncClient, key: str | bytes | None = None) -> httpx.Response:
    headers: dict[str, Any] = {} if key is None else {"X-API-Key": key}
    return await client.post("/admin/reload", headers=headers)


def _events(tag: str) -> dict[str, Any]:
    return {"events": [{"event_id": f"sec-{tag}", "user_id": "sec-user", "movie_id": "1",
                        "rating": 4.0, "timestamp": 890_000_000}]}


async def _rate(client: httpx.AsyncClient, tag: str, key: str | None = None
                ) -> httpx.Response:
    headers = {} if key is None else {"X-API-Key": key}
    return await client.post("/ratings", json=_events(tag), headers=headers)


async def test_no_keys_configured_refuses_writes_by_default(
        make_settings: Any, redis_server: RedisServer) -> None:
    async with serving(make_settings()) as (_, client):
        for key in (None, KEY1):
            for refused in (await _reload(client, key), await _rate(client, "a", key)):
                assert refused.status_code == 403, refused.text
                assert refused.json()["detail"] == NO_KEYS
        assert (await client.post("/predict", json=PREDICT)).status_code == 200  # reads open
    assert redis_server.client().keys("fmrec:*:event:*") == []  # nothing written


async def test_unauthenticated_writes_only_when_allowed_and_no_keys(make_settings: Any) -> None:
    async with serving(make_settings(allow_unauthenticated_writes=True)) as (_, client):
        assert (await _reload(client)).status_code == 200
        assert (await _rate(client, "open")).json()["accepted"] == 1
    keyed = make_settings(allow_unauthenticated_writes=True, api_keys=KEY1)
    async with serving(keyed) as (_, client):  # keys set: the flag opens nothing
        assert (await _reload(client)).status_code == 401
        assert (await _rate(client, "keyed")).status_code == 401
        assert (await _reload(client, KEY1)).status_code == 200
        assert (await _rate(client, "keyed", KEY1)).json()["accepted"] == 1


async def test_write_endpoints_need_a_configured_key(make_settings: Any,
                                                     redis_server: RedisServer) -> None:
    settings = make_settings(api_keys=f" {KEY1} , {KEY2} ,")  # blanks around keys are dropped
    async with serving(settings) as (_, client):
        missing = await _reload(client)
        assert missing.status_code == 401
        assert "missing X-API-Key" in missing.json()["detail"]
        assert missing.headers["www-authenticate"] == "X-API-Key"
        assert (await _reload(client, "")).status_code == 401
        for wrong in (WRONG, KEY1[:-1], KEY1 + "x", KEY1.upper(), f"{KEY1},{KEY2}",
                      "é".encode("latin-1"), "ключ".encode()):
            response = await _reload(client, wrong)
            assert response.status_code == 403, (wrong, response.text)
            assert response.json()["detail"] == "wrong API key in X-API-Key"
        for key in (KEY1, KEY2):
            assert (await _reload(client, key)).status_code == 200
        assert (await _rate(client, "none")).status_code == 401
        assert (await _rate(client, "wrong", WRONG)).status_code == 403
        assert (await _rate(client, "right", KEY2)).json()["accepted"] == 1
        stored = redis_server.client().keys("fmrec:*:event:*")
        assert stored == [b"fmrec:{u:sec-user}:event:sec-right"]  # refused batches: nothing
        for route, body in (("/predict", PREDICT), ("/recommend", RECOMMEND)):
            assert (await client.post(route, json=body)).status_code == 200
        assert (await client.get("/model")).status_code == 200


async def test_protected_reads(make_settings: Any) -> None:
    async with serving(make_settings(api_keys=KEY1, protect_reads=True)) as (_, client):
        calls = [("POST", "/predict", PREDICT), ("POST", "/recommend", RECOMMEND),
                 ("GET", "/model", None), ("GET", "/metrics", None)]
        for method, route, body in calls:
            for key, status in ((None, 401), (WRONG, 403), (KEY1, 200)):
                headers = {} if key is None else {"X-API-Key": key}
                response = await client.request(method, route, json=body, headers=headers)
                assert response.status_code == status, (route, key, response.text)
        for route in ("/healthz", "/readyz"):  # probes stay open for orchestrators
            assert (await client.get(route)).status_code == 200
    async with serving(make_settings(protect_reads=True)) as (_, client):
        refused = await client.post("/predict", json=PREDICT, headers={"X-API-Key": KEY1})
        assert refused.status_code == 403 and refused.json()["detail"] == NO_KEYS


def test_every_configured_key_is_compared(monkeypatch: pytest.MonkeyPatch) -> None:
    """No early exit: the time taken must not say which key (or whether an early one)
    matched."""
    calls: list[tuple[bytes, bytes]] = []
    compare = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(security.hmac, "compare_digest", spy)
    keys = frozenset({KEY1, KEY2, "k3-" + secrets.token_hex(16)})
    for given, expected in ((KEY1, True), (KEY2, True), (WRONG, False)):
        calls.clear()
        assert key_matches(given, keys) is expected
        assert len(calls) == len(keys)
        assert {b for _, b in calls} == {k.encode() for k in keys}
    assert key_matches("ключ".encode().decode("latin-1"), frozenset({"ключ"}))  # UTF-8 keys


def test_settings_never_show_secrets() -> None:
    settings = Settings(api_keys=SecretStr(f"{KEY1},{KEY2}"),
                        redis_url="redis://:hunter2pw@db:6379/0")
    assert settings.keys == {KEY1, KEY2}
    for text in (repr(settings), str(settings), settings.store_description()):
        assert KEY1 not in text and KEY2 not in text and "hunter2pw" not in text, text
    dumped = settings.model_dump_json()
    assert KEY1 not in dumped and KEY2 not in dumped


async def test_openapi_documents_the_key(make_settings: Any) -> None:
    async with serving(make_settings()) as (_, client):
        schema = (await client.get("/openapi.json")).json()
    scheme = schema["components"]["securitySchemes"]["ApiKey"]
    assert scheme["type"] == "apiKey" and scheme["in"] == "header"
    assert scheme["name"] == "X-API-Key"
    for route in ("/admin/reload", "/ratings"):
        assert {"ApiKey": []} in schema["paths"][route]["post"]["security"]
    assert "security" not in schema["paths"]["/healthz"]["get"]


def test_keys_never_logged(small_bundle_path: Path, redis_server: RedisServer,
                           tmp_path: Path) -> None:
    """A real `fmrec serve` at debug level (uvicorn's access log included) is sent wrong,
    missing and right keys: the refusals are logged, the keys never."""
    server = LiveServer({"FMREC_BUNDLE": str(small_bundle_path),
                         "FMREC_REDIS_URL": redis_server.url, "FMREC_API_KEYS": KEY1,
                         "FMREC_PROTECT_READS": "true", "FMREC_LOG_LEVEL": "debug"},
                        tmp_path / "serve.log").start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            statuses = [client.post("/admin/reload", headers=h).status_code
                        for h in ({"X-API-Key": WRONG}, {}, {"X-API-Key": KEY1})]
            statuses.append(client.post("/predict", json=PREDICT,
                                        headers={"X-API-Key": WRONG}).status_code)
            statuses.append(client.post("/predict", json=PREDICT,
                                        headers={"X-API-Key": KEY1}).status_code)
    finally:
        server.stop()
    assert statuses == [403, 401, 200, 403, 200]
    log = server.log()
    assert "refused POST /admin/reload from 127.0.0.1: wrong API key" in log
    assert "refused POST /admin/reload from 127.0.0.1: missing X-API-Key" in log
    assert "reloaded: serving" in log and '"POST /predict HTTP/1.1" 200' in log
    assert KEY1 not in log and WRONG not in log


@pytest.mark.parametrize(("values", "opens"), [
    ({"host": "127.0.0.1"}, True), ({"host": "::1"}, True), ({"host": "localhost"}, True),
    ({"host": "0.0.0.0"}, False), ({"host": "10.1.2.3"}, False),
    ({"host": "127.0.0.1", "api_keys": KEY1}, False),
    ({"host": "127.0.0.1", "allow_unauthenticated_writes": False}, False),  # said so
])
def test_demo_opens_writes_only_on_loopback_without_keys(values: dict[str, Any],
                                                         opens: bool) -> None:
    assert demo_opens_writes(Settings(**values)) is opens
