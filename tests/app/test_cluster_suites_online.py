"""The online-update suites (POST /ratings, near-cache invalidation, concurrent writers,
the key-layout migration) run again on a real 3-master Redis Cluster: the same test
functions, imported, with `redis_server` standing for the cluster. Left out: the tests
that SIGSTOP the one Redis process (tests/app/test_cluster_faults.py kills a master
instead)."""

from __future__ import annotations

import pytest

from tests.app.test_migrate_keys import test_old_layout_is_merged_into_the_hash_tagged_one
from tests.app.test_near_cache import (
    test_a_rating_on_one_worker_reaches_the_others_copy,
    test_settings_bound_the_copy_by_bytes,
)
from tests.app.test_ratings import (
    settings,
    test_a_user_never_seen_starts_from_their_first_rating,
    test_bad_batches_are_refused_whole_and_write_nothing,
    test_one_batch_counts_and_semantics,
    test_random_events_keep_cached_sums_equal_to_a_recomputation,
    test_recommend_after_a_rating_leaves_the_movie_out,
)
from tests.app.test_ratings_concurrent import (
    test_a_write_back_computed_before_an_event_is_refused,
    test_concurrent_writers_readers_and_evictions,
)
from tests.support.redis_cluster import ClusterAsServer, cluster_as_server, shared_cluster

pytestmark = pytest.mark.anyio

__all__ = [  # collected here, with the fixtures below
    "cluster_as_server",
    "settings",
    "shared_cluster",
    "test_a_rating_on_one_worker_reaches_the_others_copy",
    "test_a_user_never_seen_starts_from_their_first_rating",
    "test_a_write_back_computed_before_an_event_is_refused",
    "test_bad_batches_are_refused_whole_and_write_nothing",
    "test_concurrent_writers_readers_and_evictions",
    "test_old_layout_is_merged_into_the_hash_tagged_one",
    "test_one_batch_counts_and_semantics",
    "test_random_events_keep_cached_sums_equal_to_a_recomputation",
    "test_recommend_after_a_rating_leaves_the_movie_out",
    "test_settings_bound_the_copy_by_bytes",
]


@pytest.fixture
def redis_server(cluster_as_server: ClusterAsServer) -> ClusterAsServer:
    return cluster_as_server
