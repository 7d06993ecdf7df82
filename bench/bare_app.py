"""The ceiling of the web stack: fmrec's request parsing with no model behind it.

The same FastAPI, uvicorn and pydantic request models as `fmrec serve` (`PredictRequest`,
`RecommendRequest`, so the same validation work per request), answering a constant. A
benchmark reports fmrec's throughput as a fraction of this endpoint's, measured in the
same run on the same machine, so the fraction means something on a noisy host.

    uvicorn bench.bare_app:app --port 8001 --no-access-log
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from app.schemas import PredictRequest, RecommendRequest

PREDICTED = {"model_id": "bare", "predictions": [{"movie_id": "1", "rating": 3.5}],
             "user_cached": True}
RECOMMENDED = {"model_id": "bare", "items": [
    {"movie_id": "1", "title": "Toy Story (1995)", "score": 4.2, "rating": 4.2}],
    "user_cached": True}

app = FastAPI(title="bare", description=__doc__.splitlines()[0])


@app.post("/predict")
async def predict(body: PredictRequest) -> dict[str, Any]:
    return PREDICTED


@app.post("/recommend")
async def recommend(body: RecommendRequest) -> dict[str, Any]:
    return RECOMMENDED


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
