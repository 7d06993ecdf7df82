"""Helpers of the API tests: the app served over real ASGI HTTP, users in a real Redis,
and the offline references (Bundle.predict, brute-force ranking) answers must match."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import numpy as np
from fastapi import FastAPI

from app.main import create_app
from app.settings import Settings
from app.store import Store, user_records
from model.blocks import user_histories, user_payload, user_stars
from model.bundle import Bundle
from model.data import Dataset

CONTEXT = {"time": 890_000_000, "last_movie": "7"}


def service_settings(**values: Any) -> Settings:
    """Settings for a test app. The Redis timeout is generous: on a busy CI machine the
    event loop can stall past the 0.25 s default, and a timed-out read rightly degrades
    the answer, which would make tests about numbers flaky. Tests of the timeout itself
    set their own. Writes are open without a key (tests/app/test_security.py tests access
    control, with the safe default and with keys)."""
    return Settings(**{"redis_timeout_s": 5.0, "allow_unauthenticated_writes": True,
                       **values})


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The app with its lifespan run (load, warm, open the store), and a client for it."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://fmrec") as client:
            yield app, client


async def copies_dropped(app: FastAPI, within_s: float = 1.0) -> None:
    """Wait until the app's changes listener saw Redis go and dropped its near copies
    (a request in the meantime may still be answered from a copy made before)."""
    near = app.state.service.store.near
    deadline = time.monotonic() + within_s
    while near is not None and near.listening:
        assert time.monotonic() < deadline, "the near cache still trusts a dead Redis"
        await asyncio.sleep(0.01)


async def load_users(settings: Settings, data: Dataset) -> int:
    """What `fmrec load-users` does: profiles and training histories into the store."""
    train = data.train
    store = Store.open(settings)
    try:
        return await store.load_users(user_records(
            data.users, train.user, train.item, train.rating, train.timestamp))
    finally:
        await store.close()


def full_payload(data: Dataset, uid: str) -> dict[str, Any]:
    """The user payload the store holds for `uid`: attributes and every training movie
    with its stars (the feature map's form; `inline_user` is the request's)."""
    rated = user_histories(data.train).get(uid, [])
    return user_payload(uid, data.users.get(uid, {}), rated,
                        user_stars(data.train).get(uid, []))


def inline_user(payload: dict[str, Any]) -> dict[str, Any]:
    """A feature-map user payload as a request's inline user: `rated` as {id, stars}."""
    out = {k: v for k, v in payload.items() if k not in ("rated", "rated_stars")}
    if "rated_stars" in payload:
        out["rated"] = [{"id": m, "stars": s} for m, s in payload["rated_stars"]]
    elif "rated" in payload:
        out["rated"] = payload["rated"]
    return out


def latest_movie(data: Dataset, uid: str, before: float = np.inf) -> str:
    """The user's latest training movie (rated strictly `before` a time, if given)."""
    train = data.train
    mine = np.flatnonzero((train.user == uid) & (train.timestamp < before))
    best = max(mine, key=lambda r: (int(train.timestamp[r]), str(train.item[r])))
    return str(train.item[best])


def head_scores(bundle: Bundle, user: dict[str, Any], context: dict[str, Any],
                head: str) -> np.ndarray:
    """Every catalog movie's unclipped score under one head, through score_pairs."""
    return bundle.scores(user, [{"id": str(m)} for m in bundle.catalog.ids], context, head)


def brute_force(bundle: Bundle, user: dict[str, Any], context: dict[str, Any], n: int,
                exclude: frozenset[str] | set[str] = frozenset(),
                genres: list[str] | None = None, candidates: list[str] | None = None,
                head: str = "relevance") -> list[tuple[str, float]]:
    """Score every (candidate) catalog movie with `head` through score_pairs, then sort
    in Python (/recommend ranks by relevance unless asked otherwise)."""
    catalog = bundle.catalog
    scores = head_scores(bundle, user, context, head)
    wanted = {g.lower() for g in genres or []}
    allowed = set(candidates) if candidates is not None else None
    scored = [
        (row, float(scores[row])) for row in range(len(catalog))
        if str(catalog.ids[row]) not in exclude
        and (allowed is None or str(catalog.ids[row]) in allowed)
        and (not wanted or wanted & {g.lower() for g in catalog.genres[row]})
    ]
    scored.sort(key=lambda rs: (-rs[1], rs[0]))
    return [(str(catalog.ids[row]), score) for row, score in scored[:n]]


def metric(text: str, sample: str) -> float:
    """The value of one sample of a Prometheus page, e.g. 'fmrec_cache_hits_total' or
    'fmrec_model_loaded{model_id="abc"}' (0 if absent)."""
    for line in text.splitlines():
        if line.rsplit(" ", 1)[0] == sample:
            return float(line.rsplit(" ", 1)[1])
    return 0.0
