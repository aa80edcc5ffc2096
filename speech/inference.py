"""One model, one worker thread, requests in priority order.

Requests with a lower priority number run first (a caller's final transcription before a
speculative one), first come first served within a priority. A request cancelled by its
caller, or past its deadline, is dropped before it starts: it never occupies the model.
Each result says how long it waited and how long it computed.

Batching (a GPU model, where one pass over eight inputs costs little more than over one):
a queue made with ``batch`` runs the items given to :meth:`InferenceQueue.submit_item` in
batches of up to ``max_batch``. An idle worker starts at once with what is queued (a
lone request never waits); what arrives while a batch runs goes together in the next one,
after an optional ``gather_ms`` for stragglers.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from switchboard.conversation.engines import DeadlineExceeded, EngineClosed

T = TypeVar("T")


async def drain(items: asyncio.Queue[T | BaseException | None]) -> AsyncGenerator[T, None]:
    """What a producer puts in ``items`` until its closing None; an exception it puts
    there is raised here, in the consumer."""
    while (item := await items.get()) is not None:
        if isinstance(item, BaseException):
            raise item
        yield item


BATCH_HISTORY = 1000
"""How many batch sizes a queue remembers (a server runs for weeks)."""


@dataclass(frozen=True)
class Timed(Generic[T]):
    """A result with its queue wait and compute time, in milliseconds."""

    value: T
    queue_ms: float
    compute_ms: float


@dataclass(order=True)
class _Job:
    priority: int
    seq: int
    fn: Callable[[], Any] | None = field(compare=False)
    """A call of its own; None for an item of a batch."""
    future: Future[Timed[Any]] = field(compare=False)
    deadline: float | None = field(compare=False)
    queued: float = field(compare=False)
    item: Any = field(default=None, compare=False)


BatchFn = Callable[[list[Any]], list[Any]]
"""Computes a batch: one result per item, in order."""


class InferenceQueue:
    """Runs blocking model calls on one named thread, best priority first."""

    def __init__(self, name: str, *, batch: BatchFn | None = None, max_batch: int = 1,
                 gather_ms: float = 0.0) -> None:
        if max_batch < 1 or (max_batch > 1 and batch is None):
            raise ValueError("max_batch must be 1, or more with a batch function")
        self.name = name
        self._batch = batch
        self.max_batch = max_batch
        self._gather_s = gather_ms / 1000
        self.batch_sizes: deque[int] = deque(maxlen=BATCH_HISTORY)
        """Sizes of the latest batches (for benches and tests)."""
        self._jobs: list[_Job] = []
        self._seq = itertools.count()
        self._ready = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], T], *, priority: int = 0,
               deadline: float | None = None) -> Future[Timed[T]]:
        """Queue ``fn``; ``deadline`` is a ``time.monotonic()`` after which it is dropped
        with :class:`DeadlineExceeded` if it has not started. Cancelling the future before
        the job starts drops it."""
        return self._push(fn, None, priority, deadline)

    def submit_item(self, item: Any, *, priority: int = 0,
                    deadline: float | None = None) -> Future[Timed[Any]]:
        """Queue ``item`` for the batch function (queues made with ``batch``)."""
        if self._batch is None:
            raise TypeError(f"{self.name} computes no batches")
        return self._push(None, item, priority, deadline)

    async def run_item(self, item: Any, *, priority: int = 0,
                       deadline: float | None = None) -> Timed[Any]:
        """:meth:`submit_item` and await; cancelling the awaiting task drops it if queued."""
        return await asyncio.wrap_future(
            self.submit_item(item, priority=priority, deadline=deadline))

    def _push(self, fn: Callable[[], Any] | None, item: Any, priority: int,
              deadline: float | None) -> Future[Timed[Any]]:
        future: Future[Timed[Any]] = Future()
        with self._ready:
            if self._closed:
                raise EngineClosed(f"{self.name} is closed")
            heapq.heappush(self._jobs, _Job(priority, next(self._seq), fn, future, deadline,
                                            time.monotonic(), item))
            self._ready.notify()
        return future

    async def run(self, fn: Callable[[], T], *, priority: int = 0,
                  deadline: float | None = None) -> Timed[T]:
        """:meth:`submit` and await; cancelling the awaiting task drops a queued job."""
        return await asyncio.wrap_future(self.submit(fn, priority=priority, deadline=deadline))

    @property
    def pending(self) -> int:
        """Jobs waiting (not counting the one running)."""
        with self._ready:
            return sum(1 for job in self._jobs if not job.future.cancelled())

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._closed

    def close(self) -> None:
        """Let the running job finish, drop the queued ones, stop the thread."""
        with self._ready:
            self._closed = True
            for job in self._jobs:
                job.future.cancel()
            self._jobs.clear()
            self._ready.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._jobs and not self._closed:
                    self._ready.wait()
                if self._closed:
                    return
                jobs = [heapq.heappop(self._jobs)]
            if self.max_batch > 1:
                self._gather(jobs)
            started = time.monotonic()
            runnable = [job for job in jobs if self._starts(job, started)]
            if not runnable:
                continue
            try:
                if runnable[0].fn is not None:
                    values = [runnable[0].fn()]
                else:
                    assert self._batch is not None
                    values = self._batch([job.item for job in runnable])
                    self.batch_sizes.append(len(runnable))
                    if len(values) != len(runnable):
                        raise RuntimeError(f"{self.name}: {len(values)} results for a batch "
                                           f"of {len(runnable)}")
            except BaseException as exc:
                for job in runnable:
                    job.future.set_exception(exc)
                continue
            done = time.monotonic()
            for job, value in zip(runnable, values, strict=True):
                job.future.set_result(Timed(value, (started - job.queued) * 1000,
                                            (done - started) * 1000))

    def _gather(self, jobs: list[_Job]) -> None:
        """Add queued items to ``jobs`` (an item first) up to ``max_batch``, best priority
        first; with ``gather_ms``, wait that long for more before running a short batch."""
        if jobs[0].fn is not None:
            return
        until = time.monotonic() + self._gather_s
        with self._ready:
            while len(jobs) < self.max_batch:
                if self._jobs and self._jobs[0].fn is None:
                    jobs.append(heapq.heappop(self._jobs))
                    continue
                left = until - time.monotonic()
                if self._jobs or left <= 0 or self._closed:
                    break
                self._ready.wait(left)

    def _starts(self, job: _Job, now: float) -> bool:
        """Whether ``job`` runs: not when cancelled or past its deadline (dropped)."""
        if not job.future.set_running_or_notify_cancel():
            return False  # cancelled while queued: dropped
        if job.deadline is not None and now > job.deadline:
            job.future.set_exception(DeadlineExceeded(
                f"{self.name}: dropped after waiting {(now - job.queued) * 1000:.0f} ms, "
                f"{(now - job.deadline) * 1000:.0f} ms past its deadline"))
            return False
        return True
