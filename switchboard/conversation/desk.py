"""Waiting for a person: when the bot hands off and the node has an agents' desk, the caller
waits in the desk's queue instead of being transferred at once.

The caller hears the hold prompt with their position, then music (looped, softer than
speech), and every ``announce_every_s`` their position again. The wait ends when an agent
claims the call (:class:`QueueOutcome` ``agent``), when it has lasted ``timeout_s`` (the
call then falls back: to the transfer target, or back to the bot, by the desk's policy;
the fallback is claimed in the same atomic step as an agent's accept, so exactly one of
them wins), or when the caller hangs up (the call leaves the queue).

What the queue is (Redis, shared by every node and the console) is the :class:`Desk`'s
business; the wait only asks it for the call's position and who claimed it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from switchboard.conversation.audio import frame_samples
from switchboard.conversation.recorder import Recorder
from switchboard.conversation.turns import TurnRecord

log = logging.getLogger(__name__)

MUSIC_GAIN = 0.35
"""Hold music plays this much softer than it was recorded (speech stays on top)."""


class AgentTakesOver(Exception):
    """An agent claimed the waiting call: the bot stops, the agent's leg is bridged in."""

    def __init__(self, agent: str) -> None:
        super().__init__(f"agent {agent} took the call")
        self.agent = agent


@dataclass(frozen=True)
class QueuePolicy:
    """How a call waits (the ``desk_*`` settings)."""

    timeout_s: float = 120.0
    announce_every_s: float = 30.0
    fallback: str = "bot"
    """``transfer`` (to the transport's handoff target) or ``bot`` (the bot carries on)."""
    poll_s: float = 0.5
    hold_prompt: str = "All our agents are busy right now. You are number {position} in the queue."
    position_text: str = "Thank you for waiting. You are number {position} in the queue."
    next_text: str = "Thank you for waiting. You are next in the queue."
    fallback_text: str = ("I'm sorry, no agent is free right now. I'll keep helping you "
                          "myself. What can I do for you?")
    transfer_text: str = "I'm sorry for the wait. I'm transferring your call now."
    connect_timeout_s: float = 20.0
    """How long an agent who took the call has to connect their audio."""
    back_to_bot_text: str = ("You're back with the assistant. Is there anything else I can "
                             "help with?")
    agent_lost_text: str = ("I'm sorry, the agent's line dropped. You're back with the "
                            "assistant. Is there anything else I can help with?")
    not_connected_text: str = ("I'm sorry, the agent could not be connected. I'll keep "
                               "helping you myself. What can I do for you?")

    def position(self, position: int, *, first: bool) -> str:
        if not first and position == 1:
            return self.next_text
        return (self.hold_prompt if first else self.position_text).format(position=position)


@dataclass(frozen=True)
class QueueStatus:
    position: int | None
    """1 = next; None once the call left the queue."""
    claimed_by: str | None


@dataclass(frozen=True)
class QueueOutcome:
    """How the wait ended: ``agent`` (``agent`` names who) or ``fallback``."""

    kind: str
    waited_s: float
    agent: str | None = None


class AgentLeg(Protocol):
    """An agent's audio, bridged into the call by the process that owns it (the agent's
    browser over WebRTC): what the agent hears and says, 20 ms at a time, at the call's
    rate, on the call's event loop."""

    agent: str
    mode: str
    """``talk`` (the agent who took the call), ``listen`` (hears, never heard) or
    ``barge`` (a supervisor who also speaks to the caller)."""

    def hear(self, frame: np.ndarray) -> None:
        """What the agent hears next (the caller, and the other agents)."""
        ...

    def take(self) -> np.ndarray | None:
        """The agent's next 20 ms (silence when none came in time); None once the leg is
        gone (the tab closed, the connection failed)."""
        ...

    def request(self) -> str | None:
        """What the agent asked of the call since the last ask, if anything: ``hangup``,
        ``bot`` (hand the caller back to the bot) or ``transfer <target>``."""
        ...

    def close(self) -> None: ...


