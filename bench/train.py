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

`--parts pipeline` (say) reruns some parts; the others keep their figures from the stored
results file, so the tables rewritten from it stay whole.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
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

from bench.common import REPO, RESULTS, Table, fmt, ratio, update_docs, write_json
from bench.dense_fm import (
    DenseFM,
    DenseTrainer,
    context_columns,
    cross_side_columns,
    dense_design,
    rating_rows,
    repeated_index_rows,
)
from model.batch_sums import wide_sides
from model.blocks import Batch, EncodedRatings, Sides, encode_ratings, used_columns
from model.data.movielens import read_movielens
from model.data.synthetic import synthetic_encoded
from model.evaluate import rmse_mae
from model.features import FeatureMap, FeatureSpec, movielens_spec
from model.train import TrainConfig, Trainer

TARGET_RMSE = 0.905  # the accuracy target on ML-100k ua.test
TARGET_EPOCH_SECONDS = 0.5  # the per-epoch target: full features, ML-100k
TARGET_SPEEDUP = 20.0  # fmrec per epoch against the dense formulation
# Full-batch Adam takes one step per epoch, so it wants a larger rate than fmrec's
# mini-batches: 0.01 was the best of {0.003, 0.01, 0.02, 0.05} on ua.test over 60 steps.
DENSE_FULL_BATCH_LR = 0.01
PARTS = ("race", "pipeline", "scaling")
PART_KEYS = {"race": "movielens", "pipeline": "pipeline", "scaling": "scaling"}


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

    def best_within(self, budget: float) -> float | None:
        """Best test RMSE of the epochs ended within `budget` (the epoch early stopping
        would keep, were it told the test set)."""
        within = [r for s, r in zip(self.seconds, self.test_rmse, strict=True) if s <= budget]
        return min(within) if within else None

    def summary(self, budget: float) -> dict[str, Any]:
        return {**asdict(self), "seconds_per_epoch": self.seconds_per_epoch,
                "epochs": len(self.epoch_seconds), "rmse_at_budget": self.rmse_at(budget),
                "best_rmse_in_budget": self.best_within(budget),
                "best_rmse": min(self.test_rmse), "seconds_to_target": self.time_to(TARGET_RMSE)}


@dataclass
class Contestant:
    """A trainer in the race: one epoch of training, and test-set scores."""

    curve: Curve
    epoch: Callable[[], object]
    predict_test: Callable[[], np.ndarray]


def race(contestants: Sequence[Contestant], y_test: np.ndarray,
         rating_range: tuple[float, float], budget: float,
         epochs: int | None = None) -> list[Curve]:
    """Each trainer in turn runs one epoch, while its next (if as long as its last) fits.

    Taking turns spreads a shared machine's changing load evenly over the trainers.
    Only the epochs are timed; scoring the test set after each is not. `epochs` also
    stops each trainer after that many epochs (tests count epochs, not seconds).
    """
    running = list(contestants)
    while running:
        for c in list(running):
            t0 = time.perf_counter()
            c.epoch()
            took = time.perf_counter() - t0
            curve = c.curve
            curve.epoch_seconds.append(took)
            curve.seconds.append((curve.seconds[-1] if curve.seconds else 0.0) + took)
            pred = np.clip(c.predict_test(), *rating_range)
            curve.test_rmse.append(rmse_mae(pred, y_test)[0])
            if curve.seconds[-1] + took > budget or len(curve.seconds) == epochs:
                running.remove(c)
    for c in contestants:
        print(f"  {c.curve.name}: {len(c.curve.seconds)} epochs in {c.curve.seconds[-1]:.1f} s, "
              f"test RMSE {c.curve.test_rmse[-1]:.4f}", flush=True)
    return [c.curve for c in contestants]


