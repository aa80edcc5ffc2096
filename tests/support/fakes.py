"""Hand-written fakes for unit tests of the conversation pipeline (the real engines are
exercised in tests/integration)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np

from switchboard.conversation.engines import (
    BotMessage,
    DialogReply,
    DialogUnavailable,
    Priority,
    Transcript,
)
from switchboard.conversation.turns import TurnRecord

WORD_MS = 150


class FakeEngine:
    """The engine lifecycle, doing nothing."""

    def warm_up(self) -> None:
        pass

    def health(self) -> str | None:
        return None

    async def aclose(self) -> None:
        pass


class FakeSTT(FakeEngine):
    """Returns scripted transcripts, one per answered request; remembers the priority and
    expectation of each answered request, and the priority of each cancelled one."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = list(texts)
        self.calls = 0
        self.priorities: list[Priority] = []
        self.expected: list[str | None] = []
        self.cancelled: list[Priority] = []

    def delay_s(self, priority: Priority) -> float:
        return 0.01

    async def transcribe(self, pcm: np.ndarray, sample_rate: int, *,
                         priority: Priority = Priority.FINAL,
                         deadline: float | None = None, expect: str | None = None
                         ) -> Transcript:
        self.calls += 1
        try:
            await asyncio.sleep(self.delay_s(priority))
        except asyncio.CancelledError:
            self.cancelled.append(priority)
            raise
        self.priorities.append(priority)
        self.expected.append(expect)
        text = self.texts.pop(0) if self.texts else ""
        return Transcript(text=text, confidence=0.9, no_speech_prob=0.0, language="en",
                          audio_ms=len(pcm) * 1000 // sample_rate, elapsed_ms=10.0)


class FakeTTS(FakeEngine):
    """A 300 Hz tone, WORD_MS per word, one chunk per sentence."""

    native_rate = 16000

    def __init__(self) -> None:
        self.spoken: list[str] = []

    async def stream(self, text: str, sample_rate: int) -> AsyncGenerator[np.ndarray, None]:
        self.spoken.append(text)
        for sentence in [s for s in text.replace("?", ".").split(".") if s.strip()]:
            await asyncio.sleep(0.005)
            n = len(sentence.split()) * WORD_MS * sample_rate // 1000
            t = np.arange(n) / sample_rate
            yield (np.sin(2 * np.pi * 300 * t) * 8000).astype(np.int16)


Script = Callable[[str], list[BotMessage]]


class FakeDialog(FakeEngine):
    """Answers from a function of the message; can be switched off to simulate an outage."""

    def __init__(self, script: Script, *, fail_after: int | None = None,
                 expects: Callable[[str], str | None] | None = None,
                 slots: Callable[[str], dict[str, Any]] | None = None) -> None:
        self.script = script
        self.expects = expects
        """The slot the bot asks for after each message (Rasa's requested slot)."""
        self.slots = slots
        """The conversation's slots after each message."""
        self.received: list[str] = []
        self.senders: list[str] = []
        self.fail_after = fail_after

    async def _reply(self, message: str, sender: str = "") -> DialogReply:
        self.received.append(message)
        self.senders.append(sender)
        if self.fail_after is not None and len(self.received) > self.fail_after:
            raise DialogUnavailable("Rasa at http://127.0.0.1:1 is not reachable: refused")
        return DialogReply(messages=self.script(message), elapsed_ms=1.0, sent_text=message,
                           expects=self.expects(message) if self.expects else None,
                           slots=self.slots(message) if self.slots else None)

    async def send(self, conversation_id: str, text: str,
                   metadata: dict[str, Any] | None = None) -> DialogReply:
        return await self._reply(text, conversation_id)

    async def send_event(self, conversation_id: str, intent: str,
                         metadata: dict[str, Any] | None = None,
                         entities: dict[str, str] | None = None) -> DialogReply:
        return await self._reply(f"/{intent}", conversation_id)

    async def send_keypad(self, conversation_id: str, digits: str,
                          metadata: dict[str, Any] | None = None) -> DialogReply:
        return await self._reply(f"/inform:{digits}", conversation_id)


class ScriptedDetector:
    """Speech wherever the script says 1, one character per 20 ms frame."""

    def __init__(self, script: str) -> None:
        self.script = script
        self.frames = 0
        self.resets = 0
        self.closed = False

    def is_speech(self, frame: np.ndarray) -> bool:
        speech = self.frames < len(self.script) and self.script[self.frames] == "1"
        self.frames += 1
        return speech

    def reset(self) -> None:
        self.resets += 1

    def close(self) -> None:
        self.closed = True


class LoudnessDetector:
    """A speech detector for unit tests: a frame is speech when its mean level is high."""

    LEVEL = 300

    def __init__(self, sample_rate: int, threshold: float = 0.5) -> None:
        self.sample_rate = sample_rate
        self.closed = False

    def is_speech(self, frame: np.ndarray) -> bool:
        return bool(np.abs(frame.astype(np.int32)).mean() > self.LEVEL)

    def reset(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class MemoryRecorder:
    """Keeps a call's turns, events and end in lists: pipeline tests need no database."""

    def __init__(self) -> None:
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)
        self.failed: list[tuple[str, Any]] = []
        self.turns: list[TurnRecord] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.ended: dict[str, Any] | None = None

    def turn(self, record: TurnRecord) -> None:
        self.turns.append(record)

    def event(self, kind: str, data: dict[str, Any] | None = None) -> None:
        self.events.append((kind, data or {}))

    def end(self, *, reason: str, status: str, handoff_target: str | None = None) -> None:
        self.ended = {"reason": reason, "status": status, "handoff_target": handoff_target}

    async def flush(self) -> None:
        pass

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.events]
