"""The conversation core's speech engines, served by the speech pool: no model in this
process."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import numpy as np

from speech.service.pool import SpeechPool
from switchboard.conversation.engines import Priority, Transcript

READY_TIMEOUT_S = 60.0
"""How long a process starting waits for a speech server (they load models first)."""


class RemoteSTT:
    """:class:`~switchboard.conversation.engines.SpeechToText` through ``pool``."""

    def __init__(self, pool: SpeechPool) -> None:
        self.pool = pool

    def warm_up(self) -> None:
        self.pool.wait_ready(READY_TIMEOUT_S)

    def health(self) -> str | None:
        return self.pool.health()

    async def transcribe(self, pcm: np.ndarray, sample_rate: int, *,
                         priority: Priority = Priority.FINAL,
                         deadline: float | None = None, expect: str | None = None
                         ) -> Transcript:
        return await self.pool.transcribe(pcm, sample_rate, priority=priority,
                                          deadline=deadline, expect=expect)

    async def aclose(self) -> None:
        """The pool belongs to whoever made it (it serves the TTS too)."""


class RemoteTTS:
    """:class:`~switchboard.conversation.engines.TextToSpeech` through ``pool``."""

    def __init__(self, pool: SpeechPool) -> None:
        self.pool = pool
        self.native_rate = 22050
        """Piper's usual rate until a server said its voice's."""

    def warm_up(self) -> None:
        self.pool.wait_ready(READY_TIMEOUT_S)
        self.native_rate = self.pool.tts_rate or self.native_rate

    def health(self) -> str | None:
        return self.pool.health()

    def stream(self, text: str, sample_rate: int) -> AsyncGenerator[np.ndarray, None]:
        return self.pool.synthesize(text, sample_rate)

    async def aclose(self) -> None:
        """The pool belongs to whoever made it (it serves the STT too)."""

