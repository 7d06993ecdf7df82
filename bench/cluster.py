"""Redis Cluster benchmark: what the cluster client costs per request, against one Redis.

    .venv/bin/python -m bench.cluster           # about 5 min on 2 cores
    .venv/bin/python -m bench.cluster --quick   # 2 s runs, results to a temp folder

One run, same machine, same bundle (ML-100k ua.base, trained briefly: serving cost does
not depend on how well), same users loaded into both stores:

* one redis-server, and a Redis Cluster of three masters (local redis-server processes,
  no replicas), AOF off in both (bench.online measures the AOF);
* `fmrec serve` (one worker) on each, with the near cache on (the default) and off (every
  read goes to Redis: the cluster client's own cost);
* cached `/recommend` (every user primed first) and `POST /ratings` (batches of
  `--batch` events of random ML-100k users, never-seen event ids, so every event runs the
  Lua script; on the cluster one script per slot of the batch), wrk, `--rounds` rounds
  with the order of the two stores swapped each round; a ratio is the median of the
  rounds' cluster / single figures.

On 2 cores the three masters, the server and wrk share the cores, so the cluster cannot
be faster; the target is the cost per cached read: cluster within 15% of one Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from app.settings import Settings
from app.store import load_dataset_users
from bench.common import RESULTS, machine, table, write_json
from bench.serve import (
    REPO,
    Redis,
    Run,
    Server,
    body_files,
    default_data_dir,
    fmrec_server,
    measure,
    prime,
    process_cpu_seconds,
    servers,
    trained_bundle,
    wrk,
)
from model.bundle import Bundle
from model.data import Dataset
from model.data.movielens import read_movielens
from model.features import movielens_spec
from tests.support.redis_cluster import RedisCluster3

TARGET_CACHED_READ_RATIO = 0.85  # cluster req/s of cached /recommend, of one Redis's
T0 = 900_000_000
ACCEPTED = re.compile(r'^fmrec_rating_events_total\{outcome="accepted"\} (\S+)$', re.M)


def rating_bodies(path: Path, data: Dataset, catalog_ids: np.ndarray, tag: str,
                  batch: int, count: int, seed: int) -> Path:
    """`count` POST /ratings bodies of `batch` events each, event ids unique to `tag`."""
    rng = np.random.default_rng(seed)
    users = np.unique(data.train.user.astype(str))
    movies = catalog_ids.astype(str)
    with path.open("w") as out:
        for n in range(count):
            picked_users = rng.choice(users, size=batch)
            picked_movies = rng.choice(movies, size=batch)
            events = [{"event_id": f"{tag}-{n}-{k}", "user_id": str(u), "movie_id": str(m),
                       "rating": float(rng.integers(1, 6)), "timestamp": T0 + n}
                      for k, (u, m) in enumerate(zip(picked_users, picked_movies,
                                                     strict=True))]
            out.write(json.dumps({"events": events}, separators=(",", ":")) + "\n")
    return path


def accepted_events(server: Server) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    found = ACCEPTED.search(text)
    return float(found.group(1)) if found else 0.0


def redis_cpu(pids: Sequence[int | None]) -> float:
    return sum(process_cpu_seconds(p) for p in pids)


def measure_ratings(server: Server, warm: Path, timed: Path, args: argparse.Namespace,
                    redis_pids: Sequence[int | None]) -> dict[str, Any]:
    """Warm up on one body file, then a timed wrk run on another (new event ids)."""
    wrk(server.url, "/ratings", warm, args.warmup, args.connections, args.threads)
    accepted0, cpu0, redis0 = accepted_events(server), server.cpu_seconds(), redis_cpu(
        redis_pids)
    got = wrk(server.url, "/ratings", timed, args.duration, args.connections, args.threads)
    seconds = got["duration_us"] / 1e6
    accepted = accepted_events(server) - accepted0
    errors = sum(got[k] for k in ("connect_errors", "read_errors", "write_errors",
                                  "status_errors", "timeouts"))
    result = {"requests_per_s": got["requests"] / seconds, "events_per_s": accepted / seconds,
              "accepted": accepted, "errors": errors,
              "p50_ms": got["p50_us"] / 1e3, "p99_ms": got["p99_us"] / 1e3,
              "server_cpu_ms_per_event": 1e3 * (server.cpu_seconds() - cpu0) / max(accepted, 1),
              "redis_cores": (redis_cpu(redis_pids) - redis0) / seconds}
    print(f"  {server.name:<28} POST /ratings {result['events_per_s']:8.0f} events/s  p50 "
          f"{result['p50_ms']:6.2f} ms" + (f"  errors {errors}" if errors else ""), flush=True)
    return result


def cluster_server(name: str, bundle: Path, url: str, work: Path, near: bool) -> Server:
    server = fmrec_server(name, bundle, url, work, batching=True)
    server.env.update({"FMREC_ALLOW_UNAUTHENTICATED_WRITES": "true",  # loopback only
                       "FMREC_REDIS_CLUSTER": str(".cluster" in name).lower()})
    if not near:
        server.env["FMREC_NEAR_CACHE_SIZE"] = "0"
    return server


def ratios(rounds: list[dict[str, Any]], key: str, single: str, clustered: str) -> float:
    return float(statistics.median(r[clustered][key] / r[single][key] for r in rounds))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=default_data_dir())
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--batch", type=int, default=10, help="events per POST /ratings")
    parser.add_argument("--bundles", type=Path, default=REPO / "bundles" / "bench")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.set_defaults(profile=False)  # bench.serve.measure can py-spy; not here
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None or shutil.which("redis-cli") is None:
        print("bench.cluster: error: needs wrk and redis-server/redis-cli (apt-get install "
              "wrk redis-server)", file=sys.stderr)
        return 2
    if not (args.data / "ua.base").is_file():
        print(f"bench.cluster: error: no ML-100k at {args.data}", file=sys.stderr)
        return 2
    if args.quick:
        args.duration, args.warmup, args.rounds = 2.0, 1.0, 1
    out_dir = args.out or (Path(tempfile.gettempdir()) / "fmrec-bench" if args.quick
                           else RESULTS)
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fmrec-cluster-")))
        ml = read_movielens(args.data, "ua")
        bundle = trained_bundle(ml, movielens_spec(), args.bundles / "ml-100k", False)
        catalog = Bundle(bundle).catalog.ids
        single = Redis(work)
        stack.callback(single.close)
        (work / "cluster").mkdir()
        cluster = RedisCluster3(work / "cluster", appendonly=False).start()
        stack.callback(cluster.stop)
        for url, is_cluster in ((single.url(0), False), (cluster.url, True)):
            asyncio.run(load_dataset_users(Settings(  # a busy machine: a generous timeout
                redis_url=url, redis_cluster=is_cluster, redis_timeout_s=30), ml))
        pids = {"single": [single.pid],
                "cluster": [n.process.pid if n.process else None for n in cluster.nodes]}
        urls = {"single": single.url(0), "cluster": cluster.url}
        recommend = body_files(work, "ml", ml, catalog)["recommend"]
        names = [f"fmrec.{store}.{'near' if near else 'nonear'}"
                 for near in (True, False) for store in ("single", "cluster")]
        specs = [cluster_server(n, bundle, urls[n.split(".")[1]], work, n.endswith(".near"))
                 for n in names]
        running = stack.enter_context(servers(specs))
        for name in names:
            prime(running[name], "/recommend", recommend)
        per_round: dict[str, list[dict[str, Any]]] = {"recommend": [], "ratings": []}
        count = max(200, int(1500 * args.duration / max(args.batch, 1)))
        for round_ in range(args.rounds):
            order = names if round_ % 2 == 0 else [*names[1::-1], *names[:1:-1]]
            print(f"Round {round_ + 1}/{args.rounds}", flush=True)
            results: dict[str, Any] = {}
            for name in order:
                run = Run(name, f"{name} /recommend cached", name, "/recommend", "recommend")
                results[name] = measure(run, running[name], recommend, args,
                                        pids[name.split(".")[1]][0])
            per_round["recommend"].append(results)
            results = {}
            for name in order:
                files = [rating_bodies(work / f"r-{name}-{round_}-{phase}.jsonl", ml, catalog,
                                       f"{name}-{round_}-{phase}", args.batch,
                                       count if phase == "timed" else count // 3,
                                       seed=round_) for phase in ("warm", "timed")]
                results[name] = measure_ratings(running[name], *files, args,
                                                pids[name.split(".")[1]])
            per_round["ratings"].append(results)
    summary = {}
    for near in ("near", "nonear"):
        single_name, cluster_name = f"fmrec.single.{near}", f"fmrec.cluster.{near}"
        summary[near] = {
            "recommend_rps_ratio": ratios(per_round["recommend"], "requests_per_s",
                                          single_name, cluster_name),
            "recommend_cpu_ms_ratio": ratios(per_round["recommend"],
                                             "server_cpu_ms_per_request", single_name,
                                             cluster_name),
            "ratings_events_ratio": ratios(per_round["ratings"], "events_per_s",
                                           single_name, cluster_name),
            **{f"{kind}_{store}_median": statistics.median(
                r[f"fmrec.{store}.{near}"][key] for r in per_round[kind])
               for kind, key in (("recommend", "requests_per_s"), ("ratings", "events_per_s"))
               for store in ("single", "cluster")},
            **{f"recommend_{store}_cpu_ms": statistics.median(
                r[f"fmrec.{store}.{near}"]["server_cpu_ms_per_request"]
                for r in per_round["recommend"]) for store in ("single", "cluster")},
            **{f"ratings_{store}_redis_cores": statistics.median(
                r[f"fmrec.{store}.{near}"]["redis_cores"] for r in per_round["ratings"])
               for store in ("single", "cluster")},
        }
    verdict = summary["nonear"]["recommend_rps_ratio"] >= TARGET_CACHED_READ_RATIO
    out = {
        "setup": {"machine": machine(), "duration": args.duration, "warmup": args.warmup,
                  "rounds": args.rounds, "connections": args.connections,
                  "threads": args.threads, "batch": args.batch, "masters": 3,
                  "load_average": [load_before, os.getloadavg()[0]],
                  "users": len(set(ml.train.user.astype(str)))},
        "notes": ["2 shared cores: wrk, the server and every redis-server compete, and other "
                  "developers' work ran too (load average above): absolute numbers are "
                  "noisy, compare the same-run ratios",
                  "ratio = median over rounds of cluster / single (the order swapped each "
                  "round)"],
        "summary": summary,
        "target": {"cached_read_ratio_at_least": TARGET_CACHED_READ_RATIO,
                   "measured_without_near_cache": summary["nonear"]["recommend_rps_ratio"],
                   "met": verdict},
        "rounds": per_round,
        "wall_seconds": time.perf_counter() - started,
    }
    rows = [[near, s["recommend_single_median"], s["recommend_cluster_median"],
             s["recommend_rps_ratio"], s["recommend_single_cpu_ms"],
             s["recommend_cluster_cpu_ms"], s["ratings_single_median"],
             s["ratings_cluster_median"], s["ratings_events_ratio"]]
            for near, s in summary.items()]
    print()
    print(table("Redis Cluster (3 masters) vs one Redis, same run",
                ["near cache", "rec req/s 1", "rec req/s 3", "ratio", "CPU ms 1", "CPU ms 3",
                 "events/s 1", "events/s 3", "ratio"], rows))
    path = write_json("cluster", out, out_dir)
    print(f"\nwrote {path} in {out['wall_seconds']:.0f} s; cached-read target "
          f"{'met' if verdict else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
