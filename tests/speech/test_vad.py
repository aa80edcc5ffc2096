"""End-of-turn detection on real speech, silence and noise, fed as 20 ms frames."""

from __future__ import annotations

import numpy as np
import pytest

from speech.tts import PiperTTS
from speech.vad import SileroDetector
from switchboard.conversation.audio import frame_samples
from switchboard.conversation.endpointing import Endpointer, VadEvent
from tests.support.audio_tools import espeak, piper_speech, silence, white_noise

SENTENCE = "I'd like to check my order status"

SILERO_END_LAG_MS = 150
"""Silero keeps scoring speech for about 100 ms after it stops; allowed on top of timings."""


def silero_endpointer(rate: int, **options: object) -> Endpointer:
    return Endpointer(rate, SileroDetector(rate), **options)  # type: ignore[arg-type]


def feed(endpointer: Endpointer, pcm: np.ndarray) -> list[VadEvent]:
    step = frame_samples(endpointer.sample_rate)
    events: list[VadEvent] = []
    for start in range(0, len(pcm) - step + 1, step):
        events.extend(endpointer.process(pcm[start : start + step]))
    return events


def kinds(events: list[VadEvent]) -> list[str]:
    return [event.kind for event in events]


@pytest.mark.parametrize("rate", [8000, 16000, 48000])
def test_speech_in_silence_starts_then_ends_one_turn(rate: int) -> None:
    speech = espeak(SENTENCE, rate)
    speech_ms = len(speech) * 1000 // rate
    endpointer = silero_endpointer(rate)

    events = feed(endpointer, np.concatenate([silence(1000, rate), speech, silence(1500, rate)]))

    assert kinds(events) == ["speech_start", "turn_end"]
    start, end = events
    assert start.at_ms == pytest.approx(1000 + 64, abs=100)
    assert start.audio is None
    assert start.speech_end_ms is None
    assert end.speech_end_ms is not None
    assert end.audio is not None
    assert 1000 + speech_ms <= end.speech_end_ms <= 1000 + speech_ms + SILERO_END_LAG_MS
    assert end.at_ms == end.speech_end_ms + 500
    audio_ms = len(end.audio) * 1000 // rate
    assert audio_ms == pytest.approx(end.speech_end_ms + 200 - (1000 - 200), abs=60)
    assert not endpointer.in_speech


@pytest.mark.parametrize("rate", [8000, 16000])
def test_piper_speech_ends_its_turn(tts: PiperTTS, rate: int) -> None:
    speech = piper_speech(tts, "Yes, my order number is four eight two one three.", rate)

    events = feed(
        silero_endpointer(rate), np.concatenate([silence(500, rate), speech, silence(800, rate)])
    )

    assert kinds(events) == ["speech_start", "turn_end"]


def test_in_speech_lasts_from_speech_start_to_turn_end() -> None:
    endpointer = silero_endpointer(16000)
    states: list[tuple[str, bool]] = []
    pcm = np.concatenate([silence(300, 16000), espeak("Hello there", 16000), silence(700, 16000)])
    for start in range(0, len(pcm) - 319, 320):
        for event in endpointer.process(pcm[start : start + 320]):
            states.append((event.kind, endpointer.in_speech))

    assert states == [("speech_start", True), ("turn_end", False)]


@pytest.mark.parametrize("rate", [8000, 16000])
@pytest.mark.parametrize("level", [0.0, 0.003, 0.01])
def test_silence_and_low_noise_cause_no_events(rate: int, level: float) -> None:
    assert feed(silero_endpointer(rate), white_noise(5000, rate, level)) == []


