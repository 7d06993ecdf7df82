"""The job behind `fmrec train`: data -> features -> training -> test metrics -> bundle."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.bundle import save_bundle
from model.data import Dataset
from model.dataset import encode_ratings
from model.evaluate import rmse_mae
from model.features import FeatureMap, FeatureSpec
from model.train import TrainConfig, TrainResult, train


@dataclass
class FitReport:
    """What a training run measured; becomes the bundle's metrics.json."""

    metrics: dict[str, Any]
    result: TrainResult


def fit(data: Dataset, spec: FeatureSpec, config: TrainConfig, validation_fraction: float = 0.05,
        progress: bool = True) -> FitReport:
    """Train on `data.train` (early stopping on a random slice of it), test on `data.test`."""
    spec = spec.fit_numeric("context", {"time": data.train.timestamp.tolist()})
    fmap = FeatureMap(spec)
    t0 = time.perf_counter()
    encoded = encode_ratings(fmap, data, data.train, data.train)
    test = encode_ratings(fmap, data, data.test, data.train)
    encode_seconds = time.perf_counter() - t0
    rows = np.random.default_rng(config.seed).permutation(len(encoded))
    n_val = int(len(rows) * validation_fraction)
    fit_part = encoded.subset(np.sort(rows[n_val:]))
    val_part = encoded.subset(np.sort(rows[:n_val])) if n_val else None
    result = train(fit_part, config, spec.n_features, data.rating_range, val_part, progress)
    test_pred = np.clip(result.trainer.predict_all(test), *data.rating_range)
    test_rmse, test_mae = rmse_mae(test_pred, test.y)
    tokens = set().union(*(fmap.tokens(side, cols) for side, cols in (
        ("user", {"id": list(data.users) + list(set(data.train.user))}),
        ("item", {"id": list(data.items), "genres": [m.get("genres") for m in data.items.values()],
                  "year": [m.get("year") for m in data.items.values()]}),
    )))
    epochs = result.history
    metrics = {
        "data": data.name, "data_info": data.info, "train_ratings": len(data.train),
        "test_ratings": len(data.test), "rating_range": list(data.rating_range),
        "features": [f.key for f in spec.fields], "hash_bits": spec.hash_bits,
        "collisions": fmap.collision_report(tokens),
        "nnz_per_rating": round(encoded.nnz_per_rating, 1),
        "test_rmse": test_rmse, "test_mae": test_mae,
        "best_epoch": result.best_epoch, "epochs_run": len(epochs),
        "seconds_per_epoch": float(np.median([e["seconds"] for e in epochs])),
        "train_seconds": result.seconds, "encode_seconds": encode_seconds,
        "config": config.to_dict(), "history": epochs, "spec": spec,
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return FitReport(metrics, result)


def fit_and_save(data: Dataset, spec: FeatureSpec, config: TrainConfig, out: str | Path,
                 progress: bool = True) -> tuple[str, dict[str, Any]]:
    """Train, then write the bundle; returns (model id, metrics)."""
    report = fit(data, spec, config, progress=progress)
    fitted = report.metrics.pop("spec")
    model_id = save_bundle(out, report.result.trainer.fm, fitted, data.items, report.metrics)
    return model_id, report.metrics
