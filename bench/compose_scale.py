"""`make compose-check`'s scale-out steps: N API replicas behind HAProxy
(docker-compose.scale.yml), then the same behind a 3-master Redis Cluster
(docker-compose.cluster.yml), brought up for real.

What they show, each from HAProxy's own view (its stats CSV and the `X-Served-By` header it
sets) and from the replies:
* requests through the load balancer are answered by more than one replica;
* a replica being stopped gets no traffic from then on, and no request fails meanwhile;
* a restarted replica gets no traffic while it loads (its /readyz check fails), then
  rejoins;
* on the cluster, a rating written through the load balancer is read back through every
  replica (near caches follow the sharded change channels).
"""

from __future__ import annotations

import csv
import io
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from bench.compose_stack import (
    CANDIDATES,
    FILES,
    PROJECT,
    USER,
    Api,
    CheckFailed,
    Stack,
    expect,
    free_port,
    override,
    recommended,
)

if TYPE_CHECKING:
    from bench.compose_check import Check

SCALE, CLUSTER = "docker-compose.scale.yml", "docker-compose.cluster.yml"
# Replicas the check starts: `--scale api=4`, as README shows it; the files take any N.
REPLICAS = 4
REQUESTS = 40  # per burst through the load balancer
STATE_TIMEOUT_S = 300  # for HAProxy to see a replica up or down; never reached when it works
READ_BACK_TIMEOUT_S = 30
POLL_S = 0.05  # between requests while a replica loads: a steady stream, not a flood


def lb_override(port: int, stats_port: int, key: str, ca_bundle: Path | None) -> str:
    """The check's file for the scaled stacks: the load balancer (not `api`) on its port,
    HAProxy's stats page beside it, the same key, demo size and CA secret as the base."""
    text = override(0, key, ca_bundle)
    text = text.replace('    ports: !override ["127.0.0.1:0:8000"]\n', "")
    return text.replace("services:\n", f"""services:
  lb:
    ports: !override ["127.0.0.1:{port}:8000", "127.0.0.1:{stats_port}:8404"]
""", 1)


def docker(*args: str, timeout: float = 300) -> str:
    run = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if run.returncode != 0:
        raise CheckFailed(f"docker {' '.join(args)}: {(run.stderr or run.stdout).strip()[-500:]}")
    return run.stdout


