"""The training benchmark's baseline is the same FM: dense matrix products vs side sums.

A speed-up against a baseline that computes something else would mean nothing, so the
dense formulation is checked against fmrec's side-sum scores and one training step of
each is checked to move the parameters identically. No timing is asserted here.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from bench.dense_fm import (
    DenseFM,
    DenseTrainer,
    context_columns,
    cross_side_columns,
    dense_design,
    rating_rows,
    repeated_index_rows,
)
from bench.train import (
    PARTS,
    Curve,
    compare,
    keep_parts_not_run,
    plot,
    report,
    scaling,
    verdicts,
)
from model.blocks import EncodedRatings, encode_ratings, sorted_unique, used_columns
from model.data.synthetic import synthetic
from model.features import FeatureMap, FeatureSpec
from model.fm import FactorizationMachine
from model.train import TrainConfig, Trainer, batch_scores


@pytest.fixture(scope="module")
def tiny() -> tuple[FeatureSpec, EncodedRatings, EncodedRatings, tuple[float, float]]:
    data, spec = synthetic(n_ratings=800, n_users=40, n_items=60, k=4, noise=0.1, seed=11,
                           hash_bits=20)  # no collision across sides at this size
    fmap = FeatureMap(spec)
    train = encode_ratings(fmap, data, data.train, data.train)
    test = encode_ratings(fmap, data, data.test, data.train)
    return spec, train, test, data.rating_range


def dense_inputs(data: EncodedRatings, columns: np.ndarray) -> tuple[tf.Tensor, tf.Tensor]:
    X = dense_design(rating_rows(data).remap(columns), len(columns))
    return X, tf.square(X)


def test_sorted_unique_is_np_unique() -> None:
    values = np.random.default_rng(0).integers(0, 50, 1000)
    np.testing.assert_array_equal(sorted_unique(values), np.unique(values))
    assert len(sorted_unique(np.zeros(0, np.int64))) == 0


def test_dense_design_is_to_dense_with_own_movie_cancelled(tiny) -> None:
    _, train, _, _ = tiny
    columns = used_columns(train)
    rows = rating_rows(train).remap(columns)
    X = dense_design(rows, len(columns)).numpy()
    np.testing.assert_allclose(X, rows.to_dense(len(columns)), atol=1e-6)
    # every training rating's own movie is in its user's history and must cancel to 0
    assert train.left_out.nnz >= len(train)
    assert X.min() >= -1e-6
    assert (np.count_nonzero(X, axis=1) < np.diff(rows.indptr)).all()


@pytest.mark.parametrize("part", ["train", "test"])
def test_dense_scores_equal_side_sum_scores(tiny, part: str) -> None:
    spec, train, test, _ = tiny
    data = train if part == "train" else test
    columns = used_columns(data)
    assert repeated_index_rows(rating_rows(data)) == 0  # else the two FMs legitimately differ
    fm = FactorizationMachine(spec.n_features, 4, init_std=0.3, bias=3.0, seed=5)
    fm.w.assign(np.random.default_rng(5).normal(0, 0.3, spec.n_features).astype(np.float32))
    expected = batch_scores(fm, data.batch(np.arange(len(data)))).numpy()
    w, V = fm.w.numpy()[columns], fm.V.numpy()[columns]
    X, X2 = dense_inputs(data, columns)

    got = DenseFM(float(fm.w0.numpy()), w, V).scores(X, X2).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    # the comparison can fail: a wrong column map gives other scores
    wrong = DenseFM(float(fm.w0.numpy()), w, np.roll(V, 1, axis=0)).scores(X, X2).numpy()
    assert np.abs(wrong - expected).max() > 0.1


def test_one_step_of_each_trainer_gives_the_same_parameters(tiny) -> None:
    spec, train, _, _ = tiny
    config = TrainConfig(k=4, optimizer="sgd", learning_rate=0.05, batch_size=len(train),
                         init_std=0.2, l2_w=0.05, l2_v=0.1, l2_context=0.5)
    columns = used_columns(train)
    assert cross_side_columns(train) == 0  # else one column would need two L2 strengths
    context = context_columns(train, columns)
    assert context.any() and not context.all()
    fmrec = Trainer.for_data(train, spec.n_features, config)
    np.testing.assert_array_equal(fmrec.columns, columns)
    w0, w, V = fmrec.snapshot()  # compact: row n is column columns[n]
    dense = DenseTrainer(DenseFM(float(w0), w, V), config, context)
    X, X2 = dense_inputs(train, columns)

    fmrec_mse = float(fmrec.step(*fmrec.compact(train).batch(np.arange(len(train)))))
    dense_rmse = dense.epoch(X, X2, tf.constant(train.y), np.random.default_rng(0))

    assert dense_rmse == pytest.approx(np.sqrt(fmrec_mse), rel=1e-5)
    w0_after, w_after, V_after = fmrec.snapshot()
    assert float(dense.fm.w0.numpy()) == pytest.approx(float(w0_after), abs=1e-6)
    np.testing.assert_allclose(dense.fm.w.numpy(), w_after, atol=1e-6)
    np.testing.assert_allclose(dense.fm.V.numpy(), V_after, atol=1e-6)
    assert np.abs(V_after - V).max() > 1e-4  # the step did move V


def test_curve_reads_budget_and_target() -> None:
    curve = Curve("x", seconds=[1.0, 2.0, 3.5], test_rmse=[1.0, 0.9, 0.89],
                  epoch_seconds=[1.0, 1.0, 1.5])
    assert curve.rmse_at(3.0) == 0.9
    assert curve.rmse_at(0.5) is None
    assert curve.time_to(0.905) == 2.0
    assert curve.time_to(0.5) is None
    assert curve.seconds_per_epoch == 1.25  # the first epoch (tracing) left out


def test_benchmark_runs_end_to_end_on_tiny_data(tiny, tmp_path: Path) -> None:
    spec, train, test, rating_range = tiny
    config = TrainConfig(k=4, batch_size=128, learning_rate=0.01)
    # counted, not timed: an unlimited budget, three epochs each (a busy machine passes too)
    ml = compare(train, test, spec.n_features, rating_range, config, budget=math.inf,
                 dense_lr=0.01, epochs=3)
    assert set(ml["trainers"]) == {"fmrec", "fmrec full-batch", "dense full-batch",
                                   "dense mini-batch"}
    assert ml["trainers"]["fmrec full-batch"]["best_rmse_in_budget"] is not None
    targets = verdicts(ml, None)
    speed = targets[0]  # the baseline is full-batch: compared in that regime
    epoch = {name: c["seconds_per_epoch"] for name, c in ml["trainers"].items()}
    assert "full-batch" in speed["target"]
    assert speed["measured"] == f"{epoch['dense full-batch'] / epoch['fmrec full-batch']:.2f}x"
    for curve in ml["trainers"].values():
        assert curve["epochs"] == 3 and all(np.isfinite(curve["test_rmse"]))
    # no deadline: both sizes are measured, however slow the machine is
    small, point = scaling([2000, 3000], 100, config, full_epoch_batches=20, sample_batches=3,
                           deadline=math.inf)
    assert not small["extrapolated"] and small["vs_reference"] == pytest.approx(1.0)
    assert point["extrapolated"] and point["timed_batches"] == 3
    assert point["nnz_per_epoch"] > 0 and point["seconds_per_epoch"] > 0
    assert point["vs_reference"] > 0
    # a deadline already passed: the first size still runs, a billion ratings cannot fit
    first, huge = scaling([2000, 10**9], 100, config, full_epoch_batches=20, sample_batches=3,
                          deadline=time.perf_counter())
    assert first["timed_batches"] == 3 and first["cut_by_deadline"]
    assert "skipped" in huge
    points = [small, point, huge]
    results = {"config": config.to_dict(), "movielens": ml, "scaling": points,
               "scaling_ratings_per_user": 100, "targets": []}
    text = report(results)
    assert "dense mini-batch" in text and "skipped" in text
    plot(results, tmp_path / "train.png")
    assert (tmp_path / "train.png").stat().st_size > 1000


def test_a_parts_run_keeps_the_other_parts_of_the_results_file() -> None:
    previous = {"movielens": {"old": 1}, "pipeline": {"wall_seconds": 61.3},
                "scaling": [{"ratings": 100}], "targets": ["stale"]}
    new = {"config": {}, "pipeline": {"wall_seconds": 248.0}}
    merged = keep_parts_not_run(new, previous, {"pipeline"})
    assert merged["pipeline"] == {"wall_seconds": 248.0}  # the part that ran wins
    assert merged["movielens"] == {"old": 1} and merged["scaling"] == [{"ratings": 100}]
    assert "targets" not in merged  # recomputed by the caller from the merged parts
    assert keep_parts_not_run(new, previous, set(PARTS)) == new  # a full run keeps nothing
