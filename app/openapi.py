"""The OpenAPI description the service publishes, made true for this service as configured.

FastAPI derives request and 200 bodies from the routes; what it cannot know is added here,
so generated clients (and schemathesis, tests/app/test_fuzz.py) see what really happens:

* every refusal a route can give (400/401/403/409/413/422/503), each with its body: 422
  is FastAPI's validation error model (every 422 of the service has that shape, reload
  failures included); the others are `{"detail": "..."}`;
* the limits this service was configured with (FMREC_MAX_*), and the rating range and
  genre names of the model being served, so a request the schema allows is not refused;
* who needs a key: writes always, reads only with FMREC_PROTECT_READS;
* /metrics is Prometheus text, not JSON.

Built on each call (rarely called): a reload changes the model's part.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.service import Service

READS = {"/predict", "/recommend", "/explain", "/catalog", "/model", "/metrics"}
WRITES = {"/ratings", "/admin/reload"}
SCORING = {"/predict", "/recommend", "/explain", "/catalog", "/ratings"}
MESSAGE = {"$ref": "#/components/schemas/Message"}
VALIDATION = {"$ref": "#/components/schemas/HTTPValidationError"}


def _refusal(description: str, schema: dict[str, Any] = MESSAGE) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _caseless(name: str) -> str:
    """A regex matching `name` in any case (genres match so; JSON Schema has no flag)."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in name)


def openapi_schema(app: FastAPI, service: Service) -> dict[str, Any]:
    """FastAPI's schema of `app`, completed with what the service refuses and why."""
    settings = service.settings
    schema = copy.deepcopy(get_openapi(title=app.title, version=app.version,
                                       description=app.description, routes=app.routes))
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Message"] = {"type": "object", "title": "Message", "required": ["detail"],
                             "properties": {"detail": {"type": "string"}}}
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            keyed = path in WRITES or (path in READS and settings.protect_reads)
            if keyed:
                responses["401"] = _refusal("no X-API-Key header sent")
                responses["403"] = _refusal("wrong API key, or no keys configured")
            elif path in READS:  # the header is accepted and ignored
                operation["security"] = [{}, {"ApiKey": []}]
            if method == "post":
                responses["400"] = _refusal("a body that is not JSON, or a malformed "
                                            "Content-Length header")
                responses["413"] = _refusal(f"request body over {settings.max_body_bytes} "
                                            "bytes (FMREC_MAX_BODY_BYTES)")
                responses["422"] = _refusal(
                    "the body breaks the schema, or (the same shape) a check needing the "
                    "model: see the fields' descriptions", VALIDATION)
            if path in SCORING:
                responses["503"] = _refusal(
                    "model or store not ready, queue full (FMREC_MAX_QUEUE), or (/ratings) "
                    "the store unavailable: outcome unknown, retry with the same event ids; "
                    "with Retry-After")
    paths = schema["paths"]
    paths["/admin/reload"]["post"]["responses"]["409"] = _refusal("a reload is in progress")
    paths["/admin/reload"]["post"]["responses"]["422"] = _refusal(
        "the body breaks the schema, or the bundle was refused (detail[0].loc is "
        "[body, bundle]; model_id: the model still served)", VALIDATION)
    paths["/readyz"]["get"]["responses"]["503"] = {
        "description": "not ready yet (same body)",
        "content": copy.deepcopy(paths["/readyz"]["get"]["responses"]["200"]["content"])}
    paths["/metrics"]["get"]["responses"]["200"] = {
        "description": "Prometheus text exposition format",
        "content": {"text/plain": {"schema": {"type": "string"}}}}
    _limits(components, service)
    return schema


def _limits(components: dict[str, Any], service: Service) -> None:
    """The configured limits, and the served model's rating range and genres."""
    settings = service.settings
    props = {name: components[name]["properties"] for name in (
        "PredictRequest", "RecommendRequest", "UserIn", "RatingsRequest", "RatingEvent")}
    props["PredictRequest"]["movies"]["maxItems"] = settings.max_movies
    props["RecommendRequest"]["n"]["maximum"] = settings.max_n
    _nullable_array(props["RecommendRequest"]["candidates"])["maxItems"] = settings.max_movies
    props["RecommendRequest"]["candidates"]["description"] = (
        "catalog movie ids (GET /model lists the catalog size); an id outside the catalog "
        "is a 422 naming it")
    _nullable_array(props["UserIn"]["rated"])["maxItems"] = settings.max_history
    props["RatingsRequest"]["events"]["maxItems"] = settings.max_events
    scorer = service.scorer
    if scorer is None:
        return
    low, high = scorer.bundle.rating_range
    props["RatingEvent"]["rating"].update(minimum=low, maximum=high)
    components["RatedMovie"]["properties"]["stars"].update(minimum=low, maximum=high)
    genres = "|".join(_caseless(g) for g in scorer.bundle.catalog.genre_names)
    _nullable_array(props["RecommendRequest"]["genres"])["items"]["pattern"] = (
        rf"^\s*({genres})\s*$")


def _nullable_array(prop: dict[str, Any]) -> dict[str, Any]:
    """The array branch of an `anyOf: [array, null]` property."""
    return next(branch for branch in prop["anyOf"] if branch.get("type") == "array")
