"""The Endpointer's turn logic with a scripted speech detector: no model, exact timings."""

from __future__ import annotations

import numpy as np
import pytest

from switchboard.conversation.endpointing import Endpointer, VadEvent
from tests.support.fakes import ScriptedDetector

RATE = 8000
FRAME = RATE // 50  # 20 ms


def run(script: str, **options: float) -> list[VadEvent]:
    endpointer = Endpointer(RATE, ScriptedDetector(script), **options)  # type: ignore[arg-type]
    frame = np.zeros(FRAME, dtype=np.int16)
    events: list[VadEvent] = []
    for _ in script:
        events.extend(endpointer.process(frame))
    return events


def test_speech_start_after_speech_start_ms_and_turn_end_after_the_silence() -> None:
    events = run("0" * 10 + "1" * 20 + "0" * 30, speech_start_ms=60, end_of_turn_ms=400,
                 min_utterance_ms=100)
    assert [(e.kind, e.at_ms) for e in events] == [("speech_start", 260), ("turn_end", 1000)]
    end = events[-1]
    assert end.speech_end_ms == 600
    assert end.audio is not None and len(end.audio) > 0


def test_a_pause_announces_early_transcription_and_speech_resumes() -> None:
    events = run("1" * 20 + "0" * 8 + "1" * 10 + "0" * 30, speech_start_ms=60,
                 end_of_turn_ms=400, early_end_ms=120, min_utterance_ms=100)
    assert [e.kind for e in events] == ["speech_start", "speech_pause", "speech_resume",
                                        "speech_pause", "turn_end"]


def test_a_click_shorter_than_the_minimum_utterance_is_dropped() -> None:
    assert [e.kind for e in run("0" * 5 + "1" * 4 + "0" * 40, speech_start_ms=60,
                                min_utterance_ms=200, end_of_turn_ms=400)] == ["speech_start"]


def test_a_long_utterance_is_cut_at_max_utterance() -> None:
    events = run("1" * 100, speech_start_ms=60, max_utterance_s=1, min_utterance_ms=100)
    assert [(e.kind, e.at_ms) for e in events] == [
        ("speech_start", 60), ("turn_end", 1000), ("speech_start", 1060), ("turn_end", 2000)]


def test_reset_resets_the_detector() -> None:
    detector = ScriptedDetector("")
    Endpointer(RATE, detector).reset()
    assert detector.resets == 2  # once on construction, once asked


def test_early_end_must_come_before_end_of_turn() -> None:
    with pytest.raises(ValueError, match="early_end_ms"):
        Endpointer(RATE, ScriptedDetector(""), early_end_ms=500, end_of_turn_ms=500)
