"""The obvious alternative to side sums: score one full feature row per candidate movie.

What a user of a plain FM would write: for each request, build the whole feature vector
of every candidate (user features + context features + movie features, concatenated,
one row per candidate) and call the FM on all those rows through a SavedModel. No side
sums, no cache: the user's profile and rating history are read from the same store
fmrec uses (primary data, not cached sums) and encoded on every request.

To be a fair peer it is not a strawman: movie rows are encoded once at start-up (only
the per-request user and context parts are encoded per request), rows are assembled with
vectorised NumPy, the model call runs in a worker thread like fmrec's, and the weights
are the bundle's own, exported as a SavedModel with a `score_rows` signature computing
`FactorizationMachine.score(side_sums(row))` over full rows (model/fm.py: the very code
training uses). Its answers equal fmrec's (tests/bench/test_bench_serve.py checks it).

    FMREC_BUNDLE=path uvicorn bench.naive_app:create_app --factory --port 8002
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from app.schemas import (
    ContextIn,
    InvalidInput,
    Prediction,
    PredictRequest,
    PredictResponse,
    Recommendation,
    RecommendRequest,
    RecommendResponse,
    UserIn,
    check_limits,
)
from app.scorer import latest
from app.settings import Settings
from app.store import Store, StoreUnavailable
from model.bundle import Bundle
from model.features import HISTORY_FIELD, STARS_FIELD, SparseRows, context_payload
from model.fm import FactorizationMachine

NO_SUMS = "naive"  # a model-id namespace under which no sums are ever cached


def export_score_rows(bundle: Bundle, out: Path, head: str = "rating") -> Path:
    """A head's w0, w, V as a SavedModel whose `score_rows` scores full CSR rows."""
    trained = getattr(bundle.model, head).fm
    fm = FactorizationMachine(bundle.spec.n_features, bundle.heads[head].k)
    for mine, theirs in ((fm.w0, trained.w0), (fm.w, trained.w), (fm.V, trained.V)):
        mine.assign(theirs)
    module = tf.Module()
    module.fm = fm

    @tf.function(input_signature=(tf.TensorSpec([None], tf.int32),
                                  tf.TensorSpec([None], tf.int32),
                                  tf.TensorSpec([None], tf.float32),
                                  tf.TensorSpec([], tf.int32)))
    def score_rows(row_ids: tf.Tensor, indices: tf.Tensor, values: tf.Tensor,
                   n_rows: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"score": fm.score(fm.side_sums(row_ids, indices, values, n_rows))}

    module.score_rows = score_rows
    tf.saved_model.save(module, str(out), signatures={"score_rows": score_rows})
    return out


