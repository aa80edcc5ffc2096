"""The node's side of the agents' desk: each call's view of the Redis queue, and the agents'
browser legs this process answers for its calls.

A call that waits for an agent is written to the live state as ``queued`` with what the
agents need to take it (a summary so far, the intents, the slots, the caller's sentiment);
``agent`` once someone claimed it; back to ``bot`` when the agent hands it back. The web
app relays an agent's offer to the process named in the call's state (its ``owner``); one
thread per process takes those offers from Redis and answers each on the call's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import av
import numpy as np

from analytics.analysis import IN_PROGRESS, sentiment_label, sentiment_score, summarize
from switchboard.base.settings import Settings
from switchboard.conversation.audio import resample
from switchboard.conversation.desk import (
    AgentLeg,
    QueuePolicy,
    QueueStatus,
    synthesized_music,
)
from switchboard.conversation.turns import TurnRecord
from switchboard.storage.desk import FALLBACK, AgentOffer, ClaimLost, DeskQueue
from switchboard.storage.live import CallState, LiveStateUnavailable, LiveWriter

log = logging.getLogger(__name__)

OFFER_POLL_S = 1.0
"""How long one wait for an agent's offer in Redis lasts."""


class AgentLegs(Protocol):
    """Answers agents' browser offers in this process (``telephony.webrtc.agent``)."""

    async def answer(self, agent: str, mode: str, sdp: str, kind: str,
                     rate: int) -> tuple[AgentLeg, dict[str, Any]]: ...


def owner_id(settings: Settings) -> str:
    """This process, as calls' states name it."""
    return f"{settings.effective_node_id}:{settings.worker_name or 'web'}:{os.getpid()}"


@cache
def _music_file(path: str, rate: int) -> np.ndarray:
    """A music file (any format FFmpeg reads) as int16 mono at ``rate``."""
    with av.open(path) as container:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
        chunks = [frame.to_ndarray().reshape(-1)
                  for packet in container.decode(audio=0)
                  for frame in resampler.resample(packet)]
    if not chunks:
        raise ValueError(f"{path} holds no audio")
    return np.concatenate(chunks).astype(np.int16)


@cache
def _built_in_music(rate: int) -> np.ndarray:
    return resample(synthesized_music(16000), 16000, rate)


def hold_music(settings: Settings, rate: int) -> np.ndarray:
    """``desk_hold_music`` at ``rate``; the built-in tune without one, or when the file
    cannot be read (said once in the log)."""
    path = settings.desk_hold_music
    if path:
        try:
            return _music_file(str(Path(path).expanduser()), rate)
        except (OSError, ValueError, av.error.FFmpegError) as exc:
            log.error("cannot play the hold music %s (%s); playing the built-in tune",
                      path, exc)
    return _built_in_music(rate)


def queue_context(turns: list[TurnRecord], state: CallState) -> dict[str, Any]:
    """What an agent sees of a waiting call: a summary so far, intents, slots, the caller's
    sentiment, when it joined the queue."""
    transcript = [{"speaker": t.speaker, "text": t.text} for t in turns]
    intents = [t.intent for t in turns if t.speaker == "caller" and t.intent]
    said = " ".join(t.text for t in turns if t.speaker == "caller")
    score = sentiment_score(said) if said else None
    return {"summary": summarize(transcript, intents, IN_PROGRESS, None),
            "intents": list(dict.fromkeys(intents)), "slots": dict(state.slots),
            "sentiment": sentiment_label(score), "sentiment_score": score,
            "queued_at": time.time()}