@pytest.mark.parametrize("rate", [8000, 16000])
def test_a_100_ms_click_ends_no_turn(rate: int) -> None:
    clicks = silence(100, rate)
    clicks[:: rate // 50] = 30000
    burst = white_noise(100, rate, 0.3)
    pcm = np.concatenate(
        [silence(500, rate), clicks, silence(1000, rate), burst, silence(1000, rate)]
    )

    assert "turn_end" not in kinds(feed(silero_endpointer(rate), pcm))


def test_speech_shorter_than_min_utterance_is_dropped_silently() -> None:
    word = espeak("Hi", 16000)
    endpointer = silero_endpointer(16000, min_utterance_ms=len(word) * 1000 // 16000 + 300)

    events = feed(endpointer, np.concatenate([silence(500, 16000), word, silence(1000, 16000)]))

    assert kinds(events) == ["speech_start"]
    assert not endpointer.in_speech


@pytest.mark.parametrize("rate", [8000, 16000])
def test_early_end_pauses_and_the_turn_ends_with_the_same_audio(rate: int) -> None:
    pcm = np.concatenate([silence(500, rate), espeak(SENTENCE, rate), silence(1000, rate)])

    events = feed(silero_endpointer(rate, early_end_ms=200), pcm)

    assert kinds(events) == ["speech_start", "speech_pause", "turn_end"]
    _, pause, end = events
    assert pause.speech_end_ms is not None
    assert pause.audio is not None
    assert end.audio is not None
    assert pause.at_ms == pause.speech_end_ms + 200
    assert end.speech_end_ms == pause.speech_end_ms
    assert np.array_equal(pause.audio, end.audio)


def test_speech_after_a_pause_resumes_the_same_turn() -> None:
    rate = 16000
    pcm = np.concatenate(
        [
            silence(500, rate),
            espeak("one", rate),
            silence(300, rate),
            espeak("two", rate),
            silence(1000, rate),
        ]
    )

    events = feed(silero_endpointer(rate, early_end_ms=200), pcm)

    assert kinds(events) == [
        "speech_start",
        "speech_pause",
        "speech_resume",
        "speech_pause",
        "turn_end",
    ]
    first_pause, _, last_pause, end = events[1:]
    assert first_pause.audio is not None
    assert end.audio is not None
    assert end.speech_end_ms == last_pause.speech_end_ms
    assert end.speech_end_ms is not None
    assert first_pause.speech_end_ms is not None
    assert end.speech_end_ms > first_pause.speech_end_ms + 300
    assert len(end.audio) > len(first_pause.audio)


def test_a_gap_longer_than_end_of_turn_splits_two_turns() -> None:
    rate = 8000
    pcm = np.concatenate(
        [silence(500, rate), espeak("one", rate), silence(700, rate), espeak("two", rate)]
    )

    events = feed(silero_endpointer(rate), np.concatenate([pcm, silence(1000, rate)]))

    assert kinds(events) == ["speech_start", "turn_end", "speech_start", "turn_end"]


def test_a_long_utterance_is_cut_at_max_utterance() -> None:
    rate = 16000
    pcm = np.concatenate([silence(500, rate), espeak(SENTENCE, rate), silence(1000, rate)])

    events = feed(silero_endpointer(rate, max_utterance_s=1.2), pcm)

    assert kinds(events) == ["speech_start", "turn_end", "speech_start", "turn_end"]
    cut = events[1]
    assert cut.audio is not None
    assert len(cut.audio) * 1000 // rate == pytest.approx(1200, abs=60)


def test_reset_forgets_the_utterance_in_progress() -> None:
    rate = 16000
    endpointer = silero_endpointer(rate)
    feed(endpointer, np.concatenate([silence(200, rate), espeak(SENTENCE, rate)[:rate]]))
    assert endpointer.in_speech

    endpointer.reset()

    assert not endpointer.in_speech
    assert feed(endpointer, silence(1000, rate)) == []


def test_frames_must_be_int16() -> None:
    with pytest.raises(ValueError, match="int16"):
        silero_endpointer(16000).process(np.zeros(320, dtype=np.float32))


def test_early_end_must_come_before_end_of_turn() -> None:
    with pytest.raises(ValueError, match="early_end_ms"):
        silero_endpointer(16000, early_end_ms=500, end_of_turn_ms=500)



@pytest.mark.parametrize("threshold", [0.0, 1.0, -0.5])
def test_a_threshold_outside_zero_to_one_is_refused(threshold: float) -> None:
    with pytest.raises(ValueError, match="threshold"):
        SileroDetector(16000, threshold)


def test_closing_a_detector_frees_its_model_once() -> None:
    detector = SileroDetector(16000)
    model = detector._model
    assert hasattr(model, "_obj")  # the native Silero session
    detector.close()
    assert not hasattr(model, "_obj")  # released now, not at the next full collection
    detector.close()  # a second close (and the garbage collector later) is harmless
    del detector, model
