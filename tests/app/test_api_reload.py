"""Hot reload: the new bundle is loaded and warmed beside the old one and swapped in one
step, with no failed request; a broken bundle is refused loudly and the old one serves."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import shutil
import threading
import weakref
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from app.service import Service
from app.settings import Settings
from model.bundle import Bundle, content_hash
from model.data import Dataset
from model.features import FeatureSpec
from model.pipeline import fit_and_save
from model.train import TrainConfig
from tests.support.api_client import CONTEXT, metric, service_settings, serving
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.anyio

MOVIES = [{"id": str(i)} for i in range(1, 21)]
USER = {"id": "u-reload", "age": 40, "rated": ["1", "5", "9"]}


@pytest.fixture(scope="module")
def other_bundle_path(tmp_path_factory: pytest.TempPathFactory,
                      small_data: tuple[Dataset, FeatureSpec]) -> Path:
    """A second model of the same data (another seed): another model id, other numbers."""
    data, spec = small_data
    out = tmp_path_factory.mktemp("bundle") / "other"
    fit_and_save(data, spec, TrainConfig(k=4, epochs=3, batch_size=512, learning_rate=0.02,
                                         seed=11), out, progress=False)
    return out


@pytest.fixture
def settings(small_bundle_path: Path, redis_server: RedisServer) -> Settings:
    return service_settings(bundle=small_bundle_path, redis_url=redis_server.url)


async def _predict(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.post("/predict", json={
        "user": USER, "context": CONTEXT, "movies": MOVIES})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_reload_swaps_model_without_failed_requests(
        settings: Settings, small_bundle: Bundle, other_bundle_path: Path) -> None:
    other = Bundle(other_bundle_path)
    assert other.model_id != small_bundle.model_id
    expected = {b.model_id: b.predict(USER, MOVIES, CONTEXT) for b in (small_bundle, other)}
    async with serving(settings) as (_, client):
        reload = asyncio.ensure_future(client.post(
            "/admin/reload", json={"bundle": str(other_bundle_path)}))
        answers: list[dict[str, Any]] = []

        async def hammer() -> None:
            while not reload.done():
                answers.append(await _predict(client))

        await asyncio.gather(*(hammer() for _ in range(4)))
        response = await reload
        assert response.status_code == 200, response.text
        assert response.json()["model_id"] == other.model_id
        assert response.json()["previous_model_id"] == small_bundle.model_id
        answers.extend([await _predict(client) for _ in range(3)])
        info = (await client.get("/model")).json()
        page = (await client.get("/metrics")).text
    assert answers and answers[-1]["model_id"] == other.model_id
    for body in answers:  # every answer is wholly one model's
        np.testing.assert_allclose([p["rating"] for p in body["predictions"]],
                                   expected[body["model_id"]], rtol=1e-5, atol=1e-5)
    assert info["model_id"] == other.model_id and info["last_reload_error"] is None
    assert info["metrics"]["test_rmse"] == other.metrics["test_rmse"]
    assert metric(page, f'fmrec_model_loaded{{model_id="{other.model_id}"}}') == 1
    assert f'model_id="{small_bundle.model_id}"' not in page
    assert metric(page, 'fmrec_reloads_total{outcome="ok"}') == 1


async def test_old_model_is_released_after_the_swap(
        settings: Settings, other_bundle_path: Path) -> None:
    async with serving(settings) as (app, client):
        service: Service = app.state.service
        assert service.scorer is not None
        old = weakref.ref(service.scorer.bundle)
        await _predict(client)
        assert (await client.post("/admin/reload", json={
            "bundle": str(other_bundle_path)})).status_code == 200
        await _predict(client)
        gc.collect()
        assert old() is None, "the replaced bundle is still referenced"


def _corrupt_copies(source: Path, root: Path) -> dict[str, Path]:
    """Bundles broken in different ways: a missing file, an edited file, a spec this code
    cannot reproduce (golden hashes changed, model id recomputed so only the spec check
    can catch it), a reversed rating range (model id recomputed), and no bundle at all."""
    out = {}
    missing = root / "missing"
    shutil.copytree(source, missing)
    (missing / "catalog.npz").unlink()
    out["missing"] = missing
    edited = root / "edited"
    shutil.copytree(source, edited)
    spec = json.loads((edited / "spec.json").read_text())
    spec["hash_bits"] += 1
    (edited / "spec.json").write_text(json.dumps(spec))
    out["edited"] = edited
    golden = root / "golden"
    shutil.copytree(source, golden)
    spec = json.loads((golden / "spec.json").read_text())
    first = next(iter(spec["golden"]))
    spec["golden"][first] += 1
    (golden / "spec.json").write_text(json.dumps(spec))
    (golden / "model_id").write_text(content_hash(golden) + "\n")
    out["golden"] = golden
    reversed_range = root / "range"  # loads, then every answer would be a 500
    shutil.copytree(source, reversed_range)
    meta = json.loads((reversed_range / "metrics.json").read_text())
    (reversed_range / "metrics.json").write_text(json.dumps({**meta, "rating_range": [5, 1]}))
    (reversed_range / "model_id").write_text(content_hash(reversed_range) + "\n")
    out["range"] = reversed_range
    out["absent"] = root / "absent"
    return out


async def test_broken_bundles_are_refused_and_the_old_one_serves(
        settings: Settings, small_bundle: Bundle, small_bundle_path: Path,
        tmp_path: Path) -> None:
    messages = {"missing": "missing catalog.npz", "edited": "does not match its model_id",
                "golden": "feature spec mismatch", "absent": "no model bundle",
                "range": "rating_range"}
    broken = _corrupt_copies(small_bundle_path, tmp_path)
    async with serving(settings) as (_, client):
        before = await _predict(client)
        for name, path in broken.items():
            response = await client.post("/admin/reload", json={"bundle": str(path)})
            assert response.status_code == 422, response.text
            assert messages[name] in response.json()["detail"][0]["msg"]
            assert response.json()["detail"][0]["loc"] == ["body", "bundle"]
            assert response.json()["model_id"] == small_bundle.model_id
            after = await _predict(client)
            assert after == before
            info = (await client.get("/model")).json()
            assert info["model_id"] == small_bundle.model_id
            assert info["last_reload_error"]["bundle"] == str(path)
            assert messages[name] in info["last_reload_error"]["error"]
        page = (await client.get("/metrics")).text
        assert metric(page, 'fmrec_reloads_total{outcome="failed"}') == len(broken)
        assert metric(page, "fmrec_last_reload_failed") == 1
        good = await client.post("/admin/reload", json={})  # the configured bundle again
        assert good.status_code == 200
        assert (await client.get("/model")).json()["last_reload_error"] is None
        assert metric((await client.get("/metrics")).text, "fmrec_last_reload_failed") == 0


async def test_reload_without_body_rereads_the_configured_path(
        redis_server: RedisServer, small_bundle_path: Path, other_bundle_path: Path,
        tmp_path: Path) -> None:
    current = tmp_path / "current"
    shutil.copytree(small_bundle_path, current)
    settings = service_settings(bundle=current, redis_url=redis_server.url)
    async with serving(settings) as (_, client):
        first = (await client.get("/model")).json()["model_id"]
        shutil.rmtree(current)
        shutil.copytree(other_bundle_path, current)  # what a retrain into the path does
        response = await client.post("/admin/reload")
        assert response.status_code == 200, response.text
        assert response.json()["model_id"] != first
        assert (await _predict(client))["model_id"] == response.json()["model_id"]


async def test_concurrent_reload_is_refused(settings: Settings) -> None:
    async with serving(settings) as (app, client):
        async with app.state.service._reloading:  # a reload in progress
            response = await client.post("/admin/reload")
        assert response.status_code == 409
        assert "in progress" in response.json()["detail"]


def _fifo_bundle(source: Path, root: Path) -> Path:
    """catalog.npz replaced by a FIFO (model id recomputed): opening it blocks forever."""
    bundle = root / "fifo"
    shutil.copytree(source, bundle)
    (bundle / "catalog.npz").unlink()
    os.mkfifo(bundle / "catalog.npz")
    (bundle / "model_id").write_text(content_hash(bundle) + "\n")
    return bundle


def _unblock(fifo: Path) -> None:
    """Open the FIFO for writing and close it: a reader stuck in open() sees end of file."""
    with contextlib.suppress(OSError):  # nobody reading: nothing to unblock
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


async def test_bundle_with_a_fifo_is_refused_and_later_reloads_work(
        settings: Settings, small_bundle: Bundle, small_bundle_path: Path,
        tmp_path: Path) -> None:
    bundle = _fifo_bundle(small_bundle_path, tmp_path)
    try:
        async with serving(settings) as (_, client):
            response = await asyncio.wait_for(client.post(
                "/admin/reload", json={"bundle": str(bundle)}), 120)
            assert response.status_code == 422, response.text
            assert "catalog.npz is not a regular file" in response.json()["detail"][0]["msg"]
            assert (await client.get("/model")).json()["model_id"] == small_bundle.model_id
            assert (await client.post("/admin/reload", json={})).status_code == 200
    finally:
        _unblock(bundle / "catalog.npz")


async def test_a_load_that_never_ends_times_out_and_frees_the_reload(
        settings: Settings, small_bundle: Bundle, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read that never returns (a hung network file system: not reproducible here, so
    the load is made to block on an event) is given up after FMREC_RELOAD_TIMEOUT_S and
    reported like any failed reload; the next reload is not refused as busy."""
    async with serving(settings) as (app, client):
        service: Service = app.state.service
        generous = service.settings
        service.settings = generous.model_copy(update={"reload_timeout_s": 0.5})
        release = threading.Event()
        real_load = Service.load

        def stuck(self: Service, path: Path) -> Any:
            release.wait()
            raise RuntimeError("released at the end of the test")

        monkeypatch.setattr(Service, "load", stuck)
        try:
            response = await asyncio.wait_for(client.post("/admin/reload", json={}), 120)
            assert response.status_code == 422, response.text
            assert "FMREC_RELOAD_TIMEOUT_S" in response.json()["detail"][0]["msg"]
            info = (await client.get("/model")).json()
            assert info["model_id"] == small_bundle.model_id
            assert "FMREC_RELOAD_TIMEOUT_S" in info["last_reload_error"]["error"]
            assert metric((await client.get("/metrics")).text,
                          'fmrec_reloads_total{outcome="failed"}') == 1
            monkeypatch.setattr(Service, "load", real_load)
            service.settings = generous  # a real load may take longer on a busy machine
            again = await asyncio.wait_for(client.post("/admin/reload", json={}), 120)
            assert again.status_code == 200, again.text
        finally:
            release.set()  # the abandoned thread ends; what it raises is dropped
            for thread in threading.enumerate():
                if thread.name.startswith("fmrec-load"):
                    thread.join(30)


async def test_each_reload_frees_the_replaced_model_by_itself(settings: Settings) -> None:
    """Reloads of the same bundle: after each, the replaced Bundle, its SavedModel and its
    engine are gone without anyone else collecting (a SavedModel sits in reference
    cycles: left to the collector's schedule, several could pile up on a quiet server)."""
    async with serving(settings) as (app, client):
        service: Service = app.state.service
        gc.disable()  # only the service's own collection may free them
        try:
            for _ in range(3):
                assert service.scorer is not None
                bundle = service.scorer.bundle
                old = [weakref.ref(x) for x in (bundle, bundle.model, bundle.engine)]
                del bundle
                response = await client.post("/admin/reload", json={})
                assert response.status_code == 200, response.text
                assert [ref() is None for ref in old] == [True, True, True]
        finally:
            gc.enable()
