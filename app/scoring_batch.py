"""One micro-batch of scoring jobs: per head, at most three model calls whatever its size.

A request becomes a `Job` (`app.scorer`): the user's cached parts (or what is needed to
compute them), a context payload, what to score and which head ranks it. Jobs run in
micro-batches (`app.batching`); per head, one batch makes at most three model calls:
`side_sums` for every row the batch must encode (user profiles and histories missing
from the cache, inline movies), `score_pairs` for listed movies, candidates and the
other head's view of ranked movies, `top_n` for whole-catalog rankings.

Rankings are exactly those of scoring every candidate and sorting by score, ties by
catalog row (tf.math.top_k keeps the lower index first among equals; `model.engine.rank`
in NumPy, for the catalog and for candidate lists alike).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

import numpy as np

from app.approximate import ApproximateTopN
from app.user_sums import (
    Bases,
    BaseSums,
    Histories,
    HistorySums,
    combine,
    history_weighting,
)
from model.bundle import Bundle, Head
from model.engine import rank
from model.features import SparseRows
from model.sums import Sums

T = TypeVar("T")

class Deferred(Sequence[T]):
    """A list built the first time an element is read, its length known before.

    Why: a cached user's stored history (which movies, with what stars) is read only by
    what a /recommend asks beyond scores (the exclusion, when its rows are not
    remembered; explanations), and parsing it on every request was a quarter of a cached
    /recommend's CPU.
    """

    __slots__ = ("_build", "_items", "_length")

    def __init__(self, build: Callable[[], list[T]], length: int) -> None:
        self._build, self._length = build, length
        self._items: list[T] | None = None

    @overload
    def __getitem__(self, index: int) -> T: ...
    @overload
    def __getitem__(self, index: slice) -> list[T]: ...
    def __getitem__(self, index: int | slice) -> T | list[T]:
        if self._items is None:
            self._items = self._build()
        return self._items[index]

    def __len__(self) -> int:
        return self._length


@dataclass(frozen=True)
class UserQuery:
    """The user side of a request: cached parts, or the payloads to compute them from."""

    uid: str | None
    base: Bases | None  # cached, per head; None = compute from base_payload
    base_payload: dict[str, Any]
    history: Histories | None  # cached, per head; None = compute from rated
    rated: Sequence[str] | None  # history in use; None only when cached and not read
    stars: Sequence[float | None] | None  # their stars (None: unknown), None when `rated` is
    last_movie: str | None
    last_time: int
    cache_base: bool  # write a computed base back under uid
    cache_history: bool
    version: int = 0  # the user's history version as read (a stale write-back is refused)
    history_from_store: bool = False  # `rated` is the store's history at `version`

    @property
    def cached(self) -> bool:
        return self.base is not None and self.history is not None


@dataclass(frozen=True)
class Ranking:
    """What /recommend asks beyond the scores: how many, and what to leave out."""

    n: int
    exclude: np.ndarray  # catalog rows
    genre_mask: int


@dataclass(frozen=True)
class Job:
    user: UserQuery
    context: dict[str, Any]
    pair_rows: np.ndarray | None  # catalog row per listed movie (-1: inline); None = all
    inline_movies: list[dict[str, Any]] = field(default_factory=list)
    ranking: Ranking | None = None
    head: str = "rating"  # the head whose scores rank (and, for /predict, answer)


@dataclass(frozen=True)
class JobResult:
    rows: np.ndarray  # catalog rows (ranked for /recommend; as listed for /predict)
    scores: dict[str, np.ndarray]  # per head: unclipped, aligned with rows
    base: Bases  # the user's parts as used (cached or just computed), per head
    history: Histories
    path: str = "exact"  # /recommend: "approximate" when the head's index chose candidates


def stack_rows(blocks: list[SparseRows]) -> SparseRows:
    """Blocks one under the other (rows of different sides may share a side_sums call)."""
    offsets = np.cumsum([0] + [b.nnz for b in blocks])
    indptr = np.concatenate([np.zeros(1, np.int64)] + [
        b.indptr[1:] + off for b, off in zip(blocks, offsets[:-1], strict=True)])
    return SparseRows(indptr, np.concatenate([b.indices for b in blocks]).astype(np.int32),
                      np.concatenate([b.values for b in blocks]).astype(np.float32))


class BatchScorer:
    """The maths of one micro-batch (in a worker thread, or inline: see app.batching)."""

    def __init__(self, bundle: Bundle, approximate: ApproximateTopN) -> None:
        self.bundle = bundle
        self.approximate = approximate
        self.weighting = {h: history_weighting(head.fmap.spec)
                          for h, head in bundle.heads.items()}
        self.genre_bits = bundle.catalog.genre_bits()

    def run_batch(self, jobs: list[Job]) -> list[JobResult | Exception]:
        heads = self.bundle.heads
        # a head no job scores with runs only to compute parts the cache lacks (for the
        # write-back, which covers every head): /predict of cached users needs one head
        cached = all(j.user.cached for j in jobs)
        needed = {name: head for name, head in heads.items()
                  if not cached or any(j.head == name or j.ranking is not None for j in jobs)}
        parts: list[tuple[list[BaseSums], list[HistorySums]]] = [([], []) for _ in jobs]
        scored: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
        approximate: set[int] = set()  # jobs the approximate path ranked
        views = {}
        for name, head in needed.items():
            bases, histories, inline = self._computed_sums(jobs, head)
            query = self._query(jobs, bases, histories, head, parts)
            contexts = head.fmap.encode("context", [j.context for j in jobs])
            views[name] = (query, contexts)
            mine = [n for n, j in enumerate(jobs) if j.head == name]
            scored[name] = self._score_listed(jobs, mine, head, query, contexts, inline)
            scored[name].update(self._score_catalog(jobs, mine, head, query, contexts,
                                                    approximate))
        ranked = {n: rows_scores for by_head in scored.values()
                  for n, rows_scores in by_head.items()}
        results = []
        for n, job in enumerate(jobs):
            base, history = job.user.base, job.user.history  # every head's, when cached
            if len(needed) == len(heads):
                base, history = tuple(parts[n][0]), tuple(parts[n][1])
            assert base is not None and history is not None  # `needed` saw to it
            results.append(JobResult(ranked[n][0], {job.head: ranked[n][1]}, base, history,
                                     "approximate" if n in approximate else "exact"))
        for name, (query, contexts) in views.items():  # other heads' scores of ranked movies
            head = heads[name]
            self._score_ranked(jobs, results, name, head, query, contexts)
        return [*results]

    def _computed_sums(self, jobs: list[Job], head: Head) -> tuple[Sums, Sums, Sums]:
        """A head's side sums of every row the batch lacks, in ONE side_sums call: user
        profiles, single-movie history rows (w_j, v_j, |v_j|^2) and inline movies."""
        profiles = [j.user.base_payload for j in jobs if j.user.base is None]
        rated = [m for j in jobs if j.user.history is None for m in j.user.rated or []]
        stars = [s for j in jobs if j.user.history is None for s in j.user.stars or []]
        inline = [m for j in jobs for m in j.inline_movies]
        if not (profiles or rated or inline):  # all cached: skip even encoding nothing
            empty = Sums(np.zeros(0, np.float32), np.zeros((0, head.k), np.float32),
                         np.zeros(0, np.float32))
            return empty, empty, empty
        blocks = [head.fmap.encode("user", profiles), head.history_rows(rated, stars),
                  head.fmap.encode("item", inline)]
        bounds = np.cumsum([0] + [b.n_rows for b in blocks])
        sums = head.side_sums(stack_rows(blocks))
        a, b, c, d = bounds
        return sums.take(np.arange(a, b)), sums.take(np.arange(b, c)), sums.take(np.arange(c, d))

    def _query(self, jobs: list[Job], bases: Sums, histories: Sums, head: Head,
               parts: list[tuple[list[BaseSums], list[HistorySums]]]) -> Sums:
        """Each job's user sums under one head (cached parts or just computed ones,
        combined); appends the head's parts to `parts`."""
        k = head.k
        position = list(self.bundle.heads).index(head.name)
        L, s, q = np.zeros(len(jobs)), np.zeros((len(jobs), k)), np.zeros(len(jobs))
        base_row = history_row = 0
        for n, job in enumerate(jobs):
            user = job.user
            if user.base is not None:
                base = user.base[position]
            else:
                base = BaseSums.of_row(bases, base_row)
                base_row += 1
            if user.history is not None:
                history = user.history[position]
            else:
                size = len(user.rated or [])
                history = HistorySums.of_rows(histories, history_row, history_row + size,
                                              user.last_movie, user.last_time)
                history_row += size
            parts[n][0].append(base)
            parts[n][1].append(history)
            L[n], s[n], q[n] = combine(base, history, self.weighting[head.name],
                                       head.size_sums)
        return Sums(L.astype(np.float32), s.astype(np.float32), q.astype(np.float32))

    def _score_listed(self, jobs: list[Job], mine: list[int], head: Head, query: Sums,
                      contexts: SparseRows, inline: Sums
                      ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Listed movies (/predict) and candidates (/recommend) of the jobs this head
        ranks: one score_pairs call. Inline movies are in job order in `inline`."""
        inline_start = np.cumsum([0] + [len(j.inline_movies) for j in jobs])
        listed = [(n, jobs[n].pair_rows) for n in mine if jobs[n].pair_rows is not None]
        if not listed:
            return {}
        items, pair_row = [], []
        for p, (n, rows) in enumerate(listed):
            assert rows is not None
            job_items = head.items.take(np.maximum(rows, 0))
            slots = np.flatnonzero(rows < 0)
            own = inline.take(np.arange(inline_start[n], inline_start[n] + len(slots)))
            job_items.L[slots], job_items.s[slots], job_items.q[slots] = own.L, own.s, own.q
            items.append(job_items)
            pair_row.append(np.full(len(rows), p, np.int32))
        which = np.array([n for n, _ in listed])
        flat = head.score_pairs(query.take(which), contexts.take(which),
                                np.concatenate(pair_row), Sums.concat(items))
        out = {}
        start = 0
        for n, rows in listed:
            assert rows is not None
            scores = flat[start:start + len(rows)]
            start += len(rows)
            ranking = jobs[n].ranking
            out[n] = (rows, scores) if ranking is None else self._rank(rows, scores, ranking)
        return out

    def _score_catalog(self, jobs: list[Job], mine: list[int], head: Head, query: Sums,
                       contexts: SparseRows, approximate: set[int]
                       ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Whole-catalog rankings by this head: the approximate path for those it can
        serve (adds them to `approximate`), then one top_n call with each other job's
        exclusions and genres."""
        ranked = [(n, r) for n in mine
                  if jobs[n].pair_rows is None and (r := jobs[n].ranking) is not None]
        out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if ranked and self.approximate.serves(head):
            which = np.array([n for n, _ in ranked], dtype=np.int64)
            out = {ranked[p][0]: rows_scores for p, rows_scores in self.approximate.rank(
                head, query.take(which), contexts.take(which), [r for _, r in ranked],
                self._rank).items()}
            approximate.update(out)
            ranked = [(n, r) for n, r in ranked if n not in out]
        if not ranked:
            return out
        which = np.array([n for n, _ in ranked])
        exclude_item = np.concatenate([r.exclude for _, r in ranked]).astype(np.int32)
        exclude_row = np.concatenate(
            [np.full(len(r.exclude), p, np.int32) for p, (_, r) in enumerate(ranked)])
        masks = np.array([r.genre_mask for _, r in ranked], np.int64)
        size = min(max(r.n for _, r in ranked), len(self.bundle.catalog))
        rows, scores = head.top_n(query.take(which), contexts.take(which),
                                  exclude_row, exclude_item, masks, size)
        for p, (n, ranking) in enumerate(ranked):
            keep = np.isfinite(scores[p, :ranking.n])  # excluded / filtered score -inf
            out[n] = rows[p, :ranking.n][keep].astype(np.int64), scores[p, :ranking.n][keep]
        return out

    def _score_ranked(self, jobs: list[Job], results: list[JobResult], name: str,
                      head: Head, query: Sums, contexts: SparseRows) -> None:
        """Add this head's scores of the movies /recommend jobs ranked by another head
        (one score_pairs call), so every item carries each head's view of it."""
        todo = [n for n, j in enumerate(jobs) if j.ranking is not None and j.head != name]
        if not todo:
            return
        rows = [results[n].rows for n in todo]
        pair_row = np.repeat(np.arange(len(todo), dtype=np.int32), [len(r) for r in rows])
        flat = head.score_pairs(query.take(np.array(todo)), contexts.take(np.array(todo)),
                                pair_row, head.items.take(np.concatenate(rows)))
        for n, part in zip(todo, np.split(flat, np.cumsum([len(r) for r in rows])[:-1]),
                           strict=True):
            results[n].scores[name] = part

    def _rank(self, rows: np.ndarray, scores: np.ndarray, ranking: Ranking
              ) -> tuple[np.ndarray, np.ndarray]:
        """Top n of scored candidates: what top_n does over the catalog (`model.engine.rank`;
        candidates are sorted catalog rows, so ties still go to the lower row)."""
        excluded = np.flatnonzero(np.isin(rows, ranking.exclude))
        top, top_scores = rank(scores[None, :].copy(), self.genre_bits[rows],
                               np.zeros(len(excluded), np.int64), excluded,
                               np.array([ranking.genre_mask], np.int64), ranking.n)
        keep = np.isfinite(top_scores[0])  # excluded / filtered score -inf
        return rows[top[0][keep]], top_scores[0][keep]
