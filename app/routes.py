"""Thin HTTP handlers: validate, hand to the scorer or the service, shape the answer."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Request, Response
from fastapi.responses import JSONResponse

from app.explain import ExplainResponse, explain_request
from app.online import record_ratings
from app.schemas import (
    ExplainRequest,
    PredictRequest,
    PredictResponse,
    RatingsRequest,
    RatingsResponse,
    RecommendRequest,
    RecommendResponse,
    ReloadRequest,
    check_limits,
)
from app.scoring import Scoring, score, serving
from app.security import KeyHeader, require_read_key, require_write_key
from app.service import ReloadBusy, ReloadFailed, Service
from app.store import StoreUnavailable


# Dependencies are `async def` although they never wait: FastAPI runs a plain `def`
# dependency in a worker thread, one thread hop per dependency per request (a large share
# of /predict's CPU time: docs/benchmarks.md). Each dependency still costs CPU, so the
# scoring routes take everything from one (`Scoring`).
async def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]


async def get_scoring(request: Request, key: KeyHeader) -> Scoring:
    """Read endpoints need a key only with FMREC_PROTECT_READS=true (`scoring.may_read`)."""
    await require_read_key(request, key)
    service: Service = request.app.state.service
    return serving(service)


async def get_writing(service: ServiceDep) -> Scoring:
    """For /ratings, whose key check is its own dependency (`require_write_key`)."""
    return serving(service)


ScoringDep = Annotated[Scoring, Depends(get_scoring)]
WritingDep = Annotated[Scoring, Depends(get_writing)]

router = APIRouter()
read_key = [Depends(require_read_key)]


def _json(answer: bytes) -> Response:
    """The answer as `app.scoring.score` serialised it (response_model documents it)."""
    return Response(answer, media_type="application/json")


# /predict and /recommend: app.hot_routes answers the plain case before FastAPI; these
# routes answer the rest (every refusal) and document both
@router.post("/predict", response_model=PredictResponse)
async def predict(body: PredictRequest, scoring: ScoringDep) -> Response:
    """Predicted ratings of one user for one or many movies, clipped to the rating range."""
    return _json(await score(scoring, body))


@router.post("/recommend", response_model=RecommendResponse)
async def recommend(body: RecommendRequest, scoring: ScoringDep) -> Response:
    """The user's top-n catalog movies (or candidates), best first."""
    return _json(await score(scoring, body))


@router.post("/explain", response_model=ExplainResponse)
async def explain(body: ExplainRequest, scoring: ScoringDep) -> Response:
    """Why /predict gives this score: /predict's body with exactly one movie; the unclipped
    score, the bias, and every feature's exact contribution, by field (they add up)."""
    check_limits(body, scoring.settings)
    answer = await explain_request(scoring.scorer, body, scoring.store)
    return Response(answer.model_dump_json(), media_type="application/json")


@router.post("/ratings", response_model=RatingsResponse,
             dependencies=[Depends(require_write_key)])
async def ratings(body: RatingsRequest, writing: WritingDep) -> RatingsResponse:
    """Store rating events, all or none (idempotent by event_id), and keep the users'
    cached sums current. With the store down or stalled, 503: whether the batch landed is
    unknown (a reply may be lost after the script ran), and resending it is safe."""
    scorer, settings = writing.scorer, writing.settings
    try:
        applied = await record_ratings(body.events, scorer.bundle, writing.store,
                                       settings.max_events, scorer.metrics)
    except StoreUnavailable as exc:
        raise HTTPException(503, f"outcome unknown: the store is unavailable ({exc}); "
                            "retry with the same event ids (events already stored come back "
                            "as duplicates)", headers={"Retry-After": str(max(
                                1, math.ceil(settings.redis_retry_s)))}) from None
    return RatingsResponse(model_id=scorer.model_id, accepted=applied.accepted,
                           duplicates=applied.duplicates, stale=applied.stale,
                           unknown_movies=applied.unknown_movies)


@router.get("/model", dependencies=read_key)
async def model(service: ServiceDep) -> dict[str, Any]:
    """Bundle metadata and test metrics of the model being served, and reload state."""
    return service.model_info()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive (says nothing about the model: see /readyz)."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(service: ServiceDep) -> JSONResponse:
    """200 once a warmed model is served; "store" says whether Redis answers."""
    scorer = service.scorer
    store = service.store
    store_ok = store is not None and await store.ping()
    body = {
        "ready": scorer is not None,
        "model_id": scorer.model_id if scorer is not None else None,
        "store": "ok" if store_ok else "degraded",
        "store_backend": store.description if store is not None else None,
        "store_embedded": store.embedded if store is not None else None,
    }
    return JSONResponse(body, status_code=200 if scorer is not None else 503)


@router.get("/metrics", dependencies=read_key)
async def metrics(service: ServiceDep) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.post("/admin/reload", dependencies=[Depends(require_write_key)])
async def reload(service: ServiceDep,
                 body: Annotated[ReloadRequest | None, Body()] = None) -> JSONResponse:
    """Load and warm a bundle beside the current one, then swap; on failure keep serving."""
    path = Path(body.bundle) if body is not None and body.bundle else None
    try:
        return JSONResponse(await service.reload(path))
    except ReloadBusy as exc:
        return JSONResponse({"detail": str(exc)}, status_code=409)
    except ReloadFailed as exc:  # FastAPI's 422 shape, as every 422 of the service
        error = {"type": "bundle_error", "loc": ["body", "bundle"], "msg": str(exc),
                 "input": str(path or service.settings.bundle)}
        return JSONResponse({"detail": [error], "model_id": service.scorer.model_id
                             if service.scorer else None}, status_code=422)


