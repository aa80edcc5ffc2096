"""Caller audio in and bot audio out, between PJSIP's media clock thread and asyncio.

The conference bridge calls ``CallAudioPort`` every 20 ms from its clock thread, also when
no RTP arrives, so ``SipAudioSource`` is clocked as the pipeline requires. PJSIP resamples
G.711/G.722 to the bridge's clock rate; the port speaks mono 16-bit PCM at that rate.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import threading
from collections import deque
from collections.abc import Callable

import numpy as np
import pjsua2 as pj

from switchboard.conversation.audio import FRAME_MS, frame_samples
from switchboard.conversation.media import CATCH_UP_FRAMES, INBOUND_BUFFER_MS

log = logging.getLogger(__name__)

MAX_INBOUND_FRAMES = INBOUND_BUFFER_MS // FRAME_MS
"""Caller frames waiting for the pipeline beyond this are dropped oldest first."""

MAX_PLAYOUT_BACKLOG = 6
"""Bot frames queued beyond this many (120 ms) are dropped oldest first, so a stalled
event loop cannot add lasting delay to what the caller hears."""


def _vector_bytes_copied(vector: pj.ByteVector) -> bytes:
    """SWIG's way: one Python call per byte (~0.3 ms for a 20 ms frame at 8 kHz)."""
    return bytes(vector)


def _vector_bytes_direct(vector: pj.ByteVector) -> bytes:
    """The bytes of a ``std::vector<unsigned char>`` read in one copy from its storage
    (libstdc++ keeps the begin and end pointers first): ~2 µs."""
    address = int(vector.this)
    begin = ctypes.c_void_p.from_address(address).value or 0
    end = ctypes.c_void_p.from_address(address + ctypes.sizeof(ctypes.c_void_p)).value or 0
    return ctypes.string_at(begin, end - begin) if end > begin else b""


def _pick_vector_bytes() -> Callable[[pj.ByteVector], bytes]:
    """The direct reader when it reads a known vector right, else SWIG's copy."""
    probe = bytes(range(256)) * 2
    try:
        if _vector_bytes_direct(pj.ByteVector(probe)) == probe:
            return _vector_bytes_direct
    except (TypeError, ValueError, OSError):
        pass
    log.warning("reading PJSIP frames the slow way (this pjsua2 build's vectors differ)")
    return _vector_bytes_copied


vector_bytes = _pick_vector_bytes()
"""The bytes of a PJSUA2 ``ByteVector`` (a media frame's buffer)."""


class SipAudioSource:
    """The caller's audio as the pipeline reads it; ``None`` once the call is gone."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self._loop = loop
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._closed = False
        self.end_reason: str | None = None
        self.dropped_frames = 0
        self.tap: Callable[[np.ndarray], None] | None = None

    def feed_threadsafe(self, frame: bytes) -> None:
        """Called by the media clock thread with one frame of caller PCM."""
        self._loop.call_soon_threadsafe(self._feed, frame)

    def _feed(self, frame: bytes) -> None:
        if self._closed:
            return
        if self._queue.qsize() >= MAX_INBOUND_FRAMES:
            self._queue.get_nowait()  # behind after a stall: drop the oldest frame
            self.dropped_frames += 1
        self._queue.put_nowait(frame)

    def close_threadsafe(self) -> None:
        self._loop.call_soon_threadsafe(self.close)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put_nowait(None)

    async def read(self) -> np.ndarray | None:
        if self._closed and self._queue.empty():
            return None
        data = await self._queue.get()
        if data is None:
            self._queue.put_nowait(None)
            return None
        frame = np.frombuffer(data, dtype=np.int16).copy()
        if self.tap is not None:
            self.tap(frame)
        return frame


class SipAudioSink:
    """The bot's audio: frames wait in a thread-safe deque for the media clock."""

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self._frames: deque[bytes] = deque()
        self.tap: Callable[[np.ndarray], None] | None = None

    async def write(self, frame: np.ndarray) -> None:
        if self.tap is not None:
            self.tap(frame)
        if len(self._frames) > CATCH_UP_FRAMES and not frame.any():
            return  # behind the clock after a stall: skip silence to catch up
        self._frames.append(frame.astype(np.int16, copy=False).tobytes())
        while len(self._frames) > MAX_PLAYOUT_BACKLOG:
            self._frames.popleft()

    def clear(self) -> None:
        """Barge-in: drop what has not been played yet."""
        self._frames.clear()

    def pop(self) -> bytes | None:
        """Called by the media clock thread; ``None`` when nothing is queued."""
        try:
            return self._frames.popleft()
        except IndexError:
            return None


def port_format(sample_rate: int) -> pj.MediaFormatAudio:
    """Mono 16-bit PCM, 20 ms frames, at ``sample_rate``."""
    fmt = pj.MediaFormatAudio()
    fmt.init(pj.PJMEDIA_FORMAT_PCM, sample_rate, 1, FRAME_MS * 1000, 16)
    return fmt


class CallAudioPort(pj.AudioMediaPort):
    """One call's port on the conference bridge. Its callbacks run on the clock thread;
    after ``close`` they do nothing, and ``destroy`` (on a PJSIP-registered thread) removes
    the port from the bridge before Python lets go of it."""

    def __init__(self, name: str, sample_rate: int, source: SipAudioSource,
                 sink: SipAudioSink) -> None:
        super().__init__()
        self.source = source
        self.sink = sink
        self._silence = bytes(2 * frame_samples(sample_rate))
        self._lock = threading.Lock()
        self._closed = False
        self._destroyed = False
        self.createPort(name, port_format(sample_rate))

    def onFrameReceived(self, frame: pj.MediaFrame) -> None:
        try:
            with self._lock:
                if self._closed:
                    return
                if frame.type == pj.PJMEDIA_FRAME_TYPE_AUDIO and frame.size == len(self._silence):
                    data = vector_bytes(frame.buf)
                else:
                    data = self._silence
                self.source.feed_threadsafe(data)
        except Exception:
            log.exception("caller frame dropped")

    def onFrameRequested(self, frame: pj.MediaFrame) -> None:
        try:
            with self._lock:
                data = None if self._closed else self.sink.pop()
            frame.type = pj.PJMEDIA_FRAME_TYPE_AUDIO
            frame.buf = pj.ByteVector(data or self._silence)
            frame.size = len(self._silence)
        except Exception:
            log.exception("bot frame dropped")

    def close(self) -> None:
        with self._lock:
            self._closed = True

    def destroy(self) -> None:
        """Remove the port from the bridge; call from a PJSIP-registered thread."""
        self.close()
        if not self._destroyed:
            self._destroyed = True
            type(self).__swig_destroy__(self)
