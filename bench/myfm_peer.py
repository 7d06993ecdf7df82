"""The Bayesian FM peer of bench/accuracy.py: myFM (Gibbs sampling) on fmrec's splits.

myFM's own "extended" ML-100k setup, rebuilt from fmrec's `Dataset` so both models see
the same ratings: a user relation block (user id, age bin, gender, occupation, first zip
digit, the movies the user rated in training with 1/sqrt(n) weights), a movie relation
block (movie id, release-year bin, genres 1/n, the users who rated it with 1/sqrt(n)),
the rating date as a categorical column of the main matrix, one prior group per column
group, rank 10, 512 sweeps, predictions clipped to the rating range. "ordered probit"
fits the same features with myFM's ordinal model and predicts the expected star.

myFM is an optional `bench` extra; importing this module without it fails only when a
peer runs.
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from contextlib import redirect_stderr
from typing import Any

import numpy as np
import scipy.sparse as sps

from model.data import Dataset, Ratings
from model.evaluate import rmse_mae

RANK = 10
N_ITER = 512
VARIANTS = ("ids", "extended", "ordered probit")
Rows = list[list[tuple[str, str, float]]]  # per row: (prior group, value, weight)


def _bins(values: Sequence[float], n_bins: int = 10) -> np.ndarray:
    """Decile edges of `values` (myFM's BinningEncoder bins ages and years by percentile)."""
    return np.unique(np.percentile(np.asarray(values, dtype=np.float64),
                                   np.linspace(0, 100, n_bins + 1)[1:-1]))


class _Columns:
    """Feature name -> column of one block, and the column count of each prior group."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.group_of: list[str] = []

    def column(self, group: str, value: str) -> int:
        key = f"{group}={value}"
        if key not in self.index:
            self.index[key] = len(self.index)
            self.group_of.append(group)
        return self.index[key]

    def matrix(self, rows: Rows) -> sps.csr_matrix:
        """Rows of (group, value, weight) -> CSR (columns in order of first use)."""
        data, cols, indptr = [], [], [0]
        for row in rows:
            for group, value, weight in row:
                cols.append(self.column(group, value))
                data.append(weight)
            indptr.append(len(cols))
        return sps.csr_matrix((np.array(data, np.float64), np.array(cols, np.int64),
                               np.array(indptr, np.int64)),
                              shape=(len(rows), len(self.index)))


def _user_rows(data: Dataset, extended: bool) -> tuple[list[str], Rows]:
    users = sorted(set(data.train.user) | set(data.test.user))
    rated: dict[str, list[str]] = {}
    for u, i in zip(data.train.user, data.train.item, strict=True):
        rated.setdefault(u, []).append(i)
    ages = _bins([a["age"] for a in data.users.values() if a.get("age") is not None])
    rows = []
    for u in users:
        row = [("user", u, 1.0)]
        attrs = data.users.get(u, {})
        if extended:
            if attrs.get("age") is not None:
                row.append(("age", str(int(np.searchsorted(ages, attrs["age"], "right"))), 1.0))
            for name in ("gender", "occupation"):
                if attrs.get(name) is not None:
                    row.append((name, str(attrs[name]), 1.0))
            if attrs.get("zip"):
                row.append(("zip", str(attrs["zip"])[:1], 1.0))
            movies = rated.get(u, [])
            row += [("rated", i, 1.0 / np.sqrt(len(movies))) for i in movies]
        rows.append(row)
    return users, rows


def _item_rows(data: Dataset, extended: bool) -> tuple[list[str], Rows]:
    items = sorted(set(data.items) | set(data.train.item) | set(data.test.item))
    raters: dict[str, list[str]] = {}
    for u, i in zip(data.train.user, data.train.item, strict=True):
        raters.setdefault(i, []).append(u)
    years = _bins([a["year"] for a in data.items.values() if a.get("year") is not None])
    rows = []
    for i in items:
        row = [("movie", i, 1.0)]
        attrs = data.items.get(i, {})
        if extended:
            if attrs.get("year") is not None:
                row.append(("year", str(int(np.searchsorted(years, attrs["year"], "right"))),
                            1.0))
            genres = attrs.get("genres") or []
            row += [("genre", g, 1.0 / len(genres)) for g in genres]
            who = raters.get(i, [])
            row += [("raters", u, 1.0 / np.sqrt(len(who))) for u in who]
        rows.append(row)
    return items, rows


def _day(timestamp: np.ndarray) -> list[str]:
    return [str(int(t // 86400)) for t in timestamp]


class Encoded:
    """myFM's inputs for the train and test ratings of one data set."""

    def __init__(self, data: Dataset, extended: bool) -> None:
        users, user_rows = _user_rows(data, extended)
        items, item_rows = _item_rows(data, extended)
        user_cols, item_cols = _Columns(), _Columns()
        self.user_matrix = user_cols.matrix(user_rows)
        self.item_matrix = item_cols.matrix(item_rows)
        self.user_pos = {u: n for n, u in enumerate(users)}
        self.item_pos = {i: n for n, i in enumerate(items)}
        main = _Columns()
        train_days = _day(data.train.timestamp) if extended else []
        train_main = main.matrix([[("date", d, 1.0)] for d in train_days]
                                 if extended else [[] for _ in range(len(data.train))])
        # a test day never seen in training has no column (and so no effect)
        test_main = main.matrix([[("date", d, 1.0)] if f"date={d}" in main.index else []
                                 for d in _day(data.test.timestamp)]
                                if extended else [[] for _ in range(len(data.test))])
        self.train_x, self.test_x = train_main, test_main
        self._group(main, user_cols, item_cols)

    def _group(self, main: _Columns, user_cols: _Columns, item_cols: _Columns) -> None:
        """Reorder each matrix's columns so every prior group is contiguous: myFM's
        `group_shapes` counts consecutive columns of [main | user block | item block]."""
        self.group_shapes: list[int] = []
        self.groups: list[str] = []  # the name of each group_shapes entry

        def sort(matrix: sps.csr_matrix, cols: _Columns) -> sps.csr_matrix:
            names = list(dict.fromkeys(cols.group_of))
            self.group_shapes += [cols.group_of.count(g) for g in names]
            self.groups += names
            order = np.argsort([names.index(g) for g in cols.group_of], kind="stable")
            return matrix[:, order] if len(order) else matrix
        if main.group_of:  # one group: date
            self.group_shapes.append(len(main.group_of))
            self.groups.append("date")
        self.user_matrix = sort(self.user_matrix, user_cols)
        self.item_matrix = sort(self.item_matrix, item_cols)

    def relations(self, ratings: Ratings) -> list[Any]:
        from myfm import RelationBlock
        users = np.array([self.user_pos[u] for u in ratings.user], dtype=np.int64)
        items = np.array([self.item_pos[i] for i in ratings.item], dtype=np.int64)
        return [RelationBlock(users, self.user_matrix), RelationBlock(items, self.item_matrix)]


def run(data: Dataset, variant: str, seed: int = 0) -> dict[str, Any]:
    """Fit one myFM variant on data.train, test on data.test; wall time includes encoding."""
    import myfm
    if variant not in VARIANTS:
        raise ValueError(f"unknown myFM variant {variant!r}")
    t0 = time.perf_counter()
    extended = variant != "ids"
    enc = Encoded(data, extended)
    rank, n_iter = (RANK, N_ITER) if extended else (8, 200)
    train_rel, test_rel = enc.relations(data.train), enc.relations(data.test)
    low, high = data.rating_range
    quiet = redirect_stderr(io.StringIO())  # myFM always draws a tqdm bar
    if variant == "ordered probit":
        model = myfm.MyFMOrderedProbit(rank=rank, random_seed=seed)
        classes = np.rint(data.train.rating - low).astype(np.int64)
        with quiet:
            model.fit(enc.train_x, classes, X_rel=train_rel, group_shapes=enc.group_shapes,
                      n_iter=n_iter, n_kept_samples=n_iter)
        proba = model.predict_proba(enc.test_x, test_rel)
        pred = proba @ (np.arange(proba.shape[1]) + low)
    else:
        model = myfm.MyFMRegressor(rank=rank, random_seed=seed)
        with quiet:
            model.fit(enc.train_x, data.train.rating.astype(np.float64), X_rel=train_rel,
                      group_shapes=enc.group_shapes, n_iter=n_iter, n_kept_samples=n_iter)
        pred = model.predict(enc.test_x, test_rel)
    seconds = time.perf_counter() - t0
    rmse, mae = rmse_mae(np.clip(pred, low, high), data.test.rating)
    return {"model": f"myFM {variant}", "rank": rank, "iterations": n_iter,
            "test_rmse": rmse, "test_mae": mae, "wall_seconds": seconds}
