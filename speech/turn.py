"""Is the caller done? Smart Turn v3 scores the sound of an utterance's end (intonation,
rhythm, a trailing "and..."), so a short pause after a finished sentence can end the turn
while the same pause in the middle of one does not.

The model is the ONNX file inside ``pipecat-ai`` (see ``speech.models``); its input is the
last 8 s of audio at 16 kHz as Whisper log-mel features (faster-whisper's extractor, on
the waveform normalised to zero mean and unit variance).
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
import onnxruntime
from faster_whisper.feature_extractor import FeatureExtractor

from speech.inference import InferenceQueue
from speech.models import resolve_smart_turn
from switchboard.conversation.audio import int16_to_float32, resample

logger = logging.getLogger(__name__)

MODEL_RATE = 16000
WINDOW_S = 8
FRAMES = WINDOW_S * 100
"""The model's input: 80 mel bands by 800 frames of 10 ms."""


class SmartTurn:
    """Smart Turn v3 on the CPU; scores run one at a time on a thread of their own."""

    def __init__(self, cpu_threads: int = 1) -> None:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = cpu_threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        self._session = onnxruntime.InferenceSession(
            str(resolve_smart_turn()), sess_options=options,
            providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._features = FeatureExtractor(feature_size=80)
        self._queue = InferenceQueue("smart-turn")

    def warm_up(self) -> None:
        self.completion_sync(np.zeros(MODEL_RATE, dtype=np.int16), MODEL_RATE)

    def completion_sync(self, pcm: np.ndarray, sample_rate: int) -> float:
        """Probability that the turn is complete after ``pcm`` (1-D int16)."""
        if not isinstance(pcm, np.ndarray) or pcm.dtype != np.int16 or pcm.ndim != 1:
            raise ValueError("expected 1-D int16 mono PCM as a numpy array")
        audio = int16_to_float32(resample(pcm, sample_rate, MODEL_RATE))
        window = audio[-WINDOW_S * MODEL_RATE:]
        window = np.pad(window, (WINDOW_S * MODEL_RATE - len(window), 0))
        normalised = (window - window.mean()) / np.sqrt(window.var() + 1e-7)
        features = self._features(normalised, padding=0, chunk_length=WINDOW_S)[:, :FRAMES]
        output = self._session.run(None, {self._input: features[None].astype(np.float32)})
        return float(np.asarray(output[0]).reshape(-1)[0])

    async def completion(self, pcm: np.ndarray, sample_rate: int) -> float:
        started = time.perf_counter()
        timed = await self._queue.run(lambda: self.completion_sync(pcm, sample_rate))
        logger.debug("turn completion %.2f in %.0f ms", timed.value,
                     (time.perf_counter() - started) * 1000)
        return timed.value

    def health(self) -> str | None:
        return None if self._queue.alive else "the Smart Turn worker thread is not running"

    def close(self) -> None:
        self._queue.close()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)
