"""Online updates benchmark: POST /ratings throughput, and one event's O(k) update against
recomputing the user from scratch.

    .venv/bin/python -m bench.online           # < 10 min on 2 cores (about 2)
    .venv/bin/python -m bench.online --quick   # smaller counts, results to a temp folder

One run, one redis-server (AOF on, appendfsync everysec, as in docker-compose.yml), a
bundle trained briefly on ML-100k ua.base (synthetic data when ML-100k is missing; the
costs measured here do not depend on how well the model is trained), k = 16:

1. One event for a user whose sums are cached, history 100 and 1,000: the Lua script
   alone (claim, store, add the movie's row to [C, B, A], n, last) and a whole one-event
   ingestion (`apply_events`: one side_sums call + the script), against recomputing that
   user's history part from scratch as a cache miss does (read the ratings, encode |N|
   single-movie rows, one side_sums call, sum them, write back); also the NumPy part of
   each alone (add one row against sum |N| rows).
2. Events per second through the store (`apply_events`) and through the app (POST
   /ratings over in-process ASGI: JSON, validation, the route), batches of 1, 100, 1,000.
3. `fmrec replay` of ua.test through `fmrec serve` (real HTTP, batches of 500), every
   user's sums cached first so each event takes the O(k) update path.
Afterwards the cached sums of sampled users are checked against a recomputation.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis
from pydantic import SecretStr

from app.cli import main as fmrec
from app.main import create_app
from app.online import apply_events, history_rows, reads_stars, script_args
from app.redis_layout import (
    APPLY_EVENTS,
    VERSION_FIELD,
    parse_fields,
    parse_rating,
    ratings_key,
    sums_key,
    version_key,
)
from app.schemas import RatingEvent
from app.scorer import latest
from app.settings import Settings
from app.store import Rating, Store, UserData, user_records
from app.user_sums import HistorySums
from bench.common import RESULTS, fmt, ratio, table, write_json
from bench.serve import Redis, default_data_dir, fmrec_server, load_users, trained_bundle
from model.bundle import Bundle
from model.data import Dataset
from model.data.movielens import read_movielens
from model.data.synthetic import synthetic
from model.features import FeatureSpec, movielens_spec

T0 = 900_000_000  # after every ML-100k rating: bench events are the newest
HISTORY_SIZES = (100, 1000)
API_KEY = "bench-online"


class Events:
    """Fresh rating events for a pool of users: unique ids, random catalog movies,
    increasing times (every event is the user's newest)."""

    def __init__(self, users: Sequence[str], movies: Sequence[str], seed: int = 0) -> None:
        self.users, self.movies = list(users), list(movies)
        self.rng = np.random.default_rng(seed)
        self.count = 0

    def take(self, n: int, user: str | None = None, new_movie: bool = False
             ) -> list[RatingEvent]:
        """`n` events (of `user`, or random users), each of a movie new to its user if
        `new_movie` (so the script adds a row), else of a random catalog movie."""
        out = []
        for _ in range(n):
            self.count += 1
            uid = user or self.users[int(self.rng.integers(len(self.users)))]
            movie = f"new-{self.count}" if new_movie else self.movies[
                int(self.rng.integers(len(self.movies)))]
            out.append(RatingEvent(event_id=f"bench-{self.count}", user_id=uid,
                                   movie_id=movie, rating=float(self.rng.integers(1, 6)),
                                   timestamp=T0 + self.count))
        return out


async def timed(call: Callable[[], Awaitable[Any]], reps: int) -> float:
    """Median seconds of one call (after one untimed call)."""
    await call()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        await call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def best_of(call: Callable[[], Any], reps: int) -> float:
    """Median seconds of a quick synchronous call, timed in groups of 100."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(100):
            call()
        times.append((time.perf_counter() - start) / 100)
    return statistics.median(times)


async def recompute(store: Store, bundle: Bundle, uid: str) -> None:
    """What a cache miss does for the history part: read, encode, sum, write back."""
    record = await store.read_user(bundle.model_id, uid, widths=bundle.widths, with_ratings=True)
    ratings = record.ratings or {}
    history = await asyncio.to_thread(history_parts, bundle, ratings)
    await store.write_sums(bundle.model_id, uid, None, history, version=record.version)


def history_parts(bundle: Bundle, ratings: Mapping[str, Rating]) -> tuple[HistorySums, ...]:
    """Every head's history part of a stored history, recomputed from scratch."""
    out = []
    for head in bundle.heads.values():
        rows = head.side_sums(head.history_rows(list(ratings),
                                                [r.rating for r in ratings.values()]))
        out.append(HistorySums.of_rows(rows, 0, len(ratings), *latest(ratings)))
    return tuple(out)


# ------------------------------------------------------------------------- measurements


async def event_cost(store: Store, bundle: Bundle, events: Events, size: int, reps: int
                     ) -> dict[str, Any]:
    """Part 1 for the user with `size` ratings; the recomputation first, while |N| = size."""
    uid = f"h{size}"
    # the script's calls: events of movies new to the user, their rows computed beforehand
    prepared = events.take(reps + 1, user=uid, new_movie=True)
    calls = iter(script_args([e], [row], bundle.model_id, store.ttl_s, reads_stars(bundle))
                 for e, row in zip(prepared, history_rows(
                     bundle, [e.movie_id for e in prepared], [e.rating for e in prepared]),
                     strict=True))

    async def recompute_user() -> None:
        await recompute(store, bundle, uid)

    async def script_only() -> None:
        await store.run_script(APPLY_EVENTS, *next(calls))

    async def ingest() -> None:
        await apply_events(events.take(1, user=uid, new_movie=True), bundle, store)

    recompute_s = await timed(recompute_user, reps)
    script_s = await timed(script_only, reps)
    ingest_s = await timed(ingest, reps)
    rows = bundle.side_sums(bundle.heads["rating"].history_rows(
        [str(m) for m in bundle.catalog.ids[:size]]))
    part = HistorySums.of_rows(rows, 0, size, None)

    def sum_all() -> None:
        HistorySums.of_rows(rows, 0, size, None)

    def add_one() -> None:
        part.C + float(rows.L[0]), part.A + rows.s[0], part.B + float(rows.q[0])

    sum_s, add_s = best_of(sum_all, max(5, reps // 10)), best_of(add_one, max(5, reps // 10))
    print(f"  history {size}: event {ingest_s * 1e3:.2f} ms, recompute "
          f"{recompute_s * 1e3:.2f} ms", flush=True)
    return {"history": size, "script_ms": script_s * 1e3, "ingest_ms": ingest_s * 1e3,
            "recompute_ms": recompute_s * 1e3,
            "recompute_over_ingest": ratio(recompute_s, ingest_s),
            "recompute_over_script": ratio(recompute_s, script_s),
            "numpy_add_us": add_s * 1e6, "numpy_sum_us": sum_s * 1e6,
            "numpy_sum_over_add": ratio(sum_s, add_s)}


async def store_throughput(store: Store, bundle: Bundle, events: Events, batch: int,
                           total: int) -> dict[str, Any]:
    """Events of movies new to their users, as in `app_throughput`: every one takes the
    O(k) path (a re-rating with other stars would drop the user's part instead, which
    `check_cached` would then find missing)."""
    batches = [events.take(batch, new_movie=True) for _ in range(max(1, total // batch))]
    start = time.perf_counter()
    for b in batches:
        await apply_events(b, bundle, store)
    seconds = time.perf_counter() - start
    return {"path": "store (apply_events)", "batch": batch, "concurrency": 1,
            "events": batch * len(batches), "seconds": seconds}


async def app_throughput(client: httpx.AsyncClient, events: Events, batch: int, total: int,
                         concurrency: int) -> dict[str, Any]:
    bodies = [{"events": [e.model_dump() for e in events.take(batch, new_movie=True)]}
              for _ in range(max(1, total // batch))]
    queue = iter(bodies)

    async def sender() -> None:
        for body in queue:
            response = await client.post("/ratings", json=body)
            if response.status_code != 200 or response.json()["accepted"] != batch:
                raise RuntimeError(f"POST /ratings: {response.status_code} {response.text}")

    start = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(concurrency)))
    seconds = time.perf_counter() - start
    return {"path": "app (POST /ratings, ASGI)", "batch": batch, "concurrency": concurrency,
            "events": batch * len(bodies), "seconds": seconds}


def check_cached(url: str, bundle: Bundle, users: Sequence[str]) -> dict[str, Any]:
    """Cached history parts of `users` against a recomputation from their stored history."""
    client: Any = redis.Redis.from_url(url)
    worst, checked = 0.0, 0
    for uid in users:
        _, cached = parse_fields(client.hgetall(sums_key(bundle.model_id, uid)), bundle.widths)
        ver = client.hget(sums_key(bundle.model_id, uid), VERSION_FIELD) or b"0"
        if cached is None or ver != (client.get(version_key(uid)) or b"0"):
            raise RuntimeError(f"user {uid}: no current cached sums after the events")
        raw = client.hgetall(ratings_key(uid))
        ratings = {m.decode(): parse_rating(v) for m, v in raw.items()}
        for part, fresh in zip(cached, history_parts(bundle, ratings), strict=True):
            if (part.n, part.last_movie, part.last_time) != (
                    fresh.n, fresh.last_movie, fresh.last_time):
                raise RuntimeError(f"user {uid}: cached n/last differ from the stored history")
            worst = max(worst, abs(part.C - fresh.C), abs(part.B - fresh.B),
                        float(np.max(np.abs(part.A - fresh.A))))
        checked += 1
    return {"users": checked, "max_abs_difference": worst}


def replay_run(bundle: Bundle, bench_redis: Redis, data: Dataset, test_file: Path,
               logs: Path) -> dict[str, Any]:
    """Part 3: ua.test through `fmrec serve`, users loaded and their sums cached first."""
    url = bench_redis.url(1)
    load_users(url, data)
    server = fmrec_server("online", bundle.path, url, logs, batching=True)
    server.env["FMREC_API_KEYS"] = API_KEY
    server.start()
    try:
        server.wait_ready()
        users = sorted(set(data.test.user))

        async def cache_all() -> None:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                for uid in users:
                    response = await client.post("/predict", json={
                        "user": {"id": uid}, "movies": [{"id": "1"}]})
                    response.raise_for_status()

        asyncio.run(cache_all())
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = fmrec(["replay", str(test_file), "--url", server.url, "--batch-size", "500",
                          "--api-key", API_KEY])
        if code != 0:
            raise RuntimeError(f"fmrec replay failed ({code})")
        report = json.loads(out.getvalue())
        report["check"] = check_cached(url, bundle, users[:50])
        return report
    finally:
        server.stop()


# ------------------------------------------------------------------------------ setup


def data_and_test_file(data_dir: Path, folder: Path
                       ) -> tuple[Dataset, FeatureSpec, Path]:
    """ML-100k ua (its ua.test is the replayed file) or synthetic data (test split written
    out in the same format)."""
    if (data_dir / "ua.test").is_file():
        return read_movielens(data_dir, "ua"), movielens_spec(), data_dir / "ua.test"
    data, spec = synthetic(100_000, seed=0)
    path = folder / "synthetic.test"
    t = data.test
    path.write_text("".join(f"{u}\t{m}\t{r!r}\t{s}\n" for u, m, r, s in zip(
        t.user, t.item, t.rating.tolist(), t.timestamp.tolist(), strict=True)))
    return data, spec, path


def histories(bundle: Bundle) -> Iterator[UserData]:
    """The users of part 1: h100 and h1000 with that many catalog movies rated."""
    for size in HISTORY_SIZES:
        movies = bundle.catalog.ids[:size]
        if len(movies) < size:
            raise RuntimeError(f"the catalog has {len(movies)} movies, fewer than {size}")
        yield next(user_records({}, [f"h{size}"] * size, movies, np.full(size, 4.0),
                                T0 - size + np.arange(size)))


async def in_process(settings: Settings, bundle: Bundle, data: Dataset, args: argparse.Namespace
                     ) -> dict[str, Any]:
    """Parts 1 and 2, in one event loop, on Redis db 0."""
    store = Store.open(settings)
    try:
        await store.load_users(histories(bundle))
        users = sorted(set(data.train.user))
        for uid in users:  # every user's sums cached: events take the O(k) update path
            await recompute(store, bundle, uid)
        events = Events(users, [str(m) for m in bundle.catalog.ids])
        print("One event against recomputing the user", flush=True)
        costs = [await event_cost(store, bundle, events, size, args.reps)
                 for size in HISTORY_SIZES]
        print("Events per second", flush=True)
        runs = []
        for batch, total in ((1, args.events // 20), (100, args.events // 2),
                             (1000, args.events)):
            runs.append(await store_throughput(store, bundle, events, batch, total))
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://fmrec",
                                         headers={"X-API-Key": API_KEY}) as client:
                for batch, total, concurrency in ((1, args.events // 40, 1),
                                                  (1, args.events // 40, 16),
                                                  (100, args.events // 4, 1),
                                                  (1000, args.events // 2, 1)):
                    runs.append(await app_throughput(client, events, batch, total,
                                                     concurrency))
        for run in runs:
            run["events_per_s"] = run["events"] / run["seconds"]
            run["ms_per_request"] = run["seconds"] * 1e3 / (run["events"] / run["batch"])
            print(f"  {run['path']}, batch {run['batch']} x{run['concurrency']}: "
                  f"{run['events_per_s']:,.0f} events/s", flush=True)
        return {"event_cost": costs, "throughput": runs}
    finally:
        await store.close()


def report(out: dict[str, Any]) -> str:
    setup = out["setup"]
    cost_rows = [[c["history"], c["script_ms"], c["ingest_ms"], c["recompute_ms"],
                  f"{c['recompute_over_ingest']:.1f}x", f"{c['recompute_over_script']:.1f}x",
                  c["numpy_add_us"], c["numpy_sum_us"], f"{c['numpy_sum_over_add']:.0f}x"]
                 for c in out["event_cost"]]
    runs = [[r["path"], r["batch"], r["concurrency"], r["events"], r["events_per_s"],
             r["ms_per_request"]] for r in out["throughput"]]
    parts = [
        table(f"One event vs recomputing the user from scratch ({setup['data']}, k={setup['k']}"
              f", {setup['redis']}; medians; load average {setup['load_average_at_start']:.1f}"
              f" at start, {setup['load_average_at_end']:.1f} at end on {os.cpu_count()} cores)",
              ["|N(u)|", "script ms", "event ms", "recompute ms", "recompute/event",
               "recompute/script", "numpy add us", "numpy sum us", "sum/add"], cost_rows),
        table("Events per second", ["path", "batch", "concurrent", "events", "events/s",
                                    "ms/request"], runs)]
    replay = out.get("replay")
    if replay:
        parts.append(table(
            "fmrec replay through fmrec serve (HTTP, batches of 500, sums cached first)",
            ["file", "events", "accepted", "duplicates", "stale", "unknown", "seconds",
             "events/s"],
            [[Path(replay["file"]).name, replay["events"], replay["accepted"],
              replay["duplicates"], replay["stale"], replay["unknown_movies"],
              replay["seconds"], replay["events_per_s"]]]))
    checks = {"parts 1-2": out["check"], **({"replay": replay["check"]} if replay else {})}
    parts.append("Check, cached sums against a recomputation from the stored history: " +
                 "; ".join(f"{name}: {c['users']} users, max abs difference "
                           f"{fmt(c['max_abs_difference'])}" for name, c in checks.items()))
    return "\n\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.online",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data_dir(),
                        help="ML-100k folder (default: %(default)s; synthetic if missing)")
    parser.add_argument("--events", type=int, default=40_000,
                        help="events of the largest throughput run")
    parser.add_argument("--reps", type=int, default=200, help="timed calls per cost figure")
    parser.add_argument("--no-replay", action="store_true", help="skip part 3")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: small counts, results to a temp folder")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.reps = 4000, 20
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fmrec-bench-online-") as tmp:
        folder = Path(tmp)
        data, spec, test_file = data_and_test_file(args.data, folder)
        print(f"Data: {data.name}; training a bundle (3 epochs)", flush=True)
        bundle_path = trained_bundle(data, spec, folder / "bundle", retrain=True)
        bundle = Bundle(bundle_path)
        bench_redis = Redis(folder)
        try:
            redis.Redis.from_url(bench_redis.url(0)).config_set("appendonly", "yes")
            settings = Settings(bundle=bundle_path, redis_url=bench_redis.url(0),
                                api_keys=SecretStr(API_KEY), redis_timeout_s=5.0)
            load_users(bench_redis.url(0), data)
            out: dict[str, Any] = {"setup": {
                "data": data.name, "k": bundle.k, "movies": len(bundle.catalog),
                "users": len(set(data.train.user)), "redis": bench_redis.kind + ", AOF on",
                "events": args.events, "reps": args.reps,
                "load_average_at_start": os.getloadavg()[0]}}
            out.update(asyncio.run(in_process(settings, bundle, data, args)))
            out["check"] = check_cached(bench_redis.url(0), bundle,
                                        [*sorted(set(data.train.user))[:50], "h100", "h1000"])
            if not args.no_replay:
                print("fmrec replay through fmrec serve", flush=True)
                out["replay"] = replay_run(bundle, bench_redis, data, test_file, folder)
        finally:
            bench_redis.close()
    out["seconds"] = time.perf_counter() - started
    out["setup"]["load_average_at_end"] = os.getloadavg()[0]
    print()
    print(report(out))
    path = write_json("online", out, Path(tempfile.mkdtemp()) if args.quick else RESULTS)
    print(f"\nwrote {path} ({out['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
