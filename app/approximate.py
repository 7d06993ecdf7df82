"""/recommend's approximate path: the head's index proposes candidates, the engine scores
them exactly, the request's filters apply, and the top n is answered.

Only the choice of candidates is approximate (`model.ann`): every score answered is the
engine's exact score, in the order the exact path would give those movies. A ranking
with filters asks the index for more candidates in proportion to what the filters
remove (exclusions count one each, a genre filter divides by the share of the catalog it
keeps); when that would be more than `ann_max_share` of the catalog, or the candidates
that survive the filters are fewer than n, the exact path serves the request instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol, TypeVar

import numpy as np

from app.settings import Settings
from model.bundle import Head
from model.features import SparseRows
from model.sums import Sums

MASKS_REMEMBERED = 4096  # genre masks whose catalog share is remembered


class Wanted(Protocol):
    """One ranking the approximate path is asked for (`app.scoring_batch.Ranking`)."""

    @property
    def n(self) -> int: ...

    @property
    def exclude(self) -> np.ndarray: ...  # catalog rows

    @property
    def genre_mask(self) -> int: ...


W = TypeVar("W", bound=Wanted)


class ApproximateTopN:
    """Per scorer: the settings and the genre bits the widening needs."""

    def __init__(self, settings: Settings, genre_bits: np.ndarray) -> None:
        self.enabled = settings.ann
        self.per_n = settings.ann_candidates
        self.probe_share = settings.ann_probe_share
        self.max_share = settings.ann_max_share
        self.genre_bits = genre_bits
        self._shares: dict[int, float] = {}

    def serves(self, head: Head) -> bool:
        """Whether rankings by this head may take the approximate path at all."""
        return self.enabled and head.ann is not None

    def share(self, genre_mask: int) -> float:
        """Share of the catalog a genre filter keeps (1.0 without one)."""
        if not genre_mask:
            return 1.0
        if genre_mask not in self._shares:
            if len(self._shares) >= MASKS_REMEMBERED:
                self._shares.clear()
            kept = np.count_nonzero(self.genre_bits & genre_mask)
            self._shares[genre_mask] = kept / max(len(self.genre_bits), 1)
        return self._shares[genre_mask]

    def candidates(self, wanted: Wanted) -> int | None:
        """How many movies to ask the index for; None: the exact path should serve it."""
        size = len(self.genre_bits)
        share = self.share(wanted.genre_mask)
        if share == 0:
            return None
        m = min(math.ceil((self.per_n * wanted.n + len(wanted.exclude)) / share), size)
        return m if m <= self.max_share * size else None

    def rank(self, head: Head, query: Sums, contexts: SparseRows, wanted: list[W],
             ranker: Callable[[np.ndarray, np.ndarray, W], tuple[np.ndarray, np.ndarray]]
             ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Rankings (rows, exact scores) by position in `wanted` for those the approximate
        path serves; the caller ranks the others exactly. `query`/`contexts`: one row per
        entry of `wanted` (user sums, encoded contexts), `ranker` filters and orders
        scored candidates as the exact path would (`BatchScorer._rank`)."""
        if head.ann is None or not self.enabled or not wanted:
            return {}
        sizes = [self.candidates(w) for w in wanted]
        which = np.array([p for p, m in enumerate(sizes) if m is not None], dtype=np.int64)
        if not len(which):
            return {}
        m = max(sizes[p] or 0 for p in which)
        a = query.s[which] + head.side_sums(contexts.take(which)).s
        found = head.ann.search(a, m, self.probe_share)
        rows = [np.unique(head.ann.members(points[:sizes[p]])).astype(np.int64)
                for p, points in zip(which.tolist(), found, strict=True)]
        pair_row = np.repeat(np.arange(len(which), dtype=np.int32), [len(r) for r in rows])
        flat = head.score_pairs(query.take(which), contexts.take(which), pair_row,
                                head.items.take(np.concatenate(rows)))
        out = {}
        for p, own, scores in zip(which.tolist(), rows,
                                  np.split(flat, np.cumsum([len(r) for r in rows])[:-1]),
                                  strict=True):
            ranked = ranker(own, scores, wanted[p])
            if len(ranked[0]) >= wanted[p].n:  # else too few survived: exact path
                out[p] = ranked
        return out
