"""Training benchmark: fmrec's relation-block trainer against the dense formulation.

    .venv/bin/python -m bench.train            # or: make bench-train (< 10 min on 2 cores)
    .venv/bin/python -m bench.train --quick    # small sizes, results to a temp folder

Three parts, each printed as a table and written to bench/results/train.json + train.png:

1. ML-100k ua.base -> ua.test, full feature set, `TrainConfig()` defaults: fmrec's
   `Trainer` against the dense "Factorization Machines in TensorFlow" formulation
   (bench/dense_fm.py) on the same features, k, optimizer and objective, full-batch and
   with fmrec's mini-batches. All start from the same parameters and get the same
   training-time budget; test RMSE is measured after every epoch with the clock stopped.
2. `fmrec train` (the whole pipeline, as a subprocess) on ML-100k: wall time and test RMSE
   against the 0.905 target.
3. Scaling of fmrec's trainer on the planted-FM generator: seconds per epoch against the
   non-zeros one epoch really processes. Past `--full-epoch-batches` batches a sample of
   batches is timed and the epoch extrapolated (the table says which).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from bench.common import REPO, RESULTS, fmt, ratio, table, write_json
from bench.dense_fm import (
    DenseFM,
    DenseTrainer,
    dense_design,
    rating_rows,
    remap,
    repeated_index_rows,
    used_columns,
)
from model.data.movielens import read_movielens
from model.data.synthetic import synthetic
from model.dataset import EncodedRatings, encode_ratings
from model.evaluate import rmse_mae
from model.features import FeatureMap, movielens_spec
from model.train import TrainConfig, Trainer

TARGET_RMSE = 0.905  # the accuracy target on ML-100k ua.test
TARGET_EPOCH_SECONDS = 0.5  # the per-epoch target: full features, ML-100k
TARGET_SPEEDUP = 20.0  # fmrec per epoch against the dense formulation
# Full-batch Adam takes one step per epoch, so it wants a larger rate than fmrec's
# mini-batches: 0.01 was the best of {0.003, 0.01, 0.02, 0.05} on ua.test over 60 steps.
DENSE_FULL_BATCH_LR = 0.01


def default_data_dir() -> Path:
    """ML-100k where the tests look for it: $FMREC_DATA_DIR/ml-100k or ../shared/data."""
    root = Path(os.environ.get("FMREC_DATA_DIR", REPO.parent / "shared" / "data"))
    return root / "ml-100k"


# ---------------------------------------------------------------- equal-time race


@dataclass
class Curve:
    """Test RMSE of one trainer after each epoch, against training seconds so far."""

    name: str
    seconds: list[float] = field(default_factory=list)
    test_rmse: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)

    @property
    def seconds_per_epoch(self) -> float:
        """Median epoch time, leaving out the first (it includes tracing the step)."""
        return float(np.median(self.epoch_seconds[1:] or self.epoch_seconds))

    def rmse_at(self, budget: float) -> float | None:
        """Test RMSE after the last epoch that ended within `budget` training seconds."""
        within = [r for s, r in zip(self.seconds, self.test_rmse, strict=True) if s <= budget]
        return within[-1] if within else None

    def time_to(self, target: float) -> float | None:
        """Training seconds until test RMSE first reached `target` (None: never)."""
        return next((s for s, r in zip(self.seconds, self.test_rmse, strict=True)
                     if r <= target), None)

    def summary(self, budget: float) -> dict[str, Any]:
        return {**asdict(self), "seconds_per_epoch": self.seconds_per_epoch,
                "epochs": len(self.epoch_seconds), "rmse_at_budget": self.rmse_at(budget),
                "best_rmse": min(self.test_rmse), "seconds_to_target": self.time_to(TARGET_RMSE)}


def race(name: str, epoch: Callable[[], object], predict_test: Callable[[], np.ndarray],
         y_test: np.ndarray, rating_range: tuple[float, float], budget: float) -> Curve:
    """Train epoch after epoch while the next one (if as long as the last) fits in `budget`.

    Only `epoch()` is timed; scoring the test set after each epoch is not.
    """
    curve = Curve(name)
    spent = 0.0
    while not curve.epoch_seconds or spent + curve.epoch_seconds[-1] <= budget:
        t0 = time.perf_counter()
        epoch()
        took = time.perf_counter() - t0
        spent += took
        curve.epoch_seconds.append(took)
        curve.seconds.append(spent)
        curve.test_rmse.append(rmse_mae(np.clip(predict_test(), *rating_range), y_test)[0])
    print(f"  {name}: {len(curve.seconds)} epochs in {spent:.1f} s, "
          f"test RMSE {curve.test_rmse[-1]:.4f}", flush=True)
    return curve


def fmrec_epoch(trainer: Trainer, data: EncodedRatings, rng: np.random.Generator,
                batch_size: int) -> float:
    """One shuffled pass of fmrec's trainer, exactly as `model.train.train` runs an epoch."""
    order = rng.permutation(len(data))
    losses = [float(trainer.step(*data.batch(order[i : i + batch_size])))
              for i in range(0, len(data), batch_size)]
    return float(np.sqrt(np.mean(losses)))


