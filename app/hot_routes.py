"""POST /predict and /recommend answered on plain ASGI, in front of FastAPI.

Why: they are the service's hot path, and FastAPI's per-request machinery (routing,
dependency solving, its own middleware layers, JSON parsed to dicts and then validated)
cost as much CPU per request as all of fmrec's scoring (docs/benchmarks.md,
"Figures behind code comments").
Here the same pydantic models validate the raw bytes (pydantic-core parses the JSON
itself), the same scorer answers, and the same error handler shapes its refusals.

Only the plain case is taken: a JSON body that validates, from a caller allowed to read,
to a service that is serving. Anything else (bad JSON, a schema error, a missing key, a
model still loading) goes on to the FastAPI routes of the same paths with the body
already read, so every refusal is FastAPI's own, word for word; those routes also
document the API (OpenAPI, /docs).
"""

from __future__ import annotations

from typing import Any

from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import error_response
from app.schemas import PredictRequest, RecommendRequest
from app.scoring import Scoring, score, serving
from app.security import API_KEY_HEADER, may_read
from app.service import Service

ROUTES: dict[str, type[PredictRequest | RecommendRequest]] = {
    "/predict": PredictRequest, "/recommend": RecommendRequest}
KEY_HEADER = API_KEY_HEADER.lower().encode("latin-1")
JSON_HEADERS = [(b"content-type", b"application/json")]


class HotRoutes:
    """ASGI middleware: the plain case of the scoring routes, everything else to `app`."""

    def __init__(self, app: ASGIApp, service: Service, routes: dict[str, APIRoute]) -> None:
        self.app = app
        self.service = service
        self.routes = routes  # path -> FastAPI's route (ObserveRequests labels by it)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = ROUTES.get(scope["path"]) if scope["type"] == "http" else None
        if route is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        scope["route"] = self.routes.get(scope["path"])  # FastAPI sets it again if it answers
        try:
            body = await _read_body(receive)
        except HTTPException as exc:  # over the body limit (main.ObserveRequests)
            response = JSONResponse({"detail": exc.detail}, exc.status_code)
            await response(scope, receive, send)
            return
        if body is None:  # the client left before sending it all: nobody to answer
            return
        plain = self._plain(scope, body, route)
        if plain is None:
            await self.app(scope, _replay(body, receive), send)
            return
        scoring, request = plain
        try:
            answer = await score(scoring, request)
        except Exception as exc:  # the app's handler decides, as in FastAPI
            refusal = error_response(exc, self.service.metrics)
            if refusal is None:
                raise
            await refusal(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": [
            *JSON_HEADERS, (b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})

    def _plain(self, scope: Scope, body: bytes, model: type[BaseModel]
               ) -> tuple[Scoring, Any] | None:
        """What serves it and the validated body, or None when FastAPI's route should
        answer instead."""
        service = self.service
        try:
            scoring = serving(service)
        except HTTPException:  # FastAPI's route answers the 503
            return None
        content_type = key = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value
            elif name == KEY_HEADER:
                key = value.decode("latin-1")
        if content_type is None or not _is_json(content_type) or not body:
            return None
        if not may_read(scoring.settings, key):
            return None
        try:
            return scoring, model.model_validate_json(body)
        except ValidationError:
            return None


def _is_json(content_type: bytes) -> bool:
    """application/json, parameters allowed (`; charset=utf-8`); other JSON types such as
    `application/vnd.x+json` are left to FastAPI, which takes them too."""
    return content_type.split(b";", 1)[0].strip().lower() == b"application/json"


async def _read_body(receive: Receive) -> bytes | None:
    """The whole body, or None if the client disconnected first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """`receive` as if the body had not been read yet: the body once, then the real one
    (which reports the disconnect when it comes)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
