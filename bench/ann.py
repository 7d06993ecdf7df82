"""Approximate top-N benchmark: recall and /recommend latency on a million-movie catalog.

    .venv/bin/python -m bench.ann              # or: make bench-ann (100k, then 1M movies)
    .venv/bin/python -m bench.ann --quick      # 20,000 movies, short runs, temp results

One model is trained on synthetic data (model/data/synthetic.py: 20,000 ratings by 1,200
users of 20,000 movies, few epochs: serving cost and recall depend on the catalog's sums,
not on how well a model learned); per catalog size N it is exported over a synthetic
catalog of N movies (`synthetic_catalog`: movie ids are hashed features, so the same
heads score any catalog) with an index on both heads (`ann_threshold` 1). For each size:

* index build time per head (from the bundle's metrics.json) and the bundle's size;
* recall@10 of the approximate path against the exact path, mean over every user with a
  history (at least 1,000): the same code as /recommend (`app.approximate`, default
  settings, rated movies excluded) against the engine's exact `top_n`;
* (largest size) /recommend p50/p99 and req/s under wrk, 16 connections, one uvicorn
  worker, cached users by id: the same bundle served with FMREC_ANN=true and =false, so
  the exact path is the peer measured in the same run.

The machine is shared: compare the approximate path to the exact one of the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from app.settings import Settings
from app.store import load_dataset_users
from bench.common import RESULTS, Table, ratio, write_json
from bench.serve import Redis, fmrec_server, prime, write_bodies, wrk
from model.blocks import item_raters, user_histories, user_payload
from model.bundle import HEADS, Bundle, HeadModel, Sums, save_bundle
from model.data import Dataset
from model.data.synthetic import synthetic, synthetic_catalog
from model.fm import FactorizationMachine

TARGET_RECALL = 0.95
TARGET_P99_MS = 20.0
CONNECTIONS = 16
USERS = 1200
RATINGS = 20_000
BASE_MOVIES = 20_000  # the catalog the base model is trained on
PROBE_SWEEP = (0.05, 0.1, 0.4)  # shares of the index's lists measured beside the default
RECALL_CHUNK = 32  # users ranked exactly per top_n call (a 1M-movie score matrix each)


def base_model(folder: Path) -> tuple[Dataset, Path]:
    """The synthetic users and a model trained on them (20,000 movies), trained once and
    reused from `folder`: its heads rank every catalog (movie ids are hashed features)."""
    from model.pipeline import fit_and_save
    from model.train import TrainConfig

    data, spec = synthetic(RATINGS, n_users=USERS, n_items=BASE_MOVIES, seed=0)
    out = folder / "base"
    if not (out / "model_id").is_file():
        started = time.perf_counter()
        fit_and_save(data, spec, TrainConfig(epochs=3), out, progress=False, ann_threshold=0)
        print(f"  trained {out} in {time.perf_counter() - started:.0f} s", flush=True)
    return data, out


def heads_of(bundle: Bundle) -> dict[str, HeadModel]:
    """A loaded bundle's heads as FMs again, to export over another catalog."""
    out = {}
    for name in HEADS:
        saved = getattr(bundle.model, name).fm
        fm = FactorizationMachine(int(saved.V.shape[0]), int(saved.V.shape[1]))
        fm.w0.assign(saved.w0)
        fm.w.assign(saved.w)
        fm.V.assign(saved.V)
        out[name] = HeadModel(fm, tuple(bundle.metrics["heads"][name]["fields"]))
    return out


