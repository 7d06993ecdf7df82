"""The replay suite runs again on a real 3-master Redis Cluster (AOF, fsync always): the
same test function, imported, with `durable_store` standing for the cluster. The store
killed mid-replay is then the one master holding the refused batch's first user: that
batch's users on the other masters are applied before the 503, and come back as
duplicates on the retry."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.app.test_replay import test_replay_survives_a_redis_restart_and_counts_nothing_twice
from tests.support.redis_cluster import ClusterAsServer, RedisCluster3

__all__ = ["test_replay_survives_a_redis_restart_and_counts_nothing_twice"]


@pytest.fixture
def durable_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                  ) -> Iterator[ClusterAsServer]:
    cluster = RedisCluster3(tmp_path / "cluster", appendonly=True).start()
    monkeypatch.setenv("FMREC_REDIS_CLUSTER", "true")
    try:
        yield ClusterAsServer(cluster)
    finally:
        cluster.stop()
