"""Frame sizes and resampling of int16 mono PCM."""

from __future__ import annotations

import numpy as np
import pytest

from switchboard.conversation.audio import (
    FRAME_MS,
    StreamResampler,
    frame_samples,
    int16_to_float32,
    resample,
)

RATES = (8000, 16000, 22050, 24000, 48000)


def tone(hz: float, ms: int, rate: int) -> np.ndarray:
    t = np.arange(ms * rate // 1000) / rate
    return (np.sin(2 * np.pi * hz * t) * 10000).astype(np.int16)


def peak_hz(pcm: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64)))
    return float(np.argmax(spectrum) * rate / len(pcm))


@pytest.mark.parametrize(
    ("rate", "samples"), [(8000, 160), (16000, 320), (22050, 441), (24000, 480), (48000, 960)]
)
def test_frame_samples_is_twenty_ms_of_audio(rate: int, samples: int) -> None:
    assert FRAME_MS == 20
    assert frame_samples(rate) == samples


def test_frame_samples_rejects_a_rate_without_whole_frames() -> None:
    with pytest.raises(ValueError, match="11025"):
        frame_samples(11025)


@pytest.mark.parametrize("src", RATES)
@pytest.mark.parametrize("dst", RATES)
def test_resample_keeps_duration_and_pitch(src: int, dst: int) -> None:
    out = resample(tone(440, 1000, src), src, dst)

    assert out.dtype == np.int16
    assert abs(len(out) - dst) <= 2
    assert peak_hz(out, dst) == pytest.approx(440, abs=2)


def test_resample_removes_what_the_lower_rate_cannot_carry() -> None:
    out = resample(tone(6000, 1000, 16000), 16000, 8000)

    assert np.abs(out[400:-400]).max() < 10


def test_resample_to_the_same_rate_returns_the_input() -> None:
    pcm = tone(440, 100, 16000)

    assert resample(pcm, 16000, 16000) is pcm


@pytest.mark.parametrize("bad", [np.zeros(160, dtype=np.float32), np.zeros((160, 2), np.int16)])
def test_resample_rejects_anything_but_mono_int16(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="1-D int16 mono PCM"):
        resample(bad, 16000, 8000)


@pytest.mark.parametrize(("src", "dst"), [(8000, 16000), (16000, 8000), (48000, 16000)])
def test_stream_resampler_delivers_every_frame_with_little_delay(src: int, dst: int) -> None:
    pcm = tone(440, 1000, src)
    step = frame_samples(src)
    resampler = StreamResampler(src, dst)

    chunks = [resampler.process(pcm[i : i + step]) for i in range(0, len(pcm), step)]
    out = np.concatenate([*chunks, resampler.flush()])

    assert all(len(chunk) > 0 for chunk in chunks[2:])
    assert len(np.concatenate(chunks[:2])) >= frame_samples(dst) / 2
    assert abs(len(out) - dst) <= 2
    assert peak_hz(out, dst) == pytest.approx(440, abs=2)


def test_int16_to_float32_scales_to_unit_range() -> None:
    out = int16_to_float32(np.array([-32768, 0, 16384, 32767], dtype=np.int16))

    assert out.dtype == np.float32
    assert out.tolist() == pytest.approx([-1.0, 0.0, 0.5, 1.0], abs=1e-4)