class Desk(Protocol):
    """The agents' desk as a call sees it (the node's Redis queue)."""

    policy: QueuePolicy

    async def enqueue(self, call_id: str, turns: list[TurnRecord]) -> int:
        """Put the call in the queue with its context (what was said so far); returns its
        position."""
        ...

    async def status(self, call_id: str) -> QueueStatus: ...

    async def give_up(self, call_id: str) -> str | None:
        """Take the call out of the queue for the fallback; None when that won, else the
        agent who claimed it first."""
        ...

    async def leave(self, call_id: str) -> None:
        """The caller went away while waiting."""
        ...

    def released(self, call_id: str) -> None:
        """The agent left the call (or never connected): the bot has the caller again."""
        ...

    def music(self, rate: int) -> np.ndarray:
        """The hold music at ``rate``, int16 mono."""
        ...

    def attach(self, call_id: str, rate: int,
               on_leg: Callable[[AgentLeg], None]) -> Callable[[], None]:
        """Bridge agents' browser legs into the call while it runs: each leg answered for
        it (the agent who claimed it; supervisors listening in or barging in) is given to
        ``on_leg`` on the call's loop. Returns what detaches the call."""
        ...


class HoldMusic:
    """Loops a piece of music, 20 ms at a time."""

    def __init__(self, pcm: np.ndarray, rate: int) -> None:
        self._frame = frame_samples(rate)
        scaled = (pcm.astype(np.float32) * MUSIC_GAIN).astype(np.int16)
        whole = max(1, math.ceil(len(scaled) / self._frame)) * self._frame
        self._pcm = np.zeros(whole, dtype=np.int16)
        self._pcm[: len(scaled)] = scaled
        self._at = 0

    def frame(self) -> np.ndarray:
        out = self._pcm[self._at : self._at + self._frame]
        self._at = (self._at + self._frame) % len(self._pcm)
        return out


