"""Side sums and FM outputs of a batch of relation blocks, by sparse matrix products.

Shared by training (`model.train`, `model.relevance`) and by the synthetic data set, which
plants its ratings with the same formula (a data reader must not import training).
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from model.blocks import Batch, Block
from model.fm import FactorizationMachine, SideSums


class Tables(NamedTuple):
    """Per column: [w | V] (n, 1+k) and [|v|^2 | w^2] (n, 2), the operands of block sums."""

    linear: tf.Tensor
    squares: tf.Tensor

    @staticmethod
    def of(fm: FactorizationMachine) -> Tables:
        return Tables(tf.concat([fm.w[:, None], fm.V], axis=1),
                      tf.stack([tf.reduce_sum(tf.square(fm.V), axis=1), tf.square(fm.w)], 1))


def block_sums(tables: Tables, block: Block) -> tuple[SideSums, tf.Tensor]:
    """(side sums, sum of w_i^2 x_i^2) of each row of a block, by sparse matrix products.

    Equal to `FactorizationMachine.side_sums` (tests/model/test_train.py); that one gathers
    rows and suits small blocks against the full 2**hash_bits table (serving), this one
    suits large blocks against the compact training table.
    """
    row_ids, indices, values, n_rows = block
    where = tf.cast(tf.stack([row_ids, indices], axis=1), tf.int64)
    shape = tf.cast(tf.stack([n_rows, tf.shape(tables.linear)[0]]), tf.int64)
    linear = tf.sparse.sparse_dense_matmul(tf.SparseTensor(where, values, shape), tables.linear)
    squares = tf.sparse.sparse_dense_matmul(
        tf.SparseTensor(where, tf.square(values), shape), tables.squares)
    return SideSums(linear[:, 0], linear[:, 1:], squares[:, 0]), squares[:, 1]


class BatchSides(NamedTuple):
    """Per rating: user + item side sums without its own movie, and context side sums."""

    user_item: SideSums
    contexts: SideSums
    user_item_w_sq: tf.Tensor  # sum of w_i^2 x_i^2 over the user and item features
    contexts_w_sq: tf.Tensor


def batch_sides(fm: FactorizationMachine, batch: Batch) -> BatchSides:
    tables = Tables.of(fm)
    users, users_w = block_sums(tables, batch.users)
    items, items_w = block_sums(tables, batch.items)
    left_out, left_out_w = block_sums(tables, batch.left_out)
    contexts, contexts_w = block_sums(tables, batch.contexts)
    user_item = users.gather(batch.row_user) + items.gather(batch.row_item) - left_out
    w_sq = tf.gather(users_w, batch.row_user) + tf.gather(items_w, batch.row_item) - left_out_w
    return BatchSides(user_item, contexts, w_sq, contexts_w)


def batch_scores(fm: FactorizationMachine, batch: Batch) -> tf.Tensor:
    """FM output of every rating in a batch (its indices are rows of `fm`)."""
    sides = batch_sides(fm, batch)
    return fm.score(sides.user_item + sides.contexts)
