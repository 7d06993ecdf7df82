"""References for the online-update tests: what the history and the cached sums must be.

`Reference` replays events in plain Python (the rules of POST /ratings, written
the obvious way); `history_from_scratch` recomputes a user's history part from a stored
history, one movie row at a time; `cached_history` reads what Redis holds, and only if
it is the part of the user's current history version (what the service would use).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import redis

from app.redis_layout import Rating, parse_fields, ratings_key, sums_key, version_key
from app.user_sums import Histories, HistorySums
from model.bundle import Bundle
from model.features import FeatureMap


def event(event_id: str, user: str, movie: str, rating: float, timestamp: int
          ) -> dict[str, Any]:
    return {"event_id": event_id, "user_id": user, "movie_id": movie, "rating": rating,
            "timestamp": timestamp}


class Reference:
    """POST /ratings's rules, the obvious way: an event id counts once; per movie the
    newest rating stays (an equal time: the later arrival); an older one is "stale"."""

    def __init__(self, start: Mapping[str, Mapping[str, Rating]]) -> None:
        self.history = {uid: dict(movies) for uid, movies in start.items()}
        self.seen: set[str] = set()
        # users who re-rated a movie with other stars: a model that reads the stars drops
        # their cached history part (the test clears this when a read rebuilds it)
        self.restarred: set[str] = set()

    def apply(self, events: Iterable[dict[str, Any]]) -> dict[str, int]:
        """The counts the response must give for this batch."""
        counts = {"accepted": 0, "duplicates": 0, "stale": 0}
        for e in events:
            if e["event_id"] in self.seen:
                counts["duplicates"] += 1
                continue
            self.seen.add(e["event_id"])
            counts["accepted"] += 1
            mine = self.history.setdefault(e["user_id"], {})
            old = mine.get(e["movie_id"])
            if old is not None and old.timestamp > e["timestamp"]:
                counts["stale"] += 1
            else:
                if old is not None and old.rating != float(e["rating"]):
                    self.restarred.add(e["user_id"])
                mine[e["movie_id"]] = Rating(float(e["rating"]), int(e["timestamp"]))
        return counts


def history_payload(ratings: Mapping[str, Rating]) -> dict[str, Any]:
    """A stored history as the feature map reads it: the movies and their stars."""
    movies = sorted(ratings)
    return {"rated": movies, "rated_stars": [[m, ratings[m].rating] for m in movies]}


def stored_history(client: redis.Redis, uid: str) -> dict[str, Rating]:
    raw = client.hgetall(ratings_key(uid))
    out = {}
    for movie, value in raw.items():
        rating, _, stamp = value.decode().partition(":")
        out[movie.decode()] = Rating(float(rating), int(stamp))
    return out


def history_from_scratch(bundle: Bundle, ratings: Mapping[str, Rating]) -> Histories:
    """Per head: [C, B, A], n and the latest movie over the whole history, one row per
    movie: the movie, and its stars where the head reads them."""
    movies = sorted(ratings)
    last = max(ratings, key=lambda m: (ratings[m].timestamp, m)) if movies else None
    out = []
    for head in bundle.heads.values():
        history_only = FeatureMap(head.fmap.spec.only(  # no size token
            ["user.rated", "user.rated_stars"]))
        rows = head.side_sums(history_only.encode("user", [
            {"rated": [m], "rated_stars": [[m, ratings[m].rating]]} for m in movies]))
        C = float(np.sum(rows.L, dtype=np.float64))
        B = float(np.sum(rows.q, dtype=np.float64))
        A = np.sum(rows.s.astype(np.float64), axis=0) if movies else np.zeros(head.k)
        out.append(HistorySums(C, A, B, len(movies), last,
                               ratings[last].timestamp if last else 0))
    return tuple(out)


def cached_history(client: redis.Redis, model_id: str, uid: str, widths: Sequence[int]
                   ) -> Histories | None:
    """The cached history parts, if they are there and belong to the current history."""
    fields = client.hgetall(sums_key(model_id, uid))
    version = client.get(version_key(uid)) or b"0"
    _, history = parse_fields(fields, widths)
    if history is None or fields.get(b"ver", b"0") != version:
        return None
    return history


def assert_same_history(got: Histories, want: Histories) -> None:
    """Every head's part equal (to float64 rounding of the order of additions)."""
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert (g.n, g.last_movie, g.last_time) == (w.n, w.last_movie, w.last_time)
        np.testing.assert_allclose([g.C, g.B], [w.C, w.B], rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(g.A, w.A, rtol=1e-9, atol=1e-9)
