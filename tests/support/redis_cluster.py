"""A real Redis Cluster of three masters (no replicas), local redis-server processes.

Started with `--cluster-enabled yes` and joined by `redis-cli --cluster create`, as an
operator would; each master may be killed (SIGKILL) and restarted on its port, keeping
its cluster config and, with `appendonly`, its data. Without replicas nobody takes over a
dead master's slots, so `cluster-require-full-coverage no` keeps the others serving.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

from tests.support.redis_server import RedisServer

MASTERS = 3


def cluster_port() -> int:
    """A free port p with p + 10000 free too (a cluster node's bus port): p <= 55535."""
    rng = random.Random()
    while True:
        port = rng.randrange(20000, 55535)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port


class RedisCluster3:
    """Three cluster-enabled RedisServers; `url` is the seed fmrec is given."""

    def __init__(self, directory: Path, appendonly: bool = True) -> None:
        self.nodes: list[RedisServer] = []
        for n in range(MASTERS):
            node_dir = directory / f"node{n}"
            node_dir.mkdir(parents=True, exist_ok=True)
            options = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                       "--cluster-node-timeout", "2000",
                       "--cluster-require-full-coverage", "no",
                       "--appendonly", "yes" if appendonly else "no",
                       "--appendfsync", "always"]
            node = RedisServer(node_dir, options)
            node.port = cluster_port()
            self.nodes.append(node)

    @property
    def url(self) -> str:
        """The FMREC_REDIS_URL of the cluster: every master as a seed, comma-separated."""
        return "redis://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes) + "/0"

    def start(self) -> RedisCluster3:
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli")
        if cli is None:
            pytest.fail("redis-cli not found: `apt-get install redis-tools`")
        done = subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            pytest.fail(f"redis-cli --cluster create failed:\n{done.stdout}\n{done.stderr}")
        self.wait_ok()
        return self

    def wait_ok(self, timeout_s: float = 30) -> None:
        """Until every master says cluster_state:ok (the slots agreed on and covered)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if all(n.client().cluster("info").get("cluster_state") == "ok"
                       for n in self.nodes):
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("redis cluster did not reach cluster_state:ok")
            time.sleep(0.05)

    def client(self) -> RedisCluster:
        node = self.nodes[0] if self.nodes[0].process is not None else self.nodes[1]
        return RedisCluster(host="127.0.0.1", port=node.port, require_full_coverage=False)

    def node_of(self, key: str) -> int:
        """Index of the master holding `key`'s slot (asked while all masters are up)."""
        port = self.client().get_node_from_key(key).port
        return [n.port for n in self.nodes].index(int(port))

    def restart(self) -> None:
        """Start the masters that are down (same port, cluster config and AOF kept)."""
        down = [node for node in self.nodes if node.process is None]
        for node in down:
            node.start()
        if down:
            self.wait_ok()

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


class ClusterAsServer:
    """What the single-Redis suites use of a RedisServer (url, client, kill, start), on a
    cluster, so the same tests run on both (tests/app/test_cluster_suites_*.py)."""

    def __init__(self, cluster: RedisCluster3) -> None:
        self.cluster = cluster

    @property
    def url(self) -> str:
        return self.cluster.url

    def client(self) -> RedisCluster:
        return self.cluster.client()

    def kill(self) -> None:
        self.cluster.stop()

    def kill_holder_of(self, key: str) -> None:
        """SIGKILL only the master holding `key`'s slot; the other two keep serving."""
        self.cluster.nodes[self.cluster.node_of(key)].kill()

    def start(self) -> ClusterAsServer:
        self.cluster.restart()
        return self


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster3]:
    """One cluster for a module's tests (emptied before each: `cluster_as_server`)."""
    cluster = RedisCluster3(tmp_path_factory.mktemp("cluster"), appendonly=False).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_as_server(shared_cluster: RedisCluster3, monkeypatch: pytest.MonkeyPatch
                      ) -> ClusterAsServer:
    """The module's cluster, all masters up and empty, with FMREC_REDIS_CLUSTER=true for
    the Settings the test builds (after conftest cleared the caller's FMREC_*)."""
    shared_cluster.restart()
    shared_cluster.client().flushall()
    monkeypatch.setenv("FMREC_REDIS_CLUSTER", "true")
    return ClusterAsServer(shared_cluster)
