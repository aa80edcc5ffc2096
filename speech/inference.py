"""One model, one worker thread, requests in priority order.

Requests with a lower priority number run first (a caller's final transcription before a
speculative one), first come first served within a priority. A request cancelled by its
caller, or past its deadline, is dropped before it starts: it never occupies the model.
Each result says how long it waited and how long it computed.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
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
    fn: Callable[[], Any] = field(compare=False)
    future: Future[Timed[Any]] = field(compare=False)
    deadline: float | None = field(compare=False)
    queued: float = field(compare=False)


class InferenceQueue:
    """Runs blocking model calls on one named thread, best priority first."""

    def __init__(self, name: str) -> None:
        self.name = name
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
        future: Future[Timed[T]] = Future()
        with self._ready:
            if self._closed:
                raise EngineClosed(f"{self.name} is closed")
            heapq.heappush(self._jobs, _Job(priority, next(self._seq), fn, future, deadline,
                                            time.monotonic()))
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
                job = heapq.heappop(self._jobs)
            if not job.future.set_running_or_notify_cancel():
                continue  # cancelled while queued: dropped
            started = time.monotonic()
            if job.deadline is not None and started > job.deadline:
                late_ms = (started - job.deadline) * 1000
                job.future.set_exception(DeadlineExceeded(
                    f"{self.name}: dropped after waiting {(started - job.queued) * 1000:.0f} ms, "
                    f"{late_ms:.0f} ms past its deadline"))
                continue
            try:
                value = job.fn()
            except BaseException as exc:
                job.future.set_exception(exc)
                continue
            done = time.monotonic()
            job.future.set_result(Timed(value, (started - job.queued) * 1000,
                                        (done - started) * 1000))
