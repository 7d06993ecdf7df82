"""The test split scored through POST /predict gives the RMSE the offline evaluation
reported: serving and training build the same features for a rating (its user's stored
history, its time, its last movie, the session and day derived from them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.blocks import last_movies
from model.bundle import Bundle
from model.data import Dataset
from model.evaluate import rmse_mae
from model.features import FeatureSpec
from tests.support.api_client import load_users, service_settings, serving
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.anyio


async def test_test_split_through_http_gives_the_offline_rmse(
        small_bundle_path: Path, small_bundle: Bundle, redis_server: RedisServer,
        small_data: tuple[Dataset, FeatureSpec]) -> None:
    data, _ = small_data
    test = data.test
    settings = service_settings(bundle=small_bundle_path, redis_url=redis_server.url)
    await load_users(settings, data)
    last = last_movies(test, data.train)  # as encode_ratings gives the offline evaluation
    assert sum(m is not None for m in last) > len(test) // 2  # the feature is exercised
    served = []
    async with serving(settings) as (_, client):
        for row in range(len(test)):
            response = await client.post("/predict", json={
                "user": {"id": str(test.user[row])},
                "context": {"time": int(test.timestamp[row]), "last_movie": last[row]},
                "movies": [{"id": str(test.item[row])}]})
            assert response.status_code == 200, response.text
            served.append(response.json()["predictions"][0]["rating"])
    rmse, mae = rmse_mae(np.array(served), test.rating)
    assert rmse == pytest.approx(small_bundle.metrics["test_rmse"], abs=1e-4)
    assert mae == pytest.approx(small_bundle.metrics["test_mae"], abs=1e-4)