def full_rows(user: SparseRows, context: SparseRows, items: SparseRows
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row of each non-zero, index, value): row r = the user row + the context row +
    item row r. Order within a row does not matter to the FM."""
    n = items.n_rows
    rows = np.arange(n, dtype=np.int32)
    return (np.concatenate([np.repeat(rows, user.nnz), np.repeat(rows, context.nnz),
                            items.row_ids()]),
            np.concatenate([np.tile(user.indices, n), np.tile(context.indices, n),
                            items.indices]),
            np.concatenate([np.tile(user.values, n), np.tile(context.values, n),
                            items.values]))


class NaiveScorer:
    """A bundle's catalog and feature map, and one exported full-row FM per head."""

    def __init__(self, bundle: Bundle, saved_models: dict[str, Path]) -> None:
        self.bundle = bundle
        self.score_rows = {h: tf.saved_model.load(str(p)).signatures["score_rows"]
                           for h, p in saved_models.items()}
        catalog = bundle.catalog
        payloads = [catalog.payload(r) for r in range(len(catalog))]
        self.items = {h: head.fmap.encode("item", payloads) for h, head in bundle.heads.items()}
        self.genre_bits = catalog.genre_bits()

    def scores(self, user: dict[str, Any], context: dict[str, Any], items: SparseRows,
               head: str = "rating") -> np.ndarray:
        """Unclipped FM scores of one head on the full rows (user, context, each item),
        `items` encoded with the fields that head reads."""
        fmap = self.bundle.heads[head].fmap
        row_ids, indices, values = full_rows(fmap.encode("user", [user]),
                                             fmap.encode("context", [context]), items)
        out = self.score_rows[head](
            row_ids=tf.constant(row_ids), indices=tf.constant(indices),
            values=tf.constant(values), n_rows=tf.constant(items.n_rows, tf.int32))
        return np.asarray(out["score"].numpy())

    def listed(self, movies: list[dict[str, Any]]) -> SparseRows:
        """Item rows of /predict's movies: the precomputed row of a catalog id sent alone,
        the movie encoded from its payload otherwise."""
        catalog = self.bundle.catalog
        rows = [catalog.row(m["id"]) if set(m) == {"id"} else None for m in movies]
        if all(r is not None for r in rows):
            return self.items["rating"].take(np.array(rows, dtype=np.int64))
        return self.bundle.fmap.encode("item", [
            m if r is None else catalog.payload(r) for m, r in zip(movies, rows, strict=True)])

    def rank(self, scores: np.ndarray, rows: np.ndarray, exclude: set[int], genre_mask: int,
             n: int) -> tuple[np.ndarray, np.ndarray]:
        """Best n rows by score (ties: lower catalog row), as fmrec ranks."""
        allowed = ~np.isin(rows, np.fromiter(exclude, np.int64, len(exclude)))
        if genre_mask:
            allowed &= (self.genre_bits[rows] & genre_mask) != 0
        rows, scores = rows[allowed], scores[allowed]
        order = np.lexsort((rows, -scores))[:n]
        return rows[order], scores[order]