def fmrec_epoch(trainer: Trainer, data: EncodedRatings, sides: Sides,
                rng: np.random.Generator, batch_size: int) -> float:
    """One shuffled pass of fmrec's trainer, exactly as `model.train.train` runs an epoch.

    `data` is in the trainer's compact columns (`Trainer.compact`), `sides` its
    `wide_sides`.
    """
    order = rng.permutation(len(data))
    losses = [float(trainer.step(*data.batch(order[i : i + batch_size], sides)))
              for i in range(0, len(data), batch_size)]
    return float(np.sqrt(np.mean(losses)))


def full_batch_epoch(trainer: Trainer, batch: Batch) -> float:
    """One full-batch step on a batch built once, as `model.train.train` runs a full-batch
    epoch (the rows' order changes nothing; the dense baseline's X is built once too)."""
    return float(np.sqrt(float(trainer.step(*batch))))


def compare(train: EncodedRatings, test: EncodedRatings, n_features: int,
            rating_range: tuple[float, float], config: TrainConfig, budget: float,
            dense_lr: float, epochs: int | None = None) -> dict[str, Any]:
    """fmrec's trainer vs the dense formulation (full-batch and mini-batch), same budget
    (and at most `epochs` epochs each)."""
    columns = used_columns(train, test)
    rows = rating_rows(train)
    t0 = time.perf_counter()
    X = dense_design(rows.remap(columns), len(columns))
    X2 = tf.square(X)
    X_test = dense_design(rating_rows(test).remap(columns), len(columns))
    X2_test = tf.square(X_test)
    y = tf.constant(train.y)
    build_seconds = time.perf_counter() - t0

    fmrec = Trainer.for_data(train, n_features, config)
    fmrec_train = fmrec.compact(train)
    start = fmrec.export()  # every trainer starts from these parameters
    w0, w, V = (v.numpy() for v in (start.w0, start.w, start.V))

    context = context_columns(train, columns)

    def dense(learning_rate: float) -> DenseTrainer:
        fm = DenseFM(float(w0), w[columns], V[columns])
        return DenseTrainer(fm, replace(config, learning_rate=learning_rate), context)

    full, mini = dense(dense_lr), dense(config.learning_rate)
    # fmrec in the dense baseline's own regime: one full-batch step per epoch, same lr
    fmrec_full = Trainer.for_data(train, n_features, replace(config, learning_rate=dense_lr))
    sides = wide_sides(fmrec_train, config.batch_size)
    whole = fmrec_train.batch(np.arange(len(train)), sides)
    rngs = [np.random.default_rng(config.seed) for _ in range(3)]
    curves = race([
        Contestant(Curve("fmrec"),
                   lambda: fmrec_epoch(fmrec, fmrec_train, sides, rngs[0],
                                       config.batch_size),
                   lambda: fmrec.predict_all(test)),
        Contestant(Curve("fmrec full-batch"), lambda: full_batch_epoch(fmrec_full, whole),
                   lambda: fmrec_full.predict_all(test)),
        Contestant(Curve("dense full-batch"), lambda: full.epoch(X, X2, y, rngs[1]),
                   lambda: full.predict(X_test, X2_test).numpy()),
        Contestant(Curve("dense mini-batch"),
                   lambda: mini.epoch(X, X2, y, rngs[2], config.batch_size),
                   lambda: mini.predict(X_test, X2_test).numpy()),
    ], test.y, rating_range, budget, epochs)
    return {
        "train_ratings": len(train), "test_ratings": len(test), "p": len(columns),
        "nnz_per_rating": train.nnz_per_rating, "nnz": rows.nnz,
        "rows_with_repeated_index": repeated_index_rows(rows),
        "cross_side_columns": cross_side_columns(train),
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
    fmap = FeatureMap(spec.rating_fields())
    train = encode_ratings(fmap, data, data.train, data.train)
    test = encode_ratings(fmap, data, data.test, data.train)
    encode_seconds = time.perf_counter() - t0
    result = compare(train, test, spec.n_features, data.rating_range, config, budget, dense_lr)
    return {"data": data.name, "features": [f.key for f in fmap.spec.fields],
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


def keep_parts_not_run(results: dict[str, Any], previous: dict[str, Any],
                       parts: set[str]) -> dict[str, Any]:
    """`results` plus, for each part this run skipped, that part's figures from the
    previous results file: a `--parts` run updates its parts of train.json (and so the
    tables `bench.readme` rewrites) without dropping the others."""
    kept = {key: previous[key] for part, key in PART_KEYS.items()
            if part not in parts and key in previous}
    return {**results, **kept}


# ---------------------------------------------------------------- scaling


class StepTimer:
    """Times fmrec's training steps on one data set, batch after batch (epochs wrap)."""

    def __init__(self, data: EncodedRatings, n_features: int, config: TrainConfig) -> None:
        self.trainer = Trainer.for_data(data, n_features, config)
        self.data, self.batch_size = self.trainer.compact(data), config.batch_size
        self.sides = wide_sides(self.data, self.batch_size)
        self.order = np.random.default_rng(config.seed).permutation(len(data))
        self.start = 0
        self.batches = self.nnz = 0
        self.batch_seconds = self.step_seconds = 0.0
        self.trainer.step(*self.data.batch(self.order[: self.batch_size], self.sides))  # trace

    @property
    def epoch_batches(self) -> int:
        return math.ceil(len(self.data) / self.batch_size)

    @property
    def seconds(self) -> float:
        return self.batch_seconds + self.step_seconds

    def run(self, count: int) -> None:
        """Build and train on the next `count` batches, timing NumPy and TF apart."""
        for _ in range(count):
            t0 = time.perf_counter()
            batch = self.data.batch(self.order[self.start : self.start + self.batch_size],
                                    self.sides)
            t1 = time.perf_counter()
            float(self.trainer.step(*batch))
            self.step_seconds += time.perf_counter() - t1
            self.batch_seconds += t1 - t0
            self.nnz += sum(len(b.values) for b in batch[:4])
            self.batches += 1
            self.start = (self.start + self.batch_size) % len(self.data)


def planted_training_set(n_ratings: int, ratings_per_user: int
                         ) -> tuple[EncodedRatings, FeatureSpec, dict[str, Any]]:
    """The planted-FM training split at one size, encoded (by the generator, which needs
    the encoding to plant the ratings), with what building it took."""
    t0 = time.perf_counter()
    data, spec, enc = synthetic_encoded(n_ratings, n_users=max(20, n_ratings // ratings_per_user),
                                        seed=0)
    info = {"ratings": n_ratings, "train_ratings": len(enc), "users": len(data.users),
            "items": len(data.items), "build_seconds": time.perf_counter() - t0}
    return enc, spec, info


MIN_TIMED_BATCHES = 3


def scaling_point(n_ratings: int, ratings_per_user: int, config: TrainConfig,
                  full_epoch_batches: int, sample_batches: int, reference: StepTimer | None,
                  deadline: float) -> tuple[dict[str, Any], StepTimer]:
    """One epoch (or a timed sample of one) at one size, taking turns with `reference`.

    Every few batches the reference (the smallest size) trains one batch, so the ratio of
    their seconds per non-zero is measured under the same load. Timing stops early (after
    at least MIN_TIMED_BATCHES) when the next batch would overrun `deadline`.
    """
    enc, spec, info = planted_training_set(n_ratings, ratings_per_user)
    timer = StepTimer(enc, spec.n_features, config)
    peer = reference or timer
    planned = (timer.epoch_batches if timer.epoch_batches <= full_epoch_batches
               else min(sample_batches, timer.epoch_batches))
    peer_seconds, peer_nnz = peer.seconds, peer.nnz
    while timer.batches < planned:
        per_batch = timer.seconds / max(timer.batches, 1)
        if (timer.batches >= MIN_TIMED_BATCHES
                and time.perf_counter() + 1.2 * per_batch > deadline):
            break
        timer.run(1)
        if reference is not None and timer.batches % 5 == 0:
            reference.run(1)
    if reference is not None and reference.nnz == peer_nnz:
        reference.run(1)
    timed = timer.batches
    scale = timer.epoch_batches / timed
    per_mnnz = timer.seconds / (timer.nnz / 1e6)
    peer_per_mnnz = (peer.seconds - peer_seconds) / ((peer.nnz - peer_nnz) / 1e6)
    p = len(used_columns(enc))
    return {
        **info, "p": p, "nnz_per_rating": enc.nnz_per_rating,
        "batches": timer.epoch_batches, "timed_batches": timed,
        "extrapolated": timed < timer.epoch_batches,
        "cut_by_deadline": timed < planned,
        "nnz_per_epoch": timer.nnz * scale,
        "naive_nnz_per_epoch": enc.nnz_per_rating * len(enc),
        "seconds_per_epoch": timer.seconds * scale,
        "batching_share": timer.batch_seconds / timer.seconds,
        "seconds_per_million_nnz": per_mnnz,
        "reference_seconds_per_million_nnz": peer_per_mnnz,
        "vs_reference": per_mnnz / peer_per_mnnz,
        "dense_x_gb": len(enc) * p * 4 / 1e9,
    }, timer


def scaling(sizes: Sequence[int], ratings_per_user: int, config: TrainConfig,
            full_epoch_batches: int, sample_batches: int, deadline: float
            ) -> list[dict[str, Any]]:
    """Sizes in increasing order; a size that could not be built and timed by `deadline`
    is skipped (and listed).

    The projection grows the last size's generate + encode seconds along the power law
    through the last two sizes (at least linearly: building the data is superlinear
    here) and adds MIN_TIMED_BATCHES batches, each costing the last size's seconds per
    batch times the growth in ratings (popular movies' rater lists grow with the data),
    all with a 15% margin (the power law overestimated 10M's build by 10%).
    """
    points: list[dict[str, Any]] = []
    reference: StepTimer | None = None
    for n in sorted(sizes):
        left = deadline - time.perf_counter()
        measured = [p for p in points if "skipped" not in p]
        if measured:
            prev = measured[-1]
            build = [p["build_seconds"] for p in measured[-2:]]
            power = 1.0
            if len(measured) > 1:
                grown = math.log(prev["ratings"] / measured[-2]["ratings"])
                power = max(1.0, math.log(build[-1] / build[0]) / grown)
            per_batch = prev["seconds_per_epoch"] / prev["batches"] * n / prev["ratings"]
            projected = 1.15 * (build[-1] * (n / prev["ratings"]) ** power
                               + MIN_TIMED_BATCHES * per_batch)
            if projected > left:
                points.append({"ratings": n, "skipped": f"projected {projected:.0f} s "
                                                         f"> {max(left, 0):.0f} s left"})
                print(f"  {n:,} ratings: skipped ({points[-1]['skipped']})", flush=True)
                continue
        point, timer = scaling_point(n, ratings_per_user, config, full_epoch_batches,
                                     sample_batches, reference, deadline)
        reference = reference or timer
        points.append(point)
        print(f"  {n:,} ratings: generate and encode {point['build_seconds']:.1f} s, epoch "
              f"{point['seconds_per_epoch']:.2f} s"
              f"{' (extrapolated)' if point['extrapolated'] else ''}", flush=True)
        gc.collect()
    return points


# ---------------------------------------------------------------- report


def verdicts(ml: dict[str, Any] | None, pipe: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured figure and whether it is met."""
    out: list[dict[str, Any]] = []
    if ml:
        t = ml["trainers"]
        fm, budget = t["fmrec"], ml["budget_seconds"]
        # speed: the baseline is the article's full-batch formulation, and an
        # epoch is comparable work only in the same regime (one full-batch step each)
        speedup = ratio(t["dense full-batch"]["seconds_per_epoch"],
                        t["fmrec full-batch"]["seconds_per_epoch"])
        out.append({"target": f"fmrec >= {TARGET_SPEEDUP:g}x faster per epoch than the dense "
                              "full-batch formulation (both full-batch)",
                    "measured": f"{speedup:.2f}x", "met": speedup >= TARGET_SPEEDUP})
        # accuracy: fmrec as trained (mini-batches), the best epoch each reached in time
        for name in ("dense full-batch", "dense mini-batch"):
            ours, theirs = fm["best_rmse_in_budget"], t[name]["best_rmse_in_budget"]
            out.append({"target": f"fmrec better test RMSE than {name} within {budget:g} s",
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


def tables(results: dict[str, Any]) -> dict[str, Table]:
    """All tables of a results dict by README section name (bench.common.update_docs)."""
    parts: dict[str, Table] = {}
    ml = results.get("movielens")
    if ml:
        t = ml["trainers"]
        fm = t["fmrec"]
        rows = [[name, c["seconds_per_epoch"], ratio(c["seconds_per_epoch"],
                                                     fm["seconds_per_epoch"]),
                 c["epochs"], c["rmse_at_budget"], c["best_rmse"], c["seconds_to_target"]]
                for name, c in t.items()]
        parts["train-race"] = Table(
            f"ML-100k ua.base -> ua.test, full features, k={results['config']['k']}, "
            f"{ml['budget_seconds']:g} s training budget each (p = {ml['p']:,} columns, "
            f"dense X {ml['dense_x_gb']:.1f} GB)",
            ["trainer", "s/epoch", "x fmrec", "epochs", "RMSE@budget", "best RMSE",
             f"s to {TARGET_RMSE}"], rows)
    pipe = results.get("pipeline")
    if pipe:
        parts["train-pipeline"] = Table("fmrec train (whole pipeline, own process) on ML-100k",
                           ["command", "wall s", "train s", "s/epoch", "best epoch",
                            "test RMSE", "test MAE"],
                           [[pipe["command"], pipe["wall_seconds"], pipe["train_seconds"],
                             pipe["seconds_per_epoch"], pipe["best_epoch"], pipe["test_rmse"],
                             pipe["test_mae"]]])
    points = [p for p in results.get("scaling", []) if "skipped" not in p]
    if points:
        rows = [[p["ratings"], p["users"], p["nnz_per_rating"], p["nnz_per_epoch"] / 1e6,
                 p["seconds_per_epoch"], p["seconds_per_million_nnz"], p["vs_reference"],
                 p["batching_share"],
                 p["build_seconds"], p["dense_x_gb"],
                 f"{p['timed_batches']}/{p['batches']}" + (" extrap." if p["extrapolated"]
                                                           else "")
                 + (" (deadline)" if p["cut_by_deadline"] else "")]
                for p in points]
        rows += [[p["ratings"], f"skipped: {p['skipped']}", *[""] * 9]
                 for p in results["scaling"] if "skipped" in p]
        parts["train-scaling"] = Table(
            "fmrec trainer scaling on the planted-FM generator "
            f"({results['scaling_ratings_per_user']} ratings per user). 'x smallest': s/Mnnz "
            "over the smallest size's, the two taking turns batch by batch (1 = linear); "
            "'batching': share of the time spent building batches in NumPy",
            ["ratings", "users", "nnz/rating", "Mnnz/epoch", "s/epoch", "s/Mnnz",
             "x smallest", "batching", "build s", "dense X GB", "batches timed"],
            rows)
    marks = [[v["target"], v["measured"], "yes" if v["met"] else "NO"]
             for v in results.get("targets", [])]
    if marks:
        parts["train-targets"] = Table("Targets (issue 6)", ["target", "measured", "met"], marks)
    return parts


def report(results: dict[str, Any]) -> str:
    """All tables, as printed at the end of a run."""
    return "\n\n".join(t.text() for t in tables(results).values())


def plot(results: dict[str, Any], path: Path) -> None:
    """Left: test RMSE against training seconds. Right: epoch seconds against nnz.

    A part that did not run (see --parts) leaves its panel out.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    ml = results.get("movielens")
    points = [p for p in results.get("scaling", []) if "skipped" not in p]
    panels = int(bool(ml)) + int(bool(points))
    fig, axes = plt.subplots(1, max(panels, 1), figsize=(6 * max(panels, 1), 4.5),
                             squeeze=False)
    left, right = axes[0][0], axes[0][-1]
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
    if points:
        x = [p["nnz_per_epoch"] for p in points]
        y = [p["seconds_per_epoch"] for p in points]
        right.loglog(x, y, color="tab:blue", linestyle=":")
        for i, (p, xi, yi) in enumerate(zip(points, x, y, strict=True)):
            right.plot(xi, yi, "o", color="tab:blue",
                       markerfacecolor="white" if p["extrapolated"] else "tab:blue")
            right.annotate(f"{p['ratings']:,} ratings, s/nnz x{p['vs_reference']:.2f}",
                           (xi, yi), textcoords="offset points", fontsize=8,
                           **({"xytext": (8, -4), "ha": "left"} if i == 0
                              else {"xytext": (-8, 4), "ha": "right"}))
        slope = y[-1] / x[-1]
        right.loglog(x, [slope * xi for xi in x], color="grey", linestyle="--",
                     label="linear in nnz (through the largest)")
        right.xaxis.set_minor_formatter(NullFormatter())
        right.yaxis.set_minor_formatter(NullFormatter())
        right.set_xlabel("non-zeros processed per epoch (relation blocks)")
        right.set_ylabel("seconds per epoch")
        right.set_title("fmrec trainer on synthetic data (hollow: extrapolated;\n"
                        "x: s per nnz over the smallest size's, measured in turns)", fontsize=10)
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
    parser.add_argument("--full-epoch-batches", type=int, default=100,
                        help="time whole epochs up to this many batches, else a sample")
    parser.add_argument("--sample-batches", type=int, default=50)
    parser.add_argument("--deadline", type=float, default=560.0,
                        help="seconds for the whole run: larger sizes that would overrun "
                             "it are skipped (and listed as skipped)")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"which parts to run, comma-separated: {', '.join(PARTS)}")
    parser.add_argument("--name", default="train",
                        help="results file stem: <out>/<name>.json and .png")
    parser.add_argument("--out", type=Path, default=None,
                        help="results folder (default bench/results, --quick: a temp folder)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 10 s budget, small sizes, 2-epoch pipeline")
    args = parser.parse_args(argv)
    parts = {p for p in args.parts.split(",") if p}
    if not parts or parts - set(PARTS):
        parser.error(f"--parts: choose from {', '.join(PARTS)}")
    if parts & {"race", "pipeline"} and not (args.data / "ua.base").is_file():
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
    if "race" in parts:
        print("ML-100k: fmrec vs the dense formulation, equal training time", flush=True)
        results["movielens"] = movielens(args.data, config, args.budget, args.dense_lr)
        gc.collect()
    if "pipeline" in parts:
        print("ML-100k: fmrec train (whole pipeline)", flush=True)
        results["pipeline"] = pipeline(args.data, epochs=2 if args.quick else None)
    if "scaling" in parts:
        print("Scaling on synthetic data", flush=True)
        results["scaling"] = scaling(sizes, args.ratings_per_user, config,
                                     args.full_epoch_batches, args.sample_batches,
                                     started + args.deadline)
    previous = out / f"{args.name}.json"
    if not args.quick and previous.is_file():
        results = keep_parts_not_run(results, json.loads(previous.read_text()), parts)
    results["targets"] = verdicts(results.get("movielens"), results.get("pipeline"))
    results["wall_seconds"] = time.perf_counter() - started
    print()
    print(report(results))
    path = write_json(args.name, results, out)
    plot(results, out / f"{args.name}.png")
    print(f"\nwrote {path} and {out / args.name}.png in {results['wall_seconds']:.0f} s")
    if out == RESULTS and args.name == "train":
        print(f"tables rewritten: {', '.join(update_docs(tables(results))) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
