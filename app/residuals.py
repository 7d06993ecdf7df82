"""A user's residuals (what the rating head's neighbourhood reads), remembered per history.

Why: computing them reads and parses the user's whole stored history (stars included)
and scores every rated movie, three times the rest of a cached /predict's CPU
(bench/serve.py). They change only with the user's history or sums, so each worker
keeps them per (user, history version) with the sums they were computed from; any
/ratings event bumps the version, and a hit whose sums differ (a new profile) is a miss.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from app.scoring_batch import UserQuery
from model.sums import Sums

RESIDUALS_CACHE = 10_000  # users whose residuals are remembered

Residuals = tuple[np.ndarray, np.ndarray] | None  # (catalog rows, residuals); None: none


@dataclass(frozen=True)
class UserResiduals:
    """A user's residuals as arrays (`Neighbours.term`) and by row (`Neighbours.term_of`)."""

    arrays: Residuals
    by_row: dict[int, float]

    @staticmethod
    def of(residuals: Residuals) -> UserResiduals:
        by_row = {} if residuals is None else dict(zip(residuals[0].tolist(),
                                                       residuals[1].tolist(), strict=True))
        return UserResiduals(residuals, by_row)


class ResidualCache:
    """An LRU of residuals per (user, history version), checked against the user's sums."""

    def __init__(self, size: int = RESIDUALS_CACHE) -> None:
        self.size = size
        self._entries: OrderedDict[tuple[str, int], tuple[Sums, UserResiduals]] = OrderedDict()

    @staticmethod
    def _key(user: UserQuery) -> tuple[str, int] | None:
        """Only a history read from the store has a version that names it."""
        return (user.uid, user.version) if user.history_from_store and user.uid else None

    def get(self, user: UserQuery, query: Sums) -> UserResiduals | None:
        """The residuals of the user with rating-head sums `query`, if remembered."""
        key = self._key(user)
        entry = self._entries.get(key) if key is not None else None
        if entry is None or not _same(entry[0], query):
            return None
        self._entries.move_to_end(key)  # type: ignore[arg-type]
        return entry[1]

    def put(self, user: UserQuery, query: Sums, residuals: UserResiduals) -> None:
        key = self._key(user)
        if key is None:
            return
        self._entries[key] = (query, residuals)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)


def _same(a: Sums, b: Sums) -> bool:
    """Bit for bit (bytes compare faster than `np.array_equal` at this size)."""
    return (a.L.tobytes() == b.L.tobytes() and a.q.tobytes() == b.q.tobytes()
            and a.s.tobytes() == b.s.tobytes())
