"""Micro-batching: concurrent requests share one model call, like TF Serving's batcher.

Every TensorFlow signature call costs a fixed overhead however many rows it gets, so
gathering the requests that arrive while a call runs and sending them as one batch pays
that cost once per batch. By default nothing waits: a batch is whatever is queued when
the previous call ends (no latency added at low load); `max_wait_s` may hold a batch
open to fill it. The queue is bounded: a full queue is refused at once (`QueueFull`,
answered 503 + Retry-After) rather than letting latency grow without limit.

The batch function runs in a worker thread, so the event loop keeps accepting requests
while the model works; or, with `inline`, on the event loop itself, for batch functions
so quick (NumPy on a small catalog) that the thread hand-off would cost more. The worker
task exists only while there is work: a batcher that is replaced (hot reload) is simply
dropped once its last request is answered.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class QueueFull(Exception):
    """More requests are waiting than the queue holds."""


@dataclass
class _Waiting(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    since: float = field(default_factory=time.perf_counter)


class MicroBatcher(Generic[T, R]):
    """Runs `run_batch(items) -> results` (same order; an Exception fails one item)."""

    def __init__(self, run_batch: Callable[[list[T]], list[R | Exception]], *,
                 max_batch_size: int = 64, max_wait_s: float = 0.0, max_queue: int = 1024,
                 enabled: bool = True, inline: bool = False,
                 observe: Callable[[int, list[float]], None] | None = None) -> None:
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.enabled = enabled
        self.inline = inline
        self._observe = observe  # (batch size, queue seconds of each item)
        self._queue: deque[_Waiting[T, R]] = deque()
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def submit(self, item: T) -> R:
        """The result for `item`, computed in some batch; raises QueueFull when full."""
        if not self.enabled:
            self._note(1, [0.0])
            return self._unwrap((await self._run([item]))[0])
        if len(self._queue) >= self.max_queue:
            raise QueueFull(f"{len(self._queue)} requests queued")
        waiting: _Waiting[T, R] = _Waiting(item, asyncio.get_running_loop().create_future())
        self._queue.append(waiting)
        self._arrived.set()
        if self._worker is None:
            self._worker = asyncio.create_task(self._drain())
        return await waiting.future

    def _note(self, size: int, queue_seconds: list[float]) -> None:
        if self._observe is not None:
            self._observe(size, queue_seconds)

    def _call(self, items: list[T]) -> list[R | Exception]:
        try:
            results = self._run_batch(items)
        except Exception as exc:
            return [exc] * len(items)
        if len(results) != len(items):
            return [RuntimeError("batch function returned the wrong number of results")] * len(
                items)
        return results

    async def _run(self, items: list[T]) -> list[R | Exception]:
        if self.inline:
            return self._call(items)
        return await asyncio.to_thread(self._call, items)

    @staticmethod
    def _unwrap(result: R | Exception) -> R:
        if isinstance(result, Exception):
            raise result
        return result

    async def _fill(self) -> None:
        """Hold the batch open up to max_wait_s, until it is full."""
        deadline = time.perf_counter() + self.max_wait_s
        while len(self._queue) < self.max_batch_size:
            left = deadline - time.perf_counter()
            if left <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except asyncio.TimeoutError:
                return

    async def _drain(self) -> None:
        try:
            while self._queue:
                if self.max_wait_s > 0:
                    await self._fill()
                batch = [self._queue.popleft()
                         for _ in range(min(self.max_batch_size, len(self._queue)))]
                batch = [w for w in batch if not w.future.done()]  # client gone
                if not batch:
                    continue
                now = time.perf_counter()
                self._note(len(batch), [now - w.since for w in batch])
                results = await self._run([w.item for w in batch])
                for waiting, result in zip(batch, results, strict=True):
                    if waiting.future.done():
                        continue
                    if isinstance(result, Exception):
                        waiting.future.set_exception(result)
                    else:
                        waiting.future.set_result(result)
        except asyncio.CancelledError:  # shutting down: nobody will answer these
            for waiting in self._queue:
                waiting.future.cancel()
            self._queue.clear()
            raise
        finally:
            self._worker = None
