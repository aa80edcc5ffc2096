"""One call through the real pipeline with a WAV file as the caller (``switchboard simulate``)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import soundfile

from switchboard.conversation.audio import FRAME_MS, frame_samples, resample
from switchboard.conversation.call import CallRequest
from switchboard.conversation.pipeline import CallResult
from switchboard.node import Node

SUPPORTED_RATES = (8000, 16000)


class AudioFileError(ValueError):
    """A caller file that cannot be used; the message names the file and what was expected."""


def load_caller_audio(path: Path, rate: int) -> np.ndarray:
    """Read any audio file libsndfile understands as int16 mono at ``rate``."""
    try:
        data, file_rate = soundfile.read(str(path), dtype="int16", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, OSError) as exc:
        reason = str(exc).split(":")[-1].strip() or type(exc).__name__
        raise AudioFileError(
            f"{path}: not a readable audio file ({reason}); expected a WAV (or FLAC/OGG) "
            "file with the caller's speech"
        ) from exc
    if data.shape[0] == 0:
        raise AudioFileError(f"{path}: the audio file holds no samples; expected caller speech")
    mono = data.mean(axis=1).astype(np.int16) if data.shape[1] > 1 else data[:, 0]
    return resample(mono, int(file_rate), rate) if file_rate != rate else mono


class Settling(Protocol):
    """A call that says when it has settled (see ``ConversationPipeline.settled``)."""

    @property
    def idle(self) -> bool: ...

    async def settled(self) -> None: ...


class FileSource:
    """Plays the caller's audio, then silence until the bot is done (or the call ends).

    ``realtime`` paces frames at 20 ms; otherwise each frame waits only until the
    pipeline has settled, so compute costs no media time."""

    def __init__(self, pcm: np.ndarray, rate: int, *, realtime: bool, tail_s: float) -> None:
        self.sample_rate = rate
        self.end_reason: str | None = None
        self._pcm = pcm
        self._frame = frame_samples(rate)
        self._pos = 0
        self._realtime = realtime
        self._tail_frames = int(tail_s * 1000 / FRAME_MS)
        self._idle_frames = 0
        self._next_deadline: float | None = None
        self.call: Settling | None = None
        """The call being fed (a handle, or the pipeline itself in unit tests)."""

    async def read(self) -> np.ndarray | None:
        if self._realtime:
            now = time.perf_counter()
            self._next_deadline = (self._next_deadline or now) + FRAME_MS / 1000
            await asyncio.sleep(max(0.0, self._next_deadline - now))
        elif self.call is not None:
            await self.call.settled()
            await asyncio.sleep(0)
        if self._pos < len(self._pcm):
            frame = self._pcm[self._pos : self._pos + self._frame]
            self._pos += self._frame
            if len(frame) < self._frame:
                frame = np.pad(frame, (0, self._frame - len(frame)))
            return frame
        if self.call is not None and self.call.idle:
            self._idle_frames += 1
            if self._idle_frames >= self._tail_frames:
                return None
        else:
            self._idle_frames = 0
        return np.zeros(self._frame, dtype=np.int16)


class CaptureSink:
    """Keeps every frame the bot sent, so the caller's side of the call can be replayed."""

    def __init__(self, rate: int) -> None:
        self.sample_rate = rate
        self.frames: list[np.ndarray] = []

    async def write(self, frame: np.ndarray) -> None:
        self.frames.append(frame)

    def clear(self) -> None:
        """Nothing to drop: every frame written counts as heard at once."""

    def audio(self) -> np.ndarray:
        return np.concatenate(self.frames) if self.frames else np.zeros(0, dtype=np.int16)


@dataclass
class Simulation:
    result: CallResult
    bot_audio: np.ndarray
    sample_rate: int
    wall_s: float

    def turn_log(self) -> dict[str, Any]:
        return {
            "call_id": self.result.call_id,
            "end_reason": self.result.reason,
            "status": self.result.status,
            "handoff": self.result.handoff,
            "turns": [
                {k: v.isoformat() if hasattr(v, "isoformat") else v
                 for k, v in asdict(turn).items() if k != "extra"}
                for turn in self.result.turns
            ],
        }


async def simulate_call(
    node: Node,
    caller_pcm: np.ndarray,
    rate: int,
    *,
    realtime: bool = False,
    tail_s: float = 1.0,
    caller: str = "simulator",
) -> Simulation:
    """Run one call with ``caller_pcm`` (int16 mono at ``rate``) as the caller."""
    if rate not in SUPPORTED_RATES:
        raise ValueError(f"call sample rate must be one of {SUPPORTED_RATES}, not {rate}")
    source = FileSource(caller_pcm, rate, realtime=realtime, tail_s=tail_s)
    sink = CaptureSink(rate)

    started = time.perf_counter()
    handle = source.call = node.start_call(
        CallRequest(transport="simulate", source=source, sink=sink, caller=caller))
    result = await handle.result()
    return Simulation(result, sink.audio(), rate, time.perf_counter() - started)


def write_outputs(sim: Simulation, reply_wav: Path | None, json_path: Path | None) -> None:
    if reply_wav is not None:
        reply_wav.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(str(reply_wav), sim.bot_audio, sim.sample_rate, subtype="PCM_16")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(sim.turn_log(), indent=2))
