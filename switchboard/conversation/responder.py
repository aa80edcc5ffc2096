"""Answers the caller, one input at a time: a caller turn is transcribed (reusing the
speculative transcript when it covers the whole turn), keypad entries and events (the
greeting, reprompts) go straight to the dialog; the reply is spoken sentence by sentence,
and a hangup or handoff ends the call after its last words have been heard.

Goodbyes, handoff announcements and apologies are not interruptible.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import numpy as np

from switchboard.conversation.bridge import AgentRequest, AgentTurn
from switchboard.conversation.desk import AgentTakesOver, Desk, HoldMusic, QueueWait
from switchboard.conversation.engines import (
    DialogEngine,
    DialogReply,
    DialogUnavailable,
    SpeechToText,
    TextToSpeech,
    Transcript,
)
from switchboard.conversation.media import Playout
from switchboard.conversation.recorder import Recorder
from switchboard.conversation.speech_handle import SpeechHandle, SpeechTimings
from switchboard.conversation.timers import CallTimers
from switchboard.conversation.turn_detector import TurnTaking
from switchboard.conversation.turns import TurnRecord

log = logging.getLogger(__name__)

END_OF_CALL_DRAIN_MS = 300
"""Silence sent after the last words of a call, so transports' buffers play them out."""


@dataclass(frozen=True)
class CallerTurn:
    """A finished caller turn waiting for an answer."""

    audio: np.ndarray
    speech_start_ms: int
    speech_end_ms: int
    endpoint_ms: int
    endpoint_wall: float
    early: asyncio.Task[Transcript] | None
    """The speculative transcription, when one covers the whole turn."""
    barge_in: bool


@dataclass(frozen=True)
class DialogInput:
    """An event for the dialog (``call_start``, ``no_input``…) or a keypad entry."""

    intent: str
    keypad: str | None = None
    keypad_started_ms: int = 0
    started_wall: float = 0.0


@dataclass(frozen=True)
class Announcement:
    """Words the bot says without asking the dialog (a resumed call's opening)."""

    text: str


Input = CallerTurn | DialogInput | Announcement | AgentTurn | AgentRequest


class CallEnded(Exception):
    """The call is over: how and why."""

    def __init__(self, reason: str, status: str = "ended") -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


RACE_AFTER_S = 0.15
"""How long a turn waits for its pending speculative transcription before it also asks
for a final one (a guess being computed is usually done by then)."""


class Stage(Protocol):
    """What the responder needs of the call it answers on (the pipeline)."""

    call_id: str
    conversation_id: str
    metadata: dict[str, Any]
    rate: int
    recorder: Recorder
    timers: CallTimers
    playout: Playout
    turns: list[TurnRecord]
    desk: Desk | None
    """Where a handoff waits for an agent; None: the call ends with the handoff."""
    hold: HoldMusic | None

    def music(self) -> HoldMusic: ...

    @property
    def with_agent(self) -> bool:
        """An agent talks with the caller: turns are transcribed, not answered."""
        ...

    def release_agent(self, agent: str | None) -> None: ...

    @property
    def media_ms(self) -> int: ...

    def wall(self, media_ms: int) -> datetime: ...

    def store(self, record: TurnRecord) -> None: ...

    async def wait_media(self, ms: int) -> None: ...

    def settle_update(self) -> None:
        """Bot audio was queued (the settled signal of faster-than-real-time calls)."""
        ...