def compare(train: EncodedRatings, test: EncodedRatings, n_features: int,
            rating_range: tuple[float, float], config: TrainConfig, budget: float,
            dense_lr: float) -> dict[str, Any]:
    """fmrec's trainer vs the dense formulation (full-batch and mini-batch), same budget."""
    columns = used_columns(train, test)
    rows = rating_rows(train)
    t0 = time.perf_counter()
    X = dense_design(remap(rows, columns), len(columns))
    X2 = tf.square(X)
    X_test = dense_design(remap(rating_rows(test), columns), len(columns))
    X2_test = tf.square(X_test)
    y = tf.constant(train.y)
    build_seconds = time.perf_counter() - t0

    fmrec = Trainer(n_features, config, bias=float(np.mean(train.y)))
    w0, w, V = fmrec.snapshot()  # every trainer starts from these parameters

    def dense(learning_rate: float) -> DenseTrainer:
        fm = DenseFM(float(w0), w[columns], V[columns])
        return DenseTrainer(fm, replace(config, learning_rate=learning_rate))

    full, mini = dense(dense_lr), dense(config.learning_rate)
    rng = np.random.default_rng(config.seed)
    args = (test.y, rating_range, budget)
    curves = [
        race("fmrec", lambda: fmrec_epoch(fmrec, train, rng, config.batch_size),
             lambda: fmrec.predict_all(test), *args),
        race("dense full-batch", lambda: full.epoch(X, X2, y, rng),
             lambda: full.predict(X_test, X2_test).numpy(), *args),
        race("dense mini-batch", lambda: mini.epoch(X, X2, y, rng, config.batch_size),
             lambda: mini.predict(X_test, X2_test).numpy(), *args),
    ]
    return {
        "train_ratings": len(train), "test_ratings": len(test), "p": len(columns),
        "nnz_per_rating": train.nnz_per_rating, "nnz": rows.nnz,
        "rows_with_repeated_index": repeated_index_rows(rows),
        "dense_x_gb": len(train) * len(columns) * 4 / 1e9,
        "dense_build_seconds": build_seconds, "budget_seconds": budget,
        "dense_full_batch_lr": dense_lr,
        "trainers": {c.name: c.summary(budget) for c in curves},
    }


def movielens(data_dir: Path, config: TrainConfig, budget: float, dense_lr: float
              ) -> dict[str, Any]:
    """The race on ML-100k ua.base (train) / ua.test, full feature set."""
    t0 = time.perf_counter()
    data = read_movielens(data_dir, "ua")
    spec = movielens_spec().fit_numeric("context", {"time": data.train.timestamp.tolist()})
    fmap = FeatureMap(spec)
    train = encode_ratings(fmap, data, data.train, data.train)
    test = encode_ratings(fmap, data, data.test, data.train)
    encode_seconds = time.perf_counter() - t0
    result = compare(train, test, spec.n_features, data.rating_range, config, budget, dense_lr)
    return {"data": data.name, "features": [f.key for f in spec.fields],
            "encode_seconds": encode_seconds, **result}


# ---------------------------------------------------------------- the whole pipeline


