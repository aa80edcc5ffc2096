"""Whisper transcribes Piper and espeak speech, at 8 and 16 kHz, and hears nothing in noise."""

from __future__ import annotations

import asyncio
import difflib
from pathlib import Path

import numpy as np
import pytest

from speech.stt import WhisperSTT
from speech.tts import PiperTTS
from switchboard.base.settings import Settings
from switchboard.conversation.engines import SpeechToText, Transcript
from switchboard.node import stt_config
from tests.support.audio_tools import espeak, normalize_digits, piper_speech, silence, white_noise

SENTENCE = "I'd like to check my order status"


def words(transcript: Transcript) -> set[str]:
    return set(transcript.text.lower().replace(".", "").replace(",", "").split())


@pytest.mark.parametrize("rate", [8000, 16000])
def test_piper_speech_is_transcribed(stt: WhisperSTT, tts: PiperTTS, rate: int) -> None:
    transcript = stt.transcribe_sync(piper_speech(tts, SENTENCE + ".", rate), rate)

    assert {"check", "order", "status"} <= words(transcript)
    assert transcript.confidence > 0.5
    assert transcript.no_speech_prob < 0.5
    assert transcript.language == "en"


@pytest.mark.parametrize("rate", [8000, 16000])
def test_espeak_speech_is_transcribed(stt: WhisperSTT, rate: int) -> None:
    transcript = stt.transcribe_sync(espeak(SENTENCE, rate), rate)

    assert {"check", "status"} <= words(transcript)


def test_spoken_digits_come_back_as_the_number(stt: WhisperSTT, tts: PiperTTS) -> None:
    """Digits come back as a number, not words; Piper's voice varies from run to run and
    tiny.en mishears a digit now and then (1 run in ~20 here), so one may differ, as in
    the SIP tests."""
    transcript = stt.transcribe_sync(piper_speech(tts, "Four eight two one three.", 8000), 8000)

    heard = normalize_digits(transcript.text)
    assert heard.isdigit() and len(heard) in (4, 5, 6), transcript.text
    assert difflib.SequenceMatcher(None, heard, "48213").ratio() >= 0.8, transcript.text


async def test_transcribe_runs_off_the_event_loop(stt: WhisperSTT, tts: PiperTTS) -> None:
    engine: SpeechToText = stt
    pcm = piper_speech(tts, "Hello.", 16000)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.001)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    try:
        transcript = await engine.transcribe(pcm, 16000)
        ticks_while_transcribing = ticks
    finally:
        ticking.cancel()

    # The ticker first runs when transcribe() yields: a transcription that blocked the loop
    # would leave it at 0 (at most 1 had it paused briefly before blocking).
    assert ticks_while_transcribing >= 2
    assert "hello" in words(transcript)
    assert transcript.audio_ms == len(pcm) * 1000 // 16000
    assert transcript.elapsed_ms > 0


@pytest.mark.parametrize(
    "pcm",
    [
        silence(2000),
        np.zeros(0, dtype=np.int16),
        white_noise(2000, level=0.01),
        white_noise(2000, level=0.1),
        white_noise(2000, level=0.3, seed=1),
    ],
    ids=["silence", "empty", "quiet-noise", "noise", "loud-noise"],
)
def test_silence_and_noise_transcribe_to_nothing(stt: WhisperSTT, pcm: np.ndarray) -> None:
    transcript = stt.transcribe_sync(pcm, 16000)

    assert transcript.text == ""
    assert transcript.confidence == 0.0
    assert transcript.no_speech_prob == 1.0


@pytest.mark.parametrize(
    "bad",
    [np.zeros(16000, dtype=np.float32), np.zeros((16000, 2), dtype=np.int16), [0] * 16000],
    ids=["float32", "stereo", "list"],
)
def test_anything_but_mono_int16_is_refused(stt: WhisperSTT, bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="1-D int16 mono PCM"):
        stt.transcribe_sync(bad, 16000)


def test_a_non_positive_rate_is_refused(stt: WhisperSTT) -> None:
    with pytest.raises(ValueError, match="sample_rate"):
        stt.transcribe_sync(silence(100), 0)


def test_the_node_builds_whisper_from_the_stt_settings(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, stt_model="tiny.en", stt_device="cpu", stt_beam_size=2)

    engine = WhisperSTT.from_config(stt_config(settings))
    engine.close()

    assert (engine.device, engine.beam_size, engine.language) == ("cpu", 2, "en")


async def test_the_gpu_path_batches_callers_and_hears_each_one(tts: PiperTTS) -> None:
    """Batched decoding (CUDA's default) forced on the CPU: utterances sent while the
    model is busy are transcribed together, each to its own text; silence stays empty."""
    lines = ["I'd like to check my order status.", "I need help with my account.",
             "Can you repeat that?"]
    speech = [piper_speech(tts, line, 8000) for line in lines]
    batched = WhisperSTT(model="tiny.en", device="cpu", batch_size=4)
    try:
        texts = [t.text.lower() for t in await asyncio.gather(
            *(batched.transcribe(pcm, 8000) for pcm in [*speech, np.zeros(8000, np.int16)]))]
        sizes = batched._queue.batch_sizes
    finally:
        batched.close()

    assert "order status" in texts[0] and "account" in texts[1] and "repeat" in texts[2]
    assert texts[3] == ""
    assert max(sizes) > 1 and sum(sizes) == 4