def container_ip(name: str) -> str:
    return docker("inspect", "--format",
                  "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name).strip()


def replicas(stack: Stack) -> list[str]:
    """The running `api` containers' names, in replica order."""
    names = [str(c["Name"]) for c in stack.containers()
             if c.get("Service") == "api" and c.get("State") == "running"]
    return sorted(names, key=lambda n: int(n.rsplit("-", 1)[-1]))


class Balancer:
    """Requests through HAProxy, and HAProxy's view of its `api` servers."""

    def __init__(self, port: int, stats_port: int, key: str) -> None:
        self.api = Api(port, key)
        self.stats_http = httpx.Client(base_url=f"http://127.0.0.1:{stats_port}", timeout=10,
                                       trust_env=False)

    def servers(self) -> dict[str, dict[str, str]]:
        """Server slot -> its stats row, for the slots that hold a replica's address."""
        r = self.stats_http.get("/stats;csv")
        expect(r.status_code == 200, f"HAProxy stats answered {r.status_code}")
        rows = csv.DictReader(io.StringIO(r.text.lstrip("# ")))
        return {row["svname"]: row for row in rows
                if row["pxname"] == "api" and row["svname"] not in ("BACKEND", "FRONTEND")
                and row.get("addr")}

    def slot_of(self, ip: str) -> tuple[str, dict[str, str]] | None:
        for name, row in self.servers().items():
            if row["addr"].rsplit(":", 1)[0] == ip:
                return name, row
        return None

    def request(self, client: httpx.Client | None = None) -> tuple[int, str]:
        """One /recommend; its status and the slot that answered ("" if none said)."""
        r = (client or self.api.http).post("/recommend", json={"user": {"id": USER}, "n": 5})
        return r.status_code, r.headers.get("x-served-by", "")

    def burst(self, n: int = REQUESTS) -> tuple[Counter[int], Counter[str]]:
        statuses: Counter[int] = Counter()
        served: Counter[str] = Counter()
        for _ in range(n):
            status, by = self.request()
            statuses[status] += 1
            served[by] += 1
        return statuses, served

    def wait_up(self, n: int) -> dict[str, str]:
        """Slot -> address, once n slots are UP and passed their /readyz check (a new
        server is UP before its first check on HAProxy < 3.1)."""
        deadline = time.monotonic() + STATE_TIMEOUT_S
        up: dict[str, str] = {}
        while time.monotonic() < deadline:
            up = {name: row["addr"] for name, row in self.servers().items()
                  if row["status"] == "UP" and row["check_status"] == "L7OK"}
            if len(up) >= n:
                return up
            time.sleep(0.5)
        raise CheckFailed(f"HAProxy has {len(up)} of {n} replicas up after "
                          f"{STATE_TIMEOUT_S} s: {self.servers()}")


class Traffic(threading.Thread):
    """Requests through the load balancer, one after another, until stopped (bounded)."""

    def __init__(self, balancer: Balancer, limit: int = 5000) -> None:
        super().__init__(daemon=True)
        self.balancer, self.limit = balancer, limit
        self.statuses: Counter[int] = Counter()
        self.served: Counter[str] = Counter()
        self.errors: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.balancer.api.http.base_url, timeout=30,
                          trust_env=False) as client:
            for _ in range(self.limit):
                if self.done.is_set():
                    return
                try:
                    status, by = self.balancer.request(client)
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                    continue
                self.statuses[status] += 1
                self.served[by] += 1

    def stop(self) -> dict[str, Any]:
        self.done.set()
        self.join(timeout=60)
        return {"statuses": dict(self.statuses), "served_by": dict(self.served),
                "errors": self.errors[:5]}


def spread(check: Check, stack: Stack, lb: Balancer) -> dict[str, str]:
    """Step: up with REPLICAS replicas; requests spread over them. Returns slot -> name."""
    with check.step(f"scale api={REPLICAS} behind the load balancer") as s:
        stack.run("up", "--detach", "--scale", f"api={REPLICAS}", timeout=900)
        s.detail["readyz"] = lb.api.wait_ready()
        up = lb.wait_up(REPLICAS)
        names = {container_ip(n): n for n in replicas(stack)}
        expect(len(names) == REPLICAS, f"{len(names)} api containers run, not {REPLICAS}")
        slots = {slot: names.get(addr.rsplit(":", 1)[0], "?") for slot, addr in up.items()}
        statuses, served = lb.burst()
        s.detail.update(replicas=slots, statuses=dict(statuses), served_by=dict(served))
        expect(statuses == Counter({200: REQUESTS}), f"through the load balancer: {statuses}")
        expect(set(served) == set(slots),
               f"answered by {dict(served)}, not by each of the replicas {slots}")
        return slots


def stopped_gets_nothing(check: Check, lb: Balancer, slots: dict[str, str]) -> str:
    """Step: stop the last replica amid steady traffic. Returns its container's name."""
    with check.step("a stopped replica gets no traffic, no request fails") as s:
        slot, victim = max(slots.items(), key=lambda kv: kv[1])
        traffic = Traffic(lb)
        traffic.start()
        start = time.monotonic()
        docker("stop", victim)
        stopped_s = time.monotonic() - start
        while lb.servers().get(slot, {}).get("status", "MAINT").startswith("UP"):
            expect(time.monotonic() - start < STATE_TIMEOUT_S,
                   f"HAProxy still has {slot} ({victim}) up")
            time.sleep(0.5)
        during = traffic.stop()
        statuses, served = lb.burst()
        s.detail.update(stopped=victim, slot=slot, stop_seconds=round(stopped_s, 1),
                        out_of_rotation_seconds=round(time.monotonic() - start, 1),
                        during_stop=during, after={"statuses": dict(statuses),
                                                   "served_by": dict(served)})
        expect(not during["errors"] and set(during["statuses"]) == {200},
               f"requests failed while {victim} stopped: {during}")
        expect(statuses == Counter({200: REQUESTS}), f"after the stop: {statuses}")
        expect(slot not in served, f"the stopped {victim} ({slot}) still answered: {served}")
        return victim


