"""`fmrec replay`: a MovieLens ratings file fed through POST /ratings, in time order.

The online path end to end, from the outside: train on ua.base, load its users, serve,
then replay ua.test as if its ratings were arriving now. Each event's id is
`<file name>:<n>` (its n-th rating), so a replay that is run again, or a batch that is
sent again after a lost reply, is counted as duplicates rather than twice. A 503 (store
down) or a dropped connection is retried after the server's Retry-After, for at most
`retry_for_s` per batch; any other refusal ends the replay with the server's message.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from model.data import Ratings
from model.data.movielens import _lines, _ratings

RETRIED_STATUS = (502, 503, 504)


class ReplayError(Exception):
    """The replay cannot go on; the message says why, on one line."""


@dataclass
class ReplayReport:
    """Totals of the server's answers, and how long the replay took."""

    events: int = 0
    batches: int = 0
    accepted: int = 0
    duplicates: int = 0
    stale: int = 0
    unknown_movies: set[str] = field(default_factory=set)
    retries: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"events": self.events, "batches": self.batches, "accepted": self.accepted,
                "duplicates": self.duplicates, "stale": self.stale,
                "unknown_movies": len(self.unknown_movies), "retries": self.retries,
                "seconds": round(self.seconds, 3),
                "events_per_s": round(self.events / self.seconds, 1) if self.seconds else None}


def read_ratings(path: Path) -> Ratings:
    """A u.data-format file: user, movie, rating, unix time, tab-separated (Latin-1)."""
    return _ratings(_lines(path, "\t", 4, "latin-1"), path)


def batches(ratings: Ratings, name: str, size: int) -> Iterator[list[dict[str, Any]]]:
    """Event bodies in time order (ties in file order), `size` at a time."""
    order = np.argsort(ratings.timestamp, kind="stable")
    for start in range(0, len(order), size):
        yield [{"event_id": f"{name}:{row + 1}", "user_id": str(ratings.user[row]),
                "movie_id": str(ratings.item[row]), "rating": float(ratings.rating[row]),
                "timestamp": int(ratings.timestamp[row])} for row in order[start:start + size]]


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    return f"HTTP {response.status_code}: {detail}"[:500]


def post_batch(client: httpx.Client, events: list[dict[str, Any]], retry_for_s: float,
               report: ReplayReport) -> dict[str, Any]:
    """POST one batch, retrying what may pass later (store down, connection lost)."""
    deadline = time.monotonic() + retry_for_s
    while True:
        try:
            response = client.post("/ratings", json={"events": events})
        except httpx.TransportError as exc:
            problem, wait = f"{type(exc).__name__}: {exc}", 1.0
        else:
            if response.status_code == 200:
                answer: dict[str, Any] = response.json()
                return answer
            if response.status_code not in RETRIED_STATUS:
                raise ReplayError(f"POST /ratings refused a batch: {_detail(response)}")
            problem = _detail(response)
            retry_after = response.headers.get("Retry-After", "1")
            wait = float(retry_after) if retry_after.isdigit() else 1.0
        if time.monotonic() + wait > deadline:
            raise ReplayError(f"gave up on a batch after {retry_for_s:g}s of retries: {problem}")
        report.retries += 1
        time.sleep(wait)


def replay(client: httpx.Client, ratings: Ratings, name: str, batch_size: int,
           retry_for_s: float) -> ReplayReport:
    """Send every rating of `ratings` through the server `client` points at."""
    try:
        ready = client.get("/readyz")
    except httpx.TransportError as exc:
        raise ReplayError(f"cannot reach the server at {client.base_url}: {exc}") from None
    if ready.status_code != 200:
        raise ReplayError(f"server at {client.base_url} is not ready: {_detail(ready)}")
    report = ReplayReport()
    start = time.perf_counter()
    for events in batches(ratings, name, batch_size):
        answer = post_batch(client, events, retry_for_s, report)
        report.events += len(events)
        report.batches += 1
        report.accepted += answer["accepted"]
        report.duplicates += answer["duplicates"]
        report.stale += answer["stale"]
        report.unknown_movies.update(answer["unknown_movies"])
    report.seconds = time.perf_counter() - start
    return report
