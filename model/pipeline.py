"""The job behind `fmrec train`: data -> features -> training -> test metrics -> bundle."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from model.ann import DEFAULT_THRESHOLD
from model.blocks import (
    EncodedRatings,
    encode_ratings,
    item_payload,
    item_raters,
    sessions,
    user_histories,
    user_payload,
    user_stars,
)
from model.bundle import HeadModel, save_bundle
from model.data import Dataset
from model.evaluate import ranking_summary, rmse_mae
from model.features import FeatureMap, FeatureSpec, SparseRows, day_of, feature_hash
from model.fm import FactorizationMachine, average_of
from model.neighbours import Neighbours, fit_neighbours, pair_terms
from model.relevance import RelevanceConfig, head_spec, rank_fm, train_relevance
from model.train import DEFAULT_L2_FIELDS, TrainConfig, Trainer, TrainResult, train


@dataclass
class FitReport:
    """What a training run measured (the bundle's metrics.json) and the model to save."""

    metrics: dict[str, Any]
    model: FactorizationMachine  # all members averaged into one FM (`average_of`)
    results: list[TrainResult]  # per member: the model whose predictions were tested
    neighbours: Neighbours | None = None  # the correction tested with it (`model.neighbours`)


def feature_keys(fmap: FeatureMap, data: Dataset) -> set[str]:
    """Every distinct feature key the training data can produce (for the collision report)."""
    rated, stars = user_histories(data.train), user_stars(data.train)
    users = [user_payload(u, data.users.get(u, {}), rated.get(u, []), stars.get(u, []))
             for u in set(data.train.user) | set(data.users)]
    raters = item_raters(data.train)
    items = [item_payload(i, attrs, raters.get(i, [])) for i, attrs in data.items.items()]
    contexts = [{"time": 0, "last_movie": i} for i in data.items] + [
        {"session": s} for s in set(sessions(data.train.user, data.train.timestamp))] + [
        {"day": d} for d in {day_of(t) for t in data.train.timestamp.tolist()}]
    return (fmap.tokens("user", users) | fmap.tokens("item", items)
            | fmap.tokens("context", contexts))


def unknown_fields(spec: FeatureSpec, keys: Iterable[str]) -> list[str]:
    """The field keys among `keys` that `spec` does not have, sorted."""
    return sorted(set(keys) - {f.key for f in spec.fields})


def l2_scale_of(fmap: FeatureMap, keys: set[str], l2_fields: dict[str, float]
                ) -> np.ndarray | None:
    """Per hashed column, the multiplier of its L2 weights: `l2_fields[field]` for the
    columns of that field's keys (`keys`, as `feature_keys` gives them), 1 elsewhere.

    None when no field is scaled. A column two keys share (a hash collision) takes the
    larger multiplier. A field the spec does not have is an error (a typo must not train
    a model quietly regularised as before), but for a default entry (`DEFAULT_L2_FIELDS`):
    the defaults serve every feature set.
    """
    own = {f.key for f in fmap.spec.fields}
    l2_fields = {k: m for k, m in l2_fields.items()
                 if k in own or DEFAULT_L2_FIELDS.get(k) != m}
    unknown = unknown_fields(fmap.spec, l2_fields)
    if unknown:
        raise ValueError(f"l2_fields names {unknown}, not fields of the feature spec")
    bad = {k: m for k, m in l2_fields.items() if not m >= 0}
    if bad:
        raise ValueError(f"l2_fields multipliers must be >= 0: {bad}")
    scaled = {k: m for k, m in l2_fields.items() if m != 1.0}
    if not scaled:
        return None
    scale = np.full(fmap.spec.n_features, -1.0, np.float32)  # -1: no key seen yet
    for key in keys:
        column = feature_hash(key, fmap.spec.hash_bits)
        scale[column] = max(scale[column], scaled.get(key.split("=", 1)[0], 1.0))
    scale[scale < 0] = 1.0  # columns no key uses: not trained
    return scale


def per_user_holdout(row_user: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The same number of random ratings from every user with enough of them (sorted rows).

    MovieLens test splits such as ua/ub hold out 10 ratings *per user*, so light users
    weigh as much as heavy ones; a uniformly random validation slice is dominated by heavy
    users and stops training at an epoch that overfits the light ones.
    """
    if fraction <= 0:
        return np.zeros(0, dtype=np.int64)
    counts = np.bincount(row_user)
    n_users = max(int(np.count_nonzero(counts)), 1)
    per_user = max(1, round(fraction * len(row_user) / n_users))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(row_user))
    order = order[np.argsort(row_user[order], kind="stable")]  # grouped by user, shuffled
    starts = np.searchsorted(row_user[order], np.arange(len(counts)))
    rank = np.arange(len(order)) - starts[row_user[order]]
    eligible = counts[row_user[order]] > 2 * per_user
    return np.sort(order[(rank < per_user) & eligible])


def train_member(encoded: EncodedRatings, n_features: int, config: TrainConfig,
                 rating_range: tuple[float, float], validation_fraction: float,
                 progress: bool, refit: bool, l2_scale: np.ndarray | None = None
                 ) -> tuple[TrainResult, TrainResult]:
    """(early-stopped run, final run) of one member.

    Early stopping on a per-user holdout picks the model; with `refit` that model then
    trains on all training ratings for `config.refit_epochs` more epochs, so the final
    model has also learnt from the held-out ratings (on ML-100k ua worth ~0.005 RMSE).
    Continuing costs a few epochs where training afresh for the early-stopped count cost
    as many again, and measured as accurate (docs/accuracy.md).
    """
    val_rows = per_user_holdout(encoded.row_user, validation_fraction, config.seed)
    fit_rows = np.setdiff1d(np.arange(len(encoded)), val_rows)
    fit_part = encoded.subset(fit_rows)
    val_part = encoded.subset(val_rows) if len(val_rows) else None
    if not refit or val_part is None:
        selection = train(fit_part, config, n_features, rating_range, val_part, progress,
                          l2_scale)
        return selection, selection
    # one trainer over every rating's columns, so that the refit continues it
    trainer = Trainer.for_data(encoded, n_features, config, l2_scale)
    selection = train(fit_part, config, n_features, rating_range, val_part, progress,
                      trainer=trainer)
    return selection, train(encoded, replace(config, epochs=config.refit_epochs),
                            n_features, rating_range, None, progress, trainer=trainer)


def fit(data: Dataset, spec: FeatureSpec, config: TrainConfig, validation_fraction: float = 0.05,
        progress: bool = True, refit: bool = True) -> FitReport:
    """Train `config.members` models (seeds seed, seed+1, ...) on `data.train`, average
    them into one FM and test it on `data.test`."""
    spec = spec.fit_numeric("context", {"time": data.train.timestamp.tolist()})
    spec = spec.fit_centres(float(data.train.rating.mean()) if len(data.train) else 0.0)
    fmap = FeatureMap(spec.rating_fields())
    t0 = time.perf_counter()
    encoded = encode_ratings(fmap, data, data.train, data.train)
    test = encode_ratings(fmap, data, data.test, data.train)
    encode_seconds = time.perf_counter() - t0
    tokens = feature_keys(fmap, data)
    l2_scale = l2_scale_of(fmap, tokens, config.l2_fields)
    members, runs = [], []
    for m in range(max(config.members, 1)):
        member = replace(config, seed=config.seed + m)
        selection, final = train_member(encoded, spec.n_features, member, data.rating_range,
                                        validation_fraction, progress, refit, l2_scale)
        pred = final.trainer.predict_all(test)  # unclipped, as the average takes them
        runs.append((selection, final, pred))
        members.append({
            "seed": member.seed, "best_epoch": selection.best_epoch,
            "epochs_run": len(selection.history),
            "refit_epochs": len(final.history) if final is not selection else 0,
            "test_rmse": rmse_mae(np.clip(pred, *data.rating_range), test.y)[0],
            "train_seconds": selection.seconds + (final.seconds if final is not selection
                                                  else 0.0)})
    # the mean of the members' scores is exactly the score of `average_of(members)`
    fm_pred = np.mean([pred for _, _, pred in runs], axis=0)
    fm_rmse = rmse_mae(np.clip(fm_pred, *data.rating_range), test.y)[0]
    t0 = time.perf_counter()
    neighbours, term = residual_neighbours(data, encoded, [f.trainer for _, f, _ in runs],
                                           config)
    neighbour_seconds = time.perf_counter() - t0
    test_pred = np.clip(fm_pred + term, *data.rating_range)
    test_rmse, test_mae = rmse_mae(test_pred, test.y)
    epochs = runs[0][0].history
    metrics = {
        "data": data.name, "data_info": data.info, "train_ratings": len(data.train),
        "test_ratings": len(data.test), "rating_range": list(data.rating_range),
        "features": [f.key for f in fmap.spec.fields], "hash_bits": spec.hash_bits,
        "collisions": fmap.collision_report(tokens),
        "nnz_per_rating": round(encoded.nnz_per_rating, 1),
        "test_rmse": test_rmse, "test_mae": test_mae,
        "test_rmse_fm": fm_rmse,  # the FM alone, without the neighbourhood's correction
        "members": members,
        "best_epoch": members[0]["best_epoch"], "epochs_run": members[0]["epochs_run"],
        "refit_epochs": members[0]["refit_epochs"],
        "seconds_per_epoch": float(np.median([e["seconds"] for e in epochs])),
        "train_seconds": sum(m["train_seconds"] for m in members) + neighbour_seconds,
        "neighbour_seconds": neighbour_seconds,
        "encode_seconds": encode_seconds,
        "config": config.to_dict(), "history": epochs, "spec": spec,
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    model = average_of([final.trainer.export() for _, final, _ in runs])
    return FitReport(metrics, model, [final for _, final, _ in runs], neighbours)


def residual_neighbours(data: Dataset, encoded: EncodedRatings, trainers: list[Trainer],
                        config: TrainConfig) -> tuple[Neighbours | None, np.ndarray]:
    """(the neighbourhood fitted on the residuals of the members' average, its
    correction of every test rating); (None, zeros) when it is off or the catalog is
    too large.

    A residual is a training rating minus the average FM's score of its user's and
    movie's sums alone: `encoded` with no context and nothing left out, the user's sums
    as the service caches them (`model.neighbours`).
    """
    settings, catalog = config.neighbours, sorted(data.items)
    if settings is None or not 0 < len(catalog) <= settings.max_movies or not len(data.train):
        return None, np.zeros(len(data.test))
    n = len(encoded)
    empty = SparseRows(np.zeros(n + 1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32))
    plain = replace(encoded, contexts=empty, left_out=empty)
    fm = np.mean([t.predict_all(plain) for t in trainers], axis=0)
    position = {m: r for r, m in enumerate(catalog)}
    rows = np.array([position.get(m, -1) for m in data.train.item], dtype=np.int64)
    known = rows >= 0
    users, rows = data.train.user[known], rows[known]
    residuals = (data.train.rating.astype(np.float64) - fm)[known]
    neighbours = fit_neighbours(users, rows, residuals, len(catalog), settings)
    test_rows = np.array([position.get(m, -1) for m in data.test.item], dtype=np.int64)
    return neighbours, pair_terms(neighbours, data.test.user, test_rows, users, rows, residuals)


def fit_relevance(data: Dataset, spec: FeatureSpec, config: RelevanceConfig,
                  progress: bool = True) -> tuple[FactorizationMachine, dict[str, Any]]:
    """Train the relevance head; its metrics include top-10 ranking of the test split."""
    result = train_relevance(data, spec, config, progress)
    fmap = FeatureMap(head_spec(spec, config.fields))
    metrics = {"config": config.to_dict(), "best_epoch": result.best_epoch,
               "epochs_run": len(result.history), "train_seconds": result.seconds,
               "history": result.history}
    if len(data.test):
        metrics["test_ranking"] = ranking_summary(rank_fm(result.model, fmap, data), data)
    return result.model, metrics


def fit_and_save(data: Dataset, spec: FeatureSpec, config: TrainConfig, out: str | Path,
                 progress: bool = True, refit: bool = True,
                 relevance: RelevanceConfig | None = None,
                 ann_threshold: int = DEFAULT_THRESHOLD) -> tuple[str, dict[str, Any]]:
    """Train both heads, then write the bundle; returns (model id, metrics).

    `metrics["test_ranking"]` is how each head ranks the test split (top 10).
    """
    if relevance is None:  # the default fields the spec has (`fmrec train --features`)
        relevance = RelevanceConfig(fields=tuple(
            key for key in RelevanceConfig().fields if key in {f.key for f in spec.fields}))
    head_spec(spec, relevance.fields)  # fields it lacks: refused before any training
    report = fit(data, spec, config, progress=progress, refit=refit)
    fitted = report.metrics.pop("spec")
    relevance_fm, relevance_metrics = fit_relevance(data, fitted, relevance, progress)
    rating_fields = tuple(f.key for f in fitted.rating_fields().fields)
    if len(data.test):
        report.metrics["test_ranking"] = {
            "rating": ranking_summary(rank_fm(report.model, FeatureMap(
                fitted.rating_fields()), data), data),
            "relevance": relevance_metrics.pop("test_ranking")}
    report.metrics["heads"] = {"relevance": relevance_metrics}
    raters = item_raters(data.train)  # catalog item sums include who rated each movie
    items = {i: {**attrs, "raters": raters.get(i, [])} for i, attrs in data.items.items()}
    heads = {"rating": HeadModel(report.model, rating_fields),
             "relevance": HeadModel(relevance_fm, relevance.fields)}
    model_id = save_bundle(out, heads, fitted, items, report.metrics, ann_threshold,
                           report.neighbours)
    return model_id, report.metrics
