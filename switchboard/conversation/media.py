"""What a transport hands the pipeline: 20 ms PCM frames in, 20 ms PCM frames out."""

from __future__ import annotations

from collections import deque
from typing import Protocol

import numpy as np

from switchboard.conversation.audio import FRAME_MS, frame_samples

INBOUND_BUFFER_MS = 120
"""Caller audio a transport holds for the pipeline; beyond it (the event loop stalled) the
oldest is dropped, so a stall cannot add lasting delay to what the bot hears."""

CATCH_UP_FRAMES = 2
"""A sink holding more bot frames than this (its event loop stalled) does not queue silent
frames: the backlog drains in the next pause instead of delaying the rest of the call."""


class AudioSource(Protocol):
    """The caller's audio, clocked: ``read`` returns one 20 ms int16 frame every 20 ms (a
    frame of silence when no packet arrived in time), or None once the caller has gone."""

    sample_rate: int
    end_reason: str | None
    """Why ``read`` returned None, when the transport knows better than "caller_hangup"
    (for example "rtp_timeout"); None otherwise."""

    async def read(self) -> np.ndarray | None: ...


class AudioSink(Protocol):
    """The caller's ear. ``write`` takes one 20 ms int16 frame (bot speech or silence)."""

    sample_rate: int

    async def write(self, frame: np.ndarray) -> None: ...

    def clear(self) -> None:
        """Drop the bot audio written but not yet played (barge-in): the caller must hear
        silence at once. A sink that buffers nothing does nothing."""
        ...


class Playout:
    """The bot's queued speech, cut into 20 ms frames; cleared at once on barge-in."""

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self._frame = frame_samples(sample_rate)
        self._frames: deque[np.ndarray] = deque()
        self._partial = np.zeros(0, dtype=np.int16)
        self.silence = np.zeros(self._frame, dtype=np.int16)

    def push(self, pcm: np.ndarray) -> None:
        """Queue speech; a tail shorter than a frame waits for more (or ``finish``)."""
        data = np.concatenate([self._partial, pcm.astype(np.int16, copy=False)])
        whole = len(data) // self._frame * self._frame
        for start in range(0, whole, self._frame):
            self._frames.append(data[start : start + self._frame])
        self._partial = data[whole:]

    def finish(self) -> None:
        """Pad and queue the last partial frame of an utterance."""
        if len(self._partial):
            frame = np.zeros(self._frame, dtype=np.int16)
            frame[: len(self._partial)] = self._partial
            self._frames.append(frame)
            self._partial = np.zeros(0, dtype=np.int16)

    def pop(self) -> np.ndarray | None:
        return self._frames.popleft() if self._frames else None

    def clear(self) -> int:
        """Drop everything queued; returns the milliseconds of speech dropped."""
        dropped = len(self._frames) * FRAME_MS
        self._frames.clear()
        self._partial = np.zeros(0, dtype=np.int16)
        return dropped

    @property
    def pending_ms(self) -> int:
        return len(self._frames) * FRAME_MS

    def __bool__(self) -> bool:
        return bool(self._frames) or bool(len(self._partial))
