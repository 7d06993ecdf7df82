"""Training: optimizers against numpy references, learning a planted FM, reproducibility."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import tensorflow as tf

from model.batch_sums import wide_sides
from model.blocks import EncodedRatings, encode_ratings, used_columns
from model.data import Dataset
from model.evaluate import rmse_mae
from model.features import FeatureMap, FeatureSpec
from model.optim import TableOptimizer
from model.pipeline import per_user_holdout, train_member
from model.train import TrainConfig, Trainer, train


def _numpy_step(kind: str, theta: np.ndarray, g: np.ndarray, state: dict, t: int,
                lr: float) -> np.ndarray:
    """Textbook SGD / Adagrad / Adam on the rows whose gradient is non-zero."""
    rows = np.any(g != 0, axis=1)
    if kind == "sgd":
        theta[rows] -= lr * g[rows]
    elif kind == "adagrad":
        state["acc"][rows] += g[rows] ** 2
        theta[rows] -= lr * g[rows] / np.sqrt(state["acc"][rows] + 1e-8)
    else:
        state["m"][rows] = 0.9 * state["m"][rows] + 0.1 * g[rows]
        state["v"][rows] = 0.999 * state["v"][rows] + 0.001 * g[rows] ** 2
        lr_t = lr * np.sqrt(1 - 0.999**t) / (1 - 0.9**t)
        theta[rows] -= lr_t * state["m"][rows] / (np.sqrt(state["v"][rows]) + 1e-8)
    return theta


@pytest.mark.parametrize("kind", ["sgd", "adagrad", "adam"])
def test_table_optimizer_matches_numpy_reference(kind: str) -> None:
    rng = np.random.default_rng(0)
    start = rng.normal(size=(10, 3)).astype(np.float32)
    var = tf.Variable(start)
    opt = TableOptimizer(kind, 0.1, [var])  # type: ignore[arg-type]
    theta = start.astype(np.float64)
    state = {"acc": np.full((10, 3), 0.1), "m": np.zeros((10, 3)), "v": np.zeros((10, 3))}
    for t in range(1, 6):
        idx = rng.integers(0, 10, size=6)  # repeated rows: gradients must be summed
        values = rng.normal(size=(6, 3)).astype(np.float32)
        opt.apply([tf.IndexedSlices(tf.constant(values), tf.constant(idx, tf.int32),
                                    tf.constant([10, 3]))])
        dense = np.zeros((10, 3))
        np.add.at(dense, idx, values)
        theta = _numpy_step(kind, theta, dense, state, t, 0.1)
    np.testing.assert_allclose(var.numpy(), theta, rtol=1e-4, atol=1e-5)


def _encoded(data: Dataset, spec: FeatureSpec
             ) -> tuple[FeatureSpec, EncodedRatings, EncodedRatings]:
    spec = spec.fit_numeric("context", {"time": data.train.timestamp.tolist()})
    fmap = FeatureMap(spec)
    return (spec, encode_ratings(fmap, data, data.train, data.train),
            encode_ratings(fmap, data, data.test, data.train))


def test_training_recovers_planted_model(small_data: tuple[Dataset, FeatureSpec]) -> None:
    data, spec = small_data
    spec, train_part, test_part = _encoded(data, spec)
    config = TrainConfig(k=4, epochs=40, batch_size=256, learning_rate=0.02, patience=40)
    result = train(train_part, config, spec.n_features, data.rating_range, progress=False)
    before = rmse_mae(np.full(len(test_part), train_part.y.mean()), test_part.y)[0]
    after = rmse_mae(np.clip(result.trainer.predict_all(test_part), *data.rating_range),
                     test_part.y)[0]
    # the ratings are stars: the planted FM itself, rescaled to stars, is the floor (the
    # noise of the quantised target) where the Gaussian noise was before they were stars
    floor = data.info["planted_rmse"]
    assert after < 0.6 * before
    assert after < 1.6 * floor, (after, floor)


def test_same_seed_same_model(small_data: tuple[Dataset, FeatureSpec]) -> None:
    data, spec = small_data
    spec, train_part, _ = _encoded(data, spec)
    config = TrainConfig(k=4, epochs=2, batch_size=512)
    a = train(train_part, config, spec.n_features, data.rating_range, progress=False)
    b = train(train_part, config, spec.n_features, data.rating_range, progress=False)
    np.testing.assert_array_equal(a.trainer.fm.V.numpy(), b.trainer.fm.V.numpy())


def test_full_batch_epochs_are_one_step_on_every_rating(
        small_data: tuple[Dataset, FeatureSpec]) -> None:
    """train() builds the full batch once and steps on it every epoch: the same as
    stepping on a freshly built batch each time, and (up to float summation order, which
    Adam magnifies where gradients are ~0) on a freshly shuffled one."""
    data, spec = small_data
    spec, train_part, _ = _encoded(data, spec)
    config = TrainConfig(k=4, epochs=3, batch_size=10**9, learning_rate=0.02, members=1)
    result = train(train_part, config, spec.n_features, data.rating_range, progress=False)
    in_order, shuffled = (Trainer.for_data(train_part, spec.n_features, config)
                          for _ in range(2))
    compact = in_order.compact(train_part)
    rng = np.random.default_rng(1)
    for _ in range(config.epochs):
        in_order.step(*compact.batch(np.arange(len(compact))))
        shuffled.step(*compact.batch(rng.permutation(len(compact))))
    assert len(result.history) == config.epochs
    start = Trainer.for_data(train_part, spec.n_features, config).snapshot()
    for got, same, close, before in zip(result.trainer.snapshot(), in_order.snapshot(),
                                        shuffled.snapshot(), start, strict=True):
        np.testing.assert_array_equal(got, same)
        np.testing.assert_allclose(got, close, atol=5e-4)
        assert not np.array_equal(got, before)  # the steps moved every group


def test_steps_on_the_whole_sides_equal_steps_on_each_batchs_distinct_rows(
        small_data: tuple[Dataset, FeatureSpec]) -> None:
    """A batch reads its users and movies either as its distinct rows or as every row of
    the data (`wide_sides`): the same ratings, the same sums, so the same steps (up to
    float summation order). Batches of 64 touch a fraction of the rows, so the whole
    sides compute rows no rating reads, and those must move nothing."""
    data, spec = small_data
    spec, train_part, _ = _encoded(data, spec)
    config = TrainConfig(k=4, learning_rate=0.02, members=1)
    per_batch, whole = (Trainer.for_data(train_part, spec.n_features, config)
                        for _ in range(2))
    compact = per_batch.compact(train_part)
    sides = wide_sides(compact, len(compact))
    assert sides.users is not None and sides.items is not None
    order = np.random.default_rng(2).permutation(len(compact))
    for start in range(0, 640, 64):
        rows = order[start:start + 64]
        assert len(np.unique(compact.row_user[rows])) < compact.users.n_rows
        loss = float(per_batch.step(*compact.batch(rows)))
        assert abs(float(whole.step(*compact.batch(rows, sides))) - loss) < 1e-5 * loss
    for got, want in zip(whole.snapshot(), per_batch.snapshot(), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)
    rows = order[:500]
    np.testing.assert_allclose(whole.predict(*compact.batch(rows, sides)).numpy(),
                               whole.predict(*compact.batch(rows)).numpy(), atol=1e-5)


def test_wide_sides_only_where_a_batch_reads_most_of_them(
        small_data: tuple[Dataset, FeatureSpec]) -> None:
    """Whole users or movies are worth computing every step only if a batch reads half
    their non-zeros or more: for the whole data yes, for one rating no."""
    data, spec = small_data
    _, train_part, _ = _encoded(data, spec)
    wide = train_part.wide_sides(len(train_part))
    assert wide.users is not None and wide.items is not None
    assert wide.users.where.shape == (train_part.users.nnz, 2)
    np.testing.assert_array_equal(wide.users.where[:, 0], train_part.users.row_ids())
    np.testing.assert_array_equal(wide.users.where[:, 1], train_part.users.indices)
    assert train_part.wide_sides(1) == (None, None)


def test_early_stopping_keeps_the_best_epoch(small_data: tuple[Dataset, FeatureSpec]) -> None:
    data, spec = small_data
    spec, train_part, test_part = _encoded(data, spec)
    config = TrainConfig(k=4, epochs=12, batch_size=256, learning_rate=0.05, l2_v=0.0,
                         l2_w=0.0, patience=3, min_improvement=0.0)
    result = train(train_part, config, spec.n_features, data.rating_range, test_part,
                   progress=False)
    best = min(h["val_rmse"] for h in result.history)
    final = rmse_mae(np.clip(result.trainer.predict_all(test_part), *data.rating_range),
                     test_part.y)[0]
    assert final == pytest.approx(best, abs=1e-5)
    assert result.history[result.best_epoch - 1]["val_rmse"] == best


def test_an_epoch_is_better_only_by_the_min_improvement(
        small_data: tuple[Dataset, FeatureSpec]) -> None:
    """With a share no epoch can cut, training keeps epoch 1 and stops after `patience`;
    with none, the same run finds later epochs better."""
    data, spec = small_data
    spec, train_part, test_part = _encoded(data, spec)
    config = TrainConfig(k=4, epochs=8, batch_size=256, learning_rate=0.05, patience=2)
    runs = {share: train(train_part, replace(config, min_improvement=share), spec.n_features,
                         data.rating_range, test_part, progress=False)
            for share in (0.0, 0.9)}
    assert runs[0.0].best_epoch > 1
    assert (runs[0.9].best_epoch, len(runs[0.9].history)) == (1, 3)


def test_refit_continues_the_early_stopped_model_on_every_rating(
        small_data: tuple[Dataset, FeatureSpec]) -> None:
    """The refit trains the selected model on, over every rating's columns, for
    `refit_epochs`: its first epoch fits the data as well as the selection's last did,
    where a fresh model's first epoch does not."""
    data, spec = small_data
    spec, train_part, _ = _encoded(data, spec)
    config = TrainConfig(k=4, epochs=10, batch_size=256, learning_rate=0.02, refit_epochs=3)
    selection, final = train_member(train_part, spec.n_features, config, data.rating_range,
                                    0.1, progress=False, refit=True)
    assert final.trainer is selection.trainer
    np.testing.assert_array_equal(final.trainer.columns, used_columns(train_part))
    assert len(final.history) == 3 and len(selection.history) > 1
    fresh = train(train_part, replace(config, epochs=1), spec.n_features, data.rating_range,
                  progress=False)
    last = selection.history[-1]["train_rmse"]
    assert final.history[0]["train_rmse"] < last + 0.05
    assert fresh.history[0]["train_rmse"] > last + 0.2
    no_refit = train_member(train_part, spec.n_features, config, data.rating_range, 0.1,
                            progress=False, refit=False)
    assert no_refit[0] is no_refit[1]


