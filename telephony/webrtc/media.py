"""Media adapters between aiortc tracks and the conversation pipeline's 20 ms frames.

Inbound: the browser's decoded audio (Opus at 48 kHz, often stereo, or G.711 at 8 kHz)
becomes mono int16 at the call rate, read on a 20 ms clock that yields silence when no
packet arrived in time. Outbound: the pipeline's frames queue in a track whose ``recv``
paces one frame per 20 ms; aiortc's encoders resample them to the codec's rate.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections import deque

import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError
from av import AudioFrame

from switchboard.base.metrics import FRAME_LATENESS
from switchboard.conversation.audio import FRAME_MS, StreamResampler, frame_samples
from switchboard.conversation.media import CATCH_UP_FRAMES, INBOUND_BUFFER_MS

CALL_RATE = 16000
"""Sample rate of a browser call inside the pipeline (wideband)."""

OUTBOUND_BUFFER_MS = 100
"""Most audio queued for the outbound track; older frames are dropped. The pipeline and
the sender tick on separate 20 ms clocks, so anything queued beyond a few frames (silence
written before the sender started, clock drift) would delay every word the bot says."""

STANDING_BACKLOG_MS = 40
"""Caller audio held beyond this when a frame is taken is dropped (the oldest first): the
receiver hands over bursts (aiortc's jitter buffer releases its prefetch at once), and a
backlog that stays is only delay on every word, never absorbed jitter."""

CLOCK_RESYNC_MS = 100
"""A clock that falls this far behind (a stalled loop) restarts instead of bursting."""

AIORTC_AUDIO_BUFFER = "_RTCRtpReceiver__jitter_buffer"
"""aiortc's receiver keeps each audio frame until four later ones came (a fixed 80 ms on
every word); its buffer is private, set in ``RTCRtpReceiver.__init__`` (aiortc 1.16)."""
HELD_BUFFER_FRAMES = 4
"""A held buffer's capacity (aiortc's: 16). It hands on one frame per packet that comes,
so the backlog a lost packet leaves (until the buffer is full and skips it) stays: at
most 3 frames here, 15 (300 ms) with aiortc's."""


def hold_received_audio(pc: RTCPeerConnection, frames: int) -> bool:
    """Make ``pc``'s audio receivers hand each frame on once ``frames`` later ones came
    (aiortc's default: 4), before any media flows: on a loopback or LAN leg that is 60 ms
    less delay on every frame; a lost packet leaves at most 60 ms behind. Returns False,
    changing nothing, when aiortc's receivers no longer have that buffer."""
    receivers = [t.receiver for t in pc.getTransceivers() if t.kind == "audio"]
    if not all(hasattr(r, AIORTC_AUDIO_BUFFER) for r in receivers):
        return False
    for receiver in receivers:
        setattr(receiver, AIORTC_AUDIO_BUFFER,
                JitterBuffer(capacity=HELD_BUFFER_FRAMES, prefetch=frames))
    return True


def to_mono_int16(frame: AudioFrame) -> np.ndarray:
    """One decoded aiortc frame as 1-D int16 mono (channels averaged)."""
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if data.dtype != np.int16:
        raise ValueError(f"expected s16 audio from the decoder, got {frame.format.name}")
    if channels > 1:
        samples = data.reshape(channels, -1).T if frame.format.is_planar else data.reshape(
            -1, channels)
        return samples.mean(axis=1).astype(np.int16)
    return data.reshape(-1)


class FrameClock:
    """Ticks every ``FRAME_MS``; after a stall it restarts rather than catching up."""

    def __init__(self) -> None:
        self._next: float | None = None

    async def tick(self) -> float:
        """Wait for the next frame's time; returns how late it woke (s), a stall that
        made the clock restart included."""
        now = time.monotonic()
        stalled = 0.0
        if self._next is None:
            self._next = now
        elif now - self._next > CLOCK_RESYNC_MS / 1000:
            stalled, self._next = now - self._next, now
        self._next += FRAME_MS / 1000
        await asyncio.sleep(max(0.0, self._next - now))
        return max(stalled, time.monotonic() - self._next, 0.0)


