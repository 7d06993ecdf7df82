"""SGD, Adagrad and lazy Adam over the trainer's compact parameter tables.

The trainer keeps only the columns its data uses (a few thousand rows for ML-100k, not
2**hash_bits), so a whole-table update is cheaper than finding the rows a batch touched
(`tf.unique` over every occurrence was half of the old step). Updates are still row-lazy
where it matters: a row whose gradient is exactly zero (not in the batch) keeps its value
and its Adam moments, as in TF Addons' LazyAdam, so rare features are not dragged by the
momentum of steps they took no part in. SGD and Adagrad need no mask (a zero gradient
moves nothing).
"""

from __future__ import annotations

from typing import Literal

import tensorflow as tf

OptimizerName = Literal["adam", "adagrad", "sgd"]


def _touched(g: tf.Tensor) -> tf.Tensor:
    """Per element: does its row (axis 0) have a non-zero gradient? Scalars always do."""
    if g.shape.rank == 0:
        return tf.constant(True)
    nonzero = tf.not_equal(g, 0.0)
    if g.shape.rank == 1:
        return nonzero
    return tf.broadcast_to(tf.reduce_any(nonzero, axis=1, keepdims=True), tf.shape(g))


class TableOptimizer(tf.Module):
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
            g = tf.convert_to_tensor(grad)  # IndexedSlices: repeated rows are summed
            if self.kind == "sgd":
                var.assign_sub(self.lr * g)
            elif self.kind == "adagrad":
                acc = self.first[n]
                acc.assign_add(tf.square(g))
                var.assign_sub(self.lr * g / tf.sqrt(acc + self.epsilon))
            else:
                self._adam(n, var, g)

    def _adam(self, n: int, var: tf.Variable, g: tf.Tensor) -> None:
        touched = _touched(g)
        m, v = self.first[n], self.second[n]
        m.assign(tf.where(touched, self.beta1 * m + (1.0 - self.beta1) * g, m))
        v.assign(tf.where(touched, self.beta2 * v + (1.0 - self.beta2) * tf.square(g), v))
        t = self.step
        lr = self.lr * tf.sqrt(1.0 - self.beta2**t) / (1.0 - self.beta1**t)
        var.assign_sub(tf.where(touched, lr * m / (tf.sqrt(v) + self.epsilon), 0.0))
