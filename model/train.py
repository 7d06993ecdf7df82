"""Mini-batch training of the FM on relation blocks, over a compact parameter table.

One step computes side sums for the batch's distinct users and movies (each once), the
contexts per rating, gathers them per rating and scores with `FactorizationMachine.score`:
the same formula the exported model and the service use.

Compact table: the trainer's w and V hold only the columns its training data uses
(`used_columns`: ~7,000 for ML-100k instead of 2**18 buckets); `export` scatters them
into a full-size model with zeros elsewhere. On a small table, a block's side sums are a
sparse-dense matrix product (one multithreaded op, whose gradient is a small dense
table) instead of a gather plus segment sum per block and a `tf.unique` over every
occurrence in the gradient: several times less time per step (docs/benchmarks.md).

L2 is per parameter group (w0, w, V) and per feature occurrence, as in libFM's SGD: each
rating adds lambda_w * sum_i w_i^2 x_i^2 + lambda_V * sum_i |v_i|^2 x_i^2, so a feature is
shrunk in proportion to how often (and how strongly) it appears, and rare features are
not shrunk by every step of everyone else. The V part is exactly the `q` side sum the
score already computes, so it costs nothing extra. On ML-100k this beat L2 on the
touched rows (docs/benchmarks.md).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf

from model.batch_sums import batch_scores, batch_sides
from model.blocks import Batch, Block, EncodedRatings, used_columns
from model.evaluate import rmse_mae
from model.fm import FactorizationMachine
from model.optim import OptimizerName, TableOptimizer
from model.progress import progress as progress_bar


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters; the defaults are tuned on ML-100k ua.base (see README)."""

    k: int = 16
    epochs: int = 100
    batch_size: int = 4096
    optimizer: OptimizerName = "adam"
    learning_rate: float = 0.002
    l2_w0: float = 0.0
    l2_w: float = 0.05
    l2_v: float = 0.3
    l2_context: float = 2.0  # w and V of context features (time, last movie)
    init_std: float = 0.001
    patience: int = 6
    seed: int = 0
    members: int = 3  # models from seeds seed.., exported as their average (fm.average_of)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    trainer: Trainer
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0


_BLOCK = (
    tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.int32),
    tf.TensorSpec([None], tf.float32), tf.TensorSpec([], tf.int32),
)
_BATCH = (_BLOCK, _BLOCK, _BLOCK, _BLOCK, tf.TensorSpec([None], tf.int32),
          tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.float32))


def _as_batch(args: tuple[Any, ...]) -> Batch:
    """Rebuild the named tuples that tf.function flattened into plain tuples."""
    users, items, contexts, left_out = (Block(*a) for a in args[:4])
    return Batch(users, items, contexts, left_out, *args[4:])


