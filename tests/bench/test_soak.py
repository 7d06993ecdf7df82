"""A short soak (bench/soak.py's code, ~25 s): a real `fmrec serve` and redis-server on
loopback under a mix of /predict, /recommend and /ratings, with Redis paused and then
filled up on the way, and the model reloaded 4 times. No 5xx (a /ratings batch refused
with 503 while Redis cannot take it is resent, as a client must), no rating lost or
counted twice, memory flat (also across the reloads)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from bench.soak import KEY, SoakConfig, Target, run_soak, summary
from model.bundle import Bundle
from model.data import Dataset
from model.features import FeatureSpec
from tests.support.api_client import load_users, service_settings
from tests.support.live_server import LiveServer
from tests.support.redis_server import RedisServer

SECONDS = float(os.environ.get("SOAK_SECONDS", "25"))


def test_soak(small_bundle_path: Path, small_bundle: Bundle, redis_server: RedisServer,
              small_data: tuple[Dataset, FeatureSpec], tmp_path: Path) -> None:
    data, _ = small_data
    asyncio.run(load_users(service_settings(redis_url=redis_server.url), data))
    server = LiveServer({"FMREC_BUNDLE": str(small_bundle_path),
                         "FMREC_REDIS_URL": redis_server.url, "FMREC_API_KEYS": KEY,
                         "FMREC_LOG_LEVEL": "warning"}, tmp_path / "serve.log").start()
    config = SoakConfig(seconds=SECONDS, concurrency=8, warmup_s=SECONDS / 3,
                        fault_every_s=SECONDS / 3, fault_length_s=0.8, reloads=4)
    try:
        result = run_soak(Target(server.url, server.rss_bytes, redis_server.url,
                                 sorted(set(map(str, data.train.user))),
                                 [str(i) for i in small_bundle.catalog.ids],
                                 small_bundle.rating_range), config)
    finally:
        server.stop()
    print("\n" + summary(result))
    assert "Traceback" not in server.log(), server.log()[-3000:]
    assert result["server_errors_5xx"] == 0, result["routes"]
    assert [f["kind"] for f in result["faults"]] == ["pause", "full"]
    for route in ("/predict", "/recommend", "/ratings"):
        assert result["routes"][route]["statuses"].get("200", 0) > 10, result["routes"]
    assert result["requests"] >= 200
    ratings = result["ratings"]
    assert ratings["events_acknowledged"] >= 50
    assert ratings["lost"] == 0 and ratings["duplicated"] == 0, ratings
    assert ratings["stale"] == 0 and ratings["stored_never_acknowledged"] == 0, ratings
    assert ratings["events_stored"] == ratings["events_acknowledged"] == ratings["events_sent"]
    assert result["rss_mb"]["growth_after_warmup"] < 0.2, result["rss_mb"]
    reloads = result["reloads"]
    assert reloads["statuses"] == {"200": 4}, reloads  # served through, no failed request
    assert reloads["rss_end_over_after_first"] < 1.2, reloads
