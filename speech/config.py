"""The speech engines' own settings, built by the node from ``Settings`` (README table)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

WHISPER_TINY_EN = "tiny.en"
WHISPER_BASE = "base"
PIPER_JOE = "en_US-joe-medium"
"""Model names that resolve to files inside PyPI packages (``speech.models``). Kept here
so that a process which only configures speech (a client) never imports the runtimes."""


@dataclass(frozen=True)
class SttConfig:
    """Which Whisper model, where and how it runs (``SWITCHBOARD_STT_*``)."""

    model: str = WHISPER_TINY_EN
    device: str = "auto"
    compute_type: str = "auto"
    language: str = "en"
    beam_size: int = 1
    cpu_threads: int = 2
    batch_size: int = 0
    """Utterances per pass of the model: 0 = 8 on a GPU, 1 on the CPU."""
    cache_dir: Path = Path.home() / ".cache" / "switchboard" / "models"
    """Where models joined from several packages are kept."""


@dataclass(frozen=True)
class TtsConfig:
    """Which Piper voice, and where it runs (``SWITCHBOARD_TTS_*``)."""

    voice: str = PIPER_JOE
    device: str = "auto"
    cpu_threads: int = 1
    """onnxruntime's threads for one synthesis (0: all cores)."""
