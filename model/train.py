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

from model.batch_sums import batch_scores, batch_sides, wide_sides
from model.blocks import Batch, Block, EncodedRatings, Operand, Sides, used_columns
from model.evaluate import rmse_mae
from model.fm import FactorizationMachine
from model.neighbours import NeighbourConfig
from model.optim import OptimizerName, TableOptimizer
from model.progress import progress as progress_bar

# the item id, whose signal the movie's raters and attributes also carry, overfits under
# the common L2; the user's stars want more of it too (docs/accuracy.md). An entry for a
# field a spec does not have (no "stars" group) scales nothing (`pipeline.l2_scale_of`).
DEFAULT_L2_FIELDS = {"item.id": 10.0, "user.rated_stars": 3.0}


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters; the defaults are tuned on ML-100k ua.base (see README)."""

    k: int = 16
    epochs: int = 100
    batch_size: int = 4096
    optimizer: OptimizerName = "adam"
    learning_rate: float = 0.004
    l2_w0: float = 0.0
    l2_w: float = 0.05
    l2_v: float = 0.3
    l2_context: float = 2.0  # w and V of context features (time, last movie)
    # field key -> multiplier of its group's L2 weights (both w and V)
    l2_fields: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_L2_FIELDS))
    init_std: float = 0.001
    patience: int = 6
    # an epoch counts as better only if it cuts the best validation RMSE by this share: the
    # Polyak average creeps on by ~1e-4 an epoch for dozens of epochs (docs/accuracy.md)
    min_improvement: float = 6e-4
    refit_epochs: int = 12  # after the early stop: epochs on all ratings (pipeline.train_member)
    seed: int = 0
    members: int = 1  # models from seeds seed.., exported as their average (fm.average_of)
    average: float = 0.995  # Polyak: validate and export a debiased EMA of the weights (decay
    # per step; 0 = off). 0.995 spans ~200 steps, ~10 epochs of ML-100k at batch 4,096
    # the item-item correction on the FM's residuals that /predict adds (None: off)
    neighbours: NeighbourConfig | None = field(default_factory=NeighbourConfig)

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
_OPERAND = (tf.TensorSpec([None, 2], tf.int64), tf.TensorSpec([None], tf.float32),
            tf.TensorSpec([], tf.int64))
_BATCH = (_OPERAND, _OPERAND, _BLOCK, _BLOCK, tf.TensorSpec([None], tf.int32),
          tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.float32))


def _as_batch(args: tuple[Any, ...]) -> Batch:
    """Rebuild the named tuples that tf.function flattened into plain tuples."""
    return Batch(Operand(*args[0]), Operand(*args[1]), Block(*args[2]), Block(*args[3]),
                 *args[4:])


class Trainer:
    """Owns the compact model, the optimizer, the loss and its metrics for one run.

    `columns` are the hashed indices the compact rows stand for (sorted); `step` takes
    batches of data remapped to them (`compact`), `predict_all` and `export` speak hashed
    indices like the rest of fmrec.
    """

    def __init__(self, columns: np.ndarray, n_features: int, config: TrainConfig,
                 bias: float, l2_scale: np.ndarray | None = None) -> None:
        self.config = config
        # per hashed column, the multiplier of its L2 weights (`l2_scale_of`), compacted
        self.l2_scale = (None if l2_scale is None
                         else tf.constant(l2_scale[columns], dtype=tf.float32))
        self.columns = columns
        self.n_features = n_features
        self.fm = FactorizationMachine(
            len(columns), config.k, init_std=config.init_std, bias=bias, seed=config.seed
        )
        self.optimizer = TableOptimizer(
            config.optimizer, config.learning_rate, [self.fm.w0, self.fm.w, self.fm.V]
        )
        # with `average`, the model that is validated and exported is a moving average of
        # the trajectory (a cheap stand-in for a posterior mean); `fm` is what steps.
        # Debiased as Adam's moments are (an EMA from zero divided by 1 - decay^t), so early
        # averages are of the steps taken, not pulled to the init.
        self.averaged = FactorizationMachine(len(columns), config.k, init_std=0.0)
        self._ema_steps = tf.Variable(0.0)
        self._sync_average()
        self.step = tf.function(self._step, input_signature=_BATCH)
        self.predict = tf.function(
            lambda *b: batch_scores(self._scored, _as_batch(b)), input_signature=_BATCH
        )

    @property
    def _scored(self) -> FactorizationMachine:
        return self.averaged if self.config.average else self.fm

    def _pairs(self) -> list[tuple[tf.Variable, tf.Variable]]:
        return list(zip((self.averaged.w0, self.averaged.w, self.averaged.V),
                        (self.fm.w0, self.fm.w, self.fm.V), strict=True))

    def _sync_average(self) -> None:
        """Restart the average at the current weights."""
        self._ema_steps.assign(0.0)
        for avg, var in self._pairs():
            avg.assign(var)

    def _update_average(self, decay: float) -> None:
        """avg_t = avg_t-1 + (1 - d) / (1 - d^t) (w_t - avg_t-1): the debiased EMA in the
        form that keeps float32 exact at t = 1 (avg_1 = w_1)."""
        self._ema_steps.assign_add(1.0)
        rate = (1.0 - decay) / (1.0 - tf.pow(decay, self._ema_steps))
        for avg, var in self._pairs():
            avg.assign_add(rate * (var - avg))

    @staticmethod
    def for_data(data: EncodedRatings, n_features: int, config: TrainConfig,
                 l2_scale: np.ndarray | None = None) -> Trainer:
        """A trainer over the columns `data` uses, its bias at the mean rating."""
        return Trainer(used_columns(data), n_features, config, float(np.mean(data.y)),
                       l2_scale)

    def compact(self, data: EncodedRatings) -> EncodedRatings:
        return data.remap(self.columns)

    def _step(self, *args: Any) -> tf.Tensor:
        batch = _as_batch(args)
        cfg = self.config
        fm = self.fm
        with tf.GradientTape() as tape:
            sides = batch_sides(fm, batch, self.l2_scale)
            err = fm.score(sides.user_item + sides.contexts) - batch.y
            mse = tf.reduce_mean(tf.square(err))
            reg = cfg.l2_w0 * tf.square(fm.w0) + tf.reduce_mean(
                cfg.l2_v * sides.user_item_l2[:, 0] + cfg.l2_w * sides.user_item_l2[:, 1]
                + cfg.l2_context * tf.reduce_sum(sides.contexts_l2, axis=1))
            loss = mse + reg
        variables = [self.fm.w0, self.fm.w, self.fm.V]
        grads = tape.gradient(loss, variables)
        self.optimizer.apply(grads)
        if cfg.average:
            self._update_average(cfg.average)
        return mse

    def predict_all(self, data: EncodedRatings, batch_size: int = 8192) -> np.ndarray:
        """Unclipped scores of every rating in `data` (hashed indices)."""
        return self.predict_compact(self.compact(data), batch_size)

    def predict_compact(self, data: EncodedRatings, batch_size: int = 8192,
                        sides: Sides | None = None) -> np.ndarray:
        """`predict_all` of data already `compact`: what an epoch's validation repeats
        (remapping 9,000 ML-100k ratings took 60% of scoring them), with its
        `wide_sides` if they are at hand."""
        sides = wide_sides(data, batch_size) if sides is None else sides
        out = [
            self.predict(*data.batch(np.arange(i, min(i + batch_size, len(data))), sides)
                         ).numpy()
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
        """The weights that are scored (the average, with `average`)."""
        fm = self._scored
        return [v.numpy() for v in (fm.w0, fm.w, fm.V)]

    def restore(self, values: list[np.ndarray]) -> None:
        for var, value in zip((self.fm.w0, self.fm.w, self.fm.V), values, strict=True):
            var.assign(value)
        self._sync_average()


def train(
    data: EncodedRatings,
    config: TrainConfig,
    n_features: int,
    rating_range: tuple[float, float],
    validation: EncodedRatings | None = None,
    progress: bool = True,
    l2_scale: np.ndarray | None = None,
    trainer: Trainer | None = None,
) -> TrainResult:
    """Train for `config.epochs`, keeping the epoch with the best validation RMSE.

    Without validation data every epoch runs and the last one is kept. `l2_scale`: per
    hashed column, a multiplier of its L2 weights (`model.pipeline.l2_scale_of`). Given a
    `trainer` (whose columns cover `data`'s), training continues it instead of a fresh one.
    """
    if trainer is None:
        trainer = Trainer.for_data(data, n_features, config, l2_scale)
    data = trainer.compact(data)
    held_out = trainer.compact(validation) if validation is not None else None
    rng = np.random.default_rng(config.seed)
    result = TrainResult(trainer)
    best, best_values, waited = np.inf, trainer.snapshot(), 0
    start = time.perf_counter()
    bar = progress_bar(range(1, config.epochs + 1), "train", "epoch", enabled=progress)
    sides = wide_sides(data, config.batch_size)
    held_sides = wide_sides(held_out, 8192) if held_out is not None else None
    # full batch: one step per epoch whose rows' order changes nothing, so build it once
    whole = (data.batch(np.arange(len(data)), sides) if config.batch_size >= len(data)
             else None)
    for epoch in bar:
        t0 = time.perf_counter()
        if whole is not None:
            losses = [float(trainer.step(*whole))]
        else:
            order = rng.permutation(len(data))
            losses = [float(trainer.step(*data.batch(order[i : i + config.batch_size], sides)))
                      for i in range(0, len(data), config.batch_size)]
        row = {"epoch": epoch, "train_rmse": float(np.sqrt(np.mean(losses))),
               "seconds": time.perf_counter() - t0}
        if held_out is not None:
            pred = np.clip(trainer.predict_compact(held_out, sides=held_sides), *rating_range)
            row["val_rmse"], row["val_mae"] = rmse_mae(pred, held_out.y)
        result.history.append(row)
        bar.set_postfix({k: round(v, 4) for k, v in row.items() if k != "epoch"})
        if held_out is None:
            continue
        if row["val_rmse"] < best * (1.0 - config.min_improvement):
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