def pipeline(data_dir: Path, epochs: int | None = None) -> dict[str, Any]:
    """Wall time and test metrics of `fmrec train` on ML-100k, run as its own process."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "app.cli", "train", "--data", str(data_dir),
               "--out", str(Path(tmp) / "bundle"), "--quiet"]
        cmd += ["--epochs", str(epochs)] if epochs else []
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"fmrec train failed ({proc.returncode}): {last}")
    out = json.loads(proc.stdout[proc.stdout.index("{"):])
    keep = ("test_rmse", "test_mae", "best_epoch", "seconds_per_epoch", "train_seconds")
    return {"command": "fmrec train --data <ml-100k> --quiet" + (f" --epochs {epochs}"
                                                                  if epochs else ""),
            "wall_seconds": wall, **{k: out[k] for k in keep},
            "reached_target": out["test_rmse"] <= TARGET_RMSE}


# ---------------------------------------------------------------- scaling


def scaling_point(n_ratings: int, ratings_per_user: int, config: TrainConfig,
                  full_epoch_batches: int, sample_batches: int) -> dict[str, Any]:
    """Generate, encode and train one epoch (or a timed sample of it) at one size."""
    t0 = time.perf_counter()
    data, spec = synthetic(n_ratings, n_users=max(20, n_ratings // ratings_per_user), seed=0)
    generate_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    enc = encode_ratings(FeatureMap(spec), data, data.train, data.train)
    encode_seconds = time.perf_counter() - t0

    trainer = Trainer(spec.n_features, config, bias=float(np.mean(enc.y)))
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(enc))
    starts = range(0, len(enc), config.batch_size)
    n_batches = len(starts)
    timed = n_batches if n_batches <= full_epoch_batches else min(sample_batches, n_batches)
    trainer.step(*enc.batch(order[: config.batch_size]))  # trace the step outside the clock
    batch_seconds = step_seconds = 0.0
    nnz = 0
    for start in starts[:timed]:
        t0 = time.perf_counter()
        batch = enc.batch(order[start : start + config.batch_size])
        t1 = time.perf_counter()
        float(trainer.step(*batch))
        step_seconds += time.perf_counter() - t1
        batch_seconds += t1 - t0
        nnz += len(batch.users.indices) + len(batch.items.indices) + len(batch.contexts.indices)
    scale = n_batches / timed
    epoch_seconds = (batch_seconds + step_seconds) * scale
    p = len(used_columns(enc))
    return {
        "ratings": n_ratings, "train_ratings": len(enc), "users": len(data.users),
        "items": len(data.items), "p": p, "nnz_per_rating": enc.nnz_per_rating,
        "batches": n_batches, "timed_batches": timed, "extrapolated": timed < n_batches,
        "nnz_per_epoch": nnz * scale,
        "naive_nnz_per_epoch": enc.nnz_per_rating * len(enc),
        "seconds_per_epoch": epoch_seconds,
        "batching_share": batch_seconds / (batch_seconds + step_seconds),
        "seconds_per_million_nnz": epoch_seconds / (nnz * scale / 1e6),
        "generate_seconds": generate_seconds, "encode_seconds": encode_seconds,
        "dense_x_gb": len(enc) * p * 4 / 1e9,
    }


def scaling(sizes: Sequence[int], ratings_per_user: int, config: TrainConfig,
            full_epoch_batches: int, sample_batches: int) -> list[dict[str, Any]]:
    points = []
    for n in sizes:
        points.append(scaling_point(n, ratings_per_user, config, full_epoch_batches,
                                    sample_batches))
        last = points[-1]
        print(f"  {n:,} ratings: generate {last['generate_seconds']:.1f} s, encode "
              f"{last['encode_seconds']:.1f} s, epoch {last['seconds_per_epoch']:.2f} s"
              f"{' (extrapolated)' if last['extrapolated'] else ''}", flush=True)
        gc.collect()
    return points


# ---------------------------------------------------------------- report


def verdicts(ml: dict[str, Any] | None, pipe: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured figure and whether it is met."""
    out: list[dict[str, Any]] = []
    if ml:
        t = ml["trainers"]
        fm, budget = t["fmrec"], ml["budget_seconds"]
        for name in ("dense full-batch", "dense mini-batch"):
            speedup = ratio(t[name]["seconds_per_epoch"], fm["seconds_per_epoch"])
            out.append({"target": f"fmrec >= {TARGET_SPEEDUP:g}x faster per epoch than {name}",
                        "measured": f"{speedup:.2f}x", "met": speedup >= TARGET_SPEEDUP})
            ours, theirs = fm["rmse_at_budget"], t[name]["rmse_at_budget"]
            out.append({"target": f"fmrec better test RMSE than {name} after {budget:g} s",
                        "measured": f"{fmt(ours, 4)} vs {fmt(theirs, 4)}",
                        "met": ours is not None and (theirs is None or ours < theirs)})
        out.append({"target": f"fmrec trainer <= {TARGET_EPOCH_SECONDS} s per epoch "
                              "(full features)",
                    "measured": f"{fm['seconds_per_epoch']:.2f} s",
                    "met": fm["seconds_per_epoch"] <= TARGET_EPOCH_SECONDS})
    if pipe:
        out.append({"target": f"fmrec train reaches test RMSE {TARGET_RMSE}",
                    "measured": f"{pipe['test_rmse']:.4f} in {pipe['wall_seconds']:.0f} s wall",
                    "met": pipe["reached_target"]})
    return out


