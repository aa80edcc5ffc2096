"""Turn-taking decisions frame by frame, with a scripted speech detector."""

from __future__ import annotations

import numpy as np

from switchboard.conversation.endpointing import Endpointer
from switchboard.conversation.turn_detector import (
    BargeIn,
    CallerSpeechStarted,
    CallerTurnEnded,
    Decision,
    DropSpeculative,
    HoldPlayback,
    ResumePlayback,
    StartSpeculative,
    TurnDetector,
    TurnTaking,
)
from tests.support.fakes import ScriptedDetector

RATE = 8000
OPTIONS = TurnTaking(speech_start_ms=60, end_of_turn_ms=400, early_transcribe_ms=120,
                     min_utterance_ms=200, barge_in=True)


def detector(script: str, options: TurnTaking = OPTIONS) -> TurnDetector:
    return TurnDetector(Endpointer(
        RATE, ScriptedDetector(script), speech_start_ms=options.speech_start_ms,
        end_of_turn_ms=options.end_of_turn_ms,
        early_end_ms=options.early_transcribe_ms or None,
        min_utterance_ms=options.min_utterance_ms,
    ), options)


def run(script: str, *, bot_speaking: str = "", interruptible: bool = True,
        options: TurnTaking = OPTIONS) -> list[tuple[int, Decision]]:
    """Decisions with the media time of the frame that caused them; ``bot_speaking`` marks
    with 1 the frames during which a bot utterance plays."""
    turns = detector(script, options)
    frame = np.zeros(RATE // 50, dtype=np.int16)
    out = []
    for index in range(len(script)):
        speaking = index < len(bot_speaking) and bot_speaking[index] == "1"
        for decision in turns.process(frame, (index + 1) * 20, bot_speaking=speaking,
                                      interruptible=interruptible):
            out.append(((index + 1) * 20, decision))
    return out


def kinds(decisions: list[tuple[int, Decision]]) -> list[str]:
    return [type(decision).__name__ for _, decision in decisions]


def test_a_turn_with_a_pause_transcribes_early_then_ends() -> None:
    decisions = run("1" * 15 + "0" * 8 + "1" * 10 + "0" * 30)
    assert kinds(decisions) == ["CallerSpeechStarted", "StartSpeculative", "DropSpeculative",
                                "StartSpeculative", "CallerTurnEnded"]
    started = decisions[0][1]
    assert isinstance(started, CallerSpeechStarted) and started.at_ms == 0
    ended = decisions[-1][1]
    assert isinstance(ended, CallerTurnEnded)
    assert (ended.speech_end_ms, ended.endpoint_ms, ended.barge_in) == (660, 400, False)
    assert isinstance(decisions[1][1], StartSpeculative)
    assert isinstance(decisions[2][1], DropSpeculative)


def test_speech_over_the_bot_holds_then_barges_in_and_marks_the_turn() -> None:
    decisions = run("0" * 5 + "1" * 20 + "0" * 25, bot_speaking="1" * 15)  # cut at 300 ms
    assert kinds(decisions) == ["CallerSpeechStarted", "HoldPlayback", "BargeIn",
                                "StartSpeculative", "CallerTurnEnded"]
    (held_at, hold), (barge_at, barge) = decisions[1], decisions[2]
    assert isinstance(hold, HoldPlayback) and held_at == hold.at_ms == 160
    assert isinstance(barge, BargeIn) and barge.held_at_ms == 160 and barge_at == 300
    ended = decisions[-1][1]
    assert isinstance(ended, CallerTurnEnded) and ended.barge_in


def test_a_cough_over_the_bot_holds_then_resumes_playback() -> None:
    decisions = run("0" * 5 + "1" * 5 + "0" * 30, bot_speaking="1" * 40)
    assert kinds(decisions) == ["CallerSpeechStarted", "HoldPlayback", "ResumePlayback"]
    assert isinstance(decisions[-1][1], ResumePlayback)


def test_goodbyes_cannot_be_interrupted() -> None:
    decisions = run("0" * 5 + "1" * 20 + "0" * 25, bot_speaking="1" * 40, interruptible=False)
    assert "HoldPlayback" not in kinds(decisions) and "BargeIn" not in kinds(decisions)
    ended = decisions[-1][1]
    assert isinstance(ended, CallerTurnEnded) and not ended.barge_in


def test_barge_in_switched_off() -> None:
    options = TurnTaking(speech_start_ms=60, end_of_turn_ms=400, early_transcribe_ms=0,
                         min_utterance_ms=200, barge_in=False)
    decisions = run("0" * 5 + "1" * 20 + "0" * 25, bot_speaking="1" * 40, options=options)
    assert kinds(decisions) == ["CallerSpeechStarted", "CallerTurnEnded"]
