"""One bot utterance: synthesized sentence by sentence into the playout, played out by the
media loop, interruptible or not; awaiting it gives its timings.

The media loop tells the handle when one of its frames went out (:meth:`frame_played`);
barge-in calls :meth:`interrupt`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from switchboard.conversation.engines import TextToSpeech
from switchboard.conversation.media import Playout


@dataclass(frozen=True)
class SpeechTimings:
    """How one utterance went: the media time of its end, ``tts_ms`` from asking
    for synthesis to the first frame going out (None if nothing was heard), the wall clock
    (``time.perf_counter``) of that first frame, and whether the caller cut it short."""

    ended_ms: int
    tts_ms: float | None
    first_frame_wall: float | None
    interrupted: bool


class SpeechHandle:
    """Speaks ``text`` once; :meth:`wait` returns when it has been heard or interrupted."""

    def __init__(
        self,
        text: str,
        *,
        tts: TextToSpeech,
        playout: Playout,
        interruptible: bool,
        on_progress: Callable[[], None] = lambda: None,
    ) -> None:
        """``on_progress`` is called whenever audio was queued (the pipeline's settled
        signal for simulations faster than real time)."""
        self.text = text
        self.interruptible = interruptible
        self._tts = tts
        self._playout = playout
        self._on_progress = on_progress
        self._requested = time.perf_counter()
        self._first_frame_wall: float | None = None
        self._drained = asyncio.Event()
        self._task = asyncio.create_task(self._speak(), name="speak")

    @property
    def playing(self) -> bool:
        """Still being synthesized or played."""
        return not self._task.done()

    def frame_played(self) -> None:
        """The media loop sent one of this utterance's frames to the caller."""
        if self._first_frame_wall is None:
            self._first_frame_wall = time.perf_counter()
        if not self._playout:
            self._drained.set()

    def interrupt(self) -> None:
        """Barge-in (or the call ended): stop synthesis after the current sentence."""
        self._task.cancel()

    async def wait(self, ended_ms: Callable[[], int]) -> SpeechTimings:
        """Wait until the utterance has been heard or interrupted; ``ended_ms`` reads the
        media clock at that moment. If the waiter is cancelled, the utterance is too.
        Synthesis errors are raised here."""
        try:
            await asyncio.wait({self._task})
        except asyncio.CancelledError:
            self._task.cancel()
            raise
        if not self._task.cancelled() and (error := self._task.exception()) is not None:
            raise error
        first = self._first_frame_wall
        return SpeechTimings(
            ended_ms=ended_ms(),
            tts_ms=None if first is None else round((first - self._requested) * 1000, 1),
            first_frame_wall=first,
            interrupted=self._task.cancelled(),
        )

    async def _speak(self) -> None:
        stream = self._tts.stream(self.text, self._playout.sample_rate)
        try:
            async for chunk in stream:
                self._playout.push(chunk)
                self._on_progress()
        finally:
            await stream.aclose()
        self._playout.finish()
        self._on_progress()
        if self._playout:
            self._drained.clear()
            await self._drained.wait()
