"""The per-call conversation pipeline, the same for every transport.

    caller frames ─► Endpointer (VAD) ─► turn queue ─► STT ─► dialog ─► TTS ─► Playout ─► sink

Two tasks run per call. The media loop moves one frame in and one frame out every 20 ms,
feeds the endpointer, and owns barge-in and the no-input timer. The responder takes caller
turns (and keypad entries, reprompts) one at a time and speaks the dialog's reply sentence
by sentence. Barge-in cancels the speaking step and clears the playout at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from dialog.rasa_client import DialogEngine, DialogReply, DialogUnavailable
from speech.audio import FRAME_MS
from speech.stt import SpeechToText, Transcript
from speech.tts import TextToSpeech
from speech.vad import Endpointer, VadEvent
from switchboard.pipeline.media import AudioSink, AudioSource, Playout
from switchboard.pipeline.recorder import CallRecorder
from switchboard.settings import Settings
from switchboard.storage.repository import TurnRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TurnTaking:
    """Turn-taking knobs, with the defaults documented in the settings table."""

    vad_threshold: float = 0.5
    speech_start_ms: int = 64
    end_of_turn_ms: int = 500
    early_transcribe_ms: int = 250
    min_utterance_ms: int = 200
    max_utterance_s: float = 30.0
    barge_in: bool = True
    no_input_timeout_s: float = 8.0
    max_reprompts: int = 1
    dtmf_timeout_s: float = 3.0
    max_call_s: float = 1800.0
    apology_text: str = Settings.model_fields["apology_text"].default

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
        recorder: CallRecorder,
        turn_taking: TurnTaking,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if source.sample_rate != sink.sample_rate:
            raise ValueError(
                f"source rate {source.sample_rate} Hz differs from sink rate {sink.sample_rate} Hz"
            )
        self.call_id = call_id
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
            threshold=turn_taking.vad_threshold,
            speech_start_ms=turn_taking.speech_start_ms,
            end_of_turn_ms=turn_taking.end_of_turn_ms,
            early_end_ms=turn_taking.early_transcribe_ms or None,
            min_utterance_ms=turn_taking.min_utterance_ms,
            max_utterance_s=turn_taking.max_utterance_s,
        )
        self._queue: asyncio.Queue[_CallerTurn | _DialogInput] = asyncio.Queue()
        self._media_ms = 0
        self._started = datetime.now(UTC)
        self._busy = False
        self._speaking: asyncio.Task[None] | None = None
        self._first_frame: asyncio.Future[float] | None = None
        self._drained = asyncio.Event()
        self._settled = asyncio.Event()
        self._early: asyncio.Task[Transcript] | None = None
        self._speech_start_ms = 0
        self._silence_ms = 0
        self._reprompts = 0
        self._barged_in = False
        self._dtmf = ""
        self._dtmf_last_ms = 0
        self._end: _CallEnded | None = None
        self._handoff: dict[str, Any] | None = None
        self._ended = asyncio.Event()
        self._settle_update()

    # ------------------------------------------------------------------ public API

    async def run(self) -> CallResult:
        """Run the call to its end and return how it ended."""
        self.recorder.event("answered", {"sample_rate": self.rate, **self.metadata})
        self._queue.put_nowait(_DialogInput("call_start", started_wall=time.perf_counter()))
        media = asyncio.create_task(self._media_loop(), name=f"media-{self.call_id[:8]}")
        responder = asyncio.create_task(self._responder(), name=f"respond-{self.call_id[:8]}")
        try:
            await self._ended.wait()
        finally:
            for task in (media, responder, self._speaking, self._early):
                if task is not None and not task.done():
                    task.cancel()
            for task in (media, responder):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        end = self._end or _CallEnded("cancelled", "failed")
        self.recorder.end(
            reason=end.reason,
            status=end.status,
            handoff_target=(self._handoff or {}).get("queue"),
        )
        await self.recorder.flush()
        return CallResult(
            call_id=self.call_id,
            reason=end.reason,
            status=end.status,
            handoff=self._handoff,
            turns=self.turns,
            failed_writes=len(self.recorder.failed),
        )

    def keypad(self, digit: str) -> None:
        """A keypad digit (DTMF) from the transport; '#' ends the entry."""
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
                    self._finish(_CallEnded("caller_hangup"))
                    return
                self._media_ms += FRAME_MS
                for vad_event in self.endpointer.process(frame):
                    self._on_vad(vad_event)
                out = self.playout.pop()
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
            self._speech_start_ms = event.at_ms - self.opts.speech_start_ms
            self._silence_ms = 0
            if self.opts.barge_in and self._speaking is not None and not self._speaking.done():
                dropped = self.playout.clear()
                self._speaking.cancel()
                self._barged_in = True
                self.recorder.event("barge_in", {"at_ms": event.at_ms, "dropped_ms": dropped})
        elif event.kind == "speech_pause" and event.audio is not None:
            self._cancel_early()
            self._early = asyncio.create_task(self.stt.transcribe(event.audio, self.rate))
        elif event.kind == "speech_resume":
            self._cancel_early()
        elif event.kind == "turn_end" and event.audio is not None:
            speech_end = event.speech_end_ms if event.speech_end_ms is not None else event.at_ms
            early, self._early = self._early, None
            self._queue.put_nowait(
                _CallerTurn(
                    audio=event.audio,
                    speech_start_ms=self._speech_start_ms,
                    speech_end_ms=speech_end,
                    endpoint_ms=event.at_ms - speech_end,
                    endpoint_wall=time.perf_counter(),
                    early=early,
                )
            )

    def _cancel_early(self) -> None:
        if self._early is not None:
            self._early.cancel()
            self._early = None

    def _tick_timers(self) -> None:
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

    def _settle_update(self) -> None:
        computing = self._busy or not self._queue.empty()
        if not computing or self.playout.pending_ms or self._ended.is_set():
            self._settled.set()
        else:
            self._settled.clear()

    def _finish(self, end: _CallEnded) -> None:
        if self._end is None:
            self._end = end
        self._ended.set()
        self._settled.set()

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
                await self._apologise(exc)
                return
            except Exception as exc:
                log.exception("call %s: turn failed", self.call_id)
                self.recorder.event("error", {"stage": "turn", "error": repr(exc)})
                await self._apologise(exc)
                return
            finally:
                self._busy = False
                self._silence_ms = 0
                self._settle_update()

    async def _handle_caller_turn(self, turn: _CallerTurn) -> None:
        transcript = await self._transcribe(turn)
        stt_ms = (time.perf_counter() - turn.endpoint_wall) * 1000
        text = transcript.text.strip()
        barged_in, self._barged_in = self._barged_in, False
        if not text:
            self.recorder.event("unintelligible", {"audio_ms": transcript.audio_ms})
            return
        self._reprompts = 0
        self._store(
            TurnRecord(
                speaker="caller",
                text=text,
                started_at=self._wall(turn.speech_start_ms),
                ended_at=self._wall(turn.speech_end_ms),
                confidence=transcript.confidence,
                barge_in=barged_in,
                endpoint_ms=float(turn.endpoint_ms),
                stt_ms=round(stt_ms, 1),
            )
        )
        log.info("call %s: caller said %r (stt %.0f ms)", self.call_id, text, stt_ms)
        dialog_started = time.perf_counter()
        reply = await self.dialog.send(self.call_id, text, self.metadata)
        await self._speak_reply(
            reply,
            origin_wall=turn.endpoint_wall,
            endpoint_ms=float(turn.endpoint_ms),
            stt_ms=stt_ms,
            dialog_started=dialog_started,
        )

    async def _transcribe(self, turn: _CallerTurn) -> Transcript:
        """Use the speculative transcript when there is one: the endpointer cancels it
        if the caller resumed speaking, so a surviving one covers the whole utterance."""
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
                           ended_at=self._wall(self._media_ms))
            )
            reply = await self.dialog.send_keypad(self.call_id, item.keypad, self.metadata)
        else:
            reply = await self.dialog.send_event(self.call_id, item.intent, self.metadata)
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
        if text:
            record = await self._say(text)
            record.endpoint_ms = endpoint_ms
            record.stt_ms = round(stt_ms, 1) if stt_ms is not None else None
            record.dialog_ms = round(dialog_ms, 1)
            first = record.extra.pop("first_wall", None)
            if first is not None:
                record.response_ms = round((endpoint_ms or 0.0) + (first - origin_wall) * 1000, 1)
            self._store(record)
            log.info("call %s: bot said %r (response %s ms)%s", self.call_id, text,
                     record.response_ms, " [interrupted]" if record.barge_in else "")
        if reply.handoff is not None:
            self._handoff = reply.handoff
            self.recorder.event("handoff", reply.handoff)
            raise _CallEnded("handoff")
        if reply.hangup:
            raise _CallEnded("bot_hangup")

    async def _say(self, text: str) -> TurnRecord:
        """Speak ``text`` until it has been heard or the caller barges in."""
        self._first_frame = asyncio.get_running_loop().create_future()
        self._drained.clear()
        start_ms = self._media_ms
        tts_started = time.perf_counter()
        self._speaking = asyncio.create_task(self._speak(text))
        await asyncio.wait({self._speaking})
        record = TurnRecord(
            speaker="bot", text=text, started_at=self._wall(start_ms),
            ended_at=self._wall(self._media_ms), barge_in=self._speaking.cancelled(),
        )
        if not self._speaking.cancelled() and self._speaking.exception() is not None:
            raise self._speaking.exception()  # type: ignore[misc]
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
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        self.playout.finish()
        self._settle_update()
        if self.playout:
            self._drained.clear()
            await self._drained.wait()

    async def _apologise(self, exc: BaseException) -> None:
        """The dialog failed: say sorry, keep what was said, end the call as failed."""
        log.error("call %s: dialog engine unavailable, apologising and ending: %s",
                  self.call_id, exc)
        self.recorder.event("error", {"stage": "dialog", "error": str(exc)})
        try:
            record = await self._say(self.opts.apology_text)
            record.extra.clear()
            self._store(record)
        finally:
            self._finish(_CallEnded("dialog_unavailable", "failed"))

    # ------------------------------------------------------------------ helpers

    def _store(self, record: TurnRecord) -> None:
        self.turns.append(record)
        self.recorder.turn(record)

    def _wall(self, media_ms: int) -> datetime:
        return self._started + timedelta(milliseconds=media_ms)
