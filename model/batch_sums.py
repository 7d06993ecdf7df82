"""Side sums and FM outputs of a batch of relation blocks, by sparse matrix products.

Shared by training (`model.train`, `model.relevance`) and by the synthetic data set, which
plants its ratings with the same formula (a data reader must not import training).
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from model.blocks import Batch, Block, EncodedRatings, Operand, Sides
from model.fm import FactorizationMachine, SideSums


class Tables(NamedTuple):
    """Per column: [w | V] (n, 1+k) and the squares (n, 2) [|v|^2 | w^2], the operands of
    block sums; with `l2_scale` (n,) the squares gain [m |v|^2 | m w^2], the L2 terms of
    columns whose weight is scaled by m (`TrainConfig.l2_fields`)."""

    linear: tf.Tensor
    squares: tf.Tensor

    @staticmethod
    def of(fm: FactorizationMachine, l2_scale: tf.Tensor | None = None) -> Tables:
        squares = tf.stack([tf.reduce_sum(tf.square(fm.V), axis=1), tf.square(fm.w)], 1)
        if l2_scale is not None:
            squares = tf.concat([squares, l2_scale[:, None] * squares], axis=1)
        return Tables(tf.concat([fm.w[:, None], fm.V], axis=1), squares)


def block_sums(tables: Tables, block: Block | Operand) -> tuple[SideSums, tf.Tensor]:
    """(side sums, L2 terms) of each row of a block, by sparse matrix products. The L2
    terms (rows, 2) are [sum m_i |v_i|^2 x_i^2, sum m_i w_i^2 x_i^2] (m = 1 without a
    scale): per occurrence, as libFM's SGD regularises.

    Equal to `FactorizationMachine.side_sums` (tests/model/test_train.py); that one gathers
    rows and suits small blocks against the full 2**hash_bits table (serving), this one
    suits large blocks against the compact training table.
    """
    if isinstance(block, Block):
        where = tf.cast(tf.stack([block.row_ids, block.indices], axis=1), tf.int64)
        values, n_rows = block.values, tf.cast(block.n_rows, tf.int64)
    else:
        where, values, n_rows = block
    shape = tf.stack([n_rows, tf.shape(tables.linear, out_type=tf.int64)[0]])
    linear = tf.sparse.sparse_dense_matmul(tf.SparseTensor(where, values, shape), tables.linear)
    squares = tf.sparse.sparse_dense_matmul(
        tf.SparseTensor(where, tf.square(values), shape), tables.squares)
    return SideSums(linear[:, 0], linear[:, 1:], squares[:, 0]), squares[:, -2:]


def wide_sides(data: EncodedRatings, batch_size: int) -> Sides:
    """`data.wide_sides` as tensors: converted once, then passed to every step."""
    sides = data.wide_sides(batch_size)
    return Sides(*(None if op is None else Operand(*map(tf.constant, op)) for op in sides))


class BatchSides(NamedTuple):
    """Per rating: user + item side sums without its own movie, and context side sums."""

    user_item: SideSums
    contexts: SideSums
    user_item_l2: tf.Tensor  # (n, 2): `block_sums`' L2 terms over user and item features
    contexts_l2: tf.Tensor


def batch_sides(fm: FactorizationMachine, batch: Batch,
                l2_scale: tf.Tensor | None = None) -> BatchSides:
    tables = Tables.of(fm, l2_scale)
    users, users_l2 = block_sums(tables, batch.users)
    items, items_l2 = block_sums(tables, batch.items)
    left_out, left_out_l2 = block_sums(tables, batch.left_out)
    contexts, contexts_l2 = block_sums(tables, batch.contexts)
    user_item = users.gather(batch.row_user) + items.gather(batch.row_item) - left_out
    l2 = tf.gather(users_l2, batch.row_user) + tf.gather(items_l2, batch.row_item) - left_out_l2
    return BatchSides(user_item, contexts, l2, contexts_l2)


def batch_scores(fm: FactorizationMachine, batch: Batch) -> tf.Tensor:
    """FM output of every rating in a batch (its indices are rows of `fm`)."""
    sides = batch_sides(fm, batch)
    return fm.score(sides.user_item + sides.contexts)