def build(size: int, base: Bundle, data: Dataset, folder: Path) -> tuple[Path, dict[str, Any]]:
    """A bundle of the base model over a synthetic catalog of `size` movies, with indexes
    on both heads (`ann_threshold` 1)."""
    out = folder / f"ann-{size}"
    if (out / "model_id").is_file():  # built by an earlier run over the same base model
        print(f"  reusing {out}", flush=True)
        return out, describe(out, size, {"reused": True})
    started = time.perf_counter()
    raters = item_raters(data.train)
    items = {i: {**attrs, "raters": raters.get(i, [])}
             for i, attrs in synthetic_catalog(size, seed=1).items()}
    generated = time.perf_counter() - started
    metrics = {k: v for k, v in base.metrics.items() if k not in ("heads", "format_version")}
    started = time.perf_counter()
    save_bundle(out, heads_of(base), base.spec, items, metrics, ann_threshold=1)
    exported = time.perf_counter() - started
    info = describe(out, size, {"generate_seconds": round(generated, 1),
                                "export_seconds": round(exported, 1)})
    print(f"  {size:,} movies: catalog in {generated:.0f} s, exported in {exported:.0f} s, "
          f"bundle {info['bundle_bytes'] / 2**20:,.0f} MiB, index build "
          + ", ".join(f"{h} {s:.0f} s" for h, s in info["index_build_seconds"].items()),
          flush=True)
    return out, info


def describe(bundle: Path, size: int, extra: dict[str, Any]) -> dict[str, Any]:
    """Sizes and index build times of an exported bundle (from its metrics.json)."""
    files = {p.name: p.stat().st_size for p in bundle.rglob("*") if p.is_file()}
    described = json.loads((bundle / "metrics.json").read_text())["heads"]
    return {"movies": size, **extra, "bundle_bytes": sum(files.values()),
            "index_bytes": {h: files[f"ann_{h}.faiss"] for h in HEADS},
            "index_build_seconds": {h: described[h]["ann"]["build_seconds"] for h in HEADS},
            "k": {h: described[h]["k"] for h in HEADS}}


def rank(rows: np.ndarray, scores: np.ndarray, wanted: Any) -> tuple[np.ndarray, np.ndarray]:
    """What `Scorer._rank` does without genres: drop exclusions, order by score, row."""
    keep = ~np.isin(rows, wanted.exclude)
    rows, scores = rows[keep], scores[keep]
    order = np.lexsort((rows, -scores))[:wanted.n]
    return rows[order], scores[order]


def recall(bundle: Bundle, data: Dataset, n: int = 10, settings: Settings | None = None
           ) -> dict[str, Any]:
    """recall@n of the approximate path against the exact one, per head, over every user
    with a history (their rated movies excluded, as /recommend's default), with the
    service's default settings unless given."""
    from app.approximate import ApproximateTopN
    from app.scoring_batch import Ranking, stack_rows
    from model.features import context_payload

    settings = settings or Settings()
    bits = bundle.catalog.genre_bits()
    shares = sorted({settings.ann_probe_share, *PROBE_SWEEP})
    approximate = {share: ApproximateTopN(settings.model_copy(update={"ann_probe_share": share}),
                                      bits)
                   for share in shares}
    histories = user_histories(data.train)
    users = sorted(histories)
    at = int(data.train.timestamp.max()) + 1
    out: dict[str, Any] = {"users": len(users), "n": n,
                           "settings": {"ann_candidates": settings.ann_candidates,
                                        "ann_probe_share": settings.ann_probe_share}}
    for name in HEADS:
        head = bundle.heads[name]
        hits: dict[float, list[float]] = {share: [] for share in shares}
        served = 0
        seconds: dict[float | str, float] = {"exact": 0.0, **{share: 0.0 for share in shares}}
        for start in range(0, len(users), RECALL_CHUNK):
            chunk = users[start:start + RECALL_CHUNK]
            queries = [head.query(user_payload(u, data.users.get(u, {}), histories[u]),
                                  context_payload(u, at, histories[u][-1]))
                       for u in chunk]
            query = Sums.concat([q for q, _ in queries])
            contexts = stack_rows([c for _, c in queries])
            wanted = [Ranking(n, np.array(sorted(
                r for r in map(bundle.catalog.row, histories[u]) if r is not None),
                dtype=np.int64), 0) for u in chunk]
            t0 = time.perf_counter()
            exclude_row = np.repeat(np.arange(len(chunk), dtype=np.int32),
                                    [len(w.exclude) for w in wanted])
            exact_rows, _ = head.top_n(query, contexts, exclude_row,
                                       np.concatenate([w.exclude for w in wanted]).astype(
                                           np.int32), np.zeros(len(chunk), np.int64), n)
            seconds["exact"] += time.perf_counter() - t0
            for share, path in approximate.items():
                t1 = time.perf_counter()
                found = path.rank(head, query, contexts, wanted, rank)
                seconds[share] += time.perf_counter() - t1
                served += len(found) if share == settings.ann_probe_share else 0
                for p in range(len(chunk)):
                    got = found[p][0] if p in found else exact_rows[p]
                    hits[share].append(len(set(got.tolist()) & set(exact_rows[p].tolist())) / n)
        ms = {key: round(1000 * s / len(users), 3) for key, s in seconds.items()}
        out[name] = {"recall": round(float(np.mean(hits[settings.ann_probe_share])), 4),
                     "min_recall": round(float(np.min(hits[settings.ann_probe_share])), 2),
                     "served_approximate": served,
                     "exact_ms_per_user": ms["exact"],
                     "approximate_ms_per_user": ms[settings.ann_probe_share],
                     "by_probe_share": {
                         str(share): {"recall": round(float(np.mean(hits[share])), 4),
                                      "ms_per_user": ms[share]} for share in shares}}
        print(f"  {name}: recall@{n} {out[name]['recall']:.4f} over {len(users)} users "
              f"({served} served approximately)", flush=True)
    return out


