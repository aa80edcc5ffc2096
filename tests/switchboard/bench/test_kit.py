"""The bench kit's arithmetic: one voice-to-voice definition, one audible test, one
percentile, one report; and the pipeline bench's per-stage series."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from switchboard.bench.kit import (
    AUDIBLE,
    Report,
    VoiceToVoice,
    audible,
    percentile,
    trim_silence,
)
from switchboard.bench.pipeline import stage_series
from switchboard.conversation.pipeline import CallResult
from switchboard.conversation.turns import TurnRecord

FRAME = 160  # 20 ms at 8 kHz
QUIET = np.zeros(FRAME, dtype=np.int16)
LOUD = np.full(FRAME, 5000, dtype=np.int16)


def test_voice_to_voice_runs_from_speech_end_to_the_first_audible_frame() -> None:
    voice = VoiceToVoice()
    timeline = [QUIET] * 50 + [LOUD] * 10 + [QUIET] * 40 + [LOUD] * 5  # 20 ms a frame
    voice.speech_ended(200)  # bot answers at 1000 ms
    for index, frame in enumerate(timeline[:80]):
        voice.heard(frame, index * 20)
    voice.speech_ended(1700)  # bot answers at 2000 ms
    for index, frame in enumerate(timeline[80:], start=80):
        voice.heard(frame, index * 20)
    assert voice.samples_ms == [800, 300]
    assert not voice.waiting


def test_bot_audio_before_the_caller_finished_does_not_count() -> None:
    voice = VoiceToVoice()
    voice.speech_ended(1000)
    assert not voice.heard(LOUD, 980)  # the frame started before the end of speech
    assert voice.heard(LOUD, 1000) and voice.samples_ms == [0]


def test_an_unanswered_line_can_be_given_up() -> None:
    voice = VoiceToVoice()
    voice.speech_ended(0)
    voice.give_up()
    assert not voice.heard(LOUD, 500) and voice.samples_ms == []


def test_one_audible_threshold_and_one_trim_rule() -> None:
    assert audible(np.full(FRAME, AUDIBLE + 1, dtype=np.int16))
    assert not audible(np.full(FRAME, AUDIBLE, dtype=np.int16))
    line = np.concatenate([np.zeros(100, np.int16), LOUD, np.full(30, 20, np.int16)])
    assert len(trim_silence(line)) == FRAME


def test_percentiles_interpolate_and_tolerate_no_values() -> None:
    assert percentile([100, 200, 300, 400], 50) == 250
    assert percentile([], 95) is None


def test_a_report_prints_a_table_and_writes_json(tmp_path: Path) -> None:
    report = Report("bench x", series={"voice_to_voice": [700, 800, 900], "connect": []},
                    figures={"failed_calls": 0, "wall_s": 12.345})
    table = report.table()
    assert table.splitlines()[0] == "bench x"
    assert "voice_to_voice" in table and "n/a" in table and "wall_s: 12.3" in table
    report.write_json(tmp_path / "x.json")
    written = json.loads((tmp_path / "x.json").read_text())
    assert written["series_ms"]["voice_to_voice"] == {
        "n": 3, "p50": 800.0, "p90": 880.0, "p95": 890.0, "mean": 800.0}
    assert written["figures"] == {"failed_calls": 0, "wall_s": 12.3}


def test_stage_series_cover_only_answers_to_caller_turns() -> None:
    now = datetime.now(UTC)
    turns = [
        TurnRecord(speaker="bot", text="greeting", started_at=now, dialog_ms=5, response_ms=90),
        *[TurnRecord(speaker="bot", text="answer", started_at=now, endpoint_ms=500,
                     stt_ms=100 + i, dialog_ms=20, tts_ms=60, response_ms=700 + i)
          for i in range(11)],
    ]
    series = stage_series([CallResult("c", "x", "ended", None, turns)])
    assert len(series["response_ms"]) == 11
    assert percentile(series["response_ms"], 50) == 705 and np.mean(series["stt_ms"]) == 105
