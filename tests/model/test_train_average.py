"""Polyak averaging (`TrainConfig.average`): the scored model is the debiased EMA of the
weights after every step."""

from __future__ import annotations

import numpy as np

from model.blocks import EncodedRatings, encode_ratings
from model.data import Dataset
from model.features import FeatureMap, FeatureSpec
from model.train import TrainConfig, Trainer


def _trainer(data: Dataset, spec: FeatureSpec, average: float) -> tuple[Trainer, EncodedRatings]:
    fmap = FeatureMap(spec.fit_numeric("context", {"time": data.train.timestamp.tolist()}))
    encoded = encode_ratings(fmap, data, data.train, data.train)
    config = TrainConfig(k=4, batch_size=256, learning_rate=0.05, average=average)
    trainer = Trainer.for_data(encoded, spec.n_features, config)
    return trainer, trainer.compact(encoded)


def test_averaged_weights_are_the_moving_average_of_every_step(
        small_data: tuple[Dataset, FeatureSpec]) -> None:
    data, spec = small_data
    decay = 0.8
    trainer, compact = _trainer(data, spec, decay)
    fm = trainer.fm
    steps = []  # the weights after each step
    for start in range(0, 256 * 6, 256):
        trainer.step(*compact.batch(np.arange(start, start + 256)))
        steps.append([v.numpy().astype(np.float64) for v in (fm.w0, fm.w, fm.V)])
    # the debiased EMA written out: step t of T weighs decay^(T-t), weights summing to 1
    weights = decay ** np.arange(len(steps) - 1, -1, -1)
    weights /= weights.sum()
    want = [sum(w * s[part] for w, s in zip(weights, steps, strict=True)) for part in range(3)]
    for got, expected in zip(trainer.snapshot(), want, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    assert not np.allclose(trainer.snapshot()[2], fm.V.numpy())  # the average lags the steps
    # what is scored (validation, export) is the average
    batch = compact.batch(np.arange(50))
    averaged = trainer.predict(*batch).numpy()
    trainer.restore(trainer.snapshot())  # live := average
    np.testing.assert_allclose(trainer.predict(*batch).numpy(), averaged, rtol=1e-5)


def test_without_average_the_steps_are_scored(small_data: tuple[Dataset, FeatureSpec]) -> None:
    data, spec = small_data
    trainer, compact = _trainer(data, spec, 0.0)
    trainer.step(*compact.batch(np.arange(256)))
    np.testing.assert_array_equal(trainer.snapshot()[2], trainer.fm.V.numpy())
