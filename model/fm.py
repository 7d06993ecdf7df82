"""The order-2 Factorization Machine as a tf.Module, written in side sums.

    y = w0 + sum_i w_i x_i + 1/2 sum_f [(sum_i v_if x_i)^2 - sum_i v_if^2 x_i^2]

Every feature belongs to one side (user, item, context). For a side S the side sums are
L = sum w_i x_i, s = sum v_i x_i (a k-vector) and q = sum |v_i|^2 x_i^2, and exactly

    y = w0 + sum_S L_S + 1/2 (|sum_S s_S|^2 - sum_S q_S).

Training, the exported signatures and the service all score with `score`; side sums come
from `side_sums` (a gather per non-zero: small blocks against the full table) or, in
training, from `model.batch_sums.block_sums` (sparse matrix products against the compact
table), tested equal to each other and to the pairwise definition. Nothing here names a device:
TensorFlow places the work on a GPU when one is visible.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf


class SideSums(NamedTuple):
    """L (n,), s (n, k) and q (n,) of n rows of one side (or of several sides added)."""

    L: tf.Tensor
    s: tf.Tensor
    q: tf.Tensor

    def __add__(self, other: object) -> SideSums:
        if not isinstance(other, SideSums):
            return NotImplemented
        return SideSums(self.L + other.L, self.s + other.s, self.q + other.q)

    def __sub__(self, other: SideSums) -> SideSums:
        """Remove occurrences: the side sums of a multiset minus a sub-multiset."""
        return SideSums(self.L - other.L, self.s - other.s, self.q - other.q)

    def gather(self, rows: tf.Tensor) -> SideSums:
        return SideSums(tf.gather(self.L, rows), tf.gather(self.s, rows), tf.gather(self.q, rows))


class FactorizationMachine(tf.Module):
    """w0, w (n_features,) and V (n_features, k), with side sums and the score."""

    def __init__(
        self, n_features: int, k: int, *, init_std: float = 0.01, bias: float = 0.0,
        seed: int = 0, name: str = "fm",
    ) -> None:
        super().__init__(name=name)
        self.k = k
        self.n_features = n_features
        init = tf.random.stateless_normal([n_features, k], seed=[seed, 0], stddev=init_std)
        self.w0 = tf.Variable(bias, dtype=tf.float32, name="w0")
        self.w = tf.Variable(tf.zeros([n_features]), name="w")
        self.V = tf.Variable(init, name="V")

    def side_sums(
        self, row_ids: tf.Tensor, indices: tf.Tensor, values: tf.Tensor, n_rows: tf.Tensor
    ) -> SideSums:
        """Side sums of a CSR block given as (row of each non-zero, index, value)."""
        v = tf.gather(self.V, indices)
        x = values[:, None]
        L = tf.math.unsorted_segment_sum(tf.gather(self.w, indices) * values, row_ids, n_rows)
        s = tf.math.unsorted_segment_sum(v * x, row_ids, n_rows)
        q = tf.math.unsorted_segment_sum(
            tf.reduce_sum(tf.square(v), axis=1) * tf.square(values), row_ids, n_rows
        )
        return SideSums(L, s, q)

    def score(self, total: SideSums) -> tf.Tensor:
        """FM output for rows whose sides have already been added together."""
        return self.w0 + total.L + 0.5 * (tf.reduce_sum(tf.square(total.s), axis=1) - total.q)


def item_bias(items: SideSums) -> tf.Tensor:
    """The part of the score that depends on the item alone: L + 1/2 (|s|^2 - q).

    With a query side Q (user + context), y = w0 + bias(Q) + bias(item) + <s_Q, s_item>,
    so ranking a catalog is one matrix-vector product plus this precomputed column.
    """
    return items.L + 0.5 * (tf.reduce_sum(tf.square(items.s), axis=1) - items.q)


def average_of(members: list[FactorizationMachine]) -> FactorizationMachine:
    """One FM whose score is exactly the mean of the members' scores.

    With M members, w0 and w are the members' means and V is their V / sqrt(M) side by
    side (k' = M k): then |s'|^2 = mean_m |s_m|^2 and q' = mean_m q_m, so every side sum,
    the score and the catalog's item bias average as they should. Members trained from
    different seeds make different errors; their mean is a better model that still is one
    order-2 FM, served by the same code.
    """
    if not members:
        raise ValueError("average_of needs at least one model")
    scale = 1.0 / len(members)
    out = FactorizationMachine(members[0].n_features, sum(m.k for m in members), init_std=0.0)
    out.w0.assign(tf.add_n([m.w0 for m in members]) * scale)
    out.w.assign(tf.add_n([m.w for m in members]) * scale)
    out.V.assign(tf.concat([m.V * tf.sqrt(scale) for m in members], axis=1))
    return out
