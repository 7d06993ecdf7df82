"""`fmrec serve`, `fmrec load-users`, `fmrec demo`: one-line errors, and the real thing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.cli import main
from model.blocks import user_histories, user_payload, user_stars
from model.bundle import Bundle
from model.data.synthetic import synthetic
from tests.support.api_client import CONTEXT, inline_user, service_settings, serving
from tests.support.redis_server import RedisServer, free_port

TINY = ["--synthetic", "3000", "--hash-bits", "12"]


def _one_line_error(capsys: pytest.CaptureFixture[str], code: int, *needles: str) -> None:
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("fmrec: error: "), err
    for needle in needles:
        assert needle in err, err


@pytest.fixture(autouse=True)
def _keep_environment() -> Iterator[None]:
    """`serve` and `load-users` hand their flags on as FMREC_* variables: undo that."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "tiny"
    assert main(["train", *TINY, "--epochs", "2", "--k", "4", "--out", str(out),
                 "--quiet"]) == 0
    return out


def test_serve_without_a_bundle_is_a_one_line_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["serve", "--bundle", str(tmp_path / "none")])
    _one_line_error(capsys, code, "no model bundle", "fmrec train", "fmrec demo")


def test_bad_setting_is_a_one_line_error(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FMREC_MAX_BATCH_SIZE", "zero")
    _one_line_error(capsys, main(["serve"]), "FMREC_MAX_BATCH_SIZE")
    monkeypatch.setenv("FMREC_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("FMREC_REDIS_URL", "http://localhost:6379")
    _one_line_error(capsys, main(["serve"]), "FMREC_REDIS_URL", "redis://")


def test_load_users_refuses_bad_input(
        tiny_bundle: Path, tmp_path: Path, redis_server: RedisServer,
        capsys: pytest.CaptureFixture[str]) -> None:
    url = ["--redis-url", redis_server.url]
    code = main(["load-users", "--bundle", str(tmp_path / "none"), *TINY, *url])
    _one_line_error(capsys, code, "no model bundle")
    code = main(["load-users", "--bundle", str(tiny_bundle), *TINY, "--seed", "5", *url])
    _one_line_error(capsys, code, "was trained on", "--seed")
    code = main(["load-users", "--bundle", str(tiny_bundle), "--synthetic", "4000",
                 "--hash-bits", "12", *url])
    _one_line_error(capsys, code, "2700 training ratings")
    code = main(["load-users", "--bundle", str(tiny_bundle), *TINY, "--redis-url",
                 f"redis://127.0.0.1:{free_port()}/0"])
    _one_line_error(capsys, code, "cannot write to the store")
    assert redis_server.client().dbsize() == 0  # nothing half-written


@pytest.mark.anyio
async def test_load_users_then_predict_by_id_equals_inline_history(
        tiny_bundle: Path, redis_server: RedisServer,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert await asyncio.to_thread(main, [  # the CLI runs its own event loop
        "load-users", "--bundle", str(tiny_bundle), *TINY, "--redis-url", redis_server.url]) == 0
    report = json.loads(capsys.readouterr().out)
    data, _ = synthetic(3000, hash_bits=12)
    assert report["users"] == len(set(data.users) | set(data.train.user))
    assert report["ratings"] == len(data.train)
    bundle = Bundle(tiny_bundle)
    movies = [{"id": str(i)} for i in bundle.catalog.ids[:30]]
    histories, stars = user_histories(data.train), user_stars(data.train)
    settings = service_settings(bundle=tiny_bundle, redis_url=redis_server.url)
    async with serving(settings) as (_, client):
        for uid in ("1", "10", "42"):
            inline = user_payload(uid, data.users[uid], histories[uid], stars[uid])
            by_id, sent = [await client.post("/predict", json={
                "user": user, "context": CONTEXT, "movies": movies})
                for user in ({"id": uid}, inline_user(inline))]
            assert by_id.json()["user_cached"] is False  # loaded, computed, then cached
            got = [p["rating"] for p in by_id.json()["predictions"]]
            np.testing.assert_allclose(got, [p["rating"] for p in sent.json()["predictions"]],
                                       rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(got, bundle.predict(inline, movies, CONTEXT),
                                       rtol=1e-5, atol=1e-5)


def test_demo_trains_loads_users_and_serves(tmp_path: Path, redis_server: RedisServer) -> None:
    """The whole `make run` path in a subprocess: real uvicorn, real HTTP."""
    port = free_port()
    env = {**os.environ, "FMREC_BUNDLE": str(tmp_path / "bundles" / "current"),
           "FMREC_REDIS_URL": redis_server.url, "FMREC_PORT": str(port),
           "FMREC_REDIS_TIMEOUT_S": "5"}
    log = (tmp_path / "demo.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "app.cli", "demo", "--synthetic", "2000",
                                "--quiet"], cwd=tmp_path, env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        # a guard against a hang, not a speed test: training on a busy 2-core machine
        # has taken over 4 minutes, so the bound is generous
        deadline = time.monotonic() + 900
        while True:
            assert process.poll() is None, (tmp_path / "demo.log").read_text()[-3000:]
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "demo.log").read_text()[-3000:]
            time.sleep(0.5)
        body = {"user": {"id": "3"}, "movies": [{"id": "1"}, {"id": "2"}]}
        first = httpx.post(f"{base}/predict", json=body, timeout=10)
        second = httpx.post(f"{base}/predict", json=body, timeout=10)
        assert first.status_code == 200 and second.status_code == 200
        assert second.json()["user_cached"] is True  # the demo loaded user 3's profile
        assert first.json()["predictions"] == second.json()["predictions"]
        ranked = httpx.post(f"{base}/recommend", json={"user": {"id": "3"}, "n": 5}, timeout=10)
        assert len(ranked.json()["items"]) == 5
        assert "fmrec_request_seconds_bucket" in httpx.get(f"{base}/metrics", timeout=10).text
        # no keys, loopback: the demo opens writes for local use (app/security.py)
        assert httpx.post(f"{base}/admin/reload", timeout=60).status_code == 200
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    text = (tmp_path / "demo.log").read_text()
    assert "training one on synthetic data" in text and "loaded" in text
    assert "accept writes without a key from this host only" in text