class Trainer:
    """Owns the compact model, the optimizer, the loss and its metrics for one run.

    `columns` are the hashed indices the compact rows stand for (sorted); `step` takes
    batches of data remapped to them (`compact`), `predict_all` and `export` speak hashed
    indices like the rest of fmrec.
    """

    def __init__(self, columns: np.ndarray, n_features: int, config: TrainConfig,
                 bias: float) -> None:
        self.config = config
        self.columns = columns
        self.n_features = n_features
        self.fm = FactorizationMachine(
            len(columns), config.k, init_std=config.init_std, bias=bias, seed=config.seed
        )
        self.optimizer = TableOptimizer(
            config.optimizer, config.learning_rate, [self.fm.w0, self.fm.w, self.fm.V]
        )
        self.step = tf.function(self._step, input_signature=_BATCH)
        self.predict = tf.function(
            lambda *b: batch_scores(self.fm, _as_batch(b)), input_signature=_BATCH
        )

    @staticmethod
    def for_data(data: EncodedRatings, n_features: int, config: TrainConfig) -> Trainer:
        """A trainer over the columns `data` uses, its bias at the mean rating."""
        return Trainer(used_columns(data), n_features, config, float(np.mean(data.y)))

    def compact(self, data: EncodedRatings) -> EncodedRatings:
        return data.remap(self.columns)

    def _step(self, *args: Any) -> tf.Tensor:
        batch = _as_batch(args)
        cfg = self.config
        fm = self.fm
        with tf.GradientTape() as tape:
            sides = batch_sides(fm, batch)
            err = fm.score(sides.user_item + sides.contexts) - batch.y
            mse = tf.reduce_mean(tf.square(err))
            reg = cfg.l2_w0 * tf.square(fm.w0) + tf.reduce_mean(
                cfg.l2_w * sides.user_item_w_sq + cfg.l2_v * sides.user_item.q
                + cfg.l2_context * (sides.contexts_w_sq + sides.contexts.q))
            loss = mse + reg
        variables = [self.fm.w0, self.fm.w, self.fm.V]
        grads = tape.gradient(loss, variables)
        self.optimizer.apply(grads)
        return mse

    def predict_all(self, data: EncodedRatings, batch_size: int = 8192) -> np.ndarray:
        """Unclipped scores of every rating in `data` (hashed indices)."""
        return self.predict_compact(self.compact(data), batch_size)

    def predict_compact(self, data: EncodedRatings, batch_size: int = 8192) -> np.ndarray:
        """`predict_all` of data already `compact`: what an epoch's validation repeats
        (remapping 9,000 ML-100k ratings took 60% of scoring them)."""
        out = [
            self.predict(*data.batch(np.arange(i, min(i + batch_size, len(data))))).numpy()
            for i in range(0, len(data), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def export(self) -> FactorizationMachine:
        """The trained model over all 2**hash_bits columns; untrained ones are zero."""
        fm = FactorizationMachine(self.n_features, self.config.k, init_std=0.0)
        w0, w, V = self.snapshot()
        fm.w0.assign(w0)
        fm.w.scatter_nd_update(self.columns[:, None], w)
        fm.V.scatter_nd_update(self.columns[:, None], V)
        return fm

    def snapshot(self) -> list[np.ndarray]:
        return [v.numpy() for v in (self.fm.w0, self.fm.w, self.fm.V)]

    def restore(self, values: list[np.ndarray]) -> None:
        for var, value in zip((self.fm.w0, self.fm.w, self.fm.V), values, strict=True):
            var.assign(value)


def train(
    data: EncodedRatings,
    config: TrainConfig,
    n_features: int,
    rating_range: tuple[float, float],
    validation: EncodedRatings | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train for `config.epochs`, keeping the epoch with the best validation RMSE.

    Without validation data every epoch runs and the last one is kept.
    """
    trainer = Trainer.for_data(data, n_features, config)
    data = trainer.compact(data)
    held_out = trainer.compact(validation) if validation is not None else None
    rng = np.random.default_rng(config.seed)
    result = TrainResult(trainer)
    best, best_values, waited = np.inf, trainer.snapshot(), 0
    start = time.perf_counter()
    bar = progress_bar(range(1, config.epochs + 1), "train", "epoch", enabled=progress)
    # full batch: one step per epoch whose rows' order changes nothing, so build it once
    whole = data.batch(np.arange(len(data))) if config.batch_size >= len(data) else None
    for epoch in bar:
        t0 = time.perf_counter()
        if whole is not None:
            losses = [float(trainer.step(*whole))]
        else:
            order = rng.permutation(len(data))
            losses = [float(trainer.step(*data.batch(order[i : i + config.batch_size])))
                      for i in range(0, len(data), config.batch_size)]
        row = {"epoch": epoch, "train_rmse": float(np.sqrt(np.mean(losses))),
               "seconds": time.perf_counter() - t0}
        if held_out is not None:
            pred = np.clip(trainer.predict_compact(held_out), *rating_range)
            row["val_rmse"], row["val_mae"] = rmse_mae(pred, held_out.y)
        result.history.append(row)
        bar.set_postfix({k: round(v, 4) for k, v in row.items() if k != "epoch"})
        if held_out is None:
            continue
        if row["val_rmse"] < best - 1e-5:
            best, best_values, waited = row["val_rmse"], trainer.snapshot(), 0
            result.best_epoch = epoch
        else:
            waited += 1
            if waited >= config.patience:
                break
    if held_out is not None:
        trainer.restore(best_values)
    else:
        result.best_epoch = len(result.history)
    result.seconds = time.perf_counter() - start
    return result
