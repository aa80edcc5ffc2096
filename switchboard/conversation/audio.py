"""PCM helpers shared by every stage: frame sizes and resampling of int16 mono audio."""

from __future__ import annotations

import numpy as np
import soxr

FRAME_MS = 20
"""Duration of one media frame on the audio path."""

RESAMPLE_QUALITY = "HQ"
"""libsoxr quality preset used for every rate conversion."""

_INT16_SCALE = 32768.0


def frame_samples(rate: int) -> int:
    """Samples in one ``FRAME_MS`` frame of mono audio at ``rate`` Hz."""
    if rate <= 0 or rate * FRAME_MS % 1000:
        raise ValueError(
            f"sample rate {rate} Hz has no whole number of samples in a {FRAME_MS} ms frame; "
            "use a multiple of 50 Hz such as 8000, 16000, 22050, 24000 or 48000"
        )
    return rate * FRAME_MS // 1000


def check_pcm(pcm: np.ndarray) -> None:
    """Raise a ValueError that says how to fix it unless ``pcm`` is 1-D int16 mono PCM."""
    if not isinstance(pcm, np.ndarray) or pcm.dtype != np.int16 or pcm.ndim != 1:
        got = f"{type(pcm).__name__} {getattr(pcm, 'dtype', '')} {getattr(pcm, 'shape', '')}"
        raise ValueError(
            f"expected 1-D int16 mono PCM as a numpy array, got {got.strip()}; "
            "convert with (samples * 32767).astype(np.int16) and pick one channel")


def resample(pcm: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Convert a whole int16 mono signal from ``src_rate`` to ``dst_rate`` Hz."""
    check_pcm(pcm)
    if src_rate == dst_rate or pcm.size == 0:
        return pcm
    return np.asarray(soxr.resample(pcm, src_rate, dst_rate, quality=RESAMPLE_QUALITY))


class StreamResampler:
    """Resample int16 mono audio arriving in chunks, keeping filter state between them.

    libsoxr's variable-rate engine is used: at the same quality it returns output for
    every 20 ms chunk (about one frame of delay), where the fixed-rate engine holds back
    up to 100 ms and releases it in bursts, which a real-time path cannot afford.
    """

    def __init__(self, src_rate: int, dst_rate: int) -> None:
        self.src_rate = src_rate
        self.dst_rate = dst_rate
        self._stream = soxr.ResampleStream(
            src_rate, dst_rate, 1, dtype="int16", quality=RESAMPLE_QUALITY, vr=True
        )

    def process(self, pcm: np.ndarray) -> np.ndarray:
        """Resample the next chunk; the output lags the input by the filter delay."""
        check_pcm(pcm)
        return np.asarray(self._stream.resample_chunk(pcm))

    def flush(self) -> np.ndarray:
        """Return the samples still held in the filter and end the stream."""
        return np.asarray(self._stream.resample_chunk(np.zeros(0, dtype=np.int16), last=True))


def int16_to_float32(pcm: np.ndarray) -> np.ndarray:
    """Scale int16 PCM to float32 in [-1, 1)."""
    check_pcm(pcm)
    return pcm.astype(np.float32) / _INT16_SCALE
