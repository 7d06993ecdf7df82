"""`make compose-check` (bench/compose_check.py, bench/standins.py): the parts that need no
Docker daemon. The check itself runs the stack for real; its committed results are read
here."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from bench import compose_check, compose_scale, standins
from bench.common import REPO
from tests.deploy.test_docker import COMPOSE_CPU, COMPOSE_GPU, compose_config, load_compose

RESULTS = Path(compose_check.RESULTS) / "compose.json"


def test_the_check_file_publishes_its_own_port_key_demo_and_ca_secret(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    extra = tmp_path / "check.yml"
    extra.write_text(compose_check.override(18123, "k3y", ca))
    services = compose_config(COMPOSE_GPU, COMPOSE_CPU, extra)["services"]
    api, train = services["api"], services["train"]
    assert [(p["host_ip"], p["published"], p["target"]) for p in api["ports"]] == [
        ("127.0.0.1", "18123", 8000)]  # replaced, not added beside 8000
    assert api["environment"]["FMREC_API_KEYS"] == "k3y"
    assert train["environment"]["FMREC_DEMO_RATINGS"] == str(compose_check.DEMO_RATINGS)
    for service in (api, train):
        assert [s["source"] for s in service["build"]["secrets"]] == ["pip_ca"]
        assert service["image"] == "fmrec:cpu"
    without_ca = tmp_path / "plain.yml"
    without_ca.write_text(compose_check.override(18124, "k", None))
    services = compose_config(COMPOSE_GPU, COMPOSE_CPU, without_ca)["services"]
    assert "secrets" not in services["api"]["build"]


def test_the_scaled_stacks_file_publishes_the_load_balancer_not_the_replicas(
        tmp_path: Path) -> None:
    extra = tmp_path / "scale.yml"
    extra.write_text(compose_scale.lb_override(18125, 18126, "k3y", None))
    for files in ((compose_scale.SCALE,), (compose_scale.CLUSTER, compose_scale.SCALE)):
        services = compose_config(COMPOSE_GPU, COMPOSE_CPU, *(REPO / f for f in files),
                                  extra)["services"]
        assert not services["api"].get("ports")
        assert [(p["host_ip"], p["published"], p["target"])
                for p in services["lb"]["ports"]] == [("127.0.0.1", "18125", 8000),
                                                      ("127.0.0.1", "18126", 8404)]
        assert services["api"]["environment"]["FMREC_API_KEYS"] == "k3y"
        assert services["train"]["environment"]["FMREC_DEMO_RATINGS"] == str(
            compose_check.DEMO_RATINGS)


def test_base_images_are_the_ones_the_stacks_start_from() -> None:
    redis = load_compose(COMPOSE_GPU)["services"]["redis"]["image"]
    base = {load_compose(COMPOSE_CPU)["services"][s]["build"]["args"]["BASE_IMAGE"]
            for s in ("api", "train")}
    lb = load_compose(REPO / compose_scale.SCALE)["services"]["lb"]["image"]
    assert compose_check.base_images() == sorted({redis, lb, *base})


def test_debian_mirror_is_read_from_either_apt_sources_format(tmp_path: Path) -> None:
    deb822 = tmp_path / "debian.sources"
    deb822.write_text("Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n")
    one_line = tmp_path / "sources.list"
    one_line.write_text("# deb http://old.example/debian bookworm main\n"
                        "deb [arch=amd64] http://ftp.example/debian/ bookworm main\n")
    other = tmp_path / "node.list"
    other.write_text("deb https://deb.nodesource.com/node_20.x nodistro main\n")
    assert standins.debian_mirror([other, deb822]) == "http://mirror.example/debian"
    assert standins.debian_mirror([one_line]) == "http://ftp.example/debian/"
    assert standins.debian_mirror([other, tmp_path / "missing"]) == "http://deb.debian.org/debian"


def test_a_changed_recipe_is_a_new_cache_key(tmp_path: Path) -> None:
    recipe = tmp_path / "x.Dockerfile"
    recipe.write_text("FROM a\n")
    first = standins.recipe_hash("img:1", files=[recipe])
    assert standins.recipe_hash("img:1", files=[recipe]) == first
    assert standins.recipe_hash("img:2", files=[recipe]) != first
    recipe.write_text("FROM b\n")
    assert standins.recipe_hash("img:1", files=[recipe]) != first


def test_log_findings_counts_progress_bar_renders_and_tensorflow_lines() -> None:
    log = ("start\ntrain:  10%|#  | 1/10\rtrain:  20%|## | 2/10 [00:01<?]\n"
           "train: epoch 3/10 train_rmse=0.9\n"
           "I0000 00:00:1.0 1 cpu_feature_guard.cc:227] This TensorFlow binary is optimized\n")
    found = compose_check.log_findings(log)
    assert found["progress_bar_renders"] == 2
    assert found["progress_bar_renders"] == compose_check.log_findings(
        log.replace("\r", "\n"))["progress_bar_renders"]  # as text mode reads it
    assert found["tensorflow_noise"] == [log.splitlines()[-1]]
    with pytest.raises(compose_check.CheckFailed, match="TensorFlow start-up noise"):
        compose_check.check_quiet("api", log)
    with pytest.raises(compose_check.CheckFailed, match="2 progress-bar updates"):
        compose_check.check_quiet("api", "train:  1%|a\rtrain:  2%|b\n", max_renders=1)
    assert compose_check.check_quiet("api", "train: epoch 1/3\n")["progress_bar_renders"] == 0


def test_redis_stand_in_entrypoint_starts_redis_like_the_official_image(
        request: pytest.FixtureRequest) -> None:
    """As a non-root user the entrypoint only rewrites the command: protected mode off
    first (later arguments win), `redis-server` added before bare options, a config file
    kept first, any other command run as it is."""
    # A directory user `nobody` can enter (pytest's tmp_path is private to its owner).
    bin_dir = Path(tempfile.mkdtemp(prefix="fmrec-redis-entry-"))
    request.addfinalizer(lambda: shutil.rmtree(bin_dir))
    bin_dir.chmod(0o755)
    fake = bin_dir / "redis-server"  # prints the arguments it was started with
    fake.write_text('#!/bin/sh\necho "$@"\n')
    entry = bin_dir / "entrypoint"
    shutil.copyfile(standins.HERE / "redis-entrypoint.sh", entry)
    for path in (fake, entry):
        path.chmod(0o755)

    def run(*args: str) -> str:
        as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
        return subprocess.run([*as_nobody, str(entry), *args],
                              env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
                              capture_output=True, text=True, check=True).stdout

    assert run("redis-server", "--appendonly", "yes") == "--protected-mode no --appendonly yes\n"
    assert run("--port", "7000") == "--protected-mode no --port 7000\n"
    assert run("redis-server", "/etc/r.conf") == "/etc/r.conf\n"
    assert run("echo", "hi") == "hi\n"


def test_results_table_marks_each_step() -> None:
    results = {
        "passed": False, "seconds": 12.0,
        "docker": {"server": "Docker 1", "compose": "2.40"},
        "images": [{"image": "redis:7", "source": "pulled", "seconds": 1.0,
                    "size_bytes": 5_000_000}],
        "steps": [{"name": "build", "seconds": 3.0, "ok": True,
                   "detail": {"image_bytes": 2_000_000}},
                  {"name": "/predict", "seconds": 0.5, "ok": False, "detail": {}},
                  {"name": "scale", "seconds": 0.0, "ok": False,
                   "detail": {"skipped": "later"}}],
    }
    rows = compose_check.tables(results)["compose"].rows
    assert [list(r) for r in rows] == [
        ["base image redis:7", "pulled", 1.0, 5], ["build", "ok", 3.0, 2],
        ["/predict", "FAILED", 0.5, None], ["scale", "skipped", None, None],
        ["total (base images to down -v)", "FAILED", 12.0, None]]


def test_committed_results_are_a_passing_run_of_every_step() -> None:
    results = json.loads(RESULTS.read_text())
    assert results["passed"] is True and results["failure"] is None
    names = [s["name"] for s in results["steps"]]
    for needed in ("build", "/predict", "/recommend", "/ratings with a key", "restart redis",
                   "restart api", "down, then up", "down -v"):
        assert needed in names
    assert all(step["ok"] for step in results["steps"])
    steps = {s["name"]: s["detail"] for s in results["steps"]}
    replicas = results["replicas"]
    spread = steps[f"scale api={replicas} behind the load balancer"]
    assert len(spread["replicas"]) == replicas and set(spread["served_by"]) == set(
        spread["replicas"])
    stopped = steps["a stopped replica gets no traffic, no request fails"]
    assert set(stopped["during_stop"]["statuses"]) == {"200"}
    assert stopped["slot"] not in stopped["after"]["served_by"]
    loading = steps["a replica still loading gets no traffic, then rejoins"]
    assert loading["slot"] not in loading["while_loading"]["served_by"]
    assert loading["slot"] in loading["after"]["served_by"]
    on_cluster = steps[f"Redis Cluster (3 masters), api={replicas}: a rating written and "
                       "read back"]
    assert on_cluster["cluster"]["cluster_state"] == "ok"
    assert len(on_cluster["read_back_seconds"]) == replicas
    assert {i["image"] for i in results["images"]} == set(compose_check.base_images())
    assert all(i["size_bytes"] > 0 for i in results["images"])
