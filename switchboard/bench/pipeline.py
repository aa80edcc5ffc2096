"""``switchboard bench pipeline``: per-stage latency of real turns on this machine.

One call in real time through the node's pipeline (Whisper, Rasa, Piper, Silero), no
transport: a scripted caller says the kit's lines, each after the bot has spoken and gone
quiet, and hears the bot's frames on the pipeline's own media clock.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from switchboard.bench.kit import Report, VoiceToVoice, speak_lines
from switchboard.conversation.audio import FRAME_MS, frame_samples
from switchboard.conversation.call import CallHandle, CallRequest
from switchboard.conversation.pipeline import CallResult
from switchboard.node import Node

STAGES = ("endpoint_ms", "stt_ms", "dialog_ms", "tts_ms", "response_ms")
GAP_MS = 400
"""Silence after the bot spoke before the caller says its next line."""


class ScriptedCaller:
    """A caller that waits for the bot to finish, pauses, then says its next line, in real
    time; hangs up after its last line has been answered. It is the call's source (its
    mouth) and sink (its ear)."""

    def __init__(self, lines: list[np.ndarray], rate: int, *, timeout_s: float) -> None:
        self.sample_rate = rate
        self.end_reason: str | None = None
        self.voice = VoiceToVoice()
        self.call: CallHandle | None = None
        self._frame = frame_samples(rate)
        self._pending = list(lines)
        self._current: np.ndarray | None = None
        self._pos = 0
        self._idle_ms = 0
        self._deadline = time.perf_counter() + timeout_s
        self._next: float | None = None
        self._media_ms = 0
        self._heard_ms = 0

    async def read(self) -> np.ndarray | None:
        now = time.perf_counter()
        self._next = (self._next or now) + FRAME_MS / 1000
        await asyncio.sleep(max(0.0, self._next - now))
        if now > self._deadline:
            return None
        self._media_ms += FRAME_MS
        if self._current is not None:
            frame = self._current[self._pos : self._pos + self._frame]
            self._pos += self._frame
            if self._pos >= len(self._current):
                self._current = None
                self.voice.speech_ended(self._media_ms)
            return np.pad(frame, (0, self._frame - len(frame)))
        idle = self.call is not None and self.call.idle
        self._idle_ms = self._idle_ms + FRAME_MS if idle else 0
        if self._idle_ms >= GAP_MS:
            if not self._pending:
                return None
            self._current, self._pos, self._idle_ms = self._pending.pop(0), 0, 0
        return np.zeros(self._frame, dtype=np.int16)

    async def write(self, frame: np.ndarray) -> None:
        self.voice.heard(frame, self._heard_ms)
        self._heard_ms += FRAME_MS

    def clear(self) -> None:
        """The caller hears every frame as it is written: nothing is buffered."""


def stage_series(results: list[CallResult]) -> dict[str, list[float]]:
    """Each stage's times over the bot turns that answered a caller turn."""
    answered = [t for r in results for t in r.turns
                if t.speaker == "bot" and t.endpoint_ms is not None and t.response_ms is not None]
    series = {stage: [float(v) for t in answered if (v := getattr(t, stage)) is not None]
              for stage in STAGES}
    return {stage: values for stage, values in series.items() if values}


async def bench_pipeline(node: Node, utterances: int, rate: int) -> Report:
    """One real-time call with ``utterances`` caller turns through the whole pipeline."""
    caller = ScriptedCaller(await speak_lines(node.tts, utterances, rate), rate,
                            timeout_s=60 + 20 * utterances)
    caller.call = node.start_call(
        CallRequest(transport="bench", source=caller, sink=caller, caller="bench"))
    result = await caller.call.result()
    series = stage_series([result])
    series["voice_to_voice"] = caller.voice.samples_ms
    return Report(
        title=f"bench pipeline: {utterances} caller turns at {rate} Hz, one call in real time",
        series=series,
        figures={"call_end": result.reason, "unanswered_turns": utterances - len(
            caller.voice.samples_ms)},
        notes=["endpoint: end of speech as the VAD saw it → end-of-turn decision; stt: → "
               "transcript; dialog: Rasa; tts: → first bot frame; response: their sum;",
               "voice_to_voice: end of the caller's speech → first audible bot frame at the "
               "caller (the kit's definition, as in bench sip and bench webrtc)."],
    )
