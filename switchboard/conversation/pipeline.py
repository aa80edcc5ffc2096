"""The per-call conversation pipeline, the same for every transport.

    caller frames ─► Endpointer (VAD) ─► turn queue ─► STT ─► dialog ─► TTS ─► Playout ─► sink

Two tasks run per call. The media loop moves one frame in and one frame out every 20 ms,
feeds the endpointer, and owns barge-in and the no-input timer. The responder takes caller
turns (and keypad entries, reprompts) one at a time and speaks the dialog's reply sentence
by sentence.

Barge-in: as soon as the caller speaks while the bot talks, playback is held (silence goes
out at once); once the caller has spoken ``min_utterance_ms`` the reply is cancelled and
its queued audio dropped, and if the sound dies out before that (a cough, a click) playback
resumes where it stopped. Goodbyes, handoff announcements and apologies are not
interruptible: the call ends after them.

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

import numpy as np

from switchboard.base.settings import Settings
from switchboard.conversation.audio import FRAME_MS
from switchboard.conversation.endpointing import Endpointer, VadEvent
from switchboard.conversation.engines import (
    DialogEngine,
    DialogReply,
    DialogUnavailable,
    SpeechToText,
    TextToSpeech,
    Transcript,
    VadFactory,
)
from switchboard.conversation.media import AudioSink, AudioSource, Playout
from switchboard.conversation.recorder import CallRecorder
from switchboard.conversation.turns import TurnRecord

log = logging.getLogger(__name__)

END_OF_CALL_DRAIN_MS = 300
"""Silence sent after the last words of a call, so transports' buffers play them out."""


def _default(name: str) -> Any:
    return Settings.model_fields[name].default


@dataclass(frozen=True)
class TurnTaking:
    """Turn-taking knobs; defaults and meanings are the settings' (README table)."""

    vad_threshold: float = _default("vad_threshold")
    speech_start_ms: int = _default("speech_start_ms")
    end_of_turn_ms: int = _default("end_of_turn_ms")
    early_transcribe_ms: int = _default("early_transcribe_ms")
    min_utterance_ms: int = _default("min_utterance_ms")
    max_utterance_s: float = _default("max_utterance_s")
    barge_in: bool = _default("barge_in")
    no_input_timeout_s: float = _default("no_input_timeout_s")
    max_reprompts: int = _default("max_reprompts")
    dtmf_timeout_s: float = _default("dtmf_timeout_s")
    max_call_s: float = _default("max_call_s")
    apology_text: str = _default("apology_text")

    @classmethod
    def from_settings(cls, settings: Settings) -> TurnTaking:
        return cls(**{name: getattr(settings, name) for name in cls.__dataclass_fields__})


@dataclass
class CallResult:
    """How a call ended, and everything that was said on it."""

    call_id: str
    reason: str
    status: str
    handoff: dict[str, Any] | None
    turns: list[TurnRecord] = field(default_factory=list)
    failed_writes: int = 0


@dataclass(frozen=True)
class _CallerTurn:
    audio: np.ndarray
    speech_start_ms: int
    speech_end_ms: int
    endpoint_ms: int
    endpoint_wall: float
    early: asyncio.Task[Transcript] | None
    barge_in: bool


@dataclass(frozen=True)
class _DialogInput:
    intent: str
    entities: dict[str, str] | None = None
    keypad: str | None = None
    started_wall: float = 0.0


