"""How the app answers the errors it expects: one function for FastAPI's exception
handlers and for the hot routes (`app.hot_routes`), so both refuse alike."""

from __future__ import annotations

import math
from typing import Any

from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from app.batching import QueueFull
from app.metrics import Metrics
from app.schemas import InvalidInput
from model.features import FeatureError

HANDLED = (RequestValidationError, InvalidInput, QueueFull, FeatureError)


def _json_safe(value: Any) -> Any:
    """NaN and infinities as strings, lone surrogates (JSON "\\ud800") escaped: an error
    echoing the bad input must not itself fail."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def error_response(exc: Exception, metrics: Metrics) -> JSONResponse | None:
    """422 for input the model cannot take, 503 + Retry-After when the queue is full;
    None for anything else (a bug: the server's 500)."""
    if isinstance(exc, (InvalidInput, RequestValidationError)):
        detail = _json_safe(jsonable_encoder(exc.errors()))
        return JSONResponse({"detail": detail}, status_code=422)
    if isinstance(exc, QueueFull):
        metrics.queue_full.inc()
        return JSONResponse({"detail": f"overloaded: {exc}; retry shortly"}, status_code=503,
                            headers={"Retry-After": "1"})
    if isinstance(exc, FeatureError):  # the validation error shape, as every 422
        return JSONResponse({"detail": [{"type": "value_error", "loc": ["body"],
                                         "msg": str(exc), "input": None}]}, status_code=422)
    return None
