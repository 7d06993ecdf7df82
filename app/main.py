"""The FastAPI app: `create_app(settings)` builds it; its lifespan loads, warms and opens.

`fmrec serve` passes its settings object; `uvicorn app.main:create_app --factory` (what
`fmrec serve` runs for more than one worker) calls it with no arguments, so settings come
from the environment.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from threadpoolctl import threadpool_limits

from app.errors import HANDLED, error_response
from app.hot_routes import ROUTES, HotRoutes
from app.metrics import Metrics
from app.openapi import openapi_schema
from app.routes import router
from app.service import Service
from app.settings import Settings
from app.web import router as web_router
from app.web import static_files
from model.bundle import BundleError

log = logging.getLogger("fmrec")


class ObserveRequests:
    """Latency per route (the route's path template, so ids do not explode labels) and
    the request body limit: 413 from Content-Length, or as soon as the bytes received
    pass it (counted whatever the headers say: a header the server parsed differently
    must not open a way around the limit)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self._timers: dict[tuple[str, str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        try:
            length = content_length(scope["headers"])
        except ValueError as exc:
            await self._refuse(scope, receive, send, 400, str(exc), start)
            return
        if length is not None and length > self.max_body_bytes:
            await self._refuse(scope, receive, send, 413,
                               f"request body over {self.max_body_bytes} bytes", start)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body_bytes:
                raise HTTPException(413, f"request body over {self.max_body_bytes} bytes")
            return message

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, limited_receive, send_status)
        finally:
            self._observe(scope, status, start)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, status: int,
                      detail: str, start: float) -> None:
        await JSONResponse({"detail": detail}, status_code=status)(scope, receive, send)
        self._observe(scope, status, start)

    def _observe(self, scope: Scope, status: int, start: float) -> None:
        route = scope.get("route")
        key = (getattr(route, "path", "unmatched"), scope["method"], status)
        timer = self._timers.get(key)
        if timer is None:  # one labelled child per (route, method, status), looked up once
            timer = self._timers[key] = self.metrics.latency.labels(
                route=key[0], method=key[1], status=str(status))
        timer.observe(time.perf_counter() - start)


def content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The declared body size as RFC 9110 8.6 reads it: optional whitespace around the
    value is dropped, repeated fields (or a comma list) must all agree; ValueError for
    anything else (not digits, or differing values)."""
    values = {part.strip(b" \t") for name, value in headers if name == b"content-length"
              for part in value.split(b",")}
    if not values:
        return None
    if len(values) > 1:
        raise ValueError("conflicting Content-Length headers")
    value = values.pop()
    if not value.isdigit():  # bytes.isdigit: ASCII digits only, no sign, not empty
        raise ValueError("invalid Content-Length header: not a decimal number")
    return int(value)


def _errors(request: Request, exc: Exception) -> Response:
    response = error_response(exc, request.app.state.service.metrics)
    if response is None:  # registered for HANDLED only
        raise exc
    return response


def _configure_logging(level: str) -> None:
    """fmrec's own handler: the root logger may already belong to TensorFlow or absl
    (after training in `fmrec demo`), which would swallow INFO lines like the store's."""
    log.setLevel(level.upper())
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.propagate = False


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    _configure_logging(settings.log_level)
    metrics = Metrics()
    service = Service(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # What the imports made (TensorFlow, FastAPI, NumPy: ~360k objects) lives as long
        # as the process: keep it out of the collector's full passes, each of which stalled
        # every request in flight (bench/serve.py's p99; docs/benchmarks.md). Bundles are
        # loaded after this, so a reloaded-away bundle is still collected.
        gc.collect()
        gc.freeze()
        # one BLAS thread (FMREC_BLAS_THREADS): a request's products are small, the spare
        # threads only spun (/recommend's CPU per request: docs/benchmarks.md)
        threadpool_limits(settings.blas_threads, user_api="blas")
        try:
            await service.start()
        except BundleError as exc:
            message = f"cannot serve: {exc}. Train one with `fmrec train` or run `fmrec demo`."
            log.error(message)
            raise RuntimeError(message) from None
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="fmrec", version="0.1.0", lifespan=lifespan,
                  description="Rating prediction and recommendation with Factorization "
                              "Machines over cached user side sums.")
    app.state.service = service
    app.include_router(router)
    app.include_router(web_router)
    app.mount("/web", static_files(), name="web")
    app.openapi = lambda: openapi_schema(app, service)  # type: ignore[method-assign]
    for kind in HANDLED:
        app.add_exception_handler(kind, _errors)
    app.add_middleware(HotRoutes, service=service, routes={
        route.path: route for route in router.routes
        if isinstance(route, APIRoute) and route.path in ROUTES})
    app.add_middleware(ObserveRequests, metrics=metrics,
                       max_body_bytes=settings.max_body_bytes)
    return app

