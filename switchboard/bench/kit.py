"""The one bench kit: what callers say, when bot audio counts as heard, how voice-to-voice
latency is measured, one percentile function, one report.

Voice-to-voice latency, everywhere (pipeline, SIP, WebRTC): from the end of the caller's
speech in the caller's own audio (its line is trimmed of the synthesizer's silence, so the
last sample sent is the last sample spoken) to the first audible bot frame at the caller.
The same lines, the same audible test and the same arithmetic make the three benches'
figures comparable.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from speech.tts import PiperTTS
from switchboard.base.settings import Settings
from switchboard.conversation.engines import TextToSpeech
from switchboard.node import tts_config

CALLER_LINES = (
    "Hi, I'd like to check my order status.",
    "four eight two one three",
    "I have a question about my bill.",
    "Can you repeat that?",
    "I forgot my password and can't log in.",
    "What's the status of order five one zero zero seven?",
    "Thanks, that helps.",
    "I need help with my account.",
)
"""What bench callers say, in this order, one line per turn (after the greeting)."""

AUDIBLE = 200
"""A 20 ms frame whose mean absolute sample value exceeds this counts as bot speech."""

SILENCE_FLOOR = 50
"""Samples at or below this level before the first and after the last spoken sample are
the synthesizer's silence, cut from a caller's line."""

PERCENTILES = (50, 90, 95)


class BenchError(RuntimeError):
    """A benchmark cannot run; the message says why."""


def audible(frame: np.ndarray) -> bool:
    """Whether one received frame (int16) holds bot speech."""
    return bool(frame.size) and float(np.abs(frame.astype(np.int32)).mean()) > AUDIBLE


def trim_silence(pcm: np.ndarray) -> np.ndarray:
    """``pcm`` without its leading and trailing silence."""
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > SILENCE_FLOOR)
    return pcm[loud[0] : loud[-1] + 1] if loud.size else pcm


async def speak_lines(tts: TextToSpeech, count: int, rate: int) -> list[np.ndarray]:
    """The first ``count`` caller lines (cycling through ``CALLER_LINES``), spoken by
    ``tts`` at ``rate`` and trimmed."""
    lines = []
    for index in range(count):
        text = CALLER_LINES[index % len(CALLER_LINES)]
        lines.append(trim_silence(np.concatenate(
            [chunk async for chunk in tts.stream(text, rate)])))
    return lines


def piper_lines(settings: Settings, count: int, rate: int) -> list[np.ndarray]:
    """:func:`speak_lines` with the node's Piper voice, for callers in other processes
    (blocking; it loads the voice and frees it again)."""
    tts = PiperTTS.from_config(tts_config(settings))
    try:
        return asyncio.run(speak_lines(tts, count, rate))
    finally:
        tts.close()


class VoiceToVoice:
    """Measures voice-to-voice latency on a caller's timeline (any clock in ms: media time
    or wall time): :meth:`speech_ended` when the caller's line is out, :meth:`heard` for
    every frame the caller receives."""

    def __init__(self) -> None:
        self.samples_ms: list[float] = []
        self._ended_at: float | None = None

    @property
    def waiting(self) -> bool:
        """A line was said and no bot audio was heard since."""
        return self._ended_at is not None

    def speech_ended(self, at_ms: float) -> None:
        self._ended_at = at_ms

    def heard(self, frame: np.ndarray, at_ms: float) -> bool:
        """Take one frame received at ``at_ms`` (when its first sample reached the caller);
        True when it answered the caller's last line."""
        if self._ended_at is None or at_ms < self._ended_at or not audible(frame):
            return False
        self.samples_ms.append(at_ms - self._ended_at)
        self._ended_at = None
        return True

    def give_up(self) -> None:
        """The bot never answered the last line."""
        self._ended_at = None


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (linear interpolation); None without values."""
    return float(np.percentile(values, q)) if values else None


@dataclass
class Report:
    """What a bench prints: latency series (ms) as percentiles, and single figures."""

    title: str
    series: dict[str, list[float]] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The report as JSON-ready data (``--json``)."""
        return {
            "title": self.title,
            "series_ms": {
                name: {"n": len(values),
                       **{f"p{q}": _round(percentile(values, q)) for q in PERCENTILES},
                       "mean": _round(float(np.mean(values)) if values else None)}
                for name, values in self.series.items()
            },
            "figures": {name: _round(value) for name, value in self.figures.items()},
        }

    def table(self) -> str:
        """The report as a table for the terminal."""
        lines = [self.title, *self.notes]
        if self.series:
            width = max(16, *(len(name) + 2 for name in self.series))
            lines.append(f"{'':<{width}}{'n':>5}" + "".join(f"{f'p{q}':>9}" for q in PERCENTILES)
                         + f"{'mean':>9}  (ms)")
            for name, row in self.summary()["series_ms"].items():
                cells = [row[f"p{q}"] for q in PERCENTILES] + [row["mean"]]
                lines.append(f"{name:<{width}}{row['n']:>5}"
                             + "".join(f"{_cell(value):>9}" for value in cells))
        for name, value in self.summary()["figures"].items():
            lines.append(f"{name}: {value}")
        return "\n".join(lines)

    def write_json(self, path: Path) -> None:
        path.write_text(json.dumps(self.summary(), indent=2) + "\n")


def _round(value: Any) -> Any:
    return round(value, 1) if isinstance(value, float) else value


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"
