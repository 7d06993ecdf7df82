"""POST /ratings: rating events become stored history and current cached user sums.

A batch is checked first (size, rating range), because Redis does not roll back a
script that fails midway; then ONE side_sums call gives each event's movie the row
(w_j, |v_j|^2, v_j) of the single feature "user.rated=<movie>", and ONE Lua script
(`APPLY_EVENTS`) applies the whole batch atomically. For each event, in order:

* claim the user's event key (`redis_layout.claim_key`; SET NX, kept `CLAIM_TTL_S`; in
  the user's slot, so an event id is unique per user): taken -> a duplicate, skipped;
* if the user's stored rating of that movie is newer -> "stale": it stays as it is;
* else store the rating, bump the user's history version, and if this model's sums hash
  holds the history part of the version before (i.e. it is current), update it in O(k):
  a movie new to the history adds its row to [C, B, A] and 1 to n; the movie becomes
  `last` if it is the latest by (timestamp, movie id), as `scorer.latest` orders them;
* under a model that reads the user's stars, a movie re-rated with other stars changes
  its row by a term quadratic in the stars: the script drops the history part instead,
  and the next read recomputes it once from the stored history.

A history part that is absent or stale is left alone: the next read recomputes it from
the stored history, and `Store.write_sums` refuses that write-back if an event landed
in between. So concurrent writers and readers never lose an update, and the history
(the primary record) is a function of the events alone, whatever order they come in
(but for two ratings of one movie in the same second: the later arrival stays).
On one Redis the script takes the whole batch; on a Redis Cluster one script per slot's
events (its users' keys share that slot), run side by side: each is atomic, a batch is
not (a master down: 503, and the retry finds the applied part duplicates). Only the user side
follows the events; a movie's side sums (its raters included) stay as the bundle has them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from app import cluster
from app.metrics import Metrics
from app.redis_layout import (
    APPLY_EVENTS,
    CLAIM_TTL_S,
    claim_key,
    rating_value,
    ratings_key,
    sums_key,
    user_tag,
    version_key,
)
from app.schemas import InvalidInput, RatingEvent
from app.store import Store, StoreUnavailable
from model.bundle import Bundle


@dataclass(frozen=True)
class Applied:
    """What a batch did (see RatingsResponse)."""

    accepted: int
    duplicates: int
    stale: int
    unknown_movies: list[str]


def check_events(events: Sequence[RatingEvent], bundle: Bundle, max_events: int) -> None:
    """Everything that could make a batch fail, before anything is written."""
    if len(events) > max_events:
        raise InvalidInput(("events",), f"at most {max_events} events per request",
                           len(events))
    low, high = bundle.rating_range
    for n, event in enumerate(events):
        if not low <= event.rating <= high:
            raise InvalidInput(("events", n, "rating"), f"rating must be within the model's "
                               f"rating range [{low:g}, {high:g}]", event.rating)


def history_rows(bundle: Bundle, movies: Sequence[str], stars: Sequence[float]
                 ) -> list[bytes]:
    """Per movie, what it adds to a history part [C, B, A...] of every head (one
    side_sums call per head): the side sums (L, q, s) of `Head.history_rows` (the movie,
    and its stars where the head reads them), heads side by side, packed like `hist`."""
    columns = []
    for head in bundle.heads.values():
        sums = head.side_sums(head.history_rows(movies, stars))
        columns += [sums.L[:, None], sums.q[:, None], sums.s]
    packed = np.concatenate(columns, axis=1).astype("<f8")
    return [row.tobytes() for row in packed]


def script_args(events: Sequence[RatingEvent], rows: Sequence[bytes], model_id: str,
                sums_ttl_s: int, starred: bool) -> tuple[list[str], list[str | int | bytes]]:
    """KEYS and ARGV of `APPLY_EVENTS` for these events and their history rows;
    `starred`: the model reads the user's stars (`reads_stars`)."""
    keys: list[str] = []
    args: list[str | int | bytes] = [sums_ttl_s, CLAIM_TTL_S, int(starred)]
    for event, row in zip(events, rows, strict=True):
        uid = event.user_id
        keys += [claim_key(uid, event.event_id), ratings_key(uid), version_key(uid),
                 sums_key(model_id, uid)]
        args += [event.movie_id, rating_value(event.rating, event.timestamp), event.timestamp,
                 row]
    return keys, args


def reads_stars(bundle: Bundle) -> bool:
    """Whether a head of `bundle` reads the user's stars (a re-rating changes its row)."""
    return any(head.reads_stars for head in bundle.heads.values())


def slot_groups(events: Sequence[RatingEvent], by_slot: bool) -> list[list[int]]:
    """Positions of the events one script applies: all of them, or (`by_slot`, a
    cluster) one group per cluster slot of the users, in the batch's order."""
    if not by_slot:
        return [list(range(len(events)))] if events else []
    groups: dict[int, list[int]] = {}
    for n, event in enumerate(events):
        groups.setdefault(cluster.slot(user_tag(event.user_id)), []).append(n)
    return list(groups.values())


async def apply_events(events: Sequence[RatingEvent], bundle: Bundle, store: Store) -> Applied:
    """Store a checked batch and update `bundle`'s cached sums: all of it or nothing.

    Raises StoreUnavailable when Redis cannot run the script (then nothing is written,
    or, if only the reply was lost, a retry finds every event a duplicate).
    """
    rows = await asyncio.to_thread(history_rows, bundle, [e.movie_id for e in events],
                                   [e.rating for e in events])
    try:
        counts = await asyncio.gather(*(
            store.run_script(APPLY_EVENTS, *script_args(
                [events[i] for i in group], [rows[i] for i in group], bundle.model_id,
                store.ttl_s, reads_stars(bundle)))
            for group in slot_groups(events, store.cluster)), return_exceptions=True)
    finally:  # also when only the reply was lost: the script may have run
        await store.changed(sorted({e.user_id for e in events}))
    totals = [0, 0, 0]
    for count in counts:
        if isinstance(count, BaseException):
            raise count
        totals = [t + int(c) for t, c in zip(totals, count, strict=True)]
    accepted, duplicates, stale = totals
    catalog = bundle.catalog
    unknown = [m for m in dict.fromkeys(e.movie_id for e in events) if catalog.row(m) is None]
    return Applied(int(accepted), int(duplicates), int(stale), unknown)


async def record_ratings(events: Sequence[RatingEvent], bundle: Bundle, store: Store,
                         max_events: int, metrics: Metrics) -> Applied:
    """Check, apply and count one POST /ratings batch."""
    try:
        check_events(events, bundle, max_events)
        applied = await apply_events(events, bundle, store)
    except (InvalidInput, StoreUnavailable):
        metrics.rating_events.labels(outcome="refused").inc(len(events))
        raise
    metrics.rating_events.labels(outcome="accepted").inc(applied.accepted)
    metrics.rating_events.labels(outcome="duplicate").inc(applied.duplicates)
    return applied
