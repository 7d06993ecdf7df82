"""A user's side sums kept as two parts: what the profile gives and what the history gives.

For the user row {id, attributes, rated: N(u)} with each rated movie weighted g,

    L = L0 + g C      s = s0 + g A      q = q0 + g^2 B

where (L0, s0, q0) are the side sums of id + attributes and, over the movies j in N(u),
C = sum w_j, A = sum v_j, B = sum |v_j|^2 (w_j, v_j: parameters of "user.rated=j"), and
g = 1/n or 1/sqrt(n) by the spec's weighting of "rated". Because g depends on n alone,
a new rating changes C, A, B and n by one term each: O(k), no re-encoding. That is why
the cache stores the parts and not L, s, q themselves.

A bundle has several heads (`model.bundle.HEADS`), FMs over the same features: a user's
parts are one `BaseSums` and one `HistorySums` per head, in the bundle's head order, and
the cache packs them one after the other. An event then adds one packed row (every
head's w_j, |v_j|^2, v_j side by side) to the packed history: still one elementwise sum.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from model.features import FeatureSpec
from model.sums import Sums

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


Bases = tuple[BaseSums, ...]  # one per head, in the bundle's head order
Histories = tuple[HistorySums, ...]


# --- Redis hash encoding: little-endian float64, so a Lua script (struct '<d') can update it:
# per head [L0, q0, s0...] ("base") and [C, B, A...] ("hist"), heads one after the other


def base_fields(bases: Bases) -> dict[str, bytes]:
    return {"base": b"".join(struct.pack(f"<{2 + len(b.s0)}d", b.L0, b.q0, *b.s0)
                             for b in bases)}


def history_fields(histories: Histories) -> dict[str, bytes | str | int]:
    first = histories[0]  # count and latest movie are the same for every head
    fields: dict[str, bytes | str | int] = {
        "hist": b"".join(struct.pack(f"<{2 + len(h.A)}d", h.C, h.B, *h.A) for h in histories),
        "n": first.n, "last_time": first.last_time}
    if first.last_movie is not None:
        fields["last"] = first.last_movie
    return fields


def _split(raw: bytes | None, widths: Sequence[int]) -> list[np.ndarray] | None:
    """Per head (k given by `widths`), its packed [x, y, vector...]; None if malformed."""
    if raw is None or len(raw) != 8 * sum(k + 2 for k in widths):
        return None
    floats = np.frombuffer(raw, dtype="<f8").astype(np.float64)
    return np.split(floats, np.cumsum([k + 2 for k in widths])[:-1])


def parse_fields(fields: Mapping[bytes, bytes], widths: Sequence[int]
                 ) -> tuple[Bases | None, Histories | None]:
    """The cached parts in a sums hash; a part that is absent or malformed is None (a miss)."""
    bases = histories = None
    packed = _split(fields.get(b"base"), widths)
    if packed is not None:
        bases = tuple(BaseSums(float(p[0]), p[2:], float(p[1])) for p in packed)
    packed = _split(fields.get(b"hist"), widths)
    if packed is not None:
        try:
            n = int(fields[b"n"])
            last_time = int(fields.get(b"last_time", b"0"))
        except (KeyError, ValueError):
            return bases, None
        raw_last = fields.get(b"last")
        last = raw_last.decode() if raw_last is not None else None
        histories = tuple(HistorySums(float(p[0]), p[2:], float(p[1]), n, last, last_time)
                          for p in packed)
    return bases, histories
