"""Smart Turn v3, loaded from the ONNX file inside pipecat-ai, scores utterances."""

from __future__ import annotations

import numpy as np
import pytest

from speech.tts import PiperTTS
from speech.turn import SmartTurn
from switchboard.conversation.audio import resample
from tests.support.audio_tools import piper_speech, silence

RATE = 8000
FINISHED = ["Hi, I'd like to check my order status."]


@pytest.fixture(scope="module")
def smart_turn() -> SmartTurn:
    model = SmartTurn()
    model.warm_up()
    return model


def ending_in_a_pause(speech: np.ndarray) -> np.ndarray:
    return np.concatenate([silence(300, RATE), speech, silence(150, RATE)])


def test_a_score_is_a_repeatable_probability(smart_turn: SmartTurn, tts: PiperTTS) -> None:
    """Only plumbing is claimed here: how well the scores separate finished from cut-off
    sentences on 8 kHz audio is measured, not asserted (Piper renders a sentence
    differently each time, and the scores move with it)."""
    pcm = ending_in_a_pause(piper_speech(tts, FINISHED[0], RATE))

    first = smart_turn.score(pcm, RATE)

    assert 0.0 <= first <= 1.0
    assert smart_turn.score(pcm, RATE) == first


def test_any_rate_is_accepted(smart_turn: SmartTurn, tts: PiperTTS) -> None:
    """The same sound at 8 kHz and at 16 kHz (resampled as the product resamples, not by
    repeating samples, whose images moved the score by up to 0.13) scores the same."""
    pcm = ending_in_a_pause(piper_speech(tts, FINISHED[0], RATE))
    wide = resample(pcm, RATE, 16000)

    assert smart_turn.score(wide, 16000) == pytest.approx(smart_turn.score(pcm, RATE),
                                                          abs=0.02)


def test_bad_audio_is_refused_clearly(smart_turn: SmartTurn) -> None:
    with pytest.raises(ValueError, match="int16"):
        smart_turn.score(np.zeros(100, dtype=np.float32), RATE)
