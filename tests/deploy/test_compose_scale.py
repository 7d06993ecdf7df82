"""docker-compose.scale.yml (API replicas behind HAProxy) and docker-compose.cluster.yml
(a Redis Cluster instead of one Redis), as `docker compose config` resolves them over
the CPU stack, and the HAProxy config as `haproxy -c` reads it (when installed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from app import cluster
from app.settings import Settings
from tests.deploy.test_docker import COMPOSE_CPU, COMPOSE_GPU, REPO, compose_config

SCALE = REPO / "docker-compose.scale.yml"
CLUSTER = REPO / "docker-compose.cluster.yml"
HAPROXY = REPO / "deploy" / "haproxy.cfg"


def test_replicas_publish_nothing_and_the_load_balancer_takes_the_port() -> None:
    services = compose_config(COMPOSE_GPU, COMPOSE_CPU, SCALE)["services"]
    assert not services["api"].get("ports")  # --scale api=4 would fight over one port
    lb = services["lb"]
    assert lb["image"].startswith("haproxy:")
    assert [(p["host_ip"], p["published"], p["target"]) for p in lb["ports"]] == [
        ("127.0.0.1", "8000", 8000)]
    mount = lb["volumes"][0]
    assert Path(mount["source"]) == HAPROXY and mount["read_only"]
    assert mount["target"] == "/usr/local/etc/haproxy/haproxy.cfg"


def test_haproxy_balances_by_least_connections_over_ready_replicas() -> None:
    lines = [ln.split("#")[0].strip() for ln in HAPROXY.read_text().splitlines()]
    backend = lines[lines.index("backend api"):]
    assert "balance leastconn" in backend
    assert "option httpchk GET /readyz" in backend
    assert "http-check expect status 200" in backend
    assert any(ln.startswith("server-template api ") and ln.endswith(" api:8000")
               for ln in backend)
    assert "bind :8000" in lines
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy not installed: its own check of the file skipped")
    run = subprocess.run(["haproxy", "-c", "-f", str(HAPROXY)], capture_output=True,
                         text=True, timeout=30)
    assert run.returncode == 0, run.stdout + run.stderr


def test_haproxy_names_the_replica_and_keeps_its_stats_page_inside_the_network() -> None:
    lines = [ln.split("#")[0].strip() for ln in HAPROXY.read_text().splitlines()]
    backend = lines[lines.index("backend api"):]
    assert "http-response set-header X-Served-By %[srv_name]" in backend  # compose-check
    assert "option redispatch 1" in lines  # a refused connection goes to another replica
    stats = lines[lines.index("frontend stats"):lines.index("backend api")]
    assert "bind :8404" in stats and "stats show-legends" in stats
    lb = compose_config(COMPOSE_GPU, COMPOSE_CPU, SCALE)["services"]["lb"]
    assert [p["target"] for p in lb["ports"]] == [8000]  # 8404 is not published


def test_cluster_override_runs_three_masters_that_fmrec_is_pointed_at() -> None:
    services = compose_config(COMPOSE_GPU, COMPOSE_CPU, CLUSTER)["services"]
    for name in ("redis", "redis-2", "redis-3"):
        command = services[name]["command"]
        assert command[command.index("--cluster-enabled") + 1] == "yes"
        assert command[command.index("--cluster-require-full-coverage") + 1] == "no"
        assert command[command.index("--appendonly") + 1] == "yes"
    volumes = {services[n]["volumes"][0]["source"] for n in ("redis", "redis-2", "redis-3")}
    assert len(volumes) == 3  # each master its own AOF
    assert "--cluster create" in " ".join(services["redis-cluster"]["command"])
    for name in ("api", "train"):
        env = services[name]["environment"]
        settings = Settings(redis_url=env["FMREC_REDIS_URL"],
                            redis_cluster=env["FMREC_REDIS_CLUSTER"])
        assert settings.redis_cluster
        hosts = {u.split("//")[1].split("/")[0] for u in cluster.seed_urls(settings.redis_url)}
        assert hosts == {"redis:6379", "redis-2:6379", "redis-3:6379"}
        assert services[name]["depends_on"]["redis-cluster"]["condition"] == (
            "service_completed_successfully")


def test_both_overrides_together_resolve() -> None:
    services = compose_config(COMPOSE_GPU, COMPOSE_CPU, CLUSTER, SCALE)["services"]
    assert {"lb", "api", "redis", "redis-2", "redis-3", "redis-cluster"} <= set(services)
    assert services["api"]["environment"]["FMREC_REDIS_CLUSTER"] == "true"