def loading_gets_nothing(check: Check, lb: Balancer, victim: str) -> None:
    """Step: restart the stopped replica; while it loads (its /readyz check failing) it
    answers no request and no request fails; once ready it answers again."""
    with check.step("a replica still loading gets no traffic, then rejoins") as s:
        start = time.monotonic()
        docker("start", victim)
        ip = container_ip(victim)
        loading: list[dict[str, Any]] = []
        statuses: Counter[int] = Counter()
        served: Counter[str] = Counter()
        first: dict[str, str] | None = None
        while True:
            expect(time.monotonic() - start < STATE_TIMEOUT_S,
                   f"{victim} not back in rotation after {STATE_TIMEOUT_S} s: {loading[-3:]}")
            found = lb.slot_of(ip)
            if found and found[1]["status"] == "UP" and found[1]["check_status"] == "L7OK":
                slot, last = found
                break
            status, by = lb.request()
            statuses[status] += 1
            served[by] += 1
            if found:
                name, row = found
                first = first or row
                state = {"slot": name, "status": row["status"],  # "* ": a check under way
                         "check": row["check_status"].removeprefix("* ")}
                if not loading or {k: loading[-1][k] for k in state} != state:
                    loading.append({**state, "seconds": round(time.monotonic() - start, 1)})
            time.sleep(POLL_S)
        up_s = time.monotonic() - start
        after_statuses, after_served = lb.burst()
        # what HAProxy tried on the replica while it loaded: connection attempts it refused
        # (before its first check, HAProxy < 3.1 holds a new server up), each retried on
        # another replica and followed by marking it down
        tried = {k: int(last[k] or 0) - int((first or last)[k] or 0)
                 for k in ("stot", "econ", "wretr", "wredis")}
        s.detail.update(restarted=victim, slot=slot, seconds_to_up=round(up_s, 1),
                        while_loading={"requests": sum(statuses.values()),
                                       "statuses": dict(statuses), "served_by": dict(served),
                                       "states": loading, "slot_counters": tried},
                        after={"statuses": dict(after_statuses),
                               "served_by": dict(after_served)})
        expect(set(statuses) <= {200}, f"requests failed while {victim} loaded: {statuses}")
        expect(slot not in served, f"{victim} ({slot}) answered before HAProxy had it up")
        expect(any(state["check"].startswith("L4") for state in loading),
               f"never saw {victim} loading (refusing the /readyz check): {loading}")
        expect(after_statuses == Counter({200: REQUESTS}), f"after the restart: {after_statuses}")
        expect(slot in after_served, f"{victim} ({slot}) gets no traffic once up: {after_served}")


def read_back(lb: Balancer, movie: str, replica_slots: set[str]) -> dict[str, Any]:
    """Until every replica's /recommend leaves `movie` out (near caches follow the change
    channel within its delivery time): seconds taken, per replica."""
    start = time.monotonic()
    seen: dict[str, float] = {}
    while set(seen) != replica_slots:
        expect(time.monotonic() - start < READ_BACK_TIMEOUT_S,
               f"after {READ_BACK_TIMEOUT_S} s, only {sorted(seen)} of {sorted(replica_slots)} "
               f"read the rating of {movie} back")
        r = lb.api.post("/recommend", {"user": {"id": USER}, "n": len(CANDIDATES),
                                       "candidates": CANDIDATES})
        expect(r.status_code == 200, f"/recommend answered {r.status_code}: {r.text}")
        by = r.headers.get("x-served-by", "")
        if movie not in [i["movie_id"] for i in r.json()["items"]]:
            seen.setdefault(by, round(time.monotonic() - start, 2))
    return seen