def test_per_user_holdout_takes_the_same_count_from_each_eligible_user() -> None:
    row_user = np.repeat(np.arange(4), [40, 40, 3, 80])  # user 2 has too few ratings
    rng = np.random.default_rng(0)
    row_user = row_user[rng.permutation(len(row_user))]
    held = per_user_holdout(row_user, 0.05, seed=1)
    counts = np.bincount(row_user[held], minlength=4)
    per_user = round(0.05 * len(row_user) / 4)
    assert counts.tolist() == [per_user, per_user, 0, per_user]
    assert np.all(np.diff(held) > 0)
    assert len(per_user_holdout(row_user, 0.0, seed=1)) == 0


def test_exported_model_scores_like_the_compact_trainer(
        small_data: tuple[Dataset, FeatureSpec]) -> None:
    """export() puts each compact row back at its hashed column; unseen columns are zero."""
    from model.train import Trainer, batch_scores

    data, spec = small_data
    spec, train_part, test_part = _encoded(data, spec)
    config = TrainConfig(k=4, epochs=2, batch_size=512, learning_rate=0.02)
    trainer = train(train_part, config, spec.n_features, data.rating_range,
                    progress=False).trainer
    assert len(trainer.columns) < spec.n_features
    full = trainer.export()
    got = batch_scores(full, test_part.batch(np.arange(len(test_part)))).numpy()
    np.testing.assert_allclose(got, trainer.predict_all(test_part), rtol=1e-5, atol=1e-5)
    unused = np.setdiff1d(np.arange(spec.n_features), trainer.columns)
    assert not full.V.numpy()[unused].any() and not full.w.numpy()[unused].any()
    assert np.abs(full.V.numpy()[trainer.columns]).max() > 0
    # a trainer whose columns are shuffled against its rows scores differently
    wrong = Trainer(np.roll(trainer.columns, 1), spec.n_features, config, 3.0)
    wrong.restore(trainer.snapshot())
    assert np.abs(batch_scores(wrong.export(), test_part.batch(np.arange(len(test_part))))
                  .numpy() - got).max() > 1e-3


def test_members_are_saved_as_one_fm_scoring_their_mean(
        small_data: tuple[Dataset, FeatureSpec], tmp_path) -> None:
    """The bundle of an M-member run is one FM (k = M k) that scores the members' mean."""
    from model.bundle import Bundle
    from model.evaluate import evaluate_bundle
    from model.pipeline import fit_and_save

    data, spec = small_data
    config = TrainConfig(k=3, epochs=3, batch_size=512, learning_rate=0.02, members=2)
    _, metrics = fit_and_save(data, spec, config, tmp_path / "b", progress=False)
    bundle = Bundle(tmp_path / "b")
    assert bundle.k == 6
    assert [m["seed"] for m in metrics["members"]] == [0, 1]
    rmses = [m["test_rmse"] for m in metrics["members"]]
    assert rmses[0] != rmses[1]  # different seeds, different models
    assert evaluate_bundle(bundle, data)["rmse"] == pytest.approx(metrics["test_rmse"],
                                                                  abs=1e-5)