class NodeDesk:
    """The desk of one process: its Redis queue, its agents' legs, its calls."""

    def __init__(self, settings: Settings, legs: AgentLegs, writer: LiveWriter) -> None:
        self.settings = settings
        self.legs = legs
        self.writer = writer
        self.queue = DeskQueue(settings.redis_url)
        self.owner = owner_id(settings)
        self.policy = QueuePolicy(
            timeout_s=settings.desk_queue_timeout_s,
            announce_every_s=settings.desk_announce_every_s,
            fallback=settings.desk_fallback,
            connect_timeout_s=settings.desk_connect_timeout_s)
        self._calls: dict[str, tuple[asyncio.AbstractEventLoop, int,
                                     Callable[[AgentLeg], None]]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def for_call(self, state: CallState, *, can_transfer: bool) -> CallDesk:
        """The call's view of the desk; its fallback is the bot when the call cannot be
        transferred (a browser call, or no transfer target)."""
        fallback = self.policy.fallback if can_transfer else "bot"
        return CallDesk(self, state, replace(self.policy, fallback=fallback))

    # ------------------------------------------------------------------ offers

    def attach(self, call_id: str, rate: int, on_leg: Callable[[AgentLeg], None]) -> None:
        with self._lock:
            self._calls[call_id] = (asyncio.get_running_loop(), rate, on_leg)
            if self._thread is None:
                self._thread = threading.Thread(target=self._take_offers, name="desk-offers",
                                                daemon=True)
                self._thread.start()

    def detach(self, call_id: str) -> None:
        with self._lock:
            self._calls.pop(call_id, None)

    def _take_offers(self) -> None:
        """Take agents' offers for this process's calls until closed."""
        queue = DeskQueue(self.settings.redis_url, timeout_s=2.0)
        down = False
        try:
            while not self._stop.is_set():
                try:
                    offer = queue.next_offer(self.owner, OFFER_POLL_S)
                    down = False
                except LiveStateUnavailable as exc:
                    if not down:
                        log.warning("agents' offers cannot be taken: %s", exc)
                    down = True
                    self._stop.wait(OFFER_POLL_S)
                    continue
                if offer is not None:
                    self._dispatch(queue, offer)
        finally:
            queue.close()

    def _dispatch(self, queue: DeskQueue, offer: AgentOffer) -> None:
        with self._lock:
            call = self._calls.get(offer.call_id)
        if call is None:
            with contextlib.suppress(LiveStateUnavailable):
                queue.answer(offer, {"error": "the call is not running here any more"})
            return
        loop, rate, on_leg = call
        asyncio.run_coroutine_threadsafe(self._answer(queue, offer, rate, on_leg), loop)

    async def _answer(self, queue: DeskQueue, offer: AgentOffer, rate: int,
                      on_leg: Callable[[AgentLeg], None]) -> None:
        try:
            leg, answer = await self.legs.answer(offer.agent, offer.mode, offer.sdp,
                                                 offer.type, rate)
        except Exception as exc:
            log.warning("call %s: cannot answer %s's offer: %s", offer.call_id, offer.agent,
                        exc)
            with contextlib.suppress(LiveStateUnavailable):
                await asyncio.to_thread(queue.answer, offer, {"error": str(exc)})
            return
        on_leg(leg)
        try:
            await asyncio.to_thread(queue.answer, offer, answer)
        except LiveStateUnavailable:
            leg.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(OFFER_POLL_S + 3)
        self.queue.close()


class CallDesk:
    """One call's view of the desk (the conversation core's ``Desk``)."""

    def __init__(self, desk: NodeDesk, state: CallState, policy: QueuePolicy) -> None:
        self.desk = desk
        self.state = state
        self.policy = policy

    def _put(self, **changes: Any) -> None:
        for name, value in changes.items():
            setattr(self.state, name, value)
        self.desk.writer.put(self.state)

    async def enqueue(self, call_id: str, turns: list[TurnRecord]) -> int:
        self._put(state="queued", queue=queue_context(turns, self.state))
        try:
            return await asyncio.to_thread(self.desk.queue.enqueue, call_id)
        except BaseException:
            self._put(state="bot", queue=None)
            raise

    async def status(self, call_id: str) -> QueueStatus:
        position, claimer = await asyncio.to_thread(self.desk.queue.status, call_id)
        if claimer is not None and claimer != FALLBACK and self.state.state != "agent":
            self._put(state="agent", agent=claimer, queue=None)
        return QueueStatus(position, None if claimer == FALLBACK else claimer)

    async def give_up(self, call_id: str) -> str | None:
        try:
            await asyncio.to_thread(self.desk.queue.claim, call_id, FALLBACK)
        except ClaimLost as lost:
            if lost.by is not None and lost.by != FALLBACK:
                self._put(state="agent", agent=lost.by, queue=None)
                return lost.by
        self._put(state="bot", queue=None)
        return None

    async def leave(self, call_id: str) -> None:
        self._put(queue=None)
        await asyncio.to_thread(self.desk.queue.leave, call_id)

    def released(self, call_id: str) -> None:
        self._put(state="bot")

    def music(self, rate: int) -> np.ndarray:
        return hold_music(self.desk.settings, rate)

    def attach(self, call_id: str, rate: int,
               on_leg: Callable[[AgentLeg], None]) -> Callable[[], None]:
        self.desk.attach(call_id, rate, on_leg)
        return lambda: self.desk.detach(call_id)
