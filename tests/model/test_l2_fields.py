"""Per-field L2 multipliers (`TrainConfig.l2_fields`): which columns they reach, and that
they regularise those columns and no others."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from model.blocks import encode_ratings
from model.data import Dataset
from model.features import FeatureMap, FeatureSpec, feature_hash
from model.pipeline import feature_keys, l2_scale_of
from model.train import DEFAULT_L2_FIELDS, TrainConfig, train


def _columns(keys: set[str], field: str, bits: int) -> np.ndarray:
    return np.array(sorted({feature_hash(k, bits) for k in keys
                            if k.split("=", 1)[0] == field}))


def test_scale_reaches_the_fields_columns_only(small_data: tuple[Dataset, FeatureSpec]) -> None:
    data, spec = small_data
    fmap = FeatureMap(spec)
    keys = feature_keys(fmap, data)
    scale = l2_scale_of(fmap, keys, {"item.id": 10.0, "user.id": 0.5})
    assert scale is not None and scale.shape == (spec.n_features,)
    items = _columns(keys, "item.id", spec.hash_bits)
    users = _columns(keys, "user.id", spec.hash_bits)
    elsewhere = {feature_hash(k, spec.hash_bits) for k in keys
                 if not k.startswith("user.id=")}  # a collision takes the larger multiplier
    alone = np.array([c for c in users if c not in elsewhere])
    assert len(items) > 50 and len(alone) > 50
    np.testing.assert_array_equal(scale[items], 10.0)
    np.testing.assert_array_equal(scale[alone], 0.5)
    np.testing.assert_array_equal(scale[np.setdiff1d(users, alone)], [
        10.0 if c in items else 1.0 for c in np.setdiff1d(users, alone)])
    others = np.setdiff1d(np.arange(spec.n_features), np.union1d(items, users))
    np.testing.assert_array_equal(scale[others], 1.0)


def test_a_zero_multiplier_turns_a_fields_l2_off(
        small_data: tuple[Dataset, FeatureSpec]) -> None:
    """0 is a multiplier like any other, not "unset" (it once came back as 1)."""
    data, spec = small_data
    fmap = FeatureMap(spec)
    keys = feature_keys(fmap, data)
    scale = l2_scale_of(fmap, keys, {"item.genres": 0.0})
    assert scale is not None
    genres = _columns(keys, "item.genres", spec.hash_bits)
    elsewhere = {feature_hash(k, spec.hash_bits) for k in keys
                 if not k.startswith("item.genres=")}
    alone = np.array([c for c in genres if c not in elsewhere])
    assert len(alone) > 0
    np.testing.assert_array_equal(scale[alone], 0.0)


def test_no_scale_when_every_multiplier_is_one(small_data: tuple[Dataset, FeatureSpec]) -> None:
    data, spec = small_data
    fmap = FeatureMap(spec)
    assert l2_scale_of(fmap, feature_keys(fmap, data), {}) is None
    assert l2_scale_of(fmap, feature_keys(fmap, data), {"item.id": 1.0}) is None


@pytest.mark.parametrize(("fields", "message"), [
    ({"item.title": 2.0}, "not fields of the feature spec"),
    ({"item.id": -1.0}, "must be >= 0"),
    ({"item.id": float("nan")}, "must be >= 0"),
])
def test_bad_fields_are_refused(fields: dict[str, float], message: str,
                                small_data: tuple[Dataset, FeatureSpec]) -> None:
    data, spec = small_data
    fmap = FeatureMap(spec)
    with pytest.raises(ValueError, match=message):
        l2_scale_of(fmap, feature_keys(fmap, data), fields)


def test_a_scaled_field_is_shrunk_and_the_others_are_not(
        small_data: tuple[Dataset, FeatureSpec]) -> None:
    """Same data, seed and steps; only item.id's L2 weight is 100x: its weights end much
    smaller, every other column nearly as they were."""
    data, spec = small_data
    spec = spec.fit_numeric("context", {"time": data.train.timestamp.tolist()})
    fmap = FeatureMap(spec)
    encoded = encode_ratings(fmap, data, data.train, data.train)
    keys = feature_keys(fmap, data)
    config = TrainConfig(k=4, epochs=4, batch_size=512, learning_rate=0.02, l2_w=0.05,
                         l2_v=0.05, average=0.0, l2_fields={})
    norms = []
    for fields in ({}, {"item.id": 100.0}):
        run = replace(config, l2_fields=fields)
        result = train(encoded, run, spec.n_features, data.rating_range, progress=False,
                       l2_scale=l2_scale_of(fmap, keys, fields))
        fm = result.trainer.export()
        table = np.concatenate([fm.w.numpy()[:, None], fm.V.numpy()], axis=1)
        norms.append(np.linalg.norm(table, axis=1))
    items = _columns(keys, "item.id", spec.hash_bits)
    rest = np.setdiff1d(np.flatnonzero(norms[0]), items)
    assert norms[1][items].mean() < 0.5 * norms[0][items].mean()
    assert norms[1][rest].mean() > 0.8 * norms[0][rest].mean()


def test_defaults_scale_the_item_id_and_the_users_stars() -> None:
    assert TrainConfig().l2_fields == DEFAULT_L2_FIELDS == {"item.id": 10.0,
                                                            "user.rated_stars": 3.0}
    assert TrainConfig().l2_fields is not DEFAULT_L2_FIELDS  # each config owns its dict


def test_a_default_entry_for_a_field_the_spec_lacks_scales_nothing(
        small_data: tuple[Dataset, FeatureSpec]) -> None:
    """The planted spec has no stars: the defaults still train it (item.id x10), and the
    same entry given with another multiplier is refused (a typo, not a default)."""
    data, spec = small_data
    fmap = FeatureMap(spec)
    keys = feature_keys(fmap, data)
    assert "user.rated_stars" not in {f.key for f in spec.fields}
    scale = l2_scale_of(fmap, keys, DEFAULT_L2_FIELDS)
    assert scale is not None
    np.testing.assert_array_equal(scale, l2_scale_of(fmap, keys, {"item.id": 10.0}))
    with pytest.raises(ValueError, match=r"user\.rated_stars"):
        l2_scale_of(fmap, keys, {**DEFAULT_L2_FIELDS, "user.rated_stars": 2.0})
