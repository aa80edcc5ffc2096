"""The benchmark's arithmetic: what the caller heard, and per-stage percentiles."""

from datetime import UTC, datetime

import numpy as np

from switchboard.bench.pipeline import stage_stats, voice_to_voice_ms
from switchboard.conversation.pipeline import CallResult
from switchboard.conversation.turns import TurnRecord

RATE = 8000


def test_voice_to_voice_is_measured_from_speech_end_to_the_first_audible_bot_frame() -> None:
    bot = np.zeros(RATE * 5, dtype=np.int16)
    bot[int(RATE * 1.8) : RATE * 3] = 5000  # bot speaks from 1.8 s
    bot[int(RATE * 4.1) :] = 5000  # and again from 4.1 s
    assert voice_to_voice_ms([1000, 3500], bot, RATE) == [800, 600]


def test_stage_stats_cover_only_answers_to_caller_turns() -> None:
    now = datetime.now(UTC)
    turns = [
        TurnRecord(speaker="bot", text="greeting", started_at=now, dialog_ms=5, response_ms=90),
        *[TurnRecord(speaker="bot", text="answer", started_at=now, endpoint_ms=500,
                     stt_ms=100 + i, dialog_ms=20, tts_ms=60, response_ms=700 + i)
          for i in range(11)],
    ]
    rows = {r.stage: r for r in stage_stats([CallResult("c", "x", "ended", None, turns)])}
    assert rows["response_ms"].count == 11
    assert rows["response_ms"].p50 == 705 and rows["stt_ms"].mean == 105
