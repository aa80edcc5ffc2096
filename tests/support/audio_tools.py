"""Audio for tests, generated at test time: speech, silence, noise, WAV files, digit text."""

from __future__ import annotations

import re
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

from speech.tts import PiperTTS
from switchboard.conversation.audio import resample

_DIGIT_WORDS = {
    "zero": "0",
    "oh": "0",
    "o": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
}
_REPEATS = {"double": 2, "triple": 3}


SILENCE_FLOOR = 10
"""Samples at or below this magnitude (about -70 dBFS) count as silence when trimming."""


def _trim(pcm: np.ndarray) -> np.ndarray:
    loud = np.flatnonzero(np.abs(pcm) > SILENCE_FLOOR)
    return pcm[loud[0] : loud[-1] + 1] if loud.size else pcm[:0]


def espeak(text: str, rate: int = 16000) -> np.ndarray:
    """``text`` spoken by espeak-ng (a robotic voice unlike Piper's), int16 mono at ``rate``,
    without leading or trailing silence."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speech.wav"
        subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
        pcm, native_rate = read_wav(path)
    return _trim(resample(pcm, native_rate, rate))


def piper_speech(tts: PiperTTS, text: str, rate: int = 16000) -> np.ndarray:
    """``text`` spoken by a Piper voice, sentences joined with their natural pauses, int16
    mono at ``rate``, without leading or trailing silence."""
    return _trim(np.concatenate(list(tts.synthesize_sync(text, rate))))


def silence(ms: int, rate: int = 16000) -> np.ndarray:
    """``ms`` of digital silence."""
    return np.zeros(ms * rate // 1000, dtype=np.int16)


def squeeze_silences(pcm: np.ndarray, rate: int, *, longest_ms: int = 300,
                     floor: int = 200) -> np.ndarray:
    """``pcm`` with every quiet stretch (20 ms frames under ``floor`` peak) cut to
    ``longest_ms``: a recording with long pauses, made short enough for Whisper to
    transcribe all of its speech (it skips speech after long silences)."""
    frame = rate // 50
    kept, quiet = [], 0
    for start in range(0, len(pcm) - frame + 1, frame):
        chunk = pcm[start : start + frame]
        quiet = quiet + 20 if np.abs(chunk.astype(np.int32)).max() < floor else 0
        if quiet <= longest_ms:
            kept.append(chunk)
    return np.concatenate(kept) if kept else pcm[:0]


def white_noise(ms: int, rate: int = 16000, level: float = 0.01, seed: int = 0) -> np.ndarray:
    """``ms`` of Gaussian white noise with an RMS of ``level`` times full scale (repeatable)."""
    noise = np.random.default_rng(seed).normal(0.0, level * 32767, ms * rate // 1000)
    return np.clip(noise, -32768, 32767).astype(np.int16)


def write_wav(path: Path, pcm: np.ndarray, rate: int, channels: int = 1) -> None:
    """Write 16-bit PCM; mono ``pcm`` is copied to every channel when ``channels`` > 1,
    a 2-D ``pcm`` is taken as (samples, channels)."""
    frames = np.asarray(pcm, dtype=np.int16)
    if frames.ndim == 1:
        frames = np.repeat(frames[:, None], channels, axis=1)
    if frames.shape[1] != channels:
        raise ValueError(f"pcm has {frames.shape[1]} channels, {channels} requested")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(frames.astype("<i2").tobytes())


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Read a 16-bit PCM WAV: (int16 samples, rate); 1-D if mono, else (samples, channels)."""
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise ValueError(f"{path}: expected 16-bit PCM, got {8 * wav.getsampwidth()}-bit")
        channels = wav.getnchannels()
        rate = wav.getframerate()
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.int16)
    return (pcm if channels == 1 else pcm.reshape(-1, channels)), rate


def normalize_digits(text: str) -> str:
    """The digits said in ``text``, in order, as one string.

    "four eight two one three", "4-8-2-1-3" and "48,213" all become "48213", and
    "double eight" becomes "88", so that transcripts of spoken numbers compare simply.
    """
    digits: list[str] = []
    repeat = 1
    for token in re.findall(r"[a-z]+|\d", text.lower()):
        if token in _REPEATS:
            repeat = _REPEATS[token]
            continue
        digit = token if token.isdigit() else _DIGIT_WORDS.get(token)
        if digit is not None:
            digits.append(digit * repeat)
        repeat = 1
    return "".join(digits)