class FrameStamper:
    """Turns int16 mono frames into aiortc audio frames with running timestamps (what an
    outbound track's ``recv`` returns)."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._time_base = fractions.Fraction(1, rate)
        self._pts = 0

    def frame(self, pcm: np.ndarray) -> AudioFrame:
        frame = AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.rate
        frame.time_base = self._time_base
        frame.pts = self._pts
        self._pts += len(pcm)
        return frame


class TrackSource:
    """The caller's audio track as the pipeline's source: clocked 20 ms int16 frames.

    ``read`` returns None once the track ended, :meth:`close` was called, or no packet
    arrived for ``media_timeout_s`` (the browser went away without saying so)."""

    def __init__(
        self, track: MediaStreamTrack, *, media_timeout_s: float, rate: int = CALL_RATE
    ) -> None:
        self.sample_rate = rate
        self.end_reason: str | None = None
        self.timed_out = False
        self.dropped_ms = 0
        """Audio dropped to keep the backlog short (see ``STANDING_BACKLOG_MS``)."""
        self._track = track
        self._frame = frame_samples(rate)
        self._silence = np.zeros(self._frame, dtype=np.int16)
        self._max_samples = rate * INBOUND_BUFFER_MS // 1000
        self._standing = rate * STANDING_BACKLOG_MS // 1000
        self._pending = np.zeros(0, dtype=np.int16)
        self._resampler: StreamResampler | None = None
        self._media_timeout_s = media_timeout_s
        self._last_packet = time.monotonic()
        self._clock = FrameClock()
        self._closed = False
        self._pump = asyncio.create_task(self._receive(), name="webrtc-inbound")

    async def _receive(self) -> None:
        try:
            while True:
                frame = await self._track.recv()
                assert isinstance(frame, AudioFrame)
                pcm = to_mono_int16(frame)
                if self._resampler is None or self._resampler.src_rate != frame.sample_rate:
                    self._resampler = StreamResampler(frame.sample_rate, self.sample_rate)
                pcm = self._resampler.process(pcm)
                self._pending = np.concatenate([self._pending, pcm])[-self._max_samples :]
                self._last_packet = time.monotonic()
        except MediaStreamError:
            self._closed = True

    async def read(self) -> np.ndarray | None:
        await self._clock.tick()
        return self.take()

    def take(self) -> np.ndarray | None:
        """The next frame at once (silence when none came in time; None once ended), for
        a reader with a clock of its own (an agent's leg, read by the call's media loop)."""
        if self._closed:
            return None
        if time.monotonic() - self._last_packet > self._media_timeout_s:
            self.timed_out = True
            return None
        if len(self._pending) < self._frame:
            return self._silence
        frame, self._pending = self._pending[: self._frame], self._pending[self._frame :]
        if len(self._pending) > self._standing:
            self.dropped_ms += (len(self._pending) - self._standing) * 1000 // self.sample_rate
            self._pending = self._pending[-self._standing :]
        return frame

    def close(self) -> None:
        """End the call's input: the next ``read`` returns None."""
        self._closed = True
        self._pump.cancel()


class PacedOutboundTrack(AudioStreamTrack):
    """The pipeline's sink and the browser's inbound track: bot frames out every 20 ms.

    ``write`` queues a frame, ``clear`` drops the queue (barge-in), ``recv`` is called by
    aiortc's sender and returns the next frame, or silence when none is queued."""

    def __init__(self, rate: int = CALL_RATE) -> None:
        super().__init__()
        self.sample_rate = rate
        self._frame = frame_samples(rate)
        self._silence = np.zeros(self._frame, dtype=np.int16)
        self._queue: deque[np.ndarray] = deque(maxlen=OUTBOUND_BUFFER_MS // FRAME_MS)
        self._stamper = FrameStamper(rate)
        self._clock = FrameClock()

    async def write(self, frame: np.ndarray) -> None:
        self.put(frame)

    def put(self, frame: np.ndarray) -> None:
        """:meth:`write`, from code that cannot await (a call's bridge)."""
        if len(self._queue) > CATCH_UP_FRAMES and not frame.any():
            return  # behind the clock after a stall: skip silence to catch up
        self._queue.append(frame)

    def clear(self) -> None:
        self._queue.clear()

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        FRAME_LATENESS.observe(await self._clock.tick())
        return self._stamper.frame(self._queue.popleft() if self._queue else self._silence)
