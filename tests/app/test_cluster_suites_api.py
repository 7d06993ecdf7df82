"""The API suites (/predict by id, cache hit and miss, /recommend against brute force) run
again on a real 3-master Redis Cluster: the same test functions, imported, with
`redis_server` standing for the cluster. Only the NumPy engine here (the SavedModel one
reads the store the same way, and doubles the time)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.settings import Settings
from tests.app.test_api_predict import (
    test_cache_hit_and_miss_give_identical_numbers,
    test_default_last_movie_is_the_latest_rated_before_the_time,
    test_inline_fields_override_the_store,
    test_predict_by_id_matches_offline_reference,
)
from tests.app.test_api_recommend import (
    test_recommend_among_candidates,
    test_recommend_equals_brute_force,
    test_recommend_without_exclusion_and_with_genres,
)
from tests.support.api_client import service_settings
from tests.support.redis_cluster import ClusterAsServer, cluster_as_server, shared_cluster

pytestmark = pytest.mark.anyio

__all__ = [  # collected here, with the fixtures below
    "cluster_as_server", "shared_cluster",
    "test_cache_hit_and_miss_give_identical_numbers",
    "test_default_last_movie_is_the_latest_rated_before_the_time",
    "test_inline_fields_override_the_store",
    "test_predict_by_id_matches_offline_reference",
    "test_recommend_among_candidates",
    "test_recommend_equals_brute_force",
    "test_recommend_without_exclusion_and_with_genres",
]


@pytest.fixture
def redis_server(cluster_as_server: ClusterAsServer) -> ClusterAsServer:
    return cluster_as_server


@pytest.fixture
def settings(small_bundle_path: Path, redis_server: ClusterAsServer) -> Settings:
    return service_settings(bundle=small_bundle_path, redis_url=redis_server.url,
                            engine="numpy")
