"""A call's audio as a stereo WAV: left = caller, right = bot, sample-aligned."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile

FLUSH_FRAMES = 50
"""Frame pairs buffered before they are written (one second at 20 ms)."""


class CallRecording:
    """Pairs each caller frame with the bot frame sent in the same 20 ms tick."""

    def __init__(self, path: Path, sample_rate: int) -> None:
        self.path = path
        self.sample_rate = sample_rate
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = soundfile.SoundFile(
            str(path), "w", samplerate=sample_rate, channels=2, subtype="PCM_16", format="WAV"
        )
        self._caller: list[np.ndarray] = []
        self._bot: list[np.ndarray] = []

    def caller(self, frame: np.ndarray) -> None:
        self._caller.append(frame)

    def bot(self, frame: np.ndarray) -> None:
        self._bot.append(frame)
        if len(self._bot) >= FLUSH_FRAMES:
            self._flush(final=False)

    def _flush(self, *, final: bool) -> None:
        counts = (len(self._caller), len(self._bot))
        pairs = max(counts) if final else min(counts)
        if not pairs:
            return
        caller = _joined(self._caller[:pairs])
        bot = _joined(self._bot[:pairs])
        block = np.zeros((max(len(caller), len(bot)), 2), dtype=np.int16)
        block[: len(caller), 0] = caller
        block[: len(bot), 1] = bot
        self._file.write(block)
        del self._caller[:pairs], self._bot[:pairs]

    def close(self) -> None:
        """Write what is left and close the file (blocking: call it off the event loop)."""
        if not self._file.closed:
            self._flush(final=True)
            self._file.close()


def _joined(frames: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(frames) if frames else np.zeros(0, dtype=np.int16)
