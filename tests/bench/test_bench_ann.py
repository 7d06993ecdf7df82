"""bench.ann's recall measurement, on a catalog small enough that its answer is known."""

from __future__ import annotations

import pytest

from app.settings import Settings
from bench.ann import recall
from model.blocks import user_histories
from model.bundle import HEADS, Bundle
from model.data import Dataset
from model.features import FeatureSpec
from model.pipeline import fit_and_save
from model.train import TrainConfig


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory,
            small_data: tuple[Dataset, FeatureSpec]) -> tuple[Bundle, Dataset]:
    data, spec = small_data
    out = tmp_path_factory.mktemp("bench-ann") / "bundle"
    fit_and_save(data, spec, TrainConfig(k=4, epochs=2, batch_size=512, learning_rate=0.02),
                 out, progress=False, ann_threshold=1)
    return Bundle(out), data


def test_recall_is_one_when_the_candidates_cover_the_catalog(
        indexed: tuple[Bundle, Dataset]) -> None:
    bundle, data = indexed
    covering = Settings(ann_candidates=1000, ann_max_share=1.0, ann_probe_share=1.0)
    users = len(user_histories(data.train))
    out = recall(bundle, data, n=10, settings=covering)
    assert out["users"] == users
    for head in HEADS:
        assert out[head]["served_approximate"] == users  # not the exact fallback
        assert out[head]["recall"] == 1.0
        assert set(out[head]["by_probe_share"]) == {"0.05", "0.1", "0.4", "1.0"}


def test_default_settings_take_the_exact_path_on_a_tiny_catalog(
        indexed: tuple[Bundle, Dataset]) -> None:
    bundle, data = indexed  # 20 x 10 candidates would be the whole catalog: exact instead
    out = recall(bundle, data, n=10)
    assert all(out[head]["served_approximate"] == 0 for head in HEADS)

