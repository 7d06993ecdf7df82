"""A per-process copy of recently read user records, in front of Redis.

Reading a cached user from Redis costs more server CPU than everything else /predict does
(redis-py, the event loop's socket work): half of it in bench/serve.py. So each worker
keeps the records it read, as Redis's own client-side caching does, and Redis stays the
shared truth:

* every change to a user's data (POST /ratings, `fmrec load-users`) is published on
  `CHANGES` by whoever made it; each worker's listener drops those users (`invalidate`);
* the copy is used only while the listener is subscribed: when the subscription breaks
  (Redis down or restarted) everything is dropped and reads go to Redis again, so no
  change can be missed unnoticed;
* a read that started before a change landed is not stored (`epoch`), so a late reply
  cannot bring back what the change replaced;
* entries also expire after `ttl_s`, for writes made behind fmrec's back (redis-cli).

A change is seen at once by the worker that made it and within the pub/sub delivery time
(about a millisecond on one host) by the others.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING

from app.redis_layout import ALL, StoredRatings
from app.user_sums import Bases, Histories

if TYPE_CHECKING:
    from app.store import UserRecord


# Memory of one entry beyond its arrays and texts (the entry tuple, the record and its
# sums objects, dict and LRU slots), and of one rating of a history; measured with
# tracemalloc in tests/app/test_near_cache.py, rounded up.
ENTRY_BYTES = 1200
PART_BYTES = 250  # one head's BaseSums or HistorySums object beyond its arrays
RATING_BYTES = 340
# a rating as the store reads it (`StoredRatings`: two bytes objects and a dict slot,
# beyond their characters), and the dict itself: under a third of a parsed rating's
# memory, so a worker's default 32 MiB holds ~2,000 ML-100k users instead of ~900
STORED_RATING_BYTES = 100
STORED_DICT_BYTES = 240
TEXT_BYTES = 60  # a str object before its characters


def record_bytes(uid: str, record: UserRecord) -> int:
    """About how much memory a cached record holds (an upper estimate)."""
    size = ENTRY_BYTES + TEXT_BYTES + len(uid)
    size += sum(2 * TEXT_BYTES + len(k) + len(v) for k, v in record.profile.items())
    for parts in (record.base, record.history):  # one per head
        for sums in parts or ():
            size += PART_BYTES + sum(a.nbytes for a in vars(sums).values()
                                     if hasattr(a, "nbytes"))
    ratings = record.ratings
    if isinstance(ratings, StoredRatings):
        size += (STORED_DICT_BYTES + STORED_RATING_BYTES * len(ratings)
                 + ratings.text_bytes())
    elif ratings:
        size += sum(RATING_BYTES + len(movie) for movie in ratings)
    return size


class NearCache:
    """LRU of (model id, user) -> UserRecord with a TTL; usable only while `listening`.

    Bounded by entries (`size`) and by estimated bytes (`max_bytes`, `record_bytes`):
    callers decide how many new users arrive and how long their histories are."""

    def __init__(self, size: int, ttl_s: float, max_bytes: int | None = None) -> None:
        self.size = size
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self.bytes = 0  # estimated, of the entries held
        self.listening = False
        self.epoch = 0  # bumped by every invalidation
        self._entries: OrderedDict[str, tuple[str, float, UserRecord, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, model_id: str, uid: str, with_ratings: bool) -> UserRecord | None:
        """The stored record, if fresh, of this model, and holding the ratings if needed."""
        if not self.listening:
            return None
        entry = self._entries.get(uid)
        if entry is None:
            return None
        owner, expires, record, _ = entry
        if owner != model_id or time.monotonic() > expires or (
                with_ratings and record.ratings is None):
            return None
        self._entries.move_to_end(uid)
        return record

    def put(self, model_id: str, uid: str, record: UserRecord, epoch: int) -> None:
        """Store a record read from Redis when the epoch was `epoch` (else: too old)."""
        if not self.listening or epoch != self.epoch or self.size == 0:
            return
        self._store(uid, (model_id, time.monotonic() + self.ttl_s, record))
        self._entries.move_to_end(uid)
        while len(self._entries) > self.size or (
                self.max_bytes is not None and self.bytes > self.max_bytes):
            self.bytes -= self._entries.popitem(last=False)[1][3]

    def _store(self, uid: str, entry: tuple[str, float, UserRecord]) -> None:
        """Put or replace one entry, keeping `bytes` current."""
        old = self._entries.get(uid)
        if old is not None:
            self.bytes -= old[3]
        size = record_bytes(uid, entry[2])
        self._entries[uid] = (*entry, size)
        self.bytes += size

    def update_sums(self, model_id: str, uid: str, base: Bases | None,
                    history: Histories | None, version: int | None) -> None:
        """Parts just written back to Redis: the stored record gets them too (if it is the
        same model's and still at the history version they were computed from)."""
        entry = self._entries.get(uid)
        if entry is None or entry[0] != model_id:
            return
        owner, expires, record, _ = entry
        if base is not None:
            record = replace(record, base=base)
        if history is not None and (version is None or version == record.version):
            record = replace(record, history=history)
        self._store(uid, (owner, expires, record))

    def invalidate(self, uids: Iterable[str]) -> None:
        """Drop these users (`ALL`: everyone); reads in flight will not be stored."""
        self.epoch += 1
        for uid in uids:
            if uid == ALL:
                self._entries.clear()
                self.bytes = 0
                return
            entry = self._entries.pop(uid, None)
            if entry is not None:
                self.bytes -= entry[3]

    def stop_listening(self) -> None:
        """The subscription broke: changes may be missed from now on, so forget all."""
        self.listening = False
        self.invalidate([ALL])
