"""The ceiling of fmrec's hot routes: the same request parsing on plain ASGI, no model.

`fmrec serve` answers plain /predict and /recommend requests before FastAPI
(app/hot_routes.py): pydantic validates the raw bytes and the answer goes straight to
uvicorn. This app does that much and answers a constant, so bench/serve.py can say how
much of the remaining cost is fmrec's own work. (bench/bare_app.py, the FastAPI
endpoint, stays the peer the issue's targets are measured against.)

    uvicorn bench.bare_asgi:app --port 8002 --no-access-log
"""

from __future__ import annotations

import json

from pydantic import ValidationError
from starlette.types import Receive, Scope, Send

from app.schemas import PredictRequest, RecommendRequest
from bench.bare_app import PREDICTED, RECOMMENDED

MODELS = {"/predict": (PredictRequest, json.dumps(PREDICTED).encode()),
          "/recommend": (RecommendRequest, json.dumps(RECOMMENDED).encode())}


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await receive()  # startup
        await send({"type": "lifespan.startup.complete"})
        await receive()  # shutdown
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["path"] == "/healthz":
        status, answer = 200, b'{"status":"ok"}'
    elif scope["path"] in MODELS and scope["method"] == "POST":
        model, answer = MODELS[scope["path"]]
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        try:
            model.model_validate_json(b"".join(chunks))
            status = 200
        except ValidationError:
            status, answer = 422, b'{"detail":"invalid body"}'
    else:
        status, answer = 404, b'{"detail":"Not Found"}'
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]})
    await send({"type": "http.response.body", "body": answer})
