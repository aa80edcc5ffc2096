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
