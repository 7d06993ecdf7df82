"""A user's side sums kept as two parts: what the profile gives and what the history gives.

For the user row {id, attributes, rated: N(u)} with each rated movie weighted g,

    L = L0 + g C      s = s0 + g A      q = q0 + g^2 B

where (L0, s0, q0) are the side sums of id + attributes and, over the movies j in N(u),
C = sum w_j, A = sum v_j, B = sum |v_j|^2 (w_j, v_j: parameters of "user.rated=j"), and
g = 1/n or 1/sqrt(n) by the spec's weighting of "rated". Because g depends on n alone,
a new rating changes C, A, B and n by one term each: O(k), no re-encoding. That is why
the cache stores the parts and not L, s, q themselves.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from model.bundle import Sums
from model.features import FeatureSpec

HISTORY_FIELD = "rated"


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


def combine(base: BaseSums, history: HistorySums, weighting: str | None
            ) -> tuple[float, np.ndarray, float]:
    """The user's (L, s, q): the one place the two parts are put together."""
    g = history_weight(history.n, weighting)
    return base.L0 + g * history.C, base.s0 + g * history.A, base.q0 + g * g * history.B


# --- Redis hash encoding: little-endian float64, so a Lua script (struct '<d') can update it


def base_fields(base: BaseSums) -> dict[str, bytes]:
    return {"base": struct.pack(f"<{2 + len(base.s0)}d", base.L0, base.q0, *base.s0)}


def history_fields(history: HistorySums) -> dict[str, bytes | str | int]:
    fields: dict[str, bytes | str | int] = {
        "hist": struct.pack(f"<{2 + len(history.A)}d", history.C, history.B, *history.A),
        "n": history.n, "last_time": history.last_time}
    if history.last_movie is not None:
        fields["last"] = history.last_movie
    return fields


def _floats(raw: bytes | None, k: int) -> np.ndarray | None:
    if raw is None or len(raw) != 8 * (k + 2):
        return None
    return np.frombuffer(raw, dtype="<f8").astype(np.float64)


def parse_fields(fields: Mapping[bytes, bytes], k: int
                 ) -> tuple[BaseSums | None, HistorySums | None]:
    """The cached parts in a sums hash; a part that is absent or malformed is None (a miss)."""
    base = history = None
    packed = _floats(fields.get(b"base"), k)
    if packed is not None:
        base = BaseSums(float(packed[0]), packed[2:], float(packed[1]))
    packed = _floats(fields.get(b"hist"), k)
    if packed is not None:
        try:
            n = int(fields[b"n"])
            last_time = int(fields.get(b"last_time", b"0"))
        except (KeyError, ValueError):
            return base, None
        last = fields.get(b"last")
        history = HistorySums(float(packed[0]), packed[2:], float(packed[1]), n,
                              last.decode() if last is not None else None, last_time)
    return base, history