def serve(bundle: Path, data: Dataset, folder: Path, seconds: float) -> dict[str, Any]:
    """/recommend under wrk, 16 connections, one worker: approximate and exact path."""
    bodies = write_bodies(folder / "recommend.jsonl", [
        {"user": {"id": u}, "n": 10} for u in sorted(user_histories(data.train))])
    redis = Redis(folder)
    out: dict[str, Any] = {"connections": CONNECTIONS, "seconds": seconds}
    try:
        # a generous timeout: the bulk load is one big pipeline on a busy machine
        asyncio.run(load_dataset_users(Settings(redis_url=redis.url(0), redis_timeout_s=30),
                                       data))
        for path, enabled in (("approximate", True), ("exact", False)):
            server = fmrec_server(f"ann-{path}", bundle, redis.url(0), folder, batching=True)
            server.env["FMREC_ANN"] = str(enabled).lower()
            server.start()
            try:
                server.wait_ready(timeout=900)
                first = json.loads(bodies.read_text().splitlines()[0])
                answer = httpx.post(server.url + "/recommend", json=first, timeout=60).json()
                assert answer["path"] == path, answer
                prime(server, "/recommend", bodies)
                wrk(server.url, "/recommend", bodies, min(5.0, seconds), CONNECTIONS, 2)
                cpu = server.cpu_seconds()
                result = wrk(server.url, "/recommend", bodies, seconds, CONNECTIONS, 2)
                cpu = server.cpu_seconds() - cpu
            finally:
                server.stop()
            requests = result["requests"]
            errors = sum(result[k] for k in ("connect_errors", "read_errors", "write_errors",
                                             "status_errors", "timeouts"))
            out[path] = {"req_s": round(requests / (result["duration_us"] / 1e6), 1),
                         "p50_ms": result["p50_us"] / 1000, "p99_ms": result["p99_us"] / 1000,
                         "errors": errors,
                         "cpu_ms_per_request": round(1000 * cpu / max(requests, 1), 3)}
            print(f"  /recommend {path}: {out[path]['req_s']:,.0f} req/s, p99 "
                  f"{out[path]['p99_ms']:.1f} ms", flush=True)
    finally:
        redis.close()
    out["speedup_req_s"] = round(ratio(out["approximate"]["req_s"], out["exact"]["req_s"]), 2)
    return out


