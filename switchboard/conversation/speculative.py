"""Speculative transcription: transcribe when the caller pauses, keep the result if the
pause turns out to be the end of the turn, drop it if the caller speaks on."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from switchboard.conversation.engines import Priority, SpeechToText, Transcript


class SpeculativeTranscriber:
    """At most one speculative transcription at a time: a stale one still occupies the
    STT worker, and the turn's end transcribes anyway when there is no fresh result."""

    def __init__(self, stt: SpeechToText, sample_rate: int) -> None:
        self.stt = stt
        self.sample_rate = sample_rate
        self._current: asyncio.Task[Transcript] | None = None
        self._inflight: asyncio.Task[Transcript] | None = None

    def start(self, audio: np.ndarray, expect: str | None = None) -> None:
        """The caller paused after ``audio``: transcribe it, unless one is still running."""
        if self._inflight is None or self._inflight.done():
            task = asyncio.create_task(self.stt.transcribe(
                audio, self.sample_rate, priority=Priority.SPECULATIVE, expect=expect))
            task.add_done_callback(_retrieve)
            self._current = self._inflight = task

    def drop(self) -> None:
        """The caller spoke again: the running transcription no longer covers the turn."""
        self._current = None

    def take(self) -> asyncio.Task[Transcript] | None:
        """The transcription covering the turn that just ended, if any."""
        current, self._current = self._current, None
        return current

    def cancel(self) -> None:
        """The call is over."""
        if self._inflight is not None and not self._inflight.done():
            self._inflight.cancel()


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark the task's exception as seen (it is handled where the turn awaits it)."""
    if not task.cancelled():
        task.exception()
