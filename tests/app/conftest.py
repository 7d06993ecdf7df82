"""The service's default test settings: both engines, the session's bundle, a real Redis.
A module that needs other settings defines its own `settings` fixture (it takes over)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.settings import Settings
from tests.support.api_client import service_settings
from tests.support.redis_server import RedisServer


@pytest.fixture(params=["numpy", "savedmodel"])
def settings(small_bundle_path: Path, redis_server: RedisServer,
             request: pytest.FixtureRequest) -> Settings:
    """Every test runs with both engines: NumPy inline and the SavedModel in a thread."""
    return service_settings(bundle=small_bundle_path, redis_url=redis_server.url,
                            engine=request.param)