def report(results: dict[str, Any]) -> str:
    """All tables of a results dict, as printed at the end of a run."""
    parts = []
    ml = results.get("movielens")
    if ml:
        t = ml["trainers"]
        fm = t["fmrec"]
        rows = [[name, c["seconds_per_epoch"], ratio(c["seconds_per_epoch"],
                                                     fm["seconds_per_epoch"]),
                 c["epochs"], c["rmse_at_budget"], c["best_rmse"], c["seconds_to_target"]]
                for name, c in t.items()]
        parts.append(table(
            f"ML-100k ua.base -> ua.test, full features, k={results['config']['k']}, "
            f"{ml['budget_seconds']:g} s training budget each (p = {ml['p']:,} columns, "
            f"dense X {ml['dense_x_gb']:.1f} GB)",
            ["trainer", "s/epoch", "x fmrec", "epochs", "RMSE@budget", "best RMSE",
             f"s to {TARGET_RMSE}"], rows))
    pipe = results.get("pipeline")
    if pipe:
        parts.append(table("fmrec train (whole pipeline, own process) on ML-100k",
                           ["command", "wall s", "train s", "s/epoch", "best epoch",
                            "test RMSE", "test MAE"],
                           [[pipe["command"], pipe["wall_seconds"], pipe["train_seconds"],
                             pipe["seconds_per_epoch"], pipe["best_epoch"], pipe["test_rmse"],
                             pipe["test_mae"]]]))
    points = results.get("scaling")
    if points:
        base = points[0]["seconds_per_million_nnz"]
        rows = [[p["ratings"], p["users"], p["nnz_per_rating"], p["nnz_per_epoch"] / 1e6,
                 p["seconds_per_epoch"], p["seconds_per_million_nnz"],
                 ratio(p["seconds_per_million_nnz"], base), p["batching_share"],
                 p["generate_seconds"], p["dense_x_gb"],
                 f"{p['timed_batches']}/{p['batches']}" + (" extrap." if p["extrapolated"]
                                                           else "")]
                for p in points]
        parts.append(table(
            "fmrec trainer scaling on the planted-FM generator "
            f"({results['scaling_ratings_per_user']} ratings per user)",
            ["ratings", "users", "nnz/rating", "Mnnz/epoch", "s/epoch", "s/Mnnz",
             "x smallest", "batching", "gen s", "dense X GB", "batches timed"], rows))
    marks = [[v["target"], v["measured"], "yes" if v["met"] else "NO"]
             for v in results.get("targets", [])]
    if marks:
        parts.append(table("Targets (issue 6)", ["target", "measured", "met"], marks))
    return "\n\n".join(parts)