def cluster(check: Check, scaled: Stack, stack: Stack, lb: Balancer, key: str) -> None:
    """Step: the scaled stack again, on a 3-master Redis Cluster. Its first node must start
    empty to join, so the single Redis's volume goes (the bundle volume stays: no retrain)."""
    with check.step(f"Redis Cluster (3 masters), api={REPLICAS}: a rating written and read "
                    "back") as s:
        scaled.run("down", timeout=300)
        docker("volume", "rm", f"{PROJECT}_redis-data")
        stack.run("up", "--detach", "--scale", f"api={REPLICAS}", timeout=900)
        ready = s.detail["readyz"] = lb.api.wait_ready()
        expect("redis" in str(ready.get("store_backend")), f"/readyz: {ready}")
        slots = set(lb.wait_up(REPLICAS))
        info = stack.run("exec", "-T", "redis", "redis-cli", "cluster", "info").stdout
        fields = dict(line.strip().split(":", 1) for line in info.splitlines() if ":" in line)
        s.detail["cluster"] = {k: fields.get(k) for k in (
            "cluster_state", "cluster_slots_assigned", "cluster_known_nodes", "cluster_size")}
        expect(fields.get("cluster_state") == "ok" and fields.get("cluster_size") == "3",
               f"cluster info: {s.detail['cluster']}")
        before = recommended(lb.api)
        event = {"event_id": "compose-check-cluster-1", "user_id": USER,
                 "movie_id": before[0], "rating": 4, "timestamp": 1_700_000_100}
        r = lb.api.post("/ratings", {"events": [event]}, key=key)
        expect(r.status_code == 200 and r.json()["accepted"] == 1,
               f"/ratings on the cluster answered {r.status_code}: {r.text}")
        s.detail["read_back_seconds"] = read_back(lb, before[0], slots)
        again = lb.api.post("/ratings", {"events": [event]}, key=key)
        expect(again.status_code == 200 and again.json()["duplicates"] == 1,
               f"the retried event is not a duplicate on the cluster: {again.text}")
        holders = {}
        for node in ("redis", "redis-2", "redis-3"):
            keys = stack.run("exec", "-T", node, "redis-cli", "--scan", "--pattern",
                             f"fmrec:{{u:{USER}}}:*").stdout.split()
            if keys:
                holders[node] = sorted(keys)
        s.detail["user_keys"] = holders
        expect(len(holders) == 1, f"user {USER}'s keys are not on one master: {holders}")


def run_all(check: Check, tmp: Path, key: str, ca: Path | None) -> None:
    """The scale-out steps, after the base stack's; the caller's `down -v` ends them."""
    port, stats_port = free_port(), free_port()
    extra = tmp / "compose.scale.yml"
    extra.write_text(lb_override(port, stats_port, key, ca))
    scaled = Stack(extra, files=(*FILES, SCALE))
    lb = Balancer(port, stats_port, key)
    slots = spread(check, scaled, lb)
    victim = stopped_gets_nothing(check, lb, slots)
    loading_gets_nothing(check, lb, victim)
    cluster(check, scaled, Stack(extra, files=(*FILES, CLUSTER, SCALE)), lb, key)


def teardown_stack(tmp: Path, key: str, ca: Path | None) -> Stack:
    """A stack over every compose file, so `down -v` removes every service and volume any
    step started (the cluster's masters and their volumes too)."""
    extra = tmp / "compose.all.yml"
    extra.write_text(lb_override(0, 0, key, ca))
    return Stack(extra, files=(*FILES, CLUSTER, SCALE))