def sweep_table(results: dict[str, Any]) -> Table:
    rows = []
    for s in results["sizes"]:
        for name in HEADS:
            for share, r in s["recall"][name]["by_probe_share"].items():
                rows.append([s["movies"], name, share, r["recall"], r["ms_per_user"]])
    return Table("recall@10 by share of the index's lists scanned (FMREC_ANN_PROBE_SHARE)", [
        "movies", "head", "probe share", "recall@10", "ms/user (batches of 32)"], rows)


def tables(results: dict[str, Any]) -> list[Table]:
    sizes = results["sizes"]
    out = [Table("Index build and bundle size", [
        "movies", "index build s (relevance, k)", "index build s (rating, k)",
        "index MiB (both)", "bundle MiB"], [
        [s["movies"], f"{s['index_build_seconds']['relevance']:.1f} ({s['k']['relevance']})",
         f"{s['index_build_seconds']['rating']:.1f} ({s['k']['rating']})",
         round(sum(s["index_bytes"].values()) / 2**20, 1), round(s["bundle_bytes"] / 2**20)]
        for s in sizes])]
    out.append(Table("recall@10, approximate vs exact path (mean over users)", [
        "movies", "users", "relevance", "rating", "exact ms/user", "approx ms/user"], [
        [s["movies"], s["recall"]["users"], s["recall"]["relevance"]["recall"],
         s["recall"]["rating"]["recall"], s["recall"]["relevance"]["exact_ms_per_user"],
         s["recall"]["relevance"]["approximate_ms_per_user"]] for s in sizes]))
    out.append(sweep_table(results))
    if "serve" in results:
        serve = results["serve"]
        out.append(Table(f"/recommend top-10, {serve['movies']:,} movies, "
                         f"{serve['connections']} connections, one worker", [
            "path", "req/s", "p50 ms", "p99 ms", "CPU ms/request", "errors"], [
            [p, serve[p]["req_s"], serve[p]["p50_ms"], serve[p]["p99_ms"],
             serve[p]["cpu_ms_per_request"], serve[p]["errors"]]
            for p in ("approximate", "exact")]))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ann", description=__doc__)
    parser.add_argument("--sizes", default="100000,1000000",
                        help="catalog sizes, comma-separated; the largest is served")
    parser.add_argument("--seconds", type=float, default=20.0, help="each wrk run")
    parser.add_argument("--work", type=Path, help="bundles and logs (default: a temp dir)")
    parser.add_argument("--quick", action="store_true",
                        help="20,000 movies, 5 s runs, results to a temp folder")
    args = parser.parse_args(argv)
    sizes = [20_000] if args.quick else sorted(int(s) for s in args.sizes.split(","))
    seconds = 5.0 if args.quick else args.seconds
    results_dir = Path(tempfile.mkdtemp(prefix="bench-ann-")) if args.quick else RESULTS
    folder = args.work or Path(tempfile.mkdtemp(prefix="bench-ann-work-"))
    folder.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "targets": {"recall_at_10": TARGET_RECALL, "p99_ms": TARGET_P99_MS},
        "notes": ["shared 2-core machine: wrk, Redis and the server share the cores with "
                  "other work; compare the approximate path to the exact one of the same "
                  "run, not absolute numbers across runs"],
        "sizes": []}
    data, trained = base_model(folder)
    base = Bundle(trained)
    bundle = trained
    for size in sizes:
        bundle, info = build(size, base, data, folder)
        info["recall"] = recall(Bundle(bundle), data)
        results["sizes"].append(info)
        write_json("ann", results, results_dir)
    results["serve"] = {"movies": sizes[-1], **serve(bundle, data, folder, seconds)}
    largest = results["sizes"][-1]
    results["verdicts"] = {
        "recall_at_10": min(largest["recall"][h]["recall"] for h in HEADS) >= TARGET_RECALL,
        "p99_ms": results["serve"]["approximate"]["p99_ms"] <= TARGET_P99_MS}
    path = write_json("ann", results, results_dir)
    for table in tables(results):
        print("\n" + table.text())
    print(f"\nverdicts: {results['verdicts']}\nresults: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
