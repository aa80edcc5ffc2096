"""Text to speech: Piper voices, streamed one sentence at a time."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import cast

import numpy as np
import onnxruntime
from piper import PiperVoice
from piper.config import PiperConfig

from speech.config import PIPER_JOE, TtsConfig
from speech.inference import InferenceQueue, drain
from speech.models import pick_onnx_device, resolve_piper_voice
from switchboard.conversation.audio import resample
from switchboard.conversation.engines import Priority

logger = logging.getLogger(__name__)

FIRST_SENTENCE = Priority.FINAL
"""A reply's first sentence keeps its caller waiting: it goes before..."""
LATER_SENTENCES = Priority.SPECULATIVE
"""...the rest of any reply, which plays while the first one is heard."""
_END = object()


class PiperTTS:
    """A Piper voice; synthesis runs sentence by sentence on one thread owned by the
    instance, each stream's first sentence ahead of other streams' later ones."""

    def __init__(self, voice: str = PIPER_JOE, device: str = "auto", cpu_threads: int = 0
                 ) -> None:
        path = resolve_piper_voice(voice)
        self.device = pick_onnx_device(device)
        self._voice = self._load(path, cpu_threads)
        self.native_rate: int = self._voice.config.sample_rate
        self._queue = InferenceQueue("piper-tts")

    @classmethod
    def from_config(cls, config: TtsConfig) -> PiperTTS:
        """The voice ``config`` names, on the device it says."""
        return cls(voice=config.voice, device=config.device, cpu_threads=config.cpu_threads)

    def _load(self, path: Path, cpu_threads: int) -> PiperVoice:
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
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = cpu_threads  # 0: onnxruntime's choice (all cores)
        options.inter_op_num_threads = 1
        with open(f"{path}.json", encoding="utf-8") as config:
            piper_config = PiperConfig.from_dict(json.load(config))
        session = onnxruntime.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"])
        return PiperVoice(session=session, config=piper_config)

    def warm_up(self) -> None:
        """Synthesize a word so that the first real sentence pays no start-up cost."""
        for _ in self.synthesize_sync("Hello.", self.native_rate):
            pass

    def synthesize_sync(self, text: str, sample_rate: int, skip: int = 0
                        ) -> Iterator[np.ndarray]:
        """One int16 mono chunk per sentence of ``text``, at ``sample_rate``, lazily; the
        first ``skip`` sentences are left out (a reply resumed after a speech server died:
        they are synthesized and dropped, a cost paid only then)."""
        for chunk in itertools.islice(self._voice.synthesize(text), skip, None):
            yield resample(chunk.audio_int16_array, chunk.sample_rate, sample_rate)

    async def stream(self, text: str, sample_rate: int, *, skip: int = 0
                     ) -> AsyncGenerator[np.ndarray, None]:
        """Sentences synthesized on the worker thread, handed over as they are ready; the
        next one is synthesized while the listener plays this one. ``skip`` leaves out
        sentences another server already delivered."""
        chunks: asyncio.Queue[np.ndarray | BaseException | None] = asyncio.Queue()
        producer = asyncio.create_task(self._produce(text, sample_rate, skip, chunks))
        try:
            async for chunk in drain(chunks):
                yield chunk
        finally:
            producer.cancel()  # drops a queued sentence; a running one finishes alone

    async def _produce(self, text: str, sample_rate: int, skip: int,
                       chunks: asyncio.Queue[np.ndarray | BaseException | None]) -> None:
        try:
            sentences = self.synthesize_sync(text, sample_rate, skip)
            priority = FIRST_SENTENCE
            while (timed := await self._queue.run(lambda: next(sentences, _END),
                                                  priority=priority)).value is not _END:
                chunks.put_nowait(cast(np.ndarray, timed.value))
                priority = LATER_SENTENCES
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            chunks.put_nowait(exc)
            return
        chunks.put_nowait(None)

    def health(self) -> str | None:
        return None if self._queue.alive else "the Piper worker thread is not running"

    def close(self) -> None:
        """Stop the worker thread once its current sentence is done; queued work is dropped."""
        self._queue.close()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)