class NaiveService:
    """The request logic: user from the store (or inline), context defaults as fmrec's."""

    def __init__(self, scorer: NaiveScorer, store: Store | None, settings: Settings) -> None:
        self.scorer = scorer
        self.store = store
        self.settings = settings

    async def user(self, user: UserIn
                   ) -> tuple[dict[str, Any], list[str], str | None, dict[str, Any] | None]:
        """(feature payload, rated movies, latest rated movie, stored ratings (None: the
        history was sent inline)); inline fields win."""
        profile: dict[str, Any] = {}
        ratings: dict[str, Any] = {}
        if user.id is not None and self.store is not None:
            record = await self.store.read_user(NO_SUMS, user.id, widths=self.scorer.bundle.widths,
                                                with_ratings=user.rated is None)
            profile, ratings = record.profile, record.ratings or {}
        stored: dict[str, Any] | None = None
        inline = user.rated_movies()
        stars: list[float | None]
        if inline is not None:
            rated, stars = inline
            last = rated[-1] if rated else None
        else:
            stored = ratings
            rated, stars = list(ratings), [r.rating for r in ratings.values()]
            last = latest(ratings)[0]
        payload = {**profile, **user.attributes(), HISTORY_FIELD: rated,
                   STARS_FIELD: [[m, s] for m, s in zip(rated, stars, strict=True)]}
        if user.id is not None:
            payload["id"] = user.id
        return payload, rated, last, stored

    @staticmethod
    def context(given: ContextIn | None, user_id: str | None, last: str | None,
                stored: dict[str, Any] | None) -> dict[str, Any]:
        """The last movie: as sent (null: none), else the latest stored one rated strictly
        before the time, else (history inline, no times) the last one listed."""
        given = given or ContextIn()
        at = given.time if given.time is not None else time.time()
        if "last_movie" in given.model_fields_set:
            last = given.last_movie
        elif stored is not None:
            last = latest({m: r for m, r in stored.items() if r.timestamp < at})[0]
        return context_payload(user_id, at, last)

    async def predict(self, request: PredictRequest) -> PredictResponse:
        check_limits(request, self.settings)
        movies = [m.payload() for m in request.movies]
        user, _, last, stored = await self.user(request.user)
        context = self.context(request.context, request.user.id, last, stored)
        bundle = self.scorer.bundle
        scores = await asyncio.to_thread(  # plus the correction fmrec adds from the history
            lambda: self.scorer.scores(user, context, self.scorer.listed(movies))
            + bundle.neighbour_correction(user, movies))
        ratings = bundle.clip(scores)
        catalog = self.scorer.bundle.catalog
        return PredictResponse(model_id=self.scorer.bundle.model_id, user_cached=False,
                               predictions=[Prediction(
                                   movie_id=m["id"], rating=float(r),
                                   known=catalog.row(m["id"]) is not None or len(m) > 1)
                                   for m, r in zip(movies, ratings, strict=True)])

    async def recommend(self, request: RecommendRequest) -> RecommendResponse:
        check_limits(request, self.settings)
        catalog = self.scorer.bundle.catalog
        try:
            mask = catalog.mask(request.genres or [])
        except KeyError as exc:
            raise HTTPException(422, f"unknown genre {exc}") from None
        if request.candidates is None:
            rows = np.arange(len(catalog), dtype=np.int64)
        else:
            found = [catalog.row(c) for c in request.candidates]
            if None in found:
                raise HTTPException(422, "a candidate is not in the catalog")
            rows = np.unique(np.array(found, dtype=np.int64))
        user, rated, last, stored = await self.user(request.user)
        context = self.context(request.context, request.user.id, last, stored)
        exclude = {r for r in map(catalog.row, rated) if r is not None} if (
            request.exclude_rated) else set()

        head = request.rank_by
        other = "rating" if head == "relevance" else "relevance"

        def ranked() -> tuple[np.ndarray, dict[str, np.ndarray]]:
            items = self.scorer.items
            scores = self.scorer.scores(user, context, items[head].take(rows), head)
            best, top = self.scorer.rank(scores, rows, exclude, mask, request.n)
            return best, {head: top, other: self.scorer.scores(
                user, context, items[other].take(best), other)}

        best, scores = await asyncio.to_thread(ranked)
        ratings = self.scorer.bundle.clip(scores["rating"])
        return RecommendResponse(
            model_id=self.scorer.bundle.model_id, user_cached=False, rank_by=head,
            path="exact", items=[
                Recommendation(movie_id=str(catalog.ids[r]), title=str(catalog.titles[r]),
                               score=float(s), relevance=float(v), rating=float(c),
                               known=True)
                for r, s, v, c in zip(best, scores[head], scores["relevance"], ratings,
                                      strict=True)])


def create_app(settings: Settings | None = None, *, with_store: bool = True) -> FastAPI:
    """The naive app for `settings.bundle`; the store is fmrec's (FMREC_REDIS_URL)."""
    settings = settings or Settings()
    state: dict[str, NaiveService] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        bundle = await asyncio.to_thread(Bundle, settings.bundle)
        folder = Path(tempfile.mkdtemp(prefix="fmrec-naive-"))
        try:
            saved = {h: await asyncio.to_thread(export_score_rows, bundle, folder / h, h)
                     for h in bundle.heads}
            scorer = await asyncio.to_thread(NaiveScorer, bundle, saved)
            store = await asyncio.to_thread(Store.open, settings) if with_store else None
            state["service"] = NaiveService(scorer, store, settings)
            try:
                yield
            finally:
                if store is not None:
                    await store.close()
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    app = FastAPI(title="naive FM", description=__doc__.splitlines()[0], lifespan=lifespan)

    @app.post("/predict", response_model=PredictResponse)
    async def predict(body: PredictRequest) -> PredictResponse:
        return await state["service"].predict(body)

    @app.post("/recommend", response_model=RecommendResponse)
    async def recommend(body: RecommendRequest) -> RecommendResponse:
        return await state["service"].recommend(body)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    async def refused(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, InvalidInput):
            return JSONResponse({"detail": exc.errors()}, status_code=422)
        return JSONResponse({"detail": f"store unavailable: {exc}"}, status_code=503)

    app.add_exception_handler(InvalidInput, refused)
    app.add_exception_handler(StoreUnavailable, refused)
    return app
