"""Text to speech: Piper voices, streamed one sentence at a time."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncGenerator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from piper import PiperVoice

from speech.config import TtsConfig
from speech.models import PIPER_JOE, pick_onnx_device, resolve_piper_voice
from switchboard.conversation.audio import resample

logger = logging.getLogger(__name__)


class PiperTTS:
    """A Piper voice; synthesis runs on one worker thread owned by the instance."""

    def __init__(self, voice: str = PIPER_JOE, device: str = "auto") -> None:
        path = resolve_piper_voice(voice)
        self.device = pick_onnx_device(device)
        self._voice = self._load(path)
        self.native_rate: int = self._voice.config.sample_rate
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="piper-tts")
        self._closed = False

    @classmethod
    def from_config(cls, config: TtsConfig) -> PiperTTS:
        """The voice ``config`` names, on the device it says."""
        return cls(voice=config.voice, device=config.device)

    def _load(self, path: Path) -> PiperVoice:
        if self.device == "cuda":
            try:
                voice = PiperVoice.load(path, use_cuda=True)
            except Exception:
                logger.warning("loading Piper voice %s on CUDA failed; using the CPU", path)
            else:
                if "CUDAExecutionProvider" in voice.session.get_providers():
                    return voice
                logger.warning("onnxruntime gave Piper voice %s no CUDA; using the CPU", path)
            self.device = "cpu"
        return PiperVoice.load(path)

    def warm_up(self) -> None:
        """Synthesize a word so that the first real sentence pays no start-up cost."""
        for _ in self.synthesize_sync("Hello.", self.native_rate):
            pass

    def synthesize_sync(self, text: str, sample_rate: int) -> Iterator[np.ndarray]:
        """One int16 mono chunk per sentence of ``text``, at ``sample_rate``, lazily."""
        for chunk in self._voice.synthesize(text):
            yield resample(chunk.audio_int16_array, chunk.sample_rate, sample_rate)

    async def stream(self, text: str, sample_rate: int) -> AsyncGenerator[np.ndarray, None]:
        """Sentences synthesized on the worker thread, handed over as they are ready."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[np.ndarray | Exception | None] = asyncio.Queue()
        stop = threading.Event()

        def deliver(item: np.ndarray | Exception | None) -> bool:
            if stop.is_set():
                return False
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the event loop is closed: nobody is listening any more
                return False
            return True

        def produce() -> None:
            if stop.is_set():  # closed while waiting behind another stream
                return
            try:
                for pcm in self.synthesize_sync(text, sample_rate):
                    if not deliver(pcm):
                        return
            except Exception as exc:
                deliver(exc)
                return
            deliver(None)

        self._executor.submit(produce)
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            stop.set()

    def health(self) -> str | None:
        return "the Piper voice is closed" if self._closed else None

    def close(self) -> None:
        """Stop the worker thread once its current sentence is done; queued work is dropped."""
        self._closed = True
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)
