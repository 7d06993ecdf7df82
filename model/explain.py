"""Exact per-feature explanations of one FM's scores.

With x the row (user + context + item) and s = sum_j v_j x_j, the FM's score is

    w0 + sum_j x_j (w_j + v_j . (s - v_j x_j) / 2)

(each pairwise term <v_a, v_b> x_a x_b split half to a, half to b), so every feature
occurrence gets a contribution and the contributions plus w0 ARE the score, in O(nnz k).
Occurrences, not buckets: as in `model.features`, a row may hold one bucket twice.

Everything here takes the parameters of one head (`FMParams`), whichever head ranked.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from model.bundle import Catalog
from model.features import FeatureMap, Field, Side, feature_hash

SHARED_SHOWN = 5  # other features named per shared bucket (the count is always given)


@dataclass(frozen=True)
class FMParams:
    """w0, w (p,), V (p, k) of one FM head, as numpy arrays."""

    w0: float
    w: np.ndarray
    V: np.ndarray

    @staticmethod
    def of(fm: Any) -> FMParams:
        """From an object holding w0, w, V as arrays (`model.engine.NumpyEngine`) or as TF
        variables (the SavedModel's `fm`)."""
        def array(value: Any) -> np.ndarray:
            return np.asarray(value.numpy() if hasattr(value, "numpy") else value)
        return FMParams(float(array(fm.w0)), array(fm.w), array(fm.V))


def contributions(params: FMParams, indices: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Per occurrence j of one row: x_j (w_j + v_j . (s - v_j x_j) / 2), in float64."""
    x = np.asarray(x, np.float64)
    vx = params.V[indices].astype(np.float64) * x[:, None]
    s = vx.sum(axis=0)
    return np.asarray(x * params.w[indices] + 0.5 * (vx @ s - np.einsum("ij,ij->i", vx, vx)))


def history_contributions(params: FMParams, x: np.ndarray, a: np.ndarray, indices: np.ndarray,
                          item_s: np.ndarray) -> np.ndarray:
    """(items, occurrences): what each history occurrence (bucket `indices`, value x)
    adds to each item's score.

    For occurrence j and item i, with a the user + context sum (which holds x_j v_j) and
    s_i the item's side sum: x_j w_j + x_j v_j . (a + s_i - x_j v_j) / 2. The part without
    s_i is per occurrence; the rest is ONE matrix product for all items.
    """
    x = np.asarray(x, np.float64)
    w = params.w[indices].astype(np.float64)
    V = params.V[indices].astype(np.float64)
    own = x * w + 0.5 * x * (V @ np.asarray(a, np.float64) - x * np.einsum("ij,ij->i", V, V))
    return np.asarray(own[None, :] + 0.5 * (np.asarray(item_s, np.float64) @ V.T) * x[None, :])


def top_columns(values: np.ndarray, n: int) -> np.ndarray:
    """Per row, the n columns of largest value (ties: the lower column first)."""
    return np.argsort(-values, axis=1, kind="stable")[:, :n]


# --- rows with labels ----------------------------------------------------------------


@dataclass(frozen=True)
class Term:
    """One feature occurrence of a row: which field and value, its bucket and x."""

    field: str  # "user.rated"
    value: Any  # the payload's value ("50"; a number for numeric fields)
    token: str  # the hashed key: "user.rated=50", or "context.time" for numeric fields
    index: int
    x: float


def row_terms(fmap: FeatureMap, side: Side, payload: Mapping[str, Any]) -> list[Term]:
    """The occurrences `fmap.encode(side, [payload])` makes, each with where it came from
    (encoded field by field through the same code, so the buckets and x are the same)."""
    terms = []
    for f in fmap.spec.side_fields(side):
        value = payload.get(f.source)
        if value is None:
            continue
        block = fmap.encode_field(f, [value], 1)
        if f.kind == "size":  # the list's size bucket, if the list is short enough
            value = f.size_value(len(value))
        values = ([] if value is None else list(value) if f.kind == "multi"
                  else [pair[0] for pair in value] if f.kind == "graded" else [value])
        for v, index, x in zip(values, block.indices.tolist(), block.values.tolist(),
                               strict=True):
            terms.append(Term(f.key, v, f.key if f.kind == "numeric" else f.token(v),
                              index, x))
    return terms


def known_features(fmap: FeatureMap, catalog: Catalog) -> dict[int, set[str]]:
    """Bucket -> the feature keys known to hash there: what the catalog and its raters
    name (movie ids in every movie field, genres, years, users). Free-form values
    (ages, zips, sessions) are known only from the row being explained."""
    movies = [str(m) for m in catalog.ids.tolist()]
    users = sorted({u for r in catalog.raters for u in r})
    vocab: dict[str, Sequence[Any]] = {
        "item.id": movies, "user.rated": movies, "user.rated_stars": movies,
        "context.last_movie": movies,
        "item.genres": catalog.genre_names, "user.id": users, "item.raters": users,
        "item.year": sorted({int(y) for y in catalog.years.tolist() if y}),
    }
    out: dict[int, set[str]] = defaultdict(set)
    for f in fmap.spec.fields:
        keys = [f.key] if f.kind == "numeric" else [f.token(v) for v in vocab.get(f.key, ())]
        for key in keys:
            out[feature_hash(key, fmap.spec.hash_bits)].add(key)
    return out


def label(f: Field | None, value: Any, catalog: Catalog) -> str:
    """A readable value: titles for movies, "user X" for users, dates for times."""
    key = f.key if f is not None else ""
    if key in ("item.id", "user.rated", "user.rated_stars", "context.last_movie"):
        row = catalog.row(str(value))
        return str(catalog.titles[row]) if row is not None and catalog.titles[row] else (
            f"movie {value}")
    if key in ("user.id", "item.raters"):
        return f"user {value}"
    if f is not None and f.kind == "size":  # the log2 bucket: "2" is 4-7
        low = 1 << int(value)
        high = min(2 * low, f.below) - 1
        return f"{low} {f.source}" if high == low else f"{low}-{high} {f.source}"
    if key == "context.time":
        try:
            return dt.datetime.fromtimestamp(float(value), dt.timezone.utc).strftime(
                "%Y-%m-%d %H:%M UTC")
        except (OverflowError, OSError, ValueError):  # past year 9999 or before year 1
            return f"{float(value):g} s"
    return str(value)


@dataclass(frozen=True)
class Explained:
    """A row's score taken apart: per occurrence, in row order (user, context, item)."""

    bias: float
    terms: list[Term]
    contributions: np.ndarray

    @property
    def score(self) -> float:
        return self.bias + float(self.contributions.sum())


def explain_row(params: FMParams, terms: list[Term]) -> Explained:
    indices = np.array([t.index for t in terms], np.int64)
    x = np.array([t.x for t in terms], np.float64)
    return Explained(params.w0, terms, contributions(params, indices, x))


def grouped(explained: Explained, fmap: FeatureMap, catalog: Catalog,
            known: Mapping[int, set[str]]) -> list[dict[str, Any]]:
    """Contributions by field (largest total effect first), each labelled; a bucket that
    other known features (or another feature of the row) share says which."""
    fields = {f.key: f for f in fmap.spec.fields}
    in_row: dict[int, set[str]] = defaultdict(set)
    for t in explained.terms:
        in_row[t.index].add(t.token)
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for t, c in zip(explained.terms, explained.contributions.tolist(), strict=True):
        entry: dict[str, Any] = {"field": t.field, "value": label(fields.get(t.field), t.value,
                                                                   catalog),
                                 "feature": t.token, "contribution": c}
        others = sorted((known.get(t.index, set()) | in_row[t.index]) - {t.token})
        if others:
            entry["shared_bucket"] = {"features": len(others) + 1,
                                      "others": others[:SHARED_SHOWN]}
        groups[t.field].append(entry)
    out = [{"field": name, "contribution": float(sum(e["contribution"] for e in entries)),
            "features": sorted(entries, key=lambda e: -abs(e["contribution"]))}
           for name, entries in groups.items()]
    return sorted(out, key=lambda g: -abs(g["contribution"]))
