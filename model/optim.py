"""Row-sparse optimizers (SGD, Adagrad, lazy Adam) for hashed parameter tables.

A batch touches a few thousand of the 2**hash_bits rows of w and V. Keras optimizers
turn such gradients into dense updates of the whole table (and its slots) every step,
which cost more than the rest of the step here. These update only the touched rows:
exact for SGD and Adagrad (an untouched row has a zero gradient), and "lazy" for Adam
(moments of untouched rows are not decayed), as in TF Addons' LazyAdam.
"""

from __future__ import annotations

from typing import Literal

import tensorflow as tf

OptimizerName = Literal["adam", "adagrad", "sgd"]


def _rows(grad: tf.Tensor | tf.IndexedSlices) -> tuple[tf.Tensor, tf.Tensor]:
    """(distinct row indices, summed gradient per row) of a possibly sparse gradient."""
    if isinstance(grad, tf.IndexedSlices):
        rows, where = tf.unique(grad.indices)
        return rows, tf.math.unsorted_segment_sum(grad.values, where, tf.shape(rows)[0])
    return tf.range(tf.shape(grad)[0]), grad


class SparseOptimizer(tf.Module):
    """One optimizer over a fixed list of variables; `apply` takes their gradients."""

    def __init__(
        self, name: OptimizerName, learning_rate: float, variables: list[tf.Variable],
        beta1: float = 0.9, beta2: float = 0.999, epsilon: float = 1e-8,
        initial_accumulator: float = 0.1,
    ) -> None:
        super().__init__(name=f"{name}_optimizer")
        if name not in ("adam", "adagrad", "sgd"):
            raise ValueError(f"unknown optimizer {name!r}; choose adam, adagrad or sgd")
        self.kind = name
        self.lr, self.beta1, self.beta2, self.epsilon = learning_rate, beta1, beta2, epsilon
        self.step = tf.Variable(0.0, trainable=False)
        self.variables_ = variables
        fill = initial_accumulator if name == "adagrad" else 0.0
        self.first = [tf.Variable(tf.fill(tf.shape(v), fill), trainable=False)
                      for v in variables] if name != "sgd" else []
        self.second = [tf.Variable(tf.zeros_like(v), trainable=False)
                       for v in variables] if name == "adam" else []

    def apply(self, grads: list[tf.Tensor | tf.IndexedSlices]) -> None:
        self.step.assign_add(1.0)
        for n, (var, grad) in enumerate(zip(self.variables_, grads, strict=True)):
            if var.shape.rank == 0:
                self._update_scalar(n, var, tf.convert_to_tensor(grad))
            else:
                rows, g = _rows(grad)
                self._update_rows(n, var, rows, g)

    def _delta(
        self, first: tf.Tensor | None, second: tf.Tensor | None, g: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor | None, tf.Tensor | None]:
        """(step to subtract, new first slot, new second slot) for gradient g."""
        if first is None:  # sgd
            return self.lr * g, None, None
        if second is None:  # adagrad
            acc = first + tf.square(g)
            return self.lr * g / tf.sqrt(acc + self.epsilon), acc, None
        m = self.beta1 * first + (1.0 - self.beta1) * g
        v = self.beta2 * second + (1.0 - self.beta2) * tf.square(g)
        t = self.step
        lr = self.lr * tf.sqrt(1.0 - self.beta2**t) / (1.0 - self.beta1**t)
        return lr * m / (tf.sqrt(v) + self.epsilon), m, v

    def _update_scalar(self, n: int, var: tf.Variable, g: tf.Tensor) -> None:
        first = self.first[n] if self.first else None
        second = self.second[n] if self.second else None
        delta, new_first, new_second = self._delta(first, second, g)
        if first is not None:
            first.assign(new_first)
        if second is not None:
            second.assign(new_second)
        var.assign_sub(delta)

    def _update_rows(self, n: int, var: tf.Variable, rows: tf.Tensor, g: tf.Tensor) -> None:
        first = tf.gather(self.first[n], rows) if self.first else None
        second = tf.gather(self.second[n], rows) if self.second else None
        delta, new_first, new_second = self._delta(first, second, g)
        idx = rows[:, None]
        if new_first is not None:
            self.first[n].scatter_nd_update(idx, new_first)
        if new_second is not None:
            self.second[n].scatter_nd_update(idx, new_second)
        var.scatter_nd_sub(idx, delta)
