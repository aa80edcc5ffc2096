"""What the conversation core needs from its engines: speech to text, text to speech, a
dialog manager and a voice activity detector. ``speech/`` and ``dialog/`` implement these;
the pipeline and its tests see only the protocols (tests use the fakes in ``tests/fakes.py``).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Protocol, TypeVar

import numpy as np


class EngineError(RuntimeError):
    """A speech engine failed to start, or cannot serve a request."""


class EngineClosed(EngineError):
    """The engine was closed; it takes no more requests."""


class DeadlineExceeded(EngineError):
    """A request waited past its deadline and was dropped before it ran."""


class Priority(IntEnum):
    """Which requests an engine serves first (lower first)."""

    FINAL = 0
    """The caller stopped speaking and waits for the answer."""
    SPECULATIVE = 1
    """A guess at a pause: worth computing only when nothing more urgent waits."""


class Engine(Protocol):
    """The lifecycle every engine shares; the node builds engines through factories,
    warms them up before taking calls, asks their health, and closes what it built."""

    def warm_up(self) -> None:
        """Run the model once so the first call pays no start-up cost (blocking)."""
        ...

    def health(self) -> str | None:
        """None while the engine can serve requests, else what is wrong."""
        ...

    async def aclose(self) -> None:
        """Finish the running request, drop queued ones, free the model."""
        ...


E = TypeVar("E", bound=Engine)


def start_engine(name: str, factory: Callable[[], E]) -> E:
    """Build an engine with ``factory``, warm it up and check its health."""
    try:
        engine = factory()
        engine.warm_up()
    except Exception as exc:
        raise EngineError(f"{name} failed to start: {exc}") from exc
    problem = engine.health()
    if problem is not None:
        raise EngineError(f"{name} is not healthy after warming up: {problem}")
    return engine


@dataclass(frozen=True)
class Transcript:
    """What was said in one utterance.

    ``confidence`` is the mean token probability of the kept text (0 when empty);
    ``no_speech_prob`` Whisper's belief that there was no speech (1 when nothing was
    decoded); ``audio_ms`` the input's duration; ``elapsed_ms`` the time the model computed;
    ``queue_ms`` the time the request waited for the model before that.
    """

    text: str
    confidence: float
    no_speech_prob: float
    language: str
    audio_ms: int
    elapsed_ms: float
    queue_ms: float = 0.0
    recognizer: str = "whisper"
    """What produced ``text``: Whisper, or a grammar that won (``grammar:order_number``)."""


class SpeechToText(Engine, Protocol):
    """Anything that turns one utterance of int16 mono PCM into a ``Transcript``."""

    async def transcribe(
        self, pcm: np.ndarray, sample_rate: int, *, priority: Priority = Priority.FINAL,
        deadline: float | None = None, expect: str | None = None,
    ) -> Transcript:
        """Transcribe ``pcm`` (1-D int16 at ``sample_rate``). Requests of a better
        ``priority`` run first; one still queued at ``deadline`` (a ``time.monotonic()``)
        is dropped with :class:`DeadlineExceeded`; cancelling the caller drops it too.
        ``expect`` names the answer the dialog asked for (its requested slot, such as
        ``order_number``): an engine with a grammar for it may use it."""
        ...


class TextToSpeech(Engine, Protocol):
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
    expects: str | None = None
    """The slot the bot asks the caller for next (Rasa's ``requested_slot``), if any."""
    slots: dict[str, Any] | None = None
    """The conversation's slots after this reply, when the dialog tells them."""
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

    async def aclose(self) -> None: ...


class SpeechDetector(Protocol):
    """Says, frame by frame, whether the caller is speaking (a VAD with its hysteresis)."""

    def is_speech(self, frame: np.ndarray) -> bool:
        """Take the next 20 ms int16 frame; True while speech is heard."""
        ...

    def reset(self) -> None:
        """Forget all audio, as for a new stream."""
        ...

    def close(self) -> None:
        """Free the detector's model now (the call has ended; it is not used again)."""
        ...


VadFactory = Callable[[int, float], SpeechDetector]
"""Builds a call's speech detector from its sample rate and speech threshold."""
