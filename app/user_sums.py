"""A user's side sums kept as two parts: what the profile gives and what the history gives.

For the user row {id, attributes, rated: N(u)} with each rated movie weighted g,

    L = L0 + g C      s = s0 + g A      q = q0 + g^2 B

where (L0, s0, q0) are the side sums of id + attributes and, over the movies j in N(u),
C = sum w_j, A = sum v_j, B = sum |v_j|^2 (w_j, v_j: parameters of "user.rated=j"), and
g = 1/n or 1/sqrt(n) by the spec's weighting of "rated". Because g depends on n alone,
a new rating changes C, A, B and n by one term each: O(k), no re-encoding. That is why
the cache stores the parts and not L, s, q themselves. A head that reads a history-size
field (`model.features.Field.size_value`) adds that one token's (w, v, |v|^2) for n:
a lookup in `Head.size_sums`, also O(k).

A bundle has several heads (`model.bundle.HEADS`), FMs over the same features: a user's
parts are one `BaseSums` and one `HistorySums` per head, in the bundle's head order, and
the cache packs them one after the other. An event then adds one packed row (every
head's w_j, |v_j|^2, v_j side by side) to the packed history: still one elementwise sum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from model.features import HISTORY_FIELD, FeatureSpec
from model.sums import Sums


@dataclass(frozen=True)
class BaseSums:
    """Side sums of the user's id and attributes (no history)."""

    L0: float
    s0: np.ndarray  # (k,) float64
    q0: float

    @staticmethod
    def of_row(sums: Sums, row: int) -> BaseSums:
        return BaseSums(float(sums.L[row]), sums.s[row].astype(np.float64), float(sums.q[row]))


@dataclass(frozen=True)
class HistorySums:
    """Raw sums over the user's rated movies, their count and the latest one."""

    C: float
    A: np.ndarray  # (k,) float64
    B: float
    n: int
    last_movie: str | None = None
    last_time: int = 0

    @staticmethod
    def of_rows(sums: Sums, start: int, stop: int, last_movie: str | None,
                last_time: int = 0) -> HistorySums:
        """Sum rows start..stop of single-movie side sums (L = w_j, s = v_j, q = |v_j|^2)."""
        A = sums.s[start:stop].astype(np.float64).sum(axis=0)  # zeros (k,) when empty
        return HistorySums(float(sums.L[start:stop].astype(np.float64).sum()), A,
                           float(sums.q[start:stop].astype(np.float64).sum()), stop - start,
                           last_movie, last_time)


def history_weighting(spec: FeatureSpec) -> str | None:
    """"mean" or "sqrt" for the spec's user history field; None if it has none."""
    for f in spec.side_fields("user"):
        if f.name == HISTORY_FIELD and f.kind == "multi":
            return f.weighting
    return None


def history_weight(n: int, weighting: str | None) -> float:
    """Weight g of each rated movie in a history of n (0 for no history or no such field)."""
    if n == 0 or weighting is None:
        return 0.0
    return 1.0 / n if weighting == "mean" else 1.0 / math.sqrt(n)


def combine(base: BaseSums, history: HistorySums, weighting: str | None,
            size: Sums | None = None) -> tuple[float, np.ndarray, float]:
    """The user's (L, s, q): the one place the two parts are put together. `size` row n
    holds the side sums of the size token a history of n emits (`Head.size_sums`)."""
    g = history_weight(history.n, weighting)
    L, s, q = base.L0 + g * history.C, base.s0 + g * history.A, base.q0 + g * g * history.B
    if size is not None and history.n < len(size):
        n = history.n
        L, s, q = L + float(size.L[n]), s + size.s[n], q + float(size.q[n])
    return L, s, q


Bases = tuple[BaseSums, ...]  # one per head, in the bundle's head order
Histories = tuple[HistorySums, ...]
