"""Accuracy metrics: RMSE and MAE of ratings, precision/recall@n of rankings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from model.bundle import Bundle
from model.data import Dataset
from model.dataset import encode_ratings


def rmse_mae(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Root mean squared and mean absolute error of predictions against true ratings."""
    if len(pred) != len(truth) or len(pred) == 0:
        raise ValueError(f"need equal, non-zero lengths; got {len(pred)} and {len(truth)}")
    err = np.asarray(pred, np.float64) - np.asarray(truth, np.float64)
    return float(np.sqrt(np.mean(err**2))), float(np.mean(np.abs(err)))


def precision_recall_at_n(
    ranked: Mapping[str, Sequence[str]], relevant: Mapping[str, set[str]], n: int
) -> tuple[float, float]:
    """Mean precision@n and recall@n over users that have at least one relevant movie."""
    precisions, recalls = [], []
    for user, items in relevant.items():
        if not items:
            continue
        hits = len(set(list(ranked.get(user, []))[:n]) & items)
        precisions.append(hits / n)
        recalls.append(hits / len(items))
    if not precisions:
        raise ValueError("no user has a relevant movie")
    return float(np.mean(precisions)), float(np.mean(recalls))


def evaluate_bundle(bundle: Bundle, data: Dataset) -> dict[str, float]:
    """RMSE/MAE of a saved bundle on `data.test`, scored through its SavedModel signatures.

    Histories and last movies come from `data.train`, exactly as in training.
    """
    enc = encode_ratings(bundle.fmap, data, data.test, data.train)
    users, items = bundle.side_sums(enc.users), bundle.side_sums(enc.items)
    scores = bundle.score_pairs(users.take(enc.row_user), enc.contexts,
                                np.arange(len(enc), dtype=np.int32), items.take(enc.row_item))
    rmse, mae = rmse_mae(bundle.clip(scores), enc.y)
    return {"rmse": rmse, "mae": mae, "ratings": float(len(enc))}