class _CallEnded(Exception):
    def __init__(self, reason: str, status: str = "ended") -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class ConversationPipeline:
    """Runs one call: greets, listens, answers, hands off or hangs up."""

    def __init__(
        self,
        *,
        call_id: str,
        source: AudioSource,
        sink: AudioSink,
        stt: SpeechToText,
        tts: TextToSpeech,
        dialog: DialogEngine,
        vad: VadFactory,
        recorder: CallRecorder,
        turn_taking: TurnTaking,
        metadata: dict[str, Any] | None = None,
        conversation_id: str | None = None,
        greet: bool = True,
        on_turn: Callable[[TurnRecord], None] | None = None,
    ) -> None:
        """``conversation_id`` is the dialog's sender id (default: the call id); a caller
        who reconnects passes the earlier one with ``greet=False`` to carry on where the
        conversation was. ``vad`` builds the speech detector for the call's rate and the
        ``vad_threshold``. ``on_turn`` sees every turn as it is stored (live transcripts)."""
        if source.sample_rate != sink.sample_rate:
            raise ValueError(
                f"source rate {source.sample_rate} Hz differs from sink rate {sink.sample_rate} Hz"
            )
        self.call_id = call_id
        self.conversation_id = conversation_id or call_id
        self.greet = greet
        self.on_turn = on_turn
        self.rate = source.sample_rate
        self.source = source
        self.sink = sink
        self.stt = stt
        self.tts = tts
        self.dialog = dialog
        self.recorder = recorder
        self.opts = turn_taking
        self.metadata = {"call_id": call_id, **(metadata or {})}
        self.turns: list[TurnRecord] = []
        self.playout = Playout(self.rate)
        self.endpointer = Endpointer(
            self.rate,
            vad(self.rate, turn_taking.vad_threshold),
            speech_start_ms=turn_taking.speech_start_ms,
            end_of_turn_ms=turn_taking.end_of_turn_ms,
            early_end_ms=turn_taking.early_transcribe_ms or None,
            min_utterance_ms=turn_taking.min_utterance_ms,
            max_utterance_s=turn_taking.max_utterance_s,
        )
        self._queue: asyncio.Queue[_CallerTurn | _DialogInput] = asyncio.Queue()
        self._media_ms = 0
        self._started = datetime.now(UTC)
        self.recorder.clock = lambda: self._wall(self._media_ms)
        self._busy = False
        self._speaking: asyncio.Task[None] | None = None
        self._interruptible = True
        self._hold_since_ms: int | None = None
        self._barged_in = False
        self._first_frame: asyncio.Future[float] | None = None
        self._drained = asyncio.Event()
        self._settled = asyncio.Event()
        self._media_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._early: asyncio.Task[Transcript] | None = None
        self._early_inflight: asyncio.Task[Transcript] | None = None
        self._speech_start_ms = 0
        self._silence_ms = 0
        self._reprompts = 0
        self._dtmf = ""
        self._dtmf_last_ms = 0
        self._end: _CallEnded | None = None
        self._handoff: dict[str, Any] | None = None
        self._ended = asyncio.Event()
        self._settle_update()

    # ------------------------------------------------------------------ public API

    async def run(self) -> CallResult:
        """Run the call to its end and return how it ended. Always stores the end of the
        call, also when the call is cancelled from outside (then re-raised) or a task fails."""
        self.recorder.event("answered", {"sample_rate": self.rate, **self.metadata})
        if self.greet:
            self._queue.put_nowait(_DialogInput("call_start", started_wall=time.perf_counter()))
        media = asyncio.create_task(self._media_loop(), name=f"media-{self.call_id[:8]}")
        responder = asyncio.create_task(self._responder(), name=f"respond-{self.call_id[:8]}")
        ended = asyncio.create_task(self._ended.wait())
        cancelled = False
        try:
            await asyncio.wait({media, responder, ended}, return_when=asyncio.FIRST_COMPLETED)
            if not self._ended.is_set():
                for task in (media, responder):
                    if task.done() and not task.cancelled() and task.exception() is not None:
                        log.error("call %s: %s failed", self.call_id, task.get_name(),
                                  exc_info=task.exception())
                self._finish(_CallEnded("internal_error", "failed"))
        except asyncio.CancelledError:
            cancelled = True
            self._finish(_CallEnded("cancelled", "failed"))
        finally:
            await self._stop_tasks(media, responder, ended)
        end = self._end or _CallEnded("internal_error", "failed")
        self.recorder.end(
            reason=end.reason,
            status=end.status,
            handoff_target=(self._handoff or {}).get("queue"),
        )
        await asyncio.shield(self.recorder.flush())
        if cancelled:
            raise asyncio.CancelledError
        return CallResult(
            call_id=self.call_id,
            reason=end.reason,
            status=end.status,
            handoff=self._handoff,
            turns=self.turns,
            failed_writes=len(self.recorder.failed),
        )

    def keypad(self, digit: str) -> None:
        """A keypad digit (DTMF) from the transport; '#' ends the entry. Call it on the
        event loop's thread (transports on other threads use ``call_soon_threadsafe``)."""
        if self._ended.is_set():
            return
        if digit not in "0123456789*#" or len(digit) != 1:
            log.warning("call %s: ignoring keypad input %r", self.call_id, digit)
            return
        self.recorder.event("dtmf", {"digit": digit})
        if digit == "#":
            self._submit_keypad()
        else:
            self._dtmf += digit
            self._dtmf_last_ms = self._media_ms

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
        return (
            not self._busy
            and self._queue.empty()
            and not self.playout
            and not self.endpointer.in_speech
            and not self._dtmf
        )

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    # ------------------------------------------------------------------ media loop

    async def _media_loop(self) -> None:
        try:
            while not self._ended.is_set():
                frame = await self.source.read()
                if frame is None:
                    # A transport may say why the media stopped (e.g. "rtp_timeout").
                    reason = self.source.end_reason or "caller_hangup"
                    self._finish(_CallEnded(reason))
                    return
                self._media_ms += FRAME_MS
                for vad_event in self.endpointer.process(frame):
                    self._on_vad(vad_event)
                self._check_barge_in()
                out = None if self._hold_since_ms is not None else self.playout.pop()
                if out is not None:
                    if self._first_frame is not None and not self._first_frame.done():
                        self._first_frame.set_result(time.perf_counter())
                    if not self.playout:
                        self._drained.set()
                    await self.sink.write(out)
                else:
                    await self.sink.write(self.playout.silence)
                self._tick_timers()
                self._settle_update()
        except Exception as exc:  # a transport error must still end the call cleanly
            log.exception("call %s: media loop failed", self.call_id)
            self.recorder.event("error", {"stage": "media", "error": repr(exc)})
            self._finish(_CallEnded("media_error", "failed"))

    def _on_vad(self, event: VadEvent) -> None:
        if event.kind == "speech_start":
            self._speech_start_ms = event.at_ms - self.endpointer.speech_ms
            self._silence_ms = 0
        elif event.kind == "speech_pause" and event.audio is not None:
            # One speculative transcription at a time: a stale one still occupies the
            # STT worker, and turn_end transcribes anyway if there is no fresh result.
            if self._early_inflight is None or self._early_inflight.done():
                self._early = asyncio.create_task(self.stt.transcribe(event.audio, self.rate))
                self._early.add_done_callback(_retrieve)
                self._early_inflight = self._early
        elif event.kind == "speech_resume":
            self._early = None
        elif event.kind == "turn_end" and event.audio is not None:
            speech_end = event.speech_end_ms if event.speech_end_ms is not None else event.at_ms
            early, self._early = self._early, None
            barge_in, self._barged_in = self._barged_in, False
            self._queue.put_nowait(
                _CallerTurn(
                    audio=event.audio,
                    speech_start_ms=self._speech_start_ms,
                    speech_end_ms=speech_end,
                    endpoint_ms=event.at_ms - speech_end,
                    endpoint_wall=time.perf_counter(),
                    early=early,
                    barge_in=barge_in,
                )
            )

    def _check_barge_in(self) -> None:
        """Hold playback while the caller talks over the bot; cancel the reply once it is
        clearly speech, resume it if the sound was too short to be an utterance."""
        speaking = self._speaking is not None and not self._speaking.done()
        if not (self.opts.barge_in and speaking and self._interruptible
                and self.endpointer.in_speech):
            if self._hold_since_ms is not None:
                self.recorder.event("barge_in_ignored", {"at_ms": self._media_ms})
                self._hold_since_ms = None
            return
        if self._hold_since_ms is None:
            self._hold_since_ms = self._media_ms
            self.sink.clear()
        if self.endpointer.speech_ms >= self.opts.min_utterance_ms:
            assert self._speaking is not None
            dropped = self.playout.clear()
            self._speaking.cancel()
            self._barged_in = True
            self.recorder.event("barge_in", {"at_ms": self._speech_start_ms,
                                             "held_at_ms": self._hold_since_ms,
                                             "dropped_ms": dropped})
            self._hold_since_ms = None

    def _tick_timers(self) -> None:
        while self._media_waiters and self._media_waiters[0][0] <= self._media_ms:
            _, waiter = self._media_waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
        if self._media_ms >= self.opts.max_call_s * 1000:
            self._finish(_CallEnded("max_duration"))
            return
        if self._dtmf and self._media_ms - self._dtmf_last_ms >= self.opts.dtmf_timeout_s * 1000:
            self._submit_keypad()
        self._silence_ms = self._silence_ms + FRAME_MS if self.idle else 0
        if self._silence_ms >= self.opts.no_input_timeout_s * 1000:
            self._silence_ms = 0
            final = self._reprompts >= self.opts.max_reprompts
            self._reprompts += 1
            self.recorder.event("no_input", {"final": final})
            self._queue.put_nowait(
                _DialogInput("no_input_final" if final else "no_input",
                             started_wall=time.perf_counter())
            )

    def _submit_keypad(self) -> None:
        digits, self._dtmf = self._dtmf, ""
        if digits:
            self._queue.put_nowait(
                _DialogInput("inform", keypad=digits, started_wall=time.perf_counter())
            )

    async def _wait_media(self, ms: int) -> None:
        """Wait until ``ms`` more of media time has passed (frames went out)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._media_waiters.append((self._media_ms + ms, waiter))
        self._settle_update()
        await waiter

    def _settle_update(self) -> None:
        computing = self._busy or not self._queue.empty()
        if (not computing or self.playout.pending_ms or self._media_waiters
                or self._ended.is_set()):
            self._settled.set()
        else:
            self._settled.clear()

    def _finish(self, end: _CallEnded) -> None:
        if self._end is None:
            self._end = end
        self._ended.set()
        self._settled.set()

    async def _stop_tasks(self, *tasks: asyncio.Task[Any]) -> None:
        """Cancel everything this call started and note caller turns left unanswered."""
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, _CallerTurn):
                if item.early is not None:
                    item.early.cancel()
                self.recorder.event("unanswered_turn", {"speech_end_ms": item.speech_end_ms})
        for task in (*tasks, self._speaking, self._early_inflight):
            if task is not None and not task.done():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------ responder

    async def _responder(self) -> None:
        while True:
            item = await self._queue.get()
            self._busy = True
            self._settle_update()
            try:
                if isinstance(item, _CallerTurn):
                    await self._handle_caller_turn(item)
                else:
                    await self._handle_dialog_input(item)
            except _CallEnded as end:
                self._finish(end)
                return
            except DialogUnavailable as exc:
                await self._fail("dialog_unavailable", "dialog", exc)
                return
            except Exception as exc:
                log.exception("call %s: turn failed", self.call_id)
                await self._fail("turn_error", "turn", exc)
                return
            finally:
                self._busy = False
                self._silence_ms = 0
                self._settle_update()

    async def _handle_caller_turn(self, turn: _CallerTurn) -> None:
        transcript = await self._transcribe(turn)
        stt_ms = (time.perf_counter() - turn.endpoint_wall) * 1000
        text = transcript.text.strip()
        if not text:
            self.recorder.event("unintelligible", {"audio_ms": transcript.audio_ms,
                                                   "barge_in": turn.barge_in})
            if turn.barge_in:  # the caller stopped the bot; say we did not catch it
                await self._handle_dialog_input(
                    _DialogInput("nlu_fallback", started_wall=turn.endpoint_wall)
                )
            return
        self._reprompts = 0
        said = TurnRecord(
            speaker="caller",
            text=text,
            started_at=self._wall(turn.speech_start_ms),
            ended_at=self._wall(turn.speech_end_ms),
            confidence=transcript.confidence,
            barge_in=turn.barge_in,
            endpoint_ms=float(turn.endpoint_ms),
            stt_ms=round(stt_ms, 1),
        )
        log.info("call %s: caller said %r (stt %.0f ms)", self.call_id, text, stt_ms)
        dialog_started = time.perf_counter()
        try:
            reply = await self.dialog.send(self.conversation_id, text, self.metadata)
        except BaseException:
            self._store(said)  # what the caller said is kept whatever the dialog did
            raise
        said.intent = reply.intent
        self._store(said)
        await self._speak_reply(
            reply,
            origin_wall=turn.endpoint_wall,
            endpoint_ms=float(turn.endpoint_ms),
            stt_ms=stt_ms,
            dialog_started=dialog_started,
        )

    async def _transcribe(self, turn: _CallerTurn) -> Transcript:
        """Use the speculative transcript when there is one: it is dropped if the caller
        resumed speaking, so a surviving one covers the whole utterance."""
        if turn.early is not None:
            try:
                return await turn.early
            except Exception:
                log.warning("call %s: speculative transcription failed, retrying", self.call_id)
        return await self.stt.transcribe(turn.audio, self.rate)

    async def _handle_dialog_input(self, item: _DialogInput) -> None:
        dialog_started = time.perf_counter()
        if item.keypad is not None:
            self._reprompts = 0
            self._store(
                TurnRecord(speaker="caller", text=f"[keypad] {item.keypad}",
                           started_at=self._wall(self._dtmf_last_ms),
                           ended_at=self._wall(self._media_ms),
                           intent=item.intent, confidence=1.0)  # keypad input is exact
            )
            reply = await self.dialog.send_keypad(self.conversation_id, item.keypad, self.metadata)
        else:
            reply = await self.dialog.send_event(self.conversation_id, item.intent, self.metadata)
        await self._speak_reply(
            reply, origin_wall=item.started_wall, endpoint_ms=None, stt_ms=None,
            dialog_started=dialog_started,
        )

    async def _speak_reply(
        self,
        reply: DialogReply,
        *,
        origin_wall: float,
        endpoint_ms: float | None,
        stt_ms: float | None,
        dialog_started: float,
    ) -> None:
        dialog_ms = (time.perf_counter() - dialog_started) * 1000
        text = " ".join(reply.texts)
        final = reply.hangup or reply.handoff is not None
        if text:
            record = await self._say(text, interruptible=not final)
            record.endpoint_ms = endpoint_ms
            record.stt_ms = round(stt_ms, 1) if stt_ms is not None else None
            record.dialog_ms = round(dialog_ms, 1)
            first = record.extra.pop("first_wall", None)
            if first is not None:
                record.response_ms = round((endpoint_ms or 0.0) + (first - origin_wall) * 1000, 1)
            self._store(record)
            log.info("call %s: bot said %r (response %s ms)%s", self.call_id, text,
                     record.response_ms, " [interrupted]" if record.barge_in else "")
        if final:
            await self._wait_media(END_OF_CALL_DRAIN_MS)
        if reply.handoff is not None:
            self._handoff = reply.handoff
            self.recorder.event("handoff", reply.handoff)
            raise _CallEnded("handoff")
        if reply.hangup:
            raise _CallEnded("bot_hangup")

    async def _say(self, text: str, *, interruptible: bool = True) -> TurnRecord:
        """Speak ``text`` until it has been heard or the caller barges in. If the call ends
        meanwhile, what was being said is still stored."""
        self._first_frame = asyncio.get_running_loop().create_future()
        self._drained.clear()
        start_ms = self._media_ms
        tts_started = time.perf_counter()
        self._interruptible = interruptible
        speaking = self._speaking = asyncio.create_task(self._speak(text))
        record = TurnRecord(speaker="bot", text=text, started_at=self._wall(start_ms))
        try:
            await asyncio.wait({speaking})
        except asyncio.CancelledError:
            speaking.cancel()
            record.ended_at = self._wall(self._media_ms)
            self._store(record)
            raise
        record.ended_at = self._wall(self._media_ms)
        record.barge_in = speaking.cancelled()
        if not speaking.cancelled() and (error := speaking.exception()) is not None:
            raise error
        if self._first_frame.done():
            first = self._first_frame.result()
            record.tts_ms = round((first - tts_started) * 1000, 1)
            record.extra["first_wall"] = first
        return record

    async def _speak(self, text: str) -> None:
        """Synthesize sentence by sentence into the playout, then wait until it is heard."""
        stream = self.tts.stream(text, self.rate)
        try:
            async for chunk in stream:
                self.playout.push(chunk)
                self._settle_update()
        finally:
            await stream.aclose()
        self.playout.finish()
        self._settle_update()
        if self.playout:
            self._drained.clear()
            await self._drained.wait()

    async def _fail(self, reason: str, stage: str, exc: BaseException) -> None:
        """Something broke: say sorry, keep what was said, end the call as failed."""
        log.error("call %s: %s failed, apologising and ending the call: %s",
                  self.call_id, stage, exc)
        self.recorder.event("error", {"stage": stage, "error": str(exc)})
        try:
            record = await self._say(self.opts.apology_text, interruptible=False)
            record.extra.clear()
            self._store(record)
            await self._wait_media(END_OF_CALL_DRAIN_MS)
        except Exception:
            log.exception("call %s: could not play the apology", self.call_id)
        finally:
            self._finish(_CallEnded(reason, "failed"))

    # ------------------------------------------------------------------ helpers

    def _store(self, record: TurnRecord) -> None:
        self.turns.append(record)
        self.recorder.turn(record)
        if self.on_turn is not None:
            try:
                self.on_turn(record)
            except Exception:
                log.exception("call %s: turn listener failed", self.call_id)

    def _wall(self, media_ms: int) -> datetime:
        return self._started + timedelta(milliseconds=media_ms)


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a background task's exception as seen (it is handled where it is awaited)."""
    if not task.cancelled():
        task.exception()
