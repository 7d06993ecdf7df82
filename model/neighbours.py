"""The rating head's neighbourhood: an item-item correction on the FM's own residuals.

Why: the FM's interactions are rank k, so "users who liked j more than predicted also
like i more than predicted" reaches it only through 16 numbers per movie. Koren's
neighbourhood model (KDD 2008), applied to a factor model's residuals as BellKor did,
adds that full-rank signal back; on ML-100k it cuts the rating head's RMSE by 0.001-0.002
on every fold (docs/accuracy.md). The answer for user u and movie i is

    rating(u, i) = FM(u, i, context) + alpha * sum_j s_ij e_uj / (lam + sum_j s_ij)

over the (at most) k movies j of u's history most similar to i among i's stored
neighbours. e_uj = r_uj - FM(u, j) is the FM's residual on u's own rating of j, scored
from u's side sums and j's catalog sums alone (no context, nothing left out): what the
service computes from a cached user's sums, so training, /predict and the offline
evaluation share one definition. s_ij > 0 is the correlation of the two movies'
residuals over the users who rated both, shrunk by n_ij / (n_ij + shrink).

Each catalog movie keeps its `per_movie` most similar movies (catalog rows, similarity
descending); catalogs above `max_movies` get no neighbourhood (the similarities are
O(n^2) to compute).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

PYTHON_ROWS = 5_000  # movies whose neighbour lists `term_of` keeps as Python lists (~7 KB each)

@dataclass(frozen=True)
class NeighbourConfig:
    """The neighbourhood's settings; defaults chosen on ML-100k ua, checked on u1..u5."""

    k: int = 30
    shrink: float = 100.0
    lam: float = 3.0
    alpha: float = 1.0
    per_movie: int = 200
    max_movies: int = 20_000

    def __post_init__(self) -> None:
        if self.k < 1 or self.per_movie < 1 or self.max_movies < 1:
            raise ValueError("neighbours: k, per_movie and max_movies must be >= 1")
        if not (self.shrink >= 0 and self.lam > 0 and self.alpha >= 0):
            raise ValueError("neighbours: shrink and alpha must be >= 0 and lam > 0")