class Responder:
    """Handles one input at a time; raises :class:`CallEnded` when the call is over."""

    def __init__(self, stage: Stage, stt: SpeechToText, tts: TextToSpeech,
                 dialog: DialogEngine, texts: TurnTaking) -> None:
        self.stage = stage
        self.stt = stt
        self.tts = tts
        self.dialog = dialog
        self.apology_text = texts.apology_text
        self.empty_reply_text = texts.empty_reply_text
        self.handoff: dict[str, Any] | None = None
        self.speech: SpeechHandle | None = None
        """The bot's latest utterance."""
        self.expect: str | None = None
        """The answer the bot asked for last (the dialog's requested slot): the caller's
        next turn is transcribed knowing it."""
        self.queued = False
        """The caller waits for an agent: what they say meanwhile is not answered."""
        self.transfer_to: str | None = None
        """Where an agent asked the call to be transferred."""

    @property
    def speaking(self) -> SpeechHandle | None:
        """The utterance being synthesized or played, if any."""
        return self.speech if self.speech is not None and self.speech.playing else None

    async def say(self, text: str, *, interruptible: bool) -> tuple[TurnRecord, SpeechTimings]:
        """Speak ``text`` until it has been heard or the caller barges in; the bot's turn
        record (not stored yet) and the speech's timings. If the call ends meanwhile, what
        was being said is still stored."""
        stage = self.stage
        speech = self.speech = SpeechHandle(
            text, tts=self.tts, playout=stage.playout, interruptible=interruptible,
            on_progress=stage.settle_update,
        )
        record = TurnRecord(speaker="bot", text=text, started_at=stage.wall(stage.media_ms))
        try:
            timings = await speech.wait(lambda: stage.media_ms)
        except asyncio.CancelledError:
            record.ended_at = stage.wall(stage.media_ms)
            stage.store(record)
            raise
        record.ended_at = stage.wall(timings.ended_ms)
        record.barge_in, record.tts_ms = timings.interrupted, timings.tts_ms
        return record, timings

    async def handle(self, item: Input) -> None:
        """Answer ``item``. A dead dialog or a failing turn is apologised for and ends the
        call as failed (:class:`CallEnded`); what was said so far is kept."""
        try:
            if isinstance(item, AgentRequest):
                await self._agent_request(item)
            elif isinstance(item, AgentTurn):
                heard = await self.stt.transcribe(item.audio, self.stage.rate)
                self._store_heard("agent", heard, item.speech_start_ms, item.speech_end_ms)
            elif isinstance(item, CallerTurn) and self.stage.with_agent:
                self._store_heard("caller", await self._transcribe(item),
                                  item.speech_start_ms, item.speech_end_ms)
            elif isinstance(item, CallerTurn):
                await self._caller_turn(item)
            elif isinstance(item, Announcement):
                record, _ = await self.say(item.text, interruptible=True)
                self.stage.store(record)
            else:
                await self._dialog_input(item)
        except (CallEnded, AgentTakesOver):
            raise
        except DialogUnavailable as exc:
            await self._fail("dialog_unavailable", "dialog", exc)
        except Exception as exc:
            log.exception("call %s: turn failed", self.stage.call_id)
            await self._fail("turn_error", "turn", exc)

    async def _caller_turn(self, turn: CallerTurn) -> None:
        stage = self.stage
        transcript = await self._transcribe(turn)
        stt_ms = (time.perf_counter() - turn.endpoint_wall) * 1000
        text = transcript.text.strip()
        if not text:
            stage.recorder.event("unintelligible", {"audio_ms": transcript.audio_ms,
                                                    "barge_in": turn.barge_in})
            if turn.barge_in:  # the caller stopped the bot; say we did not catch it
                await self._dialog_input(DialogInput("nlu_fallback",
                                                     started_wall=turn.endpoint_wall))
            return
        stage.timers.heard_caller()
        said = TurnRecord(
            speaker="caller", text=text, started_at=stage.wall(turn.speech_start_ms),
            ended_at=stage.wall(turn.speech_end_ms), confidence=transcript.confidence,
            barge_in=turn.barge_in, endpoint_ms=float(turn.endpoint_ms), stt_ms=round(stt_ms, 1),
        )
        log.info("call %s: caller said %r (stt %.0f ms)", stage.call_id, text, stt_ms)
        dialog_started = time.perf_counter()
        try:
            reply = await self.dialog.send(stage.conversation_id, text, stage.metadata)
        except BaseException:
            stage.store(said)  # what the caller said is kept whatever the dialog did
            raise
        said.intent, said.slots = reply.intent, reply.slots
        self.expect = reply.expects
        stage.store(said)
        await self._speak_reply(reply, origin_wall=turn.endpoint_wall,
                                endpoint_ms=float(turn.endpoint_ms), stt_ms=stt_ms,
                                dialog_started=dialog_started)

    def _store_heard(self, speaker: str, transcript: Transcript, start_ms: int,
                     end_ms: int) -> None:
        """Store what the caller or the agent said while an agent has the call (nobody
        answers it: the agent talks for the bot)."""
        stage = self.stage
        text = transcript.text.strip()
        if text:
            stage.store(TurnRecord(speaker=speaker, text=text, started_at=stage.wall(start_ms),
                                   ended_at=stage.wall(end_ms),
                                   confidence=transcript.confidence))

    async def _agent_request(self, asked: AgentRequest) -> None:
        """The agent ended the call, handed it back, asked for a transfer, or is gone."""
        stage = self.stage
        policy = stage.desk.policy if stage.desk is not None else None
        what, _, target = asked.what.partition(" ")
        stage.recorder.event("agent_request", {"agent": asked.agent, "request": asked.what})
        if what == "hangup":
            raise CallEnded("agent_hangup")
        if what == "transfer" and target:
            self.transfer_to = target
            raise CallEnded("transferred")
        if what in ("bot", "gone", "not_connected") and policy is not None:
            stage.release_agent(None if what == "not_connected" else asked.agent)
            await self.announce({"bot": policy.back_to_bot_text, "gone": policy.agent_lost_text,
                                 "not_connected": policy.not_connected_text}[what])
        else:
            log.warning("call %s: ignoring agent request %r", stage.call_id, asked.what)

    async def _transcribe(self, turn: CallerTurn) -> Transcript:
        """Use the speculative transcript when there is one: it is dropped if the caller
        resumed speaking, so a surviving one covers the whole utterance.

        One still pending after :data:`RACE_AFTER_S` may sit queued at speculative
        priority behind other calls' final turns: a final request for the same audio then
        races it, and the loser is cancelled (dropped unheard if still queued), so this
        turn never waits behind guesses, and a speech server already computing the guess
        never computes the final request too."""
        early = turn.early
        if early is not None and not early.done():
            await asyncio.wait({early}, timeout=RACE_AFTER_S)
        if early is not None and not early.done():
            final = asyncio.ensure_future(
                self.stt.transcribe(turn.audio, self.stage.rate, expect=self.expect))
            racing: set[asyncio.Future[Transcript]] = {early, final}
            try:
                while racing:
                    done, racing = await asyncio.wait(racing,
                                                      return_when=asyncio.FIRST_COMPLETED)
                    for candidate in (early, final):  # the guess first when both are in
                        if candidate in done and not candidate.cancelled() and \
                                candidate.exception() is None:
                            return candidate.result()
            finally:
                for loser in racing:
                    loser.cancel()
            return final.result()  # both failed: the final request's error
        if early is not None:
            try:
                return early.result()
            except Exception:
                log.warning("call %s: speculative transcription failed, retrying",
                            self.stage.call_id)
        return await self.stt.transcribe(turn.audio, self.stage.rate, expect=self.expect)

    async def _dialog_input(self, item: DialogInput) -> None:
        stage = self.stage
        dialog_started = time.perf_counter()
        if item.keypad is not None:
            stage.timers.heard_caller()
            stage.store(TurnRecord(
                speaker="caller", text=f"[keypad] {item.keypad}",
                started_at=stage.wall(item.keypad_started_ms), ended_at=stage.wall(stage.media_ms),
                intent=item.intent, confidence=1.0,  # keypad input is exact
            ))
            reply = await self.dialog.send_keypad(stage.conversation_id, item.keypad,
                                                  stage.metadata)
            self.expect = None  # the keypad answered it
        else:
            reply = await self.dialog.send_event(stage.conversation_id, item.intent,
                                                 stage.metadata)
        await self._speak_reply(reply, origin_wall=item.started_wall, endpoint_ms=None,
                                stt_ms=None, dialog_started=dialog_started,
                                answers_caller=item.keypad is not None)

    async def _speak_reply(self, reply: DialogReply, *, origin_wall: float,
                           endpoint_ms: float | None, stt_ms: float | None,
                           dialog_started: float, answers_caller: bool = True) -> None:
        """Say the dialog's reply; a reply to what the caller said or keyed that has
        nothing to say gets the retry prompt (never silence)."""
        stage = self.stage
        dialog_ms = (time.perf_counter() - dialog_started) * 1000
        text = " ".join(reply.texts)
        final = reply.hangup or reply.handoff is not None
        if not text and not final and answers_caller:  # Rasa lost a failed action's words
            log.warning("call %s: the dialog answered %r with nothing to say; asking the "
                        "caller to try again", stage.call_id, reply.sent_text)
            stage.recorder.event("empty_reply", {"sent": reply.sent_text})
            text = self.empty_reply_text
        if text:
            record, timings = await self.say(text, interruptible=not final)
            record.endpoint_ms = endpoint_ms
            record.stt_ms = round(stt_ms, 1) if stt_ms is not None else None
            record.dialog_ms = round(dialog_ms, 1)
            record.slots, record.expects = reply.slots, reply.expects
            if timings.first_frame_wall is not None:
                heard_after_ms = (timings.first_frame_wall - origin_wall) * 1000
                record.response_ms = round((endpoint_ms or 0.0) + heard_after_ms, 1)
            stage.store(record)
            log.info("call %s: bot said %r (response %s ms)%s", stage.call_id, text,
                     record.response_ms, " [interrupted]" if record.barge_in else "")
        if final:
            await stage.wait_media(END_OF_CALL_DRAIN_MS)
        if reply.handoff is not None:
            self.handoff = reply.handoff
            stage.recorder.event("handoff", reply.handoff)
            if stage.desk is None:
                raise CallEnded("handoff")
            await self._wait_for_agent(stage.desk)
        elif reply.hangup:
            raise CallEnded("bot_hangup")

    def hush(self) -> None:
        """Stop the bot's utterance at once: queued audio dropped, synthesis stopped."""
        if self.speech is not None and self.speech.playing:
            self.stage.playout.clear()
            self.speech.interrupt()

    async def announce(self, text: str) -> None:
        """Say ``text`` (not interruptible) and store it as the bot's turn."""
        record, _ = await self.say(text, interruptible=False)
        self.stage.store(record)

    async def _wait_for_agent(self, desk: Desk) -> None:
        """The caller waits in the desk's queue; raises :class:`AgentTakesOver` when an
        agent took the call, or falls back: the transfer (the call ends with its handoff),
        or the bot carries on."""
        stage, policy = self.stage, desk.policy
        self.queued = True
        try:
            outcome = await QueueWait(stage, desk, self).run()
        finally:
            self.queued = False
        if outcome.kind == "agent":
            assert outcome.agent is not None
            raise AgentTakesOver(outcome.agent)
        if policy.fallback == "transfer":
            await self.announce(policy.transfer_text)
            await stage.wait_media(END_OF_CALL_DRAIN_MS)
            raise CallEnded("handoff")
        self.handoff = None  # nobody took it: the bot goes on with the caller
        await self.announce(policy.fallback_text)

    async def _fail(self, reason: str, stage_name: str, exc: BaseException) -> None:
        """Something broke: say sorry, keep what was said, end the call as failed."""
        stage = self.stage
        log.error("call %s: %s failed, apologising and ending the call: %s",
                  stage.call_id, stage_name, exc)
        stage.recorder.event("error", {"stage": stage_name, "error": str(exc)})
        try:
            record, _ = await self.say(self.apology_text, interruptible=False)
            stage.store(record)
            await stage.wait_media(END_OF_CALL_DRAIN_MS)
        except Exception:
            log.exception("call %s: could not play the apology", stage.call_id)
        raise CallEnded(reason, "failed")
