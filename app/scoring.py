"""The one scoring entry both doors call: /predict and /recommend, whoever routes them.

`app.hot_routes` (plain ASGI, the fast path) and `app.routes` (FastAPI, every refusal and
the API's documentation) differ only in how they parse and refuse; what a scoring
request must pass (readiness, the limits) and the scorer call are here, and the read-key
rule is `app.security.may_read` for both, so a check added for one door cannot skip the
other.

Answers are JSON bytes serialised by orjson from the dicts the scorer builds: validating
them into the response models first, to let pydantic serialise them, cost a cached
/recommend 18 us of its ~300 (docs/benchmarks.md). The models still document the
answers (OpenAPI), and tests validate real answers against them.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from fastapi import HTTPException

from app.schemas import PredictRequest, RecommendRequest, check_limits
from app.scorer import Scorer
from app.service import Service
from app.settings import Settings
from app.store import Store


@dataclass(frozen=True)
class Scoring:
    """What a scoring request needs: the scorer serving now (the request keeps it even if
    a reload swaps it), the store and the settings."""

    scorer: Scorer
    store: Store
    settings: Settings


def serving(service: Service) -> Scoring:
    """The scorer and store serving now; 503 while either is not there yet."""
    scorer, store = service.scorer, service.store
    if scorer is None:
        raise HTTPException(503, "model not loaded yet", headers={"Retry-After": "1"})
    if store is None:
        raise HTTPException(503, "store not open yet", headers={"Retry-After": "1"})
    return Scoring(scorer, store, service.settings)


async def score(scoring: Scoring, body: PredictRequest | RecommendRequest) -> bytes:
    """The JSON answer to a validated /predict or /recommend body (limits checked here)."""
    check_limits(body, scoring.settings)
    if isinstance(body, PredictRequest):
        answer = await scoring.scorer.predict(body, scoring.store)
    else:
        answer = await scoring.scorer.recommend(body, scoring.store)
    return orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
