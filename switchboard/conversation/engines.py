"""What the conversation core needs from its engines: speech to text, text to speech, a
dialog manager and a voice activity detector. ``speech/`` and ``dialog/`` implement these;
the pipeline and its tests see only the protocols (tests use the fakes in ``tests/fakes.py``).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class Transcript:
    """What was said in one utterance.

    ``confidence`` is the mean token probability of the kept text (0 when empty);
    ``no_speech_prob`` Whisper's belief that there was no speech (1 when nothing was
    decoded); ``audio_ms`` the input's duration; ``elapsed_ms`` the time transcription took.
    """

    text: str
    confidence: float
    no_speech_prob: float
    language: str
    audio_ms: int
    elapsed_ms: float


class SpeechToText(Protocol):
    """Anything that turns one utterance of int16 mono PCM into a ``Transcript``."""

    async def transcribe(self, pcm: np.ndarray, sample_rate: int) -> Transcript:
        """Transcribe ``pcm`` (1-D int16 at ``sample_rate``)."""
        ...


class TextToSpeech(Protocol):
    """Anything that speaks text as a stream of int16 mono chunks."""

    native_rate: int
    """Rate the engine synthesizes at; other rates are resampled."""

    def stream(self, text: str, sample_rate: int) -> AsyncGenerator[np.ndarray, None]:
        """Chunks of ``text`` spoken at ``sample_rate``, the first as soon as it is ready.

        Closing it early (``aclose()``, or cancelling its consumer: barge-in) stops
        synthesis after the current sentence.
        """
        ...


class DialogUnavailable(RuntimeError):
    """The dialog engine could not be reached or answered with an error."""


@dataclass(frozen=True)
class BotMessage:
    """One message of the bot's reply: something to say and/or a custom payload."""

    text: str | None = None
    custom: dict[str, Any] | None = None


@dataclass(frozen=True)
class DialogReply:
    messages: list[BotMessage]
    elapsed_ms: float
    sent_text: str = ""
    intent: str | None = None
    confidence: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def texts(self) -> list[str]:
        return [m.text for m in self.messages if m.text]

    @property
    def handoff(self) -> dict[str, Any] | None:
        for message in self.messages:
            if message.custom and isinstance(message.custom.get("handoff"), dict):
                return dict(message.custom["handoff"])
        return None

    @property
    def hangup(self) -> bool:
        return any(m.custom and m.custom.get("hangup") for m in self.messages)


class DialogEngine(Protocol):
    """What the conversation pipeline needs from a dialog manager."""

    async def send(
        self, conversation_id: str, text: str, metadata: dict[str, Any] | None = None
    ) -> DialogReply: ...

    async def send_event(
        self,
        conversation_id: str,
        intent: str,
        metadata: dict[str, Any] | None = None,
        entities: dict[str, str] | None = None,
    ) -> DialogReply: ...

    async def send_keypad(
        self, conversation_id: str, digits: str, metadata: dict[str, Any] | None = None
    ) -> DialogReply: ...


class SpeechDetector(Protocol):
    """Says, frame by frame, whether the caller is speaking (a VAD with its hysteresis)."""

    def is_speech(self, frame: np.ndarray) -> bool:
        """Take the next 20 ms int16 frame; True while speech is heard."""
        ...

    def reset(self) -> None:
        """Forget all audio, as for a new stream."""
        ...


VadFactory = Callable[[int, float], SpeechDetector]
"""Builds a call's speech detector from its sample rate and speech threshold."""
