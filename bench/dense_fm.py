"""The baseline: the classic dense "Factorization Machines in TensorFlow" formulation.

    y = w0 + X w + 1/2 * sum_f [ (X V)^2 - (X^2)(V^2) ]_f

with X the dense n x p design matrix, i.e. `tf.matmul(X, V)` over every column of every
row, zeros included. It is built from the very features fmrec trains on (FeatureMap ->
`encode_ratings` -> the rows `SparseRows.to_dense` would give), keeping only the p columns
the data uses (hashed bucket -> 0..p-1), so the matrix is p wide, not 2**hash_bits.

The objective is fmrec's (MSE plus fmrec's L2, see `DenseTrainer._step`), so the two
trainers minimise the same thing and differ only in how they compute it. X^2 is a
constant of the data and is computed once, not every step: that favours the baseline and
leaves its step time to the matrix products the formulation is about.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from model.blocks import EncodedRatings, sorted_unique
from model.features import SparseRows
from model.optim import OptimizerName
from model.train import TrainConfig


def rating_rows(data: EncodedRatings) -> SparseRows:
    """Each rating's feature row [user | item | context], its left-out occurrence negated.

    Adding up repeated indices (as `to_dense` does) then cancels the rating's own movie
    out of its user's history, exactly what fmrec's trainer subtracts in side sums.
    """
    left_out = SparseRows(data.left_out.indptr, data.left_out.indices, -data.left_out.values)
    return SparseRows.concat_columns([data.users.take(data.row_user),
                                      data.items.take(data.row_item), data.contexts, left_out])


def context_columns(data: EncodedRatings, columns: np.ndarray) -> np.ndarray:
    """Which columns hold context features (fmrec regularises those with `l2_context`)."""
    return np.isin(columns, data.contexts.indices)


def cross_side_columns(data: EncodedRatings) -> int:
    """Hashed indices used by a context feature and a user or movie feature alike.

    Such a column would need two L2 strengths in the dense formulation; it takes the
    context one (a collision across sides, rare at 2**18 buckets).
    """
    user_item = np.concatenate([data.users.indices, data.items.indices])
    return int(np.isin(sorted_unique(data.contexts.indices), user_item).sum())


def repeated_index_rows(rows: SparseRows) -> int:
    """Rows in which one hashed index still occurs twice once left-outs cancel.

    That is a hash collision inside the row, where the two formulations differ: the
    dense one adds the values into one x_i, fmrec keeps each occurrence as its own term
    (so side sums stay additive).
    """
    key = (rows.row_ids().astype(np.int64) << 32) | rows.indices.astype(np.int64)
    uniq, where = np.unique(key, return_inverse=True)
    net = np.bincount(where, weights=np.sign(rows.values), minlength=len(uniq))
    return len(sorted_unique(uniq[net > 1.5] >> 32))


def dense_design(rows: SparseRows, n_columns: int) -> tf.Tensor:
    """`rows.to_dense(n_columns)` (repeated indices added up), built inside TensorFlow.

    Scattering straight into a TF tensor avoids converting a 2 GB NumPy matrix, which
    costs another copy of it and, on these VMs, seconds of page faults.
    """
    where = np.stack([rows.row_ids(), rows.indices], axis=1).astype(np.int64)
    return tf.scatter_nd(where, rows.values, [rows.n_rows, n_columns])


class DenseFM(tf.Module):
    """w0, w (p,), V (p, k) over the dense columns, scored with full matrix products."""

    def __init__(self, w0: float, w: np.ndarray, V: np.ndarray) -> None:
        super().__init__(name="dense_fm")
        self.w0 = tf.Variable(np.float32(w0), name="w0")
        self.w = tf.Variable(np.asarray(w, np.float32), name="w")
        self.V = tf.Variable(np.asarray(V, np.float32), name="V")

    def scores(self, X: tf.Tensor, X2: tf.Tensor) -> tf.Tensor:
        """y = w0 + Xw + 1/2 sum((XV)^2 - X^2 V^2); X2 is X squared elementwise."""
        linear = tf.linalg.matvec(X, self.w)
        xv = tf.matmul(X, self.V)
        x2v2 = tf.matmul(X2, tf.square(self.V))
        return self.w0 + linear + 0.5 * tf.reduce_sum(tf.square(xv) - x2v2, axis=1)


def _keras_optimizer(name: OptimizerName, learning_rate: float) -> tf.keras.optimizers.Optimizer:
    if name == "adam":
        return tf.keras.optimizers.Adam(learning_rate)
    if name == "adagrad":
        return tf.keras.optimizers.Adagrad(learning_rate)
    return tf.keras.optimizers.SGD(learning_rate)


@dataclass
class DenseTrainer:
    """Trains a DenseFM with a stock (dense) Keras optimizer on fmrec's objective.

    `context` marks the columns of context features (`context_columns`).
    """

    fm: DenseFM
    config: TrainConfig
    context: np.ndarray

    def __post_init__(self) -> None:
        cfg = self.config
        self.l2_w = tf.constant(np.where(self.context, cfg.l2_context, cfg.l2_w), tf.float32)
        self.l2_v = tf.constant(np.where(self.context, cfg.l2_context, cfg.l2_v), tf.float32)
        self.optimizer = _keras_optimizer(self.config.optimizer, self.config.learning_rate)
        self.variables = [self.fm.w0, self.fm.w, self.fm.V]
        self.optimizer.build(self.variables)
        self.step = tf.function(self._step)
        self.batch_step = tf.function(self._batch_step, reduce_retracing=True)
        self.predict = tf.function(self.fm.scores)

    def epoch(self, X: tf.Tensor, X2: tf.Tensor, y: tf.Tensor, rng: np.random.Generator,
              batch_size: int | None = None) -> float:
        """One pass over the rows: one full-batch step, or shuffled mini-batches.

        Returns the training RMSE of the pass (from the mean of the steps' MSE).
        """
        n = int(y.shape[0])
        if batch_size is None or batch_size >= n:
            return float(np.sqrt(float(self.step(X, X2, y))))
        order = rng.permutation(n).astype(np.int32)
        losses = [float(self.batch_step(X, X2, y, order[i : i + batch_size]))
                  for i in range(0, n, batch_size)]
        return float(np.sqrt(np.mean(losses)))

    def _batch_step(self, X: tf.Tensor, X2: tf.Tensor, y: tf.Tensor, rows: tf.Tensor
                    ) -> tf.Tensor:
        return self._step(tf.gather(X, rows), tf.gather(X2, rows), tf.gather(y, rows))

    def _step(self, X: tf.Tensor, X2: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        """MSE plus fmrec's L2 (model/train.py `Trainer._step`), per feature occurrence:

            l2_w0 w0^2 + mean over rows of sum_i (l2w_i w_i^2 + l2v_i |v_i|^2) x_i^2

        with l2w_i, l2v_i = l2_context for context columns, else l2_w, l2_v. So both
        trainers minimise the same objective (tests/bench/test_bench_train.py checks that one
        step of each moves the parameters identically).
        """
        cfg, fm = self.config, self.fm
        with tf.GradientTape() as tape:
            mse = tf.reduce_mean(tf.square(fm.scores(X, X2) - y))
            per_column = (self.l2_w * tf.square(fm.w)
                          + self.l2_v * tf.reduce_sum(tf.square(fm.V), axis=1))
            per_row = tf.linalg.matvec(X2, per_column)
            loss = mse + cfg.l2_w0 * tf.square(fm.w0) + tf.reduce_mean(per_row)
        grads = tape.gradient(loss, self.variables)
        self.optimizer.apply_gradients(zip(grads, self.variables, strict=True))
        return mse