def synthesized_music(rate: int, seconds: float = 16.0) -> np.ndarray:
    """Gentle hold music made here (a slow arpeggio of soft sine chords): what callers hear
    when no music file is configured."""
    notes = [261.63, 329.63, 392.00, 523.25, 392.00, 329.63,  # C major
             220.00, 261.63, 329.63, 440.00, 329.63, 261.63,  # A minor
             174.61, 220.00, 261.63, 349.23, 261.63, 220.00,  # F major
             196.00, 246.94, 293.66, 392.00, 293.66, 246.94]  # G major
    note_s = seconds / len(notes)
    t = np.arange(int(rate * note_s)) / rate
    envelope = np.minimum(1.0, t / 0.04) * np.exp(-2.2 * t)
    pieces = []
    for i, freq in enumerate(notes):
        root = notes[(i // 6) * 6]
        tone = (np.sin(2 * np.pi * freq * t) + 0.5 * np.sin(2 * np.pi * root / 2 * t)
                + 0.15 * np.sin(4 * np.pi * freq * t))
        pieces.append(tone * envelope)
    music = np.concatenate(pieces)
    return (music / np.abs(music).max() * 0.5 * 32767).astype(np.int16)


class Speaker(Protocol):
    async def announce(self, text: str) -> None:
        """Say ``text`` to the caller (not interruptible) and store it as a bot turn."""
        ...

    def hush(self) -> None:
        """Stop what is being said at once (an agent took the call)."""
        ...


class WaitingStage(Protocol):
    """What the wait needs of the call (the pipeline)."""

    call_id: str
    turns: list[TurnRecord]
    recorder: Recorder
    hold: HoldMusic | None
    """Played to the caller whenever the bot is not speaking."""

    def music(self) -> HoldMusic:
        """The call's hold music."""
        ...

    async def wait_media(self, ms: int) -> None: ...


class QueueWait:
    """One call's wait in the desk's queue."""

    def __init__(self, stage: WaitingStage, desk: Desk, speaker: Speaker) -> None:
        self.stage = stage
        self.desk = desk
        self.speaker = speaker

    async def run(self) -> QueueOutcome:
        """Wait until an agent claims the call or the wait runs out (or the desk fails:
        Redis is down, so no agent could take the call). Cancelled (the caller hung up),
        the call leaves the queue."""
        stage, desk, policy = self.stage, self.desk, self.desk.policy
        started = time.monotonic()
        try:
            position = await desk.enqueue(stage.call_id, list(stage.turns))
        except Exception as exc:
            return self._done(QueueOutcome("fallback", 0.0), error=exc)
        stage.recorder.event("queued", {"position": position})
        log.info("call %s waits for an agent (position %d)", stage.call_id, position)
        outcome: QueueOutcome | None = None
        error: Exception | None = None
        try:
            await self._say(policy.position(position, first=True))
            stage.hold = stage.music()
            announced = time.monotonic()
            while True:
                waited = time.monotonic() - started
                try:
                    status = await desk.status(stage.call_id)
                    taken_by = status.claimed_by
                    if taken_by is None and waited >= policy.timeout_s:
                        taken_by = await desk.give_up(stage.call_id)
                        if taken_by is None:
                            outcome = QueueOutcome("fallback", waited)
                            break
                except Exception as exc:
                    await _quietly(desk.leave(stage.call_id))
                    outcome, error = QueueOutcome("fallback", waited), exc
                    break
                if taken_by is not None:
                    outcome = QueueOutcome("agent", waited, taken_by)
                    break
                if (status.position is not None
                        and time.monotonic() - announced >= policy.announce_every_s):
                    stage.hold = None
                    await self._say(policy.position(status.position, first=False))
                    stage.hold = stage.music()
                    announced = time.monotonic()
                await stage.wait_media(int(policy.poll_s * 1000))
        finally:
            stage.hold = None
            if outcome is None:  # cancelled, or the wait failed
                waited = time.monotonic() - started
                stage.recorder.event("queue_left", {"outcome": "abandoned",
                                                    "waited_ms": round(waited * 1000)})
                await _quietly(desk.leave(stage.call_id))
        return self._done(outcome, error)

    async def _say(self, text: str) -> None:
        """Say ``text``; an agent who takes the call meanwhile cuts it short (they do not
        wait for the end of a prompt)."""
        speaking = asyncio.ensure_future(self.speaker.announce(text))
        try:
            while not speaking.done():
                await asyncio.wait({speaking}, timeout=self.desk.policy.poll_s)
                if speaking.done():
                    break
                try:
                    status = await self.desk.status(self.stage.call_id)
                except Exception:  # the main loop says what failed
                    continue
                if status.claimed_by is not None:
                    self.speaker.hush()
                    break
            await speaking
        finally:
            if not speaking.done():
                speaking.cancel()

    def _done(self, outcome: QueueOutcome, error: Exception | None = None) -> QueueOutcome:
        data: dict[str, object] = {"outcome": outcome.kind, "agent": outcome.agent,
                                   "waited_ms": round(outcome.waited_s * 1000)}
        if error is not None:
            log.warning("call %s: the agents' desk failed (%s); falling back",
                        self.stage.call_id, error)
            data["error"] = str(error)
        self.stage.recorder.event("queue_left", data)
        log.info("call %s left the queue after %.1f s: %s%s", self.stage.call_id,
                 outcome.waited_s, outcome.kind, f" ({outcome.agent})" if outcome.agent else "")
        return outcome


async def _quietly(awaitable: Awaitable[None]) -> None:
    """Leave the queue even while being cancelled; a failure is only logged."""
    try:
        await asyncio.shield(awaitable)
    except Exception:  # the caller is gone: nothing to tell them
        log.warning("could not take a call out of the desk's queue", exc_info=True)
