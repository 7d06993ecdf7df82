"""Soak: a real `fmrec serve` and a real redis-server on loopback, driven for minutes by a
mix of /predict, /recommend and /ratings, with Redis faults injected on a schedule.

    .venv/bin/python -m bench.soak                      # 180 s, writes bench/results/soak.json
    .venv/bin/python -m bench.soak --seconds 600 --concurrency 32 --no-faults

What it checks and reports (tests/bench/test_soak.py runs the same code for ~25 s):

* requests per route and status, and latency percentiles: no 5xx, except a /ratings
  batch refused with 503 + Retry-After while Redis cannot take it, which the client
  sends again (as a client must) and reports as "refused";
* ratings: every event has its own (user, movie), so what Redis holds afterwards can be
  compared with what was acknowledged: lost = acknowledged but not stored (or stored
  with another value), duplicated = accepted more than once (the sum of `accepted`
  over all answers against the events stored);
* memory: the server's RSS sampled every second; growth after the warm-up must stay
  bounded (a leak shows as steady growth);
* faults (unless --no-faults): every `fault_every_s`, Redis is paused past the timeout
  (CLIENT PAUSE) or filled up (maxmemory 1, noeviction) for a moment, alternately;
* reloads (--reloads, 50 by default): POST /admin/reload of the served bundle, spread
  over the run; RSS at the end must stay within 1.2x of RSS just after the first one
  (each reload loads a second copy of the model beside the first: what must not pile up).

Loopback only; bounded in time and in request count.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis

from app.redis_layout import ratings_key
from bench.common import table, write_json

KEY = "soak-key-0123456789abcdef0123"


@dataclass
class SoakConfig:
    seconds: float = 180.0
    concurrency: int = 16
    max_requests: int = 2_000_000
    warmup_s: float = 15.0  # RSS growth is measured from here on
    mix: tuple[float, float, float] = (0.5, 0.3, 0.2)  # predict, recommend, ratings
    movies_per_predict: int = 10
    events_per_batch: int = 5
    faults: bool = True
    fault_every_s: float = 20.0
    fault_length_s: float = 1.0
    reloads: int = 0
    seed: int = 0


@dataclass
class Target:
    """What the load is aimed at: the server, its Redis, and the ids to use."""

    url: str
    rss: Callable[[], int]
    redis_url: str
    users: Sequence[str]  # users loaded into the store
    movies: Sequence[str]  # catalog movie ids
    rating_range: tuple[float, float]


@dataclass
class Tally:
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    refused_batches: int = 0  # /ratings 503 + Retry-After, sent again
    acknowledged: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    accepted: int = 0
    duplicates: int = 0
    stale: int = 0
    faults: list[dict[str, Any]] = field(default_factory=list)
    rss: list[tuple[float, int]] = field(default_factory=list)
    reloads: Counter[int] = field(default_factory=Counter)  # status -> count
    rss_after_first_reload: int | None = None


class Soak:
    def __init__(self, target: Target, config: SoakConfig) -> None:
        self.target = target
        self.config = config
        self.tally = Tally()
        self.events = itertools.count()
        self.requests = 0
        self.start = 0.0
        self.reloading = False  # the load goes on until the last reload is done

    def _event(self, n: int, rng: random.Random) -> dict[str, Any]:
        """Event n: its own (user, movie) pair, so every stored rating traces to one event."""
        movies = self.target.movies
        low, high = self.target.rating_range
        return {"event_id": f"soak-{n}", "user_id": f"soak-u{n // len(movies)}",
                "movie_id": movies[n % len(movies)],
                # rounded, then kept in range: rounding may step past a range end
                "rating": min(high, max(low, round(rng.uniform(low, high), 3))),
                "timestamp": 900_000_000 + n}

    async def _post(self, client: httpx.AsyncClient, route: str, body: dict[str, Any]
                    ) -> httpx.Response:
        start = time.perf_counter()
        response = await client.post(route, json=body)
        self.tally.latency[route].append(time.perf_counter() - start)
        self.tally.statuses[(route, response.status_code)] += 1
        self.requests += 1
        return response

    async def _ratings(self, client: httpx.AsyncClient, rng: random.Random) -> None:
        events = [self._event(next(self.events), rng)
                  for _ in range(self.config.events_per_batch)]
        deadline = time.monotonic() + 60
        while True:  # a refused batch is sent again until it is stored
            response = await self._post(client, "/ratings", {"events": events})
            if response.status_code == 200:
                break
            if response.status_code != 503 or "retry-after" not in response.headers:
                return  # counted in statuses; the events were never acknowledged
            self.tally.refused_batches += 1
            if time.monotonic() > deadline:
                return
            await asyncio.sleep(min(1.0, float(response.headers["retry-after"])))
        body = response.json()
        self.tally.accepted += body["accepted"]
        self.tally.duplicates += body["duplicates"]
        self.tally.stale += body["stale"]
        for e in events:
            self.tally.acknowledged[e["event_id"]] = (
                e["user_id"], e["movie_id"], f"{e['rating']!r}:{e['timestamp']}")

    async def _worker(self, client: httpx.AsyncClient, seed: int, stop: float) -> None:
        rng = random.Random(seed)
        users, movies = self.target.users, self.target.movies
        while self._running(stop) and self.requests < self.config.max_requests:
            kind = rng.choices(("predict", "recommend", "ratings"), self.config.mix)[0]
            if rng.random() < 0.2:  # a cold-start user, sent inline
                user: dict[str, Any] = {"id": f"cold-{rng.randrange(10**6)}",
                                        "age": rng.randrange(15, 80),
                                        "rated": rng.sample(list(movies), 5)}
            else:
                user = {"id": rng.choice(users)}
            if kind == "predict":
                picked = rng.sample(list(movies), self.config.movies_per_predict)
                await self._post(client, "/predict", {
                    "user": user, "movies": [{"id": m} for m in picked]})
            elif kind == "recommend":
                await self._post(client, "/recommend", {"user": user, "n": 10})
            else:
                await self._ratings(client, rng)

    async def _sample_rss(self, stop: float) -> None:
        while self._running(stop):
            self.tally.rss.append((time.monotonic() - self.start, self.target.rss()))
            await asyncio.sleep(1.0)

    async def _faults(self, stop: float) -> None:
        """Pause Redis past the timeout, or fill it up, for fault_length_s; alternately."""
        admin = redis.Redis.from_url(self.target.redis_url)
        kinds = itertools.cycle(("pause", "full"))
        while True:
            await asyncio.sleep(self.config.fault_every_s)
            if time.monotonic() + self.config.fault_length_s + 2 > stop:
                return
            kind = next(kinds)
            at = round(time.monotonic() - self.start, 1)
            length = self.config.fault_length_s
            if kind == "pause":
                await asyncio.to_thread(admin.client_pause, int(length * 1000))
                await asyncio.sleep(length)
            else:
                await asyncio.to_thread(admin.config_set, "maxmemory-policy", "noeviction")
                await asyncio.to_thread(admin.config_set, "maxmemory", "1")
                await asyncio.sleep(length)
                await asyncio.to_thread(admin.config_set, "maxmemory", "0")
            self.tally.faults.append({"kind": kind, "at_s": at, "seconds": length})

    def _running(self, stop: float) -> bool:
        return time.monotonic() < stop or self.reloading

    async def _reloads(self, client: httpx.AsyncClient) -> None:
        """`reloads` reloads of the served bundle, spread over the run; all of them are
        made (on a slow machine the run lasts until the last one is done)."""
        every = self.config.seconds / (self.config.reloads + 1)
        self.reloading = True
        try:
            for n in range(self.config.reloads):
                await asyncio.sleep(max(0.0, self.start + (n + 1) * every - time.monotonic()))
                response = await client.post("/admin/reload", json={})
                self.tally.reloads[response.status_code] += 1
                if self.tally.rss_after_first_reload is None:
                    self.tally.rss_after_first_reload = self.target.rss()
        finally:
            self.reloading = False

    async def run(self) -> dict[str, Any]:
        self.start = time.monotonic()
        stop = self.start + self.config.seconds
        limits = httpx.Limits(max_connections=self.config.concurrency)
        async with httpx.AsyncClient(base_url=self.target.url, limits=limits, timeout=60,
                                     headers={"X-API-Key": KEY}) as client:
            tasks = [self._worker(client, self.config.seed * 1000 + n, stop)
                     for n in range(self.config.concurrency)]
            tasks.append(self._sample_rss(stop))
            if self.config.faults:
                tasks.append(self._faults(stop))
            if self.config.reloads:
                tasks.append(self._reloads(client))
            await asyncio.gather(*tasks)
        elapsed = time.monotonic() - self.start
        self.tally.rss.append((elapsed, self.target.rss()))
        return self.report(elapsed)

    def _ratings_check(self) -> dict[str, Any]:
        """What Redis holds for the soak users against what was acknowledged."""
        client = redis.Redis.from_url(self.target.redis_url, decode_responses=True)
        stored: dict[tuple[str, str], str] = {}
        prefix, suffix = ratings_key("soak-u*").split("soak-u*")
        for key in client.scan_iter(match=ratings_key("soak-u*"), count=1000):
            uid = str(key).removeprefix(prefix).removesuffix(suffix)
            for movie, value in dict(client.hgetall(key)).items():
                stored[(uid, str(movie))] = str(value)
        lost = sum(stored.get((uid, movie)) != value
                   for uid, movie, value in self.tally.acknowledged.values())
        sent = next(self.events)
        return {
            "events_sent": sent,
            "events_acknowledged": len(self.tally.acknowledged),
            "events_stored": len(stored),
            "accepted_total": self.tally.accepted,
            "duplicates_reported": self.tally.duplicates,  # replies lost, batch resent
            "stale": self.tally.stale,
            "batches_refused_503_then_resent": self.tally.refused_batches,
            "lost": lost,
            "duplicated": max(0, self.tally.accepted - len(stored)),
            "stored_never_acknowledged": len(stored) - (len(self.tally.acknowledged) - lost),
        }

    def report(self, elapsed: float) -> dict[str, Any]:
        statuses = self.tally.statuses
        refused = sum(n for (route, status), n in statuses.items()
                      if route == "/ratings" and status == 503)
        server_errors = sum(n for (_, status), n in statuses.items() if status >= 500)
        rss = self.tally.rss
        after_warmup = [r for t, r in rss if t >= min(self.config.warmup_s, elapsed / 2)]
        baseline = after_warmup[0] if after_warmup else rss[0][1]
        routes = {}
        for route, seconds in sorted(self.tally.latency.items()):
            ms = np.array(seconds) * 1000
            routes[route] = {
                "requests": len(seconds),
                "statuses": {str(s): n for (r, s), n in sorted(statuses.items()) if r == route},
                "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
                "max_ms": float(ms.max())}
        return {
            "config": asdict(self.config),
            "seconds": round(elapsed, 1),
            "requests": self.requests,
            "requests_per_s": round(self.requests / elapsed, 1),
            "routes": routes,
            "server_errors_5xx": server_errors - refused,
            "ratings_refused_503": refused,
            "faults": self.tally.faults,
            "ratings": self._ratings_check(),
            "reloads": self._reload_report(),
            "rss_mb": {
                "start": round(rss[0][1] / 2**20, 1),
                "after_warmup": round(baseline / 2**20, 1),
                "end": round(rss[-1][1] / 2**20, 1),
                "max": round(max(r for _, r in rss) / 2**20, 1),
                "growth_after_warmup": round(rss[-1][1] / baseline - 1, 4),
                "samples": [(round(t, 1), round(r / 2**20, 1)) for t, r in rss],
            },
        }


    def _reload_report(self) -> dict[str, Any]:
        first = self.tally.rss_after_first_reload
        end = self.tally.rss[-1][1]
        return {"statuses": {str(s): n for s, n in sorted(self.tally.reloads.items())},
                "rss_after_first_mb": round(first / 2**20, 1) if first else None,
                "rss_end_over_after_first": round(end / first, 4) if first else None}


def run_soak(target: Target, config: SoakConfig) -> dict[str, Any]:
    return asyncio.run(Soak(target, config).run())


def summary(result: dict[str, Any]) -> str:
    rows = [[route, r["requests"], json.dumps(r["statuses"]), r["p50_ms"], r["p99_ms"]]
            for route, r in result["routes"].items()]
    out = [table(f"soak: {result['requests']:,} requests in {result['seconds']} s "
                 f"({result['requests_per_s']} req/s)",
                 ["route", "requests", "statuses", "p50 ms", "p99 ms"], rows)]
    ratings = result["ratings"]
    rss = result["rss_mb"]
    out.append(f"5xx (other than /ratings 503 + Retry-After): {result['server_errors_5xx']}; "
               f"ratings refused with 503 and resent: {result['ratings_refused_503']}")
    out.append(f"faults injected: {len(result['faults'])} "
               f"({', '.join(f['kind'] for f in result['faults']) or 'none'})")
    out.append(f"ratings: {ratings['events_sent']:,} sent, {ratings['events_acknowledged']:,} "
               f"acknowledged, {ratings['events_stored']:,} stored, lost {ratings['lost']}, "
               f"duplicated {ratings['duplicated']}")
    reloads = result["reloads"]
    if reloads["statuses"]:
        out.append(f"reloads: {json.dumps(reloads['statuses'])}; RSS after the first "
                   f"{reloads['rss_after_first_mb']} MB, at the end "
                   f"{reloads['rss_end_over_after_first']:.3f}x that")
    out.append(f"server RSS MB: start {rss['start']}, after warm-up {rss['after_warmup']}, "
               f"end {rss['end']}, max {rss['max']} "
               f"(growth after warm-up {rss['growth_after_warmup']:+.1%})")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    from app.store import Store, user_records
    from model.bundle import Bundle
    from model.data.synthetic import synthetic
    from model.pipeline import fit_and_save
    from model.train import TrainConfig
    from tests.support.api_client import service_settings
    from tests.support.live_server import LiveServer
    from tests.support.redis_server import RedisServer

    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--seconds", type=float, default=SoakConfig.seconds)
    parser.add_argument("--concurrency", type=int, default=SoakConfig.concurrency)
    parser.add_argument("--max-requests", type=int, default=SoakConfig.max_requests)
    parser.add_argument("--no-faults", action="store_true")
    parser.add_argument("--reloads", type=int, default=50,
                        help="reloads of the served bundle during the run")
    parser.add_argument("--ratings", type=int, default=50_000,
                        help="size of the synthetic data set the model is trained on")
    parser.add_argument("--out", type=Path, help="results folder (default bench/results)")
    args = parser.parse_args(argv)
    config = SoakConfig(seconds=args.seconds, concurrency=args.concurrency,
                        max_requests=args.max_requests, faults=not args.no_faults,
                        reloads=args.reloads)

    work = Path(tempfile.mkdtemp(prefix="fmrec-soak-"))
    data, spec = synthetic(args.ratings, seed=0)
    print(f"training a model on {len(data.train):,} synthetic ratings ...", flush=True)
    fit_and_save(data, spec, TrainConfig(epochs=3), work / "bundle", progress=False)
    bundle = Bundle(work / "bundle")
    redis_server = RedisServer(work).start()
    train = data.train

    async def load() -> None:
        store = Store.open(service_settings(redis_url=redis_server.url))
        try:
            await store.load_users(user_records(data.users, train.user, train.item,
                                                train.rating, train.timestamp))
        finally:
            await store.close()

    asyncio.run(load())
    server = LiveServer({"FMREC_BUNDLE": str(work / "bundle"),
                         "FMREC_REDIS_URL": redis_server.url, "FMREC_API_KEYS": KEY,
                         "FMREC_LOG_LEVEL": "warning"}, work / "serve.log").start()
    try:
        target = Target(server.url, server.rss_bytes, redis_server.url,
                        sorted(set(map(str, train.user))),
                        [str(i) for i in bundle.catalog.ids], bundle.rating_range)
        print(f"soak: {config.seconds:g} s, {config.concurrency} clients, "
              f"faults {'on' if config.faults else 'off'} ...", flush=True)
        result = run_soak(target, config)
    finally:
        server.stop()
        redis_server.kill()
    result["model"] = {"ratings": len(train), "movies": len(bundle.catalog), "k": bundle.k}
    print(summary(result))
    path = write_json("soak", result, *([args.out] if args.out else []))
    print(f"wrote {path}")
    ok = (result["server_errors_5xx"] == 0 and result["ratings"]["lost"] == 0
          and result["ratings"]["duplicated"] == 0
          and result["rss_mb"]["growth_after_warmup"] < 0.2
          and set(result["reloads"]["statuses"]) <= {"200"}
          and (result["reloads"]["rss_end_over_after_first"] or 0) < 1.2)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
