"""``switchboard bench turn``: can a turn-completion model end the caller's turn at a short
pause without cutting callers off mid-sentence?

The labelled set, on telephone audio (8 kHz; ``--rate 16000`` for browser calls), from
two voice families (Piper, espeak-ng): every caller line whole (*finished*), and the same
recording cut at the end of an inner word (*paused*: the prosody of a sentence that goes
on, not a shorter sentence spoken to its end). Word ends come from Whisper's word
timestamps on the whole line. Each sample ends in the silence the pipeline has heard when
it first asks (``early_transcribe_ms``).

For each threshold: the share of finished turns the model would end early (the gain), and
the share of paused callers it would cut off (the harm).
"""

from __future__ import annotations

import io
import subprocess
import time
from dataclasses import dataclass

import numpy as np
import soundfile

from speech.stt import WhisperSTT
from speech.tts import PiperTTS
from speech.turn import SmartTurn
from switchboard.bench.kit import CALLER_LINES, Report, trim_silence
from switchboard.conversation.audio import resample

SHORT_ANSWERS = ("Yes.", "No.", "Yes, that's right.", "That's correct.", "Okay, thanks.")
THRESHOLDS = (0.5, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class Sample:
    voice: str
    text: str
    finished: bool
    audio: np.ndarray


def espeak_line(text: str, rate: int) -> np.ndarray:
    """``text`` spoken by espeak-ng, trimmed, int16 at ``rate``."""
    done = subprocess.run(["espeak-ng", "--stdout", text], capture_output=True, check=True)
    pcm, native = soundfile.read(io.BytesIO(done.stdout), dtype="int16")
    return trim_silence(resample(pcm, native, rate))


def piper_line(tts: PiperTTS, text: str, rate: int) -> np.ndarray:
    return trim_silence(np.concatenate(list(tts.synthesize_sync(text, rate))))


def samples(tts: PiperTTS, stt: WhisperSTT, pause_ms: int, rate: int) -> list[Sample]:
    pause = np.zeros(pause_ms * rate // 1000, dtype=np.int16)
    found: list[Sample] = []
    for voice in ("piper", "espeak"):
        for text in (*CALLER_LINES, *SHORT_ANSWERS):
            whole = piper_line(tts, text, rate) if voice == "piper" else espeak_line(text, rate)
            found.append(Sample(voice, text, True, np.concatenate([whole, pause])))
            ends = stt.word_ends(whole, rate)[:-1]  # inner words only
            for end_s in ends[len(ends) // 3 :: max(1, len(ends) // 3)][:2]:
                cut = trim_silence(whole[: int(end_s * rate)])
                found.append(Sample(voice, text, False, np.concatenate([cut, pause])))
    return found


def bench_turn(tts: PiperTTS, stt: WhisperSTT, model: SmartTurn, pause_ms: int,
               rate: int) -> Report:
    report = Report(f"bench turn: Smart Turn v3 at a {pause_ms} ms pause, {rate} Hz, Piper and "
                    "espeak-ng voices; 'ended' = the turn would end at the pause")
    scored: list[tuple[Sample, float]] = []
    for sample in samples(tts, stt, pause_ms, rate):
        started = time.perf_counter()
        score = model.score(sample.audio, rate)
        report.series.setdefault("score_ms", []).append((time.perf_counter() - started) * 1000)
        scored.append((sample, score))
    for voice in ("piper", "espeak"):
        finished = [s for sample, s in scored if sample.voice == voice and sample.finished]
        paused = [s for sample, s in scored if sample.voice == voice and not sample.finished]
        report.figures[f"{voice} samples finished/paused"] = f"{len(finished)}/{len(paused)}"
        for threshold in THRESHOLDS:
            ended = sum(s >= threshold for s in finished) / max(1, len(finished))
            cut = sum(s >= threshold for s in paused) / max(1, len(paused))
            report.figures[f"{voice} >= {threshold}: finished ended %"] = 100 * ended
            report.figures[f"{voice} >= {threshold}: paused cut off %"] = 100 * cut
    worst = sorted(((s, sample.voice, sample.text) for sample, s in scored
                    if not sample.finished), reverse=True)[:5]
    report.notes.append("paused samples scored highest: " + "; ".join(
        f"{v} '{t}' {s:.2f}" for s, v, t in worst))
    return report
