"""Predict and recommend: requests in, answers out, over the micro-batched scoring.

A request becomes a `Job` (`app.scoring_batch`): the user's cached parts (or what is
needed to compute them), a context payload, what to score and which head ranks it.

Heads (`model.bundle.HEADS`): /predict scores with "rating"; /recommend ranks with
"relevance" by default (or "rating", `rank_by`) and reports both heads' scores of what
it returns. A user's cached parts cover every head, so either route warms the cache of
the other.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import replace
from typing import Any

import numpy as np

from app.approximate import ApproximateTopN
from app.batching import MicroBatcher
from app.explain import because_you_rated
from app.metrics import Metrics
from app.rated_rows import RatedRows
from app.residuals import ResidualCache, UserResiduals
from app.schemas import (
    ContextIn,
    InvalidInput,
    PredictRequest,
    RecommendRequest,
    UserIn,
)
from app.scoring_batch import BatchScorer, Deferred, Job, JobResult, Ranking, UserQuery
from app.settings import Settings
from app.store import Rating, Store, StoreUnavailable, UserRecord
from app.user_sums import combine, history_weighting
from model.bundle import Bundle
from model.features import context_payload
from model.sums import Sums

FEW_MOVIES = 8  # a /predict of this many movies or fewer corrects them in plain Python


def latest(ratings: Mapping[str, Rating]) -> tuple[str | None, int]:
    """The most recently rated movie (ties: the larger id, so the choice is stable)."""
    if not ratings:
        return None, 0
    movie, rating = max(ratings.items(), key=lambda mr: (mr[1].timestamp, mr[0]))
    return movie, rating.timestamp


class Scorer:
    """One loaded bundle, its micro-batcher, and the request logic on top of them: the
    request's user merged with the store's, its context, the answer's schema. The batch
    maths is `app.scoring_batch.BatchScorer`."""

    def __init__(self, bundle: Bundle, settings: Settings, metrics: Metrics) -> None:
        self.bundle = bundle
        self.metrics = metrics
        self.rated_rows = RatedRows(bundle.catalog)
        self.residuals = ResidualCache()
        self._rating_position = list(bundle.heads).index("rating")
        self._rating_weighting = history_weighting(bundle.heads["rating"].fmap.spec)
        self.batcher: MicroBatcher[Job, JobResult] = MicroBatcher(
            BatchScorer(bundle, ApproximateTopN(settings, bundle.catalog.genre_bits())
                        ).run_batch, max_batch_size=settings.max_batch_size,
            max_wait_s=settings.max_wait_ms / 1000, max_queue=settings.max_queue,
            enabled=settings.batching, observe=metrics.observe_batch,
            inline=bundle.engine.name == "numpy"
            and len(bundle.catalog) <= settings.inline_max_movies)

    @property
    def model_id(self) -> str:
        return self.bundle.model_id

    # --- requests ------------------------------------------------------------------------

    async def predict(self, request: PredictRequest, store: Store) -> dict[str, Any]:
        """The fields of a `PredictResponse`, to serialise as they are (`app.scoring`)."""
        movies = [m.payload() for m in request.movies]
        catalog = self.bundle.catalog
        found = [catalog.row(p["id"]) if set(p) == {"id"} else None for p in movies]
        rows = np.array([-1 if r is None else r for r in found], dtype=np.int64)  # -1: inline
        user = await self._user(request.user, store, need_ratings=False)
        job = Job(user, await self._context(request.context, user, store), rows,
                  [p for p, r in zip(movies, rows, strict=True) if r < 0])
        result = await self._run(job, store)
        scores = result.scores["rating"]
        if self.bundle.neighbours is not None:
            scores = scores + await self._neighbour_term(user, result, rows, store)
        ratings = self.bundle.clip(scores)
        # unknown: by id only and not in the catalog (inline attributes describe a movie)
        known = [r is not None or set(p) != {"id"} for p, r in zip(movies, found, strict=True)]
        if not all(known):
            self.metrics.unknown_movies.inc(known.count(False))
        return {
            "model_id": self.model_id, "predictions": [
                {"movie_id": p["id"], "rating": r, "known": k}
                for p, r, k in zip(movies, ratings.tolist(), known, strict=True)],
            "user_cached": user.cached}

    async def recommend(self, request: RecommendRequest, store: Store) -> dict[str, Any]:
        """The fields of a `RecommendResponse`, to serialise as they are (`app.scoring`)."""
        catalog = self.bundle.catalog
        mask = 0
        for n, genre in enumerate(request.genres or []):
            try:
                mask |= catalog.mask([genre])
            except KeyError:
                raise InvalidInput(("genres", n), f"unknown genre {genre!r}; known: "
                                   + ", ".join(catalog.genre_names), genre) from None
        candidates = None
        if request.candidates is not None:
            found = [catalog.row(c) for c in request.candidates]
            for n, row in enumerate(found):
                if row is None:
                    raise InvalidInput(("candidates", n), f"movie {request.candidates[n]!r} "
                                       "is not in the catalog", request.candidates[n])
            candidates = np.unique(np.array(found, dtype=np.int64))
        user = await self._user(request.user, store,
                                need_ratings=request.exclude_rated or request.explain)
        exclude = np.zeros(0, np.int64)
        if request.exclude_rated and user.rated:
            exclude = self.rated_rows.of(user)
        job = Job(user, await self._context(request.context, user, store), candidates,
                  ranking=Ranking(request.n, exclude, mask), head=request.rank_by)
        result = await self._run(job, store)
        ratings = self.bundle.clip(result.scores["rating"])
        because = because_you_rated(
            self.bundle, job.head, user.rated or [], user.stars, result.base, result.history,
            job.context, result.rows) if request.explain else None
        return {
            "model_id": self.model_id, "rank_by": job.head, "path": result.path,
            "items": [
                {"movie_id": movie, "title": title,
                 "score": score, "relevance": relevance, "rating": rating,
                 "known": True,  # catalog movies only
                 "because": because and because[n]}
                for n, (movie, title, score, relevance, rating) in enumerate(zip(
                    catalog.ids[result.rows].tolist(), catalog.titles[result.rows].tolist(),
                    result.scores[job.head].tolist(), result.scores["relevance"].tolist(),
                    ratings.tolist(), strict=True))],
            "user_cached": user.cached}

    async def _neighbour_term(self, user: UserQuery, result: JobResult, rows: np.ndarray,
                              store: Store) -> np.ndarray:
        """The rating head's neighbourhood correction of catalog rows `rows` (-1: 0). The
        user's residuals are remembered per history version (`app.residuals`): a cached
        user's stored ratings are read and parsed only to compute them."""
        head, position = self.bundle.heads["rating"], self._rating_position
        L, s, q = combine(result.base[position], result.history[position],
                          self._rating_weighting, head.size_sums)
        query = Sums(np.array([L], np.float32), np.array([s], np.float32),
                     np.array([q], np.float32))  # the user's rating-head sums, no context
        residuals = self.residuals.get(user, query)
        if residuals is None:
            rated, stars = user.rated, user.stars
            if rated is None:  # cached sums, history not read
                assert user.uid is not None  # a cached user is read under its id
                try:
                    ratings = await store.read_ratings(user.uid)
                except StoreUnavailable:  # answered without: the FM alone, not remembered
                    self.metrics.degraded.inc()
                    return np.zeros(len(rows))
                rated, stars = list(ratings), [r.rating for r in ratings.values()]
            residuals = UserResiduals.of(self.bundle.residuals(query, rated, stars))
            self.residuals.put(user, query, residuals)
        neighbours = self.bundle.neighbours
        if residuals.arrays is None or neighbours is None:
            return np.zeros(len(rows))
        if len(rows) <= FEW_MOVIES:  # the same sums in Python: no NumPy call overhead
            return np.array([neighbours.term_of(r, residuals.by_row) for r in rows.tolist()])
        return neighbours.term(rows, *residuals.arrays)

    async def user_and_context(self, user: UserIn, context: ContextIn | None, store: Store
                               ) -> tuple[UserQuery, dict[str, Any]]:
        """The user (its history read) and the context payload a request scores with, for
        code that needs the features themselves rather than the cached sums (/explain)."""
        query = await self._user(user, store, need_ratings=True)
        return query, await self._context(context, query, store)

    async def _run(self, job: Job, store: Store) -> JobResult:
        result = await self.batcher.submit(job)
        user = job.user
        if user.uid is not None and (user.cache_base or user.cache_history):
            with suppress(StoreUnavailable):  # the answer stands; the store counted it
                await store.write_sums(self.model_id, user.uid,
                                       result.base if user.cache_base else None,
                                       result.history if user.cache_history else None,
                                       version=user.version)
        return result

    async def _user(self, user: UserIn, store: Store, *, need_ratings: bool) -> UserQuery:
        """Merge the request's user with the store's: inline fields win, the cache is used
        only for parts the request does not override, and a failing store means computing
        from the request alone."""
        attrs = user.attributes()
        record = await self._read(user, store, need_ratings) if user.id is not None else None
        base = record.base if record is not None and not attrs else None
        history = None
        inline = user.rated_movies()
        stars: Sequence[float | None] | None
        if inline is not None:
            rated: Sequence[str] | None = inline[0]
            stars = self._checked_stars(inline[1])
            last, last_time = (rated[-1] if rated else None), 0
        elif record is not None and record.history is not None:
            history = record.history  # the sums are cached: the ratings only if read
            stored = record.ratings
            rated = None if stored is None else Deferred(lambda: list(stored), len(stored))
            stars = None if stored is None else Deferred(
                lambda: [r.rating for r in stored.values()], len(stored))
            last, last_time = history[0].last_movie, history[0].last_time
        else:
            ratings = (record.ratings if record is not None else None) or {}
            rated, stars = list(ratings), [r.rating for r in ratings.values()]
            last, last_time = latest(ratings)
        known = record is not None and record.known
        payload = {**(record.profile if record is not None else {}), **attrs}
        if user.id is not None:
            payload["id"] = user.id
        query = UserQuery(user.id, base, payload, history, rated, stars, last, last_time,
                          cache_base=known and base is None and not attrs,
                          cache_history=known and history is None and user.rated is None,
                          version=record.version if record is not None else 0,
                          history_from_store=record is not None and user.rated is None)
        if user.id is not None and record is not None:
            (self.metrics.cache_hits if query.cached else self.metrics.cache_misses).inc()
        return query

    def _checked_stars(self, stars: list[float | None]) -> list[float | None]:
        """Inline stars within the model's rating range (a 422 naming the first not)."""
        low, high = self.bundle.rating_range
        for n, value in enumerate(stars):
            if value is not None and not low <= value <= high:
                raise InvalidInput(("user", "rated", n, "stars"), "stars must be within the "
                                   f"model's rating range [{low:g}, {high:g}]", value)
        return stars

    async def _read(self, user: UserIn, store: Store, need_ratings: bool) -> UserRecord | None:
        """Cached parts and profile in one round trip; the ratings too when the request
        needs them (exclusion) or the cache lacks the history part. None: store down."""
        assert user.id is not None
        try:
            record = await store.read_user(self.model_id, user.id, widths=self.bundle.widths,
                                           with_ratings=need_ratings and user.rated is None)
            if user.rated is None and record.history is None and record.ratings is None:
                record = replace(record, ratings=await store.read_ratings(user.id))
        except StoreUnavailable:
            self.metrics.degraded.inc()
            return None
        return record

    async def _context(self, context: ContextIn | None, user: UserQuery, store: Store
                       ) -> dict[str, Any]:
        """Time defaults to now (the feature map clips it to the training range), the last
        movie (unless sent, null meaning none) to the user's latest one rated strictly
        before that time, as training defines it. The user's latest movie is that one
        unless the time is not after it (a backfill): then the stored ratings say."""
        given = context or ContextIn()
        at = given.time if given.time is not None else time.time()
        last = user.last_movie
        if "last_movie" in given.model_fields_set:
            last = given.last_movie
        elif user.history_from_store and last is not None and at <= user.last_time:
            assert user.uid is not None  # history_from_store: read under its id
            try:
                ratings = await store.read_ratings(user.uid)
            except StoreUnavailable:  # the store just answered: a blip, scored without
                self.metrics.degraded.inc()
                ratings = {}
            last, _ = latest({m: r for m, r in ratings.items() if r.timestamp < at})
        return context_payload(user.uid, at, last)
