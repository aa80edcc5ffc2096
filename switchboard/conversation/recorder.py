"""Stores a call's turns and events off the event loop, in order, without losing any."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, Protocol

from switchboard.conversation.turns import TurnRecord
from switchboard.storage.models import utcnow
from switchboard.storage.spool import SpooledCalls

log = logging.getLogger(__name__)


class Recorder(Protocol):
    """Where a call's turns, events and end go as they happen. The pipeline stamps events
    and the end with ``clock`` (its media clock, set by the pipeline)."""

    clock: Callable[[], datetime]
    failed: list[tuple[str, Any]]
    """What could not be stored: (kind, item)."""

    def turn(self, record: TurnRecord) -> None: ...

    def event(self, kind: str, data: dict[str, Any] | None = None) -> None: ...

    def end(self, *, reason: str, status: str, handoff_target: str | None = None) -> None: ...

    async def flush(self) -> None:
        """Wait until everything recorded is stored."""
        ...


class CallRecorder:
    """The database's :class:`Recorder`: writes through one thread so a call's rows land
    in the order they happened.

    A write the database cannot take while it is unreachable is spooled on disk and
    written when it returns (:class:`SpooledCalls`); a write that fails otherwise is logged
    with the call id and kept in ``failed`` — the pipeline's own turn list still holds
    every turn, so nothing said on the call is lost."""

    def __init__(self, repository: SpooledCalls, call_id: str) -> None:
        self.repository = repository
        self.call_id = call_id
        # The call's clock for event and end times; the pipeline sets its media clock, so
        # a call simulated faster than real time keeps turns, events and its end in step.
        self.clock: Callable[[], datetime] = utcnow
        self.failed: list[tuple[str, Any]] = []
        self.end_stored = False
        """Whether the call's end is in the database (False while it waits in the spool:
        the spool's replay queues the call's analysis then)."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"rec-{call_id[:8]}")
        self._pending: list[asyncio.Future[Any]] = []

    def turn(self, record: TurnRecord) -> None:
        self._submit("turn", record, self.repository.add_turn, self.call_id, record)

    def event(self, kind: str, data: dict[str, Any] | None = None) -> None:
        self._submit("event", (kind, data), self._event, kind, data, self.clock())

    def end(self, *, reason: str, status: str, handoff_target: str | None = None) -> None:
        self._submit(
            "end", reason, self._end, reason, status, handoff_target, self.clock(),
        )

    def _event(self, kind: str, data: dict[str, Any] | None, at: datetime) -> None:
        self.repository.add_event(self.call_id, kind, data, at=at)

    def _end(self, reason: str, status: str, handoff_target: str | None,
             ended_at: datetime) -> None:
        self.end_stored = self.repository.end_call(
            self.call_id, reason=reason, status=status, handoff_target=handoff_target,
            ended_at=ended_at,
        )

    def _submit(self, what: str, item: Any, fn: Any, *args: Any) -> None:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, fn, *args)

        def _done(fut: asyncio.Future[Any]) -> None:
            if fut.cancelled():
                return
            exc = fut.exception()
            if exc is not None:
                self.failed.append((what, item))
                log.error("call %s: could not store %s: %s", self.call_id, what, exc)

        future.add_done_callback(_done)
        self._pending.append(future)

    async def flush(self) -> None:
        """Wait for every queued write; then release the writer thread."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
            self._pending.clear()
        self._executor.shutdown(wait=False)
