"""Starting a call, and the handle that controls it from its first moment.

A transport describes the call (:class:`CallRequest`: its media, who calls whom, what it
can do beyond media through :class:`CallControl`) and gets a :class:`CallHandle` back at
once. Keypad keys, a hangup or a transfer given to the handle are never lost: they wait
until the conversation runs. Later capabilities (an agent taking the call over, a
supervisor listening in) are added to the handle.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from switchboard.conversation.media import AudioSink, AudioSource
from switchboard.conversation.pipeline import CallResult, ConversationPipeline
from switchboard.conversation.turns import TurnRecord

log = logging.getLogger(__name__)

TurnListener = Callable[[TurnRecord], None]


class CallControlError(RuntimeError):
    """The transport cannot do what was asked of the call (say, transfer a browser call)."""


class CallControl(Protocol):
    """What a transport can do to a live call beyond moving its media."""

    async def transfer(self, call_id: str, target: str) -> bool:
        """Hand the caller to ``target`` (a SIP REFER); True once the far end accepted."""
        ...


@dataclass(frozen=True)
class CallRequest:
    """A call as its transport sees it when it starts."""

    transport: str
    source: AudioSource
    sink: AudioSink
    caller: str | None = None
    callee: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    conversation_id: str | None = None
    """Carry on an earlier conversation (a caller who reconnects) instead of a new one."""
    greet: bool = True
    control: CallControl | None = None
    handoff_target: str | None = None
    """Where the caller is transferred when the bot hands off (needs ``control``)."""
    caller_key: str | None = None
    """Who calls, for resuming their cut-off conversation on a new call (the softphone's
    conversation token); default: the user part of ``caller``'s SIP URI."""
    call_id: str | None = None
    """The call's id when the transport has one already (a SIP INVITE's ``X-Call-UUID``);
    else the node makes one."""
    rejoin: dict[str, str] | None = None
    """How another node can take this call back from the caller if this node is lost
    (for SIP: the caller's Contact and the dialog to replace, RFC 3891)."""
    resumes: str | None = None
    """The id of the cut-off call this call takes over (a node calling back the caller of
    a lost node's call); default: the caller's latest call, found by ``caller_key``."""


class CallHandle:
    """One call, from the moment it is started until its result."""

    def __init__(self, request: CallRequest) -> None:
        self.request = request
        self.call_id: str | None = None
        self._pipeline: ConversationPipeline | None = None
        self._pending_keys: list[str] = []
        self._hangup: str | None = None
        self._transfer_to: str | None = None
        self._listeners: list[TurnListener] = []
        self._attached: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._task: asyncio.Task[CallResult] | None = None

    # ------------------------------------------------------------------ commands

    def keypad(self, key: str) -> None:
        """A keypad key (DTMF) from the caller; queued until the conversation runs."""
        if self._pipeline is None:
            self._pending_keys.append(key)
        else:
            self._pipeline.keypad(key)

    def hang_up(self, reason: str = "hangup") -> None:
        """End the call now, for ``reason`` (stored as its end reason)."""
        self._hangup = self._hangup or reason
        if self._pipeline is not None:
            self._pipeline.hang_up(self._hangup)

    def transfer(self, target: str) -> None:
        """Stop the bot and hand the caller to ``target``. Raises
        :class:`CallControlError` when the transport cannot transfer calls."""
        if self.request.control is None:
            raise CallControlError(f"{self.request.transport} calls cannot be transferred")
        self._transfer_to = target
        self.hang_up("transferred")

    def cancel(self) -> None:
        """The transport is going away (shutdown): stop the call; its end is stored as
        cancelled."""
        if self._task is not None:
            self._task.cancel()

    def on_turn(self, listener: TurnListener) -> None:
        """Call ``listener`` with every turn as it is stored (live transcripts)."""
        self._listeners.append(listener)

    # ------------------------------------------------------------------ state

    async def started(self) -> str:
        """The call's id, once it is stored and its conversation runs; raises what failed
        the call's setup."""
        return await asyncio.shield(self._attached)

    async def result(self) -> CallResult:
        """How the call ended (after any transfer); raises what failed the call's setup.
        Cancelling this wait cancels the call (its end is still stored)."""
        assert self._task is not None, "the call was not started"
        return await self._task

    async def settled(self) -> None:
        """See :meth:`ConversationPipeline.settled` (simulations faster than real time)."""
        await self.started()
        assert self._pipeline is not None
        await self._pipeline.settled()

    @property
    def conversation_id(self) -> str | None:
        """The dialog's conversation id (the call's own, or the one it resumed), once the
        conversation runs."""
        return None if self._pipeline is None else self._pipeline.conversation_id

    @property
    def media_ms(self) -> int:
        """Media time of the call so far (0 before its conversation runs)."""
        return 0 if self._pipeline is None else self._pipeline.media_ms

    @property
    def idle(self) -> bool:
        """Nothing queued, computed, played or heard right now (False before it runs)."""
        return self._pipeline is not None and self._pipeline.idle

    # ------------------------------------------------------------------ for the host

    def run(self, call: Callable[[CallHandle], Awaitable[CallResult]]) -> None:
        """Start ``call`` (the host's way of running this call) as the handle's task."""
        self._task = asyncio.create_task(self._run(call), name=f"call-{self.request.transport}")

    def attach(self, call_id: str, pipeline: ConversationPipeline) -> None:
        """The conversation exists: deliver what waited for it."""
        self.call_id, self._pipeline = call_id, pipeline
        pipeline.on_turn = self._turn
        for key in self._pending_keys:
            pipeline.keypad(key)
        self._pending_keys.clear()
        if self._hangup is not None:
            pipeline.hang_up(self._hangup)
        self._attached.set_result(call_id)

    async def _run(self, call: Callable[[CallHandle], Awaitable[CallResult]]) -> CallResult:
        try:
            result = await call(self)
        except BaseException as exc:
            if not self._attached.done():
                self._attached.set_exception(
                    exc if isinstance(exc, Exception) else RuntimeError("call cancelled"))
                self._attached.exception()  # seen here; started() raises it again
            raise
        target = self._transfer_to or result.transfer_to or (
            self.request.handoff_target if result.reason == "handoff" else None)
        control = self.request.control
        if target and control is not None:
            result.transferred = await control.transfer(result.call_id, target)
        return result

    def _turn(self, record: TurnRecord) -> None:
        for listener in self._listeners:
            try:
                listener(record)
            except Exception:
                log.exception("call %s: turn listener failed", self.call_id)
