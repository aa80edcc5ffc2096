"""``switchboard bench speech``: what the speech service sustains as streams are added.

Each stream is a closed loop standing for one busy call: it asks for a transcription of a
caller line (8 kHz, as from a phone), then a two-sentence reply, then again, with no pause.
For N = each of ``streams`` in turn, for ``seconds`` each: requests per second, and per
request the latency seen by the client, the server's queue wait and the compute time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from speech.service.pool import SpeechPool
from switchboard.bench.kit import Report
from switchboard.conversation.engines import Priority

RATE = 8000
REPLY = "Your order four eight two one three shipped yesterday. It should arrive on Friday."


@dataclass
class _Level:
    stt_total: list[float] = field(default_factory=list)
    stt_queue: list[float] = field(default_factory=list)
    stt_compute: list[float] = field(default_factory=list)
    tts_first: list[float] = field(default_factory=list)
    tts_total: list[float] = field(default_factory=list)
    errors: int = 0


async def _stream(pool: SpeechPool, lines: Sequence[np.ndarray], until: float, offset: int,
                  level: _Level) -> None:
    turn = offset
    while time.monotonic() < until:
        pcm = lines[turn % len(lines)]
        turn += 1
        started = time.perf_counter()
        try:
            transcript = await pool.transcribe(pcm, RATE, priority=Priority.FINAL)
        except Exception:
            level.errors += 1
            continue
        level.stt_total.append((time.perf_counter() - started) * 1000)
        level.stt_queue.append(transcript.queue_ms)
        level.stt_compute.append(transcript.elapsed_ms)
        started = time.perf_counter()
        first: float | None = None
        try:
            async for _chunk in pool.synthesize(REPLY, RATE):
                first = first or (time.perf_counter() - started) * 1000
        except Exception:
            level.errors += 1
            continue
        if first is not None:
            level.tts_first.append(first)
        level.tts_total.append((time.perf_counter() - started) * 1000)


async def bench_speech(pool: SpeechPool, lines: Sequence[np.ndarray], streams: Sequence[int],
                       seconds: float, device: str) -> Report:
    report = Report(f"speech service, {len(pool.addresses)} server(s), device {device}: "
                    f"closed-loop streams (transcribe a caller line, then a 2-sentence "
                    f"reply), {seconds:.0f} s per level")
    for count in streams:
        level = _Level()
        until = time.monotonic() + seconds
        started = time.perf_counter()
        await asyncio.gather(*(_stream(pool, lines, until, index, level)
                               for index in range(count)))
        wall = time.perf_counter() - started
        report.series.update({
            f"N={count} stt latency": level.stt_total,
            f"N={count} stt queue": level.stt_queue,
            f"N={count} stt compute": level.stt_compute,
            f"N={count} tts first audio": level.tts_first,
            f"N={count} tts whole reply": level.tts_total,
        })
        report.figures[f"N={count} requests/s"] = (
            len(level.stt_total) + len(level.tts_total)) / wall
        report.figures[f"N={count} transcriptions/s"] = len(level.stt_total) / wall
        report.figures[f"N={count} errors"] = level.errors
    report.figures["retries"] = pool.stats.retries
    return report
