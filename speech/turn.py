"""Is the caller done? Smart Turn v3 scores the sound of an utterance's end (intonation,
rhythm, a trailing "and..."), so a short pause after a finished sentence can end the turn
while the same pause in the middle of one does not.

The model is the ONNX file inside ``pipecat-ai`` (see ``speech.models``); its input is the
last 8 s of audio at 16 kHz as Whisper log-mel features (faster-whisper's extractor, on
the waveform normalised to zero mean and unit variance).
"""

from __future__ import annotations

import numpy as np
import onnxruntime
from faster_whisper.feature_extractor import FeatureExtractor

from speech.models import resolve_smart_turn
from switchboard.conversation.audio import int16_to_float32, resample

MODEL_RATE = 16000
WINDOW_S = 8
FRAMES = WINDOW_S * 100
"""The model's input: 80 mel bands by 800 frames of 10 ms."""


class SmartTurn:
    """Smart Turn v3 on the CPU, scored on the calling thread (``switchboard bench turn``
    measures it; the pipeline does not use it, see the README)."""

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

    def warm_up(self) -> None:
        self.score(np.zeros(MODEL_RATE, dtype=np.int16), MODEL_RATE)

    def score(self, pcm: np.ndarray, sample_rate: int) -> float:
        """Probability that the caller's turn is complete after ``pcm`` (1-D int16, the
        utterance so far ending in the pause being judged)."""
        audio = int16_to_float32(resample(pcm, sample_rate, MODEL_RATE))  # checks pcm
        window = audio[-WINDOW_S * MODEL_RATE:]
        window = np.pad(window, (WINDOW_S * MODEL_RATE - len(window), 0))
        normalised = (window - window.mean()) / np.sqrt(window.var() + 1e-7)
        features = self._features(normalised, padding=0, chunk_length=WINDOW_S)[:, :FRAMES]
        output = self._session.run(None, {self._input: features[None].astype(np.float32)})
        return float(np.asarray(output[0]).reshape(-1)[0])

    def close(self) -> None:
        """Nothing runs in the background; the session goes with the object."""
