"""After an event-loop stall the SIP and WebRTC sinks hold a backlog of bot frames; the
silence that follows is not queued behind it, so the delay does not last the whole call.
In step (no backlog) silence is queued as usual, so pauses in speech keep their length."""

from __future__ import annotations

import numpy as np
import pytest

from switchboard.conversation.media import CATCH_UP_FRAMES
from telephony.sip.media_port import SipAudioSink
from telephony.webrtc.media import PacedOutboundTrack

SPEECH = np.full(320, 1000, dtype=np.int16)
SILENCE = np.zeros(320, dtype=np.int16)


def _queued(sink: SipAudioSink | PacedOutboundTrack) -> int:
    return len(sink._frames) if isinstance(sink, SipAudioSink) else len(sink._queue)


@pytest.mark.parametrize("make", [lambda: SipAudioSink(16000), lambda: PacedOutboundTrack()])
async def test_silence_is_skipped_only_while_behind(make: object) -> None:
    sink = make()  # type: ignore[operator]
    await sink.write(SILENCE)
    await sink.write(SILENCE)
    assert _queued(sink) == 2  # in step: a pause is played in full
    for _ in range(2):  # a stall: speech piles up
        await sink.write(SPEECH)
    behind = _queued(sink)
    assert behind > CATCH_UP_FRAMES
    await sink.write(SILENCE)
    assert _queued(sink) == behind  # not queued behind the backlog
    await sink.write(SPEECH)
    assert _queued(sink) == behind + 1  # speech always is


class BurstTrack:
    """A received track whose jitter buffer hands over 100 ms at once, then nothing."""

    kind = "audio"

    def __init__(self) -> None:
        self.sent = 0

    async def recv(self) -> object:
        import asyncio

        from av import AudioFrame

        if self.sent >= 5:
            await asyncio.sleep(3600)
        self.sent += 1
        frame = AudioFrame.from_ndarray(
            np.full((1, 320), 1000 * self.sent, dtype=np.int16), format="s16", layout="mono")
        frame.sample_rate = 16000
        return frame


async def test_a_burst_from_the_receiver_does_not_become_a_standing_delay() -> None:
    import asyncio

    from telephony.webrtc.media import STANDING_BACKLOG_MS, TrackSource

    source = TrackSource(BurstTrack(), media_timeout_s=10)  # type: ignore[arg-type]
    try:
        await asyncio.sleep(0.05)  # the burst arrives: 100 ms held
        first = source.take()
        assert first is not None and abs(np.median(first) - 1000) < 100  # the oldest first
        left = len(source._pending) * 1000 // source.sample_rate
        assert left == STANDING_BACKLOG_MS and source.dropped_ms > 0
        second = source.take()
        # without the trim the next frame would be the burst's second (level 2000)
        assert second is not None and np.median(second) > 2500
    finally:
        source.close()
