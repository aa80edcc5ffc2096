"""Pytest plugin: the real speech engines, loaded once for the whole test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from speech.stt import WhisperSTT
from speech.tts import PiperTTS


@pytest.fixture(scope="session")
def stt() -> Iterator[WhisperSTT]:
    """Whisper tiny.en on the CPU, warmed up."""
    engine = WhisperSTT(model="tiny.en", device="cpu")
    engine.warm_up()
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def tts() -> Iterator[PiperTTS]:
    """The Piper voice en_US-joe-medium on the CPU, warmed up."""
    engine = PiperTTS(voice="en_US-joe-medium", device="cpu")
    engine.warm_up()
    yield engine
    engine.close()
