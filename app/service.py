"""What the routes share: the scorer being served, the store, and hot reload.

Each request takes `service.scorer` once and keeps that reference to the end, so a
reload (load + warm the new bundle beside the old one, then one assignment) never
changes the model under a request in flight; the old scorer and its bundle are freed
when the last such request is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.metrics import Metrics
from app.scorer import Scorer
from app.settings import Settings
from app.store import Store
from model.bundle import Bundle, BundleError
from model.features import size_hash_cache

log = logging.getLogger("fmrec")


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL("libc.so.6").malloc_trim
        return trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


MALLOC_TRIM = _malloc_trim()


def return_freed_memory() -> None:
    """After a swap, free the replaced bundle now and give its memory back to the system.

    A SavedModel's objects sit in reference cycles, freed only by a full collection, which
    a quiet server may not run for a long time; and glibc keeps freed pages in its arenas
    (each load runs in a new thread) unless trimmed. Without both, RSS grew by about a
    bundle per reload until a full collection came (docs/benchmarks.md).
    Requests still in flight keep the old scorer; it goes with the next collection."""
    gc.collect()
    if MALLOC_TRIM is not None:
        MALLOC_TRIM(0)


class ReloadBusy(Exception):
    """A reload is already running."""


class ReloadFailed(Exception):
    """The new bundle could not be loaded or warmed; the old one keeps serving."""


@dataclass
class Loaded:
    scorer: Scorer
    path: Path
    loaded_at: float
    load_seconds: float


class Service:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        size_hash_cache(settings.hash_cache_bytes)
        self.current: Loaded | None = None
        self.store: Store | None = None
        self.last_reload_error: dict[str, Any] | None = None
        self._reloading = asyncio.Lock()

    @property
    def scorer(self) -> Scorer | None:
        return self.current.scorer if self.current is not None else None

    def load(self, path: Path) -> Loaded:
        """Load, check and warm a bundle (blocking: run it in a thread)."""
        start = time.perf_counter()
        bundle = Bundle(path, self.settings.engine)
        bundle.warm_up()
        scorer = Scorer(bundle, self.settings, self.metrics)
        return Loaded(scorer, path, time.time(), time.perf_counter() - start)

    async def load_in_time(self, path: Path) -> Loaded:
        """`load` in a thread of its own, given up after FMREC_RELOAD_TIMEOUT_S (BundleError).

        A thread cannot be stopped: a load stuck in a read stays blocked, but in its own
        daemon thread, so it holds neither the reload lock nor a worker of the pool that
        `asyncio.to_thread` shares with the scoring code."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Loaded] = loop.create_future()

        def deliver(outcome: Callable[[], None]) -> None:
            def settle() -> None:
                if not done.done():  # else given up already
                    outcome()
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(settle)

        def run() -> None:
            try:
                loaded = self.load(path)
            except BaseException as exc:  # handed to the waiting coroutine
                error = exc
                deliver(lambda: done.set_exception(error))
            else:
                deliver(lambda: done.set_result(loaded))

        threading.Thread(target=run, name=f"fmrec-load-{path.name}", daemon=True).start()
        timeout = self.settings.reload_timeout_s
        try:
            return await asyncio.wait_for(done, timeout)
        except TimeoutError:
            raise BundleError(f"bundle {path}: loading took over {timeout:g} s "
                              "(FMREC_RELOAD_TIMEOUT_S), given up") from None

    async def start(self) -> None:
        loaded = await self.load_in_time(self.settings.bundle)
        self.current = loaded
        self.metrics.serving(loaded.scorer.model_id)
        log.info("serving model %s from %s (loaded and warmed in %.2fs)",
                 loaded.scorer.model_id, loaded.path, loaded.load_seconds)
        self.store = await asyncio.to_thread(
            Store.open, self.settings, lambda exc: self.metrics.redis_errors.inc())
        await self.store.start_listening(wait_s=self.settings.redis_timeout_s)
        kind = "embedded default: set FMREC_REDIS_URL for a real Redis" if (
            self.store.embedded) else "FMREC_REDIS_URL"
        log.info("store: %s (%s)", self.store.description, kind)

    async def stop(self) -> None:
        if self.store is not None:
            await self.store.close()
            self.store = None

    async def reload(self, path: Path | None) -> dict[str, Any]:
        """Swap in the bundle at `path` (default: the configured one) once it is warm."""
        if self._reloading.locked():
            raise ReloadBusy("a reload is already in progress")
        target = path if path is not None else self.settings.bundle
        async with self._reloading:
            old_id = self.current.scorer.model_id if self.current else None
            try:
                loaded = await self.load_in_time(target)
            except Exception as exc:
                message = str(exc) if isinstance(exc, BundleError) else (
                    f"bundle {target}: {type(exc).__name__}: {exc}")
                self.last_reload_error = {"bundle": str(target), "error": message,
                                          "at": time.time()}
                self.metrics.reloads.labels(outcome="failed").inc()
                self.metrics.reload_failing.set(1)
                log.error("reload of %s failed, still serving %s: %s", target, old_id,
                          message)
                raise ReloadFailed(message) from exc
            self.current = loaded  # the swap: requests from here on use the new scorer
            await asyncio.to_thread(return_freed_memory)
            self.last_reload_error = None
            self.metrics.reloads.labels(outcome="ok").inc()
            self.metrics.reload_failing.set(0)
            self.metrics.serving(loaded.scorer.model_id, old_id)
            log.info("reloaded: serving %s from %s (was %s)", loaded.scorer.model_id, target,
                     old_id)
            return {"model_id": loaded.scorer.model_id, "previous_model_id": old_id,
                    "bundle": str(target), "load_seconds": round(loaded.load_seconds, 3)}

    def model_info(self) -> dict[str, Any]:
        """GET /model: what is served, how good it was on its test split, reload state."""
        info: dict[str, Any] = {"last_reload_error": self.last_reload_error}
        if self.current is None:
            return {"model_id": None, **info}
        bundle = self.current.scorer.bundle
        return {
            "model_id": bundle.model_id, "bundle": str(self.current.path),
            "loaded_at": self.current.loaded_at, "k": bundle.k, "engine": bundle.engine.name,
            "rating_range": list(bundle.rating_range), "movies": len(bundle.catalog),
            "genres": bundle.catalog.genre_names,
            "features": [f.key for f in bundle.spec.fields], "hash_bits": bundle.spec.hash_bits,
            "metrics": {k: v for k, v in bundle.metrics.items() if k != "history"},
            **info,
        }
