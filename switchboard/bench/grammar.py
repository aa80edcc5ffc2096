"""``switchboard bench grammar``: order numbers read aloud over a telephone line, heard by
Whisper alone, by the digit grammar alone (PocketSphinx, when confident) and by both
(the speech server's rule: :func:`speech.grammar.combine`).

Random 5-digit numbers (seeded), read digit by digit by two voice families (Piper,
espeak-ng) at 8 kHz, clean and with white noise at ``snr_db`` (the telephone band:
everything here is 8 kHz). A number counts when every digit is right.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np

from speech.grammar import GrammarRecognizer, combine, digits_in
from speech.stt import WhisperSTT
from speech.tts import PiperTTS
from switchboard.bench.kit import Report
from switchboard.bench.turn import espeak_line, piper_line

RATE = 8000
SPOKEN = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def with_noise(pcm: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
    """``pcm`` with white noise ``snr_db`` below its power."""
    signal = pcm.astype(np.float64)
    power = float(np.mean(signal ** 2)) or 1.0
    noise = np.random.default_rng(seed).normal(0.0, np.sqrt(power / 10 ** (snr_db / 10)),
                                               len(pcm))
    return np.clip(signal + noise, -32768, 32767).astype(np.int16)


def bench_grammar(tts: PiperTTS, stt: WhisperSTT, grammar: GrammarRecognizer, count: int,
                  snr_db: float) -> Report:
    report = Report(f"bench grammar: {count} order numbers per voice and condition, read "
                    f"digit by digit at {RATE} Hz; noisy = white noise at {snr_db:.0f} dB SNR")
    rng = random.Random(7)
    numbers = ["".join(rng.choice("0123456789") for _ in range(5)) for _ in range(count)]
    voices: dict[str, Callable[[str], np.ndarray]] = {
        "piper": lambda text: piper_line(tts, text, RATE),
        "espeak": lambda text: espeak_line(text, RATE)}
    for voice, speak in voices.items():
        for condition in ("clean", "noisy"):
            right = {"whisper": 0, "grammar": 0, "combined": 0}
            for index, number in enumerate(numbers):
                pcm = speak(" ".join(SPOKEN[int(d)] for d in number))
                if condition == "noisy":
                    pcm = with_noise(pcm, snr_db, index)
                heard = stt.transcribe_sync(pcm, RATE)
                result = grammar.recognize_sync(pcm, RATE, "order_number")
                report.series.setdefault("grammar_ms", []).append(result.elapsed_ms)
                report.series.setdefault("whisper_ms", []).append(heard.elapsed_ms)
                right["whisper"] += digits_in(heard.text) == number
                right["grammar"] += result.confident and result.text == number
                combined = combine(heard, result, "order_number")
                right["combined"] += digits_in(combined.text) == number
            for method, correct in right.items():
                report.figures[f"{voice} {condition} {method} %"] = 100 * correct / count
    return report
