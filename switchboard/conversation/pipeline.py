"""The per-call conversation pipeline, the same for every transport.

    caller frames ─► TurnDetector (Endpointer + barge-in) ─► inputs ─► Responder
        (STT ─► dialog ─► SpeechHandle: TTS into the Playout) ─► sink

Two tasks run per call. The media loop moves one frame in and one frame out every 20 ms,
asks the :class:`TurnDetector` what the frame means and carries it out (speculative
transcription, end of turn, barge-in), and ticks the :class:`CallTimers`. The responder
takes the inputs (caller turns, keypad entries, reprompts) one at a time.

Sources must be clocked: a transport returns a frame of silence when no packet arrived in
time, so that playback and timers never stall on a quiet or lossy network. What a transport
provides is declared in ``media.py`` (``end_reason``, ``clear``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from switchboard.conversation.audio import FRAME_MS
from switchboard.conversation.bridge import AgentRequest, Bridge
from switchboard.conversation.desk import AgentLeg, AgentTakesOver, Desk, HoldMusic
from switchboard.conversation.engines import DialogEngine, SpeechToText, TextToSpeech, VadFactory
from switchboard.conversation.media import AudioSink, AudioSource, Playout
from switchboard.conversation.recorder import Recorder
from switchboard.conversation.responder import (
    Announcement,
    CallEnded,
    CallerTurn,
    DialogInput,
    Input,
    Responder,
)
from switchboard.conversation.speculative import SpeculativeTranscriber
from switchboard.conversation.speech_handle import SpeechHandle
from switchboard.conversation.timers import (
    KEYPAD_KEYS,
    CallTimers,
    KeypadEntered,
    MaxDurationReached,
    NoInput,
)
from switchboard.conversation.turn_detector import (
    BargeIn,
    CallerSpeechStarted,
    CallerTurnEnded,
    Decision,
    DropSpeculative,
    HoldPlayback,
    ResumePlayback,
    StartSpeculative,
    TurnDetector,
    TurnTaking,
)
from switchboard.conversation.turns import TurnRecord

log = logging.getLogger(__name__)


@dataclass
class CallResult:
    """How a call ended, and everything that was said on it."""

    call_id: str
    reason: str
    status: str
    handoff: dict[str, Any] | None
    turns: list[TurnRecord] = field(default_factory=list)
    failed_writes: int = 0
    transferred: bool | None = None
    """After a transfer was asked: whether the far end accepted it."""
    transfer_to: str | None = None
    """Where an agent on the call asked it to be transferred."""


class ConversationPipeline:
    """Runs one call: greets, listens, answers, hands off or hangs up."""

    def __init__(self, *, call_id: str, source: AudioSource, sink: AudioSink,
                 stt: SpeechToText, tts: TextToSpeech, dialog: DialogEngine, vad: VadFactory,
                 recorder: Recorder, turn_taking: TurnTaking,
                 metadata: dict[str, Any] | None = None, conversation_id: str | None = None,
                 greet: bool = True, opening: str | None = None,
                 expect: str | None = None, desk: Desk | None = None) -> None:
        """``conversation_id`` is the dialog's sender id (default: the call id); a caller
        who reconnects passes the earlier one with ``greet=False`` to carry on where the
        conversation was, with the ``opening`` the bot says first (where they were) and
        the answer the bot was waiting for (``expect``, the dialog's requested slot).
        ``vad`` builds the speech detector for the call's rate and the
        ``vad_threshold``. ``on_turn``, when set, sees every turn as it is stored.
        With a ``desk``, a handoff waits for an agent, who then talks with the caller
        through the call's :class:`Bridge`."""
        if source.sample_rate != sink.sample_rate:
            raise ValueError(
                f"source rate {source.sample_rate} Hz differs from sink rate {sink.sample_rate} Hz"
            )
        self.call_id = call_id
        self.conversation_id = conversation_id or call_id
        self.on_turn: Callable[[TurnRecord], None] | None = None
        self.rate = source.sample_rate
        self.source, self.sink = source, sink
        self.recorder = recorder
        self.metadata = {"call_id": call_id, **(metadata or {})}
        self.turns: list[TurnRecord] = []
        self.playout = Playout(self.rate)
        self.detector = TurnDetector.create(
            self.rate, vad(self.rate, turn_taking.vad_threshold), turn_taking)
        self.speculative = SpeculativeTranscriber(stt, self.rate)
        self.timers = CallTimers(turn_taking)
        self.responder = Responder(self, stt, tts, dialog, turn_taking)
        self.desk = desk
        self.hold: HoldMusic | None = None
        """Played to the caller whenever the bot is not speaking (see :meth:`music`)."""
        self._music: HoldMusic | None = None
        self.bridge = Bridge(lambda: TurnDetector.create(
            self.rate, vad(self.rate, turn_taking.vad_threshold), turn_taking),
            lambda item: self._inputs.put_nowait(item))
        self._arrived: AgentLeg | None = None
        """The talk leg of an agent, before the call has seen their claim."""
        self._agent_joined = asyncio.Event()
        self._inputs: asyncio.Queue[Input] = asyncio.Queue()
        if greet:  # first, before keys pressed before the call runs
            self._inputs.put_nowait(DialogInput("call_start", started_wall=time.perf_counter()))
        if opening:
            self._inputs.put_nowait(Announcement(opening))
        self.responder.expect = expect
        self._media_ms = 0
        self._started = datetime.now(UTC)
        self.recorder.clock = lambda: self.wall(self._media_ms)
        self._busy = False
        self._settled = asyncio.Event()
        self._end: CallEnded | None = None
        self._ended = asyncio.Event()
        self.settle_update()

    async def run(self) -> CallResult:
        """Run the call to its end and return how it ended. Always stores the end of the
        call, also when the call is cancelled from outside (then re-raised) or a task fails."""
        self.recorder.event("answered", {"sample_rate": self.rate, **self.metadata})
        detach = (self.desk.attach(self.call_id, self.rate, self._on_leg)
                  if self.desk is not None else None)
        media = asyncio.create_task(self._media_loop(), name=f"media-{self.call_id[:8]}")
        respond = asyncio.create_task(self._respond(), name=f"respond-{self.call_id[:8]}")
        ended = asyncio.create_task(self._ended.wait())
        cancelled = False
        try:
            await asyncio.wait({media, respond, ended}, return_when=asyncio.FIRST_COMPLETED)
            if not self._ended.is_set():
                for task in (media, respond):
                    if task.done() and not task.cancelled() and task.exception() is not None:
                        log.error("call %s: %s failed", self.call_id, task.get_name(),
                                  exc_info=task.exception())
                self._finish(CallEnded("internal_error", "failed"))
        except asyncio.CancelledError:
            cancelled = True
            self._finish(CallEnded("cancelled", "failed"))
        finally:
            if detach is not None:
                detach()
            self.bridge.close()
            if self._arrived is not None:
                self._arrived.close()
            await self._stop_tasks(media, respond, ended)
            self.detector.close()  # (the media loop that used it has stopped)
        end = self._end or CallEnded("internal_error", "failed")
        handoff = self.responder.handoff
        self.recorder.end(reason=end.reason, status=end.status,
                          handoff_target=(handoff or {}).get("queue"))
        await asyncio.shield(self.recorder.flush())
        if cancelled:
            raise asyncio.CancelledError
        return CallResult(call_id=self.call_id, reason=end.reason, status=end.status,
                          handoff=handoff, turns=self.turns,
                          failed_writes=len(self.recorder.failed),
                          transfer_to=self.responder.transfer_to)

    def keypad(self, key: str) -> None:
        """A keypad key (DTMF) from the transport; '#' ends the entry. Call it on the event
        loop's thread (transports on other threads use ``call_soon_threadsafe``)."""
        if self._ended.is_set():
            return
        if len(key) != 1 or key not in KEYPAD_KEYS:
            log.warning("call %s: ignoring keypad input %r", self.call_id, key)
            return
        self.recorder.event("dtmf", {"digit": key})
        entered = self.timers.keypad.press(key, self._media_ms)
        if entered is not None:
            self._submit(entered)

    def hang_up(self, reason: str) -> None:
        """End the call now (for ``reason``); what is being said is cut off."""
        self._finish(CallEnded(reason))

    async def settled(self) -> None:
        """Returns once nothing is being computed or bot audio is ready to play.

        A faster-than-real-time source awaits this before each frame, so compute time
        costs no media time (``switchboard simulate --fast``)."""
        await self._settled.wait()

    @property
    def media_ms(self) -> int:
        return self._media_ms

    @property
    def idle(self) -> bool:
        """Nothing queued, computed, played or heard right now."""
        return (not self._busy and self._inputs.empty() and not self.playout
                and not self.detector.in_speech and not self.timers.keypad.digits)

    # ------------------------------------------------------------------ what the responder uses

    def wall(self, media_ms: int) -> datetime:
        """The wall-clock time of a moment of the call's media."""
        return self._started + timedelta(milliseconds=media_ms)

    def store(self, record: TurnRecord) -> None:
        self.turns.append(record)
        self.recorder.turn(record)
        if self.on_turn is not None:
            try:
                self.on_turn(record)
            except Exception:
                log.exception("call %s: turn listener failed", self.call_id)

    async def wait_media(self, ms: int) -> None:
        """Wait until ``ms`` more of media time has passed (frames went out)."""
        waiter = self.timers.wait(self._media_ms, ms)
        self.settle_update()
        await waiter

    # ------------------------------------------------------------------ media loop

    async def _media_loop(self) -> None:
        try:
            while not self._ended.is_set():
                frame = await self.source.read()
                if frame is None:
                    self._finish(CallEnded(self.source.end_reason or "caller_hangup"))
                    return
                self._media_ms += FRAME_MS
                speech = self.responder.speaking
                for decision in self.detector.process(
                    frame, self._media_ms, bot_speaking=speech is not None,
                    interruptible=speech is not None and speech.interruptible,
                ):
                    self._carry_out(decision, speech)
                out = None if self.detector.holding else self.playout.pop()
                if out is not None and speech is not None:
                    speech.frame_played()
                if out is None and self.hold is not None and speech is None:
                    out = self.hold.frame()
                if self.bridge:
                    out = self.bridge.exchange(frame, out, self._media_ms)
                await self.sink.write(self.playout.silence if out is None else out)
                self._tick_timers()
                self.settle_update()
        except Exception as exc:  # a transport error must still end the call cleanly
            log.exception("call %s: media loop failed", self.call_id)
            self.recorder.event("error", {"stage": "media", "error": repr(exc)})
            self._finish(CallEnded("media_error", "failed"))

    def _carry_out(self, decision: Decision, speech: SpeechHandle | None) -> None:
        if isinstance(decision, CallerSpeechStarted):
            self.timers.activity()
        elif isinstance(decision, StartSpeculative):
            self.speculative.start(decision.audio, self.responder.expect)
        elif isinstance(decision, DropSpeculative):
            self.speculative.drop()
        elif isinstance(decision, CallerTurnEnded) and self.responder.queued:
            self.recorder.event("said_on_hold", {"speech_end_ms": decision.speech_end_ms})
        elif isinstance(decision, CallerTurnEnded):
            self._inputs.put_nowait(CallerTurn(
                audio=decision.audio, speech_start_ms=decision.speech_start_ms,
                speech_end_ms=decision.speech_end_ms, endpoint_ms=decision.endpoint_ms,
                endpoint_wall=time.perf_counter(), early=self.speculative.take(),
                barge_in=decision.barge_in,
            ))
        elif isinstance(decision, HoldPlayback):
            self.sink.clear()
        elif isinstance(decision, ResumePlayback):
            self.recorder.event("barge_in_ignored", {"at_ms": decision.at_ms})
        elif isinstance(decision, BargeIn) and speech is not None:
            dropped = self.playout.clear()
            speech.interrupt()
            self.recorder.event("barge_in", {"at_ms": decision.speech_start_ms,
                                             "held_at_ms": decision.held_at_ms,
                                             "dropped_ms": dropped})

    def _tick_timers(self) -> None:
        agent = self.bridge.agent
        for event in self.timers.tick(self._media_ms, idle=self.idle and agent is None):
            if isinstance(event, MaxDurationReached):
                self._finish(CallEnded("max_duration"))
            elif isinstance(event, KeypadEntered) and agent is not None:
                self.recorder.event("keypad_with_agent", {"digits": event.digits})
            elif isinstance(event, KeypadEntered):
                self._submit(event)
            elif isinstance(event, NoInput):
                self.recorder.event("no_input", {"final": event.final})
                self._inputs.put_nowait(DialogInput(
                    "no_input_final" if event.final else "no_input",
                    started_wall=time.perf_counter()))

    def _submit(self, entered: KeypadEntered) -> None:
        self._inputs.put_nowait(DialogInput(
            "inform", keypad=entered.digits, keypad_started_ms=entered.started_ms,
            started_wall=time.perf_counter()))

    # ------------------------------------------------------------------ responder

    async def _respond(self) -> None:
        while True:
            item = await self._inputs.get()
            self._busy = True
            self.settle_update()
            try:
                await self.responder.handle(item)
            except CallEnded as end:
                self._finish(end)
                return
            except AgentTakesOver as taken:
                await self._bring_agent(taken.agent)
            finally:
                self._busy = False
                self.timers.activity()
                self.settle_update()

    # ------------------------------------------------------------------ agents

    def _on_leg(self, leg: AgentLeg) -> None:
        """A browser leg for this call was answered (the desk, on the call's loop). The
        desk relays only the claiming agent's talk leg; it may arrive before the wait has
        seen the claim, so it is kept until :meth:`_bring_agent` takes it."""
        if self._ended.is_set():
            leg.close()
        elif leg.mode != "talk":
            self.bridge.join(leg, self._media_ms)
            self.recorder.event(leg.mode, {"agent": leg.agent})
        elif self.bridge.agent is not None and self.bridge.agent.agent == leg.agent:
            self.bridge.join(leg, self._media_ms)  # the agent's page reconnected
            self.recorder.event("agent_rejoined", {"agent": leg.agent})
        else:
            if self._arrived is not None:
                self._arrived.close()
            self._arrived = leg
            self._agent_joined.set()

    async def _bring_agent(self, agent: str) -> None:
        """``agent`` took the call: wait for their audio, then they talk with the caller
        (the responder transcribes both sides). If they do not connect in time the bot
        takes the caller back."""
        assert self.desk is not None
        self.responder.handoff = None
        self.responder.expect = None  # the bot's last question is not the agent's
        self.hold = self.music()
        deadline = time.monotonic() + self.desk.policy.connect_timeout_s
        try:
            while self._arrived is None or self._arrived.agent != agent:
                if self._arrived is not None:
                    log.warning("call %s: %s is not the agent who took the call",
                                self.call_id, self._arrived.agent)
                    self._arrived.close()
                    self._arrived = None
                self._agent_joined.clear()
                await asyncio.wait_for(self._agent_joined.wait(),
                                       max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            self.recorder.event("agent_not_connected", {"agent": agent})
            self._inputs.put_nowait(AgentRequest(agent, "not_connected"))
            return
        finally:
            self.hold = None
        leg, self._arrived = self._arrived, None
        self.bridge.join(leg, self._media_ms)
        self.recorder.event("agent_joined", {"agent": agent})

    def music(self) -> HoldMusic:
        """The call's hold music (made once; it goes on where it paused)."""
        if self._music is None:
            assert self.desk is not None
            self._music = HoldMusic(self.desk.music(self.rate), self.rate)
        return self._music

    @property
    def with_agent(self) -> bool:
        """An agent talks with the caller (the bot is silent)."""
        return self.bridge.agent is not None

    def release_agent(self, agent: str | None) -> None:
        """The agent (who had the call, if anyone) leaves; the bot takes the caller back."""
        self.bridge.release()
        if agent is not None:
            self.recorder.event("agent_left", {"agent": agent})
        if self.desk is not None:
            self.desk.released(self.call_id)

    def settle_update(self) -> None:
        """Something was computed or queued: re-evaluate the settled signal."""
        computing = self._busy or not self._inputs.empty()
        if (not computing or self.playout.pending_ms or self.timers.waiting
                or self._ended.is_set()):
            self._settled.set()
        else:
            self._settled.clear()

    def _finish(self, end: CallEnded) -> None:
        if self._end is None:
            self._end = end
        self._ended.set()
        self._settled.set()

    async def _stop_tasks(self, *tasks: asyncio.Task[Any]) -> None:
        """Cancel everything this call started and note caller turns left unanswered."""
        while not self._inputs.empty():
            item = self._inputs.get_nowait()
            if isinstance(item, CallerTurn):
                if item.early is not None:
                    item.early.cancel()
                self.recorder.event("unanswered_turn", {"speech_end_ms": item.speech_end_ms})
        if self.responder.speech is not None:
            self.responder.speech.interrupt()
        self.speculative.cancel()
        for task in tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