def plot(results: dict[str, Any], path: Path) -> None:
    """Left: test RMSE against training seconds. Right: epoch seconds against nnz."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    ml = results.get("movielens")
    if ml:
        for name, c in ml["trainers"].items():
            left.plot(c["seconds"], c["test_rmse"], marker=".", label=(
                f"{name} ({c['seconds_per_epoch']:.2f} s/epoch)"))
        left.axhline(TARGET_RMSE, color="grey", linestyle="--", label=f"target {TARGET_RMSE}")
        left.set_ylim(0.85, 1.2)
        left.set_xlabel("training seconds (test scoring not counted)")
        left.set_ylabel("test RMSE (ua.test)")
        left.set_title(f"ML-100k, same features and k, {ml['budget_seconds']:g} s each")
        left.legend(fontsize=8)
    points = results.get("scaling")
    if points:
        x = [p["nnz_per_epoch"] for p in points]
        y = [p["seconds_per_epoch"] for p in points]
        right.loglog(x, y, color="tab:blue", linestyle=":")
        for p, xi, yi in zip(points, x, y, strict=True):
            right.plot(xi, yi, "o", color="tab:blue",
                       markerfacecolor="white" if p["extrapolated"] else "tab:blue")
            right.annotate(f"{p['ratings']:,}", (xi, yi), textcoords="offset points",
                           xytext=(5, -12), fontsize=8)
        slope = y[0] / x[0]
        right.loglog(x, [slope * xi for xi in x], color="grey", linestyle="--",
                     label="linear in nnz (through the smallest)")
        right.set_xlabel("non-zeros processed per epoch (relation blocks)")
        right.set_ylabel("seconds per epoch")
        right.set_title("fmrec trainer on synthetic data (hollow: extrapolated)")
        right.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.train", description=__doc__.split(
        "\n")[0])
    parser.add_argument("--data", type=Path, default=default_data_dir(),
                        help="ML-100k folder (default: $FMREC_DATA_DIR/ml-100k)")
    parser.add_argument("--budget", type=float, default=45.0,
                        help="training seconds each trainer gets on ML-100k")
    parser.add_argument("--dense-lr", type=float, default=DENSE_FULL_BATCH_LR)
    parser.add_argument("--sizes", default="100000,1000000,10000000",
                        help="synthetic sizes (ratings), comma-separated")
    parser.add_argument("--ratings-per-user", type=int, default=100,
                        help="synthetic users = ratings / this (MovieLens has ~100-170)")
    parser.add_argument("--full-epoch-batches", type=int, default=1000,
                        help="time whole epochs up to this many batches, else a sample")
    parser.add_argument("--sample-batches", type=int, default=300)
    parser.add_argument("--out", type=Path, default=None,
                        help="results folder (default bench/results, --quick: a temp folder)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 10 s budget, small sizes, 2-epoch pipeline")
    args = parser.parse_args(argv)
    if not (args.data / "ua.base").is_file():
        print(f"bench.train: error: no ML-100k at {args.data} (give --data or set "
              "FMREC_DATA_DIR; download from grouplens.org)", file=sys.stderr)
        return 2
    if args.quick:
        args.budget, args.sizes, args.sample_batches = 10.0, "20000,200000", 20
        args.full_epoch_batches = 50
    out = args.out or (Path(tempfile.gettempdir()) / "fmrec-bench" if args.quick else RESULTS)
    sizes = [int(s) for s in args.sizes.split(",") if s]

    config = TrainConfig()
    started = time.perf_counter()
    results: dict[str, Any] = {"config": config.to_dict(), "target_rmse": TARGET_RMSE,
                               "scaling_ratings_per_user": args.ratings_per_user}
    print("ML-100k: fmrec vs the dense formulation, equal training time", flush=True)
    results["movielens"] = movielens(args.data, config, args.budget, args.dense_lr)
    gc.collect()
    print("ML-100k: fmrec train (whole pipeline)", flush=True)
    results["pipeline"] = pipeline(args.data, epochs=2 if args.quick else None)
    print("Scaling on synthetic data", flush=True)
    results["scaling"] = scaling(sizes, args.ratings_per_user, config, args.full_epoch_batches,
                                 args.sample_batches)
    results["targets"] = verdicts(results["movielens"], results["pipeline"])
    results["wall_seconds"] = time.perf_counter() - started
    print()
    print(report(results))
    path = write_json("train", results, out)
    plot(results, out / "train.png")
    print(f"\nwrote {path} and {out / 'train.png'} in {results['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