@dataclass(frozen=True)
class Neighbours:
    """Per catalog movie its most similar movies, and how the correction reads them."""

    rows: np.ndarray  # (n_movies, per_movie) int32 catalog rows, -1 where none
    sims: np.ndarray  # (n_movies, per_movie) float32, descending, 0 where none
    k: int
    lam: float
    alpha: float
    # `term_of`'s rows as Python lists, made on first use (at most PYTHON_ROWS at once)
    _lists: dict[int, tuple[list[int], list[float]]] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    def term(self, targets: np.ndarray, rated: np.ndarray, residuals: np.ndarray
             ) -> np.ndarray:
        """The correction of each target catalog row (-1: a movie outside the catalog,
        0) for one user with `residuals` on the catalog rows `rated` (a row rated twice:
        the last)."""
        targets = np.asarray(targets, dtype=np.int64)
        out = np.zeros(len(targets))
        inside = targets >= 0
        if len(rated) and inside.any():
            s, e = self._read(targets[inside], rated, residuals)
            out[inside] = self.alpha * (s * e).sum(axis=1) / (self.lam + s.sum(axis=1))
        return out

    def term_of(self, target: int, residual_of: dict[int, float]) -> float:
        """`term` of one target in plain Python, `residual_of` the user's residuals by
        catalog row: for a /predict of a few movies, where NumPy's per-call overhead on
        200-element arrays cost 60 us and this ~10 us."""
        if target < 0 or not residual_of:
            return 0.0
        lists = self._lists.get(target)
        if lists is None:
            if len(self._lists) >= PYTHON_ROWS:
                self._lists.clear()
            lists = self._lists[target] = (self.rows[target].tolist(),
                                           self.sims[target].astype(np.float64).tolist())
        num = den = 0.0
        found = 0
        for row, sim in zip(*lists, strict=True):
            e = residual_of.get(row)
            if e is not None:
                num += sim * e
                den += sim
                found += 1
                if found == self.k:
                    break
        return self.alpha * num / (self.lam + den)

    def contributions(self, target: int, rated: np.ndarray, residuals: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
        """(catalog rows, what each adds) of the neighbours the correction of one target
        reads: they sum to `term`."""
        if len(rated) == 0:
            return np.zeros(0, np.int64), np.zeros(0)
        s, e = self._read(np.array([target]), rated, residuals)
        parts = self.alpha * s[0] * e[0] / (self.lam + s[0].sum())
        used = np.flatnonzero(parts != 0)
        return self.rows[target, used].astype(np.int64), parts[used]

    def _read(self, targets: np.ndarray, rated: np.ndarray, residuals: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
        """Per target and stored neighbour: (s_ij if it is among the k most similar rated
        movies, else 0; e_uj where rated)."""
        by_row = np.full(len(self.rows) + 1, np.nan)  # the last slot: the -1 padding's
        by_row[np.asarray(rated, dtype=np.int64)] = residuals  # a repeat: the last wins
        e = by_row[self.rows[targets]]
        found = ~np.isnan(e)
        keep = found & (np.cumsum(found, axis=1) <= self.k)
        return np.where(keep, self.sims[targets], 0.0).astype(np.float64), np.where(keep, e, 0.0)


def sorted_unique(rows: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`rows` sorted without repeats, each with its last value (as given if already so:
    `Bundle.residuals` returns them that way, so a cached user's pass is one check)."""
    if len(rows) < 2 or bool(np.all(rows[1:] > rows[:-1])):
        return rows, values
    last = len(rows) - 1 - np.unique(rows[::-1], return_index=True)[1]  # sorted by row
    return rows[last], values[last]


def fit_neighbours(users: np.ndarray, rows: np.ndarray, residuals: np.ndarray,
                   n_movies: int, config: NeighbourConfig) -> Neighbours:
    """Every catalog movie's `per_movie` most similar movies from the residuals of the
    ratings (users[n], rows[n]) (a pair rated twice: the last)."""
    users = np.unique(users, return_inverse=True)[1]
    pair = users.astype(np.int64) * n_movies + rows
    last = len(pair) - 1 - np.unique(pair[::-1], return_index=True)[1]
    shape = (int(users.max()) + 1 if len(users) else 0, n_movies)
    e = sp.csr_matrix((residuals[last].astype(np.float64), (users[last], rows[last])), shape)
    rated = sp.csr_matrix((np.ones(len(last)), (users[last], rows[last])), shape)
    squares = e.multiply(e).tocsr()
    e_t, rated_t, squares_t = (m.T.tocsr() for m in (e, rated, squares))
    width = min(config.per_movie, max(n_movies - 1, 1))
    out_rows = np.full((n_movies, width), -1, np.int32)
    out_sims = np.zeros((n_movies, width), np.float32)
    block = max(1, (1 << 22) // max(n_movies, 1))  # a block's dense arrays: ~32 MB each
    for start in range(0, n_movies, block):
        stop = min(start + block, n_movies)
        both = (rated_t[start:stop] @ rated).toarray()
        norms = np.sqrt((squares_t[start:stop] @ rated).toarray()
                        * (rated_t[start:stop] @ squares).toarray())
        s = np.divide((e_t[start:stop] @ e).toarray(), norms, out=np.zeros_like(both),
                      where=norms > 0)
        s = np.maximum(s, 0.0) * both / (both + config.shrink)
        s[np.arange(stop - start), np.arange(start, stop)] = 0.0  # a movie is not its own
        top = np.argsort(-s, axis=1, kind="stable")[:, :width]
        best = np.take_along_axis(s, top, axis=1)
        out_rows[start:stop] = np.where(best > 0, top, -1)
        out_sims[start:stop] = np.where(best > 0, best, 0.0)
    return Neighbours(out_rows, out_sims, config.k, config.lam, config.alpha)


def pair_terms(neighbours: Neighbours, pair_user: np.ndarray, pair_row: np.ndarray,
               users: np.ndarray, rows: np.ndarray, residuals: np.ndarray) -> np.ndarray:
    """The correction of each (pair_user, pair_row), every user's history being its
    ratings (users, rows) with `residuals`: the offline evaluation's bulk form of `term`."""
    out = np.zeros(len(pair_user))
    order = np.argsort(users, kind="stable")
    owners, starts = np.unique(users[order], return_index=True)
    ends = np.append(starts[1:], len(order))
    where = {u: (a, b) for u, a, b in zip(owners.tolist(), starts, ends, strict=True)}
    for u in np.unique(pair_user).tolist():
        if u not in where:
            continue
        mine = np.flatnonzero(pair_user == u)
        history = order[slice(*where[u])]
        out[mine] = neighbours.term(pair_row[mine], rows[history], residuals[history])
    return out
