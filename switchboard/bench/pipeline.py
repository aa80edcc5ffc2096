"""``switchboard bench pipeline``: per-stage latency of real turns on this machine."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np

from switchboard.conversation.audio import FRAME_MS, frame_samples
from switchboard.conversation.call import CallHandle, CallRequest
from switchboard.conversation.pipeline import CallResult
from switchboard.node import Node
from switchboard.simulate import CaptureSink

CALLER_LINES = (
    "Hi, I'd like to check my order status.",
    "four eight two one three",
    "I forgot my password and can't log in.",
    "I have a question about my bill.",
    "Can you repeat that?",
    "What's the status of order five one zero zero seven?",
    "Thanks, that helps.",
    "I need help with my account.",
)
STAGES = ("endpoint_ms", "stt_ms", "dialog_ms", "tts_ms", "response_ms")
GAP_MS = 400
AUDIBLE = 200
"""Mean absolute sample value above which a 20 ms frame counts as speech."""


class ScriptedCaller:
    """A caller that waits for the bot to finish, pauses, then says its next line,
    in real time. Hangs up after its last line has been answered."""

    def __init__(self, utterances: list[np.ndarray], rate: int, *, timeout_s: float) -> None:
        self.sample_rate = rate
        self.end_reason: str | None = None
        self._frame = frame_samples(rate)
        self._pending = list(utterances)
        self._current: np.ndarray | None = None
        self._pos = 0
        self._idle_ms = 0
        self._deadline = time.perf_counter() + timeout_s
        self._next: float | None = None
        self._media_ms = 0
        self.speech_ends_ms: list[int] = []
        self.call: CallHandle | None = None

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
                self.speech_ends_ms.append(self._media_ms)
            return np.pad(frame, (0, self._frame - len(frame)))
        idle = self.call is not None and self.call.idle
        self._idle_ms = self._idle_ms + FRAME_MS if idle else 0
        if self._idle_ms >= GAP_MS:
            if not self._pending:
                return None
            self._current, self._pos, self._idle_ms = self._pending.pop(0), 0, 0
        return np.zeros(self._frame, dtype=np.int16)


@dataclass
class StageStats:
    stage: str
    count: int
    p50: float
    p90: float
    p95: float
    mean: float


def voice_to_voice_ms(speech_ends_ms: list[int], bot_audio: np.ndarray, rate: int) -> list[int]:
    """As the caller hears it: end of the caller's speech → first audible bot frame."""
    frame = frame_samples(rate)
    usable = len(bot_audio) // frame * frame
    loud = np.abs(bot_audio[:usable].astype(np.int32)).reshape(-1, frame).mean(axis=1) > AUDIBLE
    gaps = []
    for end_ms in speech_ends_ms:
        after = np.flatnonzero(loud[end_ms // FRAME_MS :])
        if len(after):
            gaps.append(int(after[0]) * FRAME_MS)
    return gaps


def _stats(stage: str, values: np.ndarray) -> StageStats:
    p50, p90, p95 = (float(v) for v in np.percentile(values, [50, 90, 95]))
    return StageStats(stage, len(values), p50, p90, p95, float(values.mean()))


def stage_stats(results: list[CallResult]) -> list[StageStats]:
    """Percentiles of each stage over the bot turns that answered a caller turn."""
    rows = []
    answered = [t for r in results for t in r.turns
                if t.speaker == "bot" and t.endpoint_ms is not None and t.response_ms is not None]
    for stage in STAGES:
        values = np.array([getattr(t, stage) for t in answered if getattr(t, stage) is not None])
        if len(values) == 0:
            continue
        rows.append(_stats(stage, values))
    return rows


async def bench_pipeline(node: Node, utterances: int, rate: int) -> list[StageStats]:
    """One real-time call with ``utterances`` caller turns through the whole pipeline."""
    lines = [CALLER_LINES[i % len(CALLER_LINES)] for i in range(utterances)]
    audio = [_trim(np.concatenate([chunk async for chunk in node.tts.stream(line, rate)]))
             for line in lines]
    caller = ScriptedCaller(audio, rate, timeout_s=60 + 20 * utterances)
    sink = CaptureSink(rate)

    caller.call = node.start_call(
        CallRequest(transport="bench", source=caller, sink=sink, caller="bench"))
    result = await caller.call.result()
    heard = voice_to_voice_ms(caller.speech_ends_ms, sink.audio(), rate)
    rows = stage_stats([result])
    if heard:
        rows.append(_stats("caller_heard", np.array(heard, dtype=float)))
    return rows


def _trim(pcm: np.ndarray) -> np.ndarray:
    """Cut the synthesizer's trailing silence so the caller's speech end is exact."""
    loud = np.flatnonzero(np.abs(pcm) > AUDIBLE // 4)
    return pcm[: loud[-1] + 1] if len(loud) else pcm
