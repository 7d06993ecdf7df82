"""bench/residual_neighbours.py scores its grid exactly as `fmrec train` scores its
defaults."""

from __future__ import annotations

import dataclasses

import pytest

from bench.residual_neighbours import DEFAULT, fold_run, label
from model.data import Dataset
from model.features import FeatureSpec
from model.pipeline import fit
from model.train import TrainConfig


def test_the_default_row_is_what_fit_reports(small_data: tuple[Dataset, FeatureSpec],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    data, spec = small_data
    quick = TrainConfig(k=4, epochs=3, batch_size=512, learning_rate=0.02)
    # the bench trains with the defaults and the full MovieLens spec: here, quick ones
    monkeypatch.setattr("bench.residual_neighbours.TrainConfig",
                        lambda **kw: dataclasses.replace(quick, **kw))
    monkeypatch.setattr("bench.residual_neighbours.movielens_spec", lambda *_: spec)
    other = dataclasses.replace(DEFAULT, k=5)
    run = fold_run(data, [DEFAULT, other])
    reported = fit(data, spec, quick, progress=False).metrics
    assert run["fm_rmse"] == pytest.approx(reported["test_rmse_fm"], abs=1e-6)
    assert run["grid"][0]["test_rmse"] == pytest.approx(reported["test_rmse"], abs=1e-6)
    assert run["grid"][1]["test_rmse"] != run["grid"][0]["test_rmse"]
    assert label(DEFAULT) == "+ neighbours, the defaults"
    assert label(other) == "+ neighbours, k 5"
