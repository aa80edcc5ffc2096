"""The SIP source between PJSIP's clock thread and asyncio: caller audio that piles up
while the event loop stalls is bounded like the WebRTC source's, and the end is kept."""

from __future__ import annotations

import asyncio

import numpy as np
import pjsua2 as pj
import pytest

from switchboard.conversation.audio import FRAME_MS
from switchboard.conversation.media import INBOUND_BUFFER_MS
from telephony.sip.media_port import SipAudioSource, _vector_bytes_direct, vector_bytes

RATE = 8000


def frame(value: int) -> bytes:
    return np.full(RATE // 50, value, dtype=np.int16).tobytes()


async def test_a_stall_keeps_only_the_newest_caller_audio() -> None:
    source = SipAudioSource(asyncio.get_running_loop(), RATE)
    for value in range(1, 21):  # 400 ms arrive while nothing reads
        source.feed_threadsafe(frame(value))
    await asyncio.sleep(0)
    kept = INBOUND_BUFFER_MS // FRAME_MS
    assert source.dropped_frames == 20 - kept
    read = [int((await source.read())[0]) for _ in range(kept)]  # type: ignore[index]
    assert read == list(range(21 - kept, 21))


async def test_the_end_of_the_call_is_never_dropped() -> None:
    source = SipAudioSource(asyncio.get_running_loop(), RATE)
    for value in range(1, 4):
        source.feed_threadsafe(frame(value))
    source.close_threadsafe()
    for value in range(4, 30):  # the clock thread may still deliver after the hangup
        source.feed_threadsafe(frame(value))
    await asyncio.sleep(0)
    frames = []
    while (pcm := await source.read()) is not None:
        frames.append(int(pcm[0]))
    assert frames == [1, 2, 3]
    assert await source.read() is None


@pytest.mark.parametrize("size", [0, 1, 320, 640, 4096])
def test_frame_buffers_are_read_whole_and_exactly(size: int) -> None:
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    assert vector_bytes(pj.ByteVector(data)) == data
    assert vector_bytes is _vector_bytes_direct  # the fast reader on this build
