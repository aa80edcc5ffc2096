"""The soak: real SIP calls cycled through a node for minutes, ``concurrency`` at a time
(rounds of PJSUA2 callers, as ``bench sip`` places them), while the node's processes are
sampled: memory (RSS), open file descriptors, threads, processes, calls still open and the
database's rows. Flat lines and no call left open at the end are what a node that runs
for months needs; the report prints the samples and the growth per 100 calls."""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import func, select

from switchboard.base.processes import descendants
from switchboard.base.settings import Settings
from switchboard.bench.kit import Report, piper_lines
from switchboard.bench.sip import BenchNode, bench_node
from switchboard.bench.sip_callers import CALLS_PER_PROCESS, RATE, run_sip_bench
from switchboard.storage.database import prepare_database
from switchboard.storage.models import Call, Turn

SETTLE_S = 30.0
"""How long calls may take to be closed after the last round, before they count as stuck."""
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Sample:
    at_s: float
    calls_placed: int
    rss_mb: float
    fds: int
    threads: int
    processes: int
    open_calls: int
    call_rows: int
    turn_rows: int

    def row(self) -> str:
        return (f"{self.at_s:>7.0f} {self.calls_placed:>6} {self.rss_mb:>8.1f} {self.fds:>5} "
                f"{self.threads:>7} {self.processes:>5} {self.open_calls:>5} "
                f"{self.call_rows:>6} {self.turn_rows:>6}")


HEADER = "    t/s  calls   RSS/MB   fds threads procs  open  calls  turns"


def tree_resources(pid: int) -> tuple[float, int, int, int]:
    """RSS (MB), open file descriptors, threads and processes of ``pid`` and below."""
    rss_pages = fds = threads = processes = 0
    for current in {pid, *descendants(pid)}:
        proc = Path(f"/proc/{current}")
        try:
            rss_pages += int((proc / "statm").read_text().split()[1])
            threads += int((proc / "stat").read_text().rsplit(")", 1)[1].split()[17])
            fds += sum(1 for _ in (proc / "fd").iterdir())
        except (OSError, ValueError, IndexError):
            continue  # it ended meanwhile
        processes += 1
    return rss_pages * PAGE_SIZE / 2**20, fds, threads, processes


class Sampler:
    def __init__(self, node: BenchNode) -> None:
        self.node = node
        self.sessions = prepare_database(node.database_url, demo_data=False)
        self.started = time.monotonic()
        self.samples: list[Sample] = []

    def open_calls(self) -> int:
        with self.sessions() as session:
            return session.scalar(select(func.count()).where(Call.status == "active")) or 0

    def take(self, calls_placed: int) -> Sample:
        rss, fds, threads, processes = tree_resources(self.node.pid)
        with self.sessions() as session:
            call_rows = session.scalar(select(func.count(Call.id))) or 0
            turn_rows = session.scalar(select(func.count(Turn.id))) or 0
        sample = Sample(time.monotonic() - self.started, calls_placed, rss, fds, threads,
                        processes, self.open_calls(), call_rows, turn_rows)
        self.samples.append(sample)
        print(sample.row(), flush=True)
        return sample


def growth_per_100_calls(samples: list[Sample], field: str) -> float | None:
    """Least-squares slope of ``field`` against calls placed, per 100 calls (the first
    sample, before any call, left out: start-up is not a leak)."""
    points = [(s.calls_placed, getattr(s, field)) for s in samples if s.calls_placed]
    if len(points) < 3 or len({x for x, _ in points}) < 2:
        return None
    x, y = np.array(points, dtype=float).T
    return float(np.polyfit(x, y, 1)[0] * 100)


def bench_soak(settings: Settings, *, minutes: float, concurrency: int, turns: int) -> Report:
    lines = piper_lines(settings, turns, RATE)
    workers = max(1, math.ceil(concurrency / CALLS_PER_PROCESS))
    voice_to_voice: list[float] = []
    placed = failed = unanswered = 0
    with tempfile.TemporaryDirectory(prefix="switchboard-soak-") as tmp, \
            bench_node(workers, tmp) as node:
        sampler = Sampler(node)
        print(HEADER, flush=True)
        sampler.take(0)
        deadline = time.monotonic() + minutes * 60
        while time.monotonic() < deadline:
            result = run_sip_bench(node.uri, concurrency, concurrency, lines)
            placed += result.calls
            failed += result.failed
            unanswered += result.unanswered_turns
            voice_to_voice += result.voice_to_voice_ms
            sampler.take(placed)
        settle = time.monotonic() + SETTLE_S
        while sampler.open_calls() and time.monotonic() < settle:
            time.sleep(1.0)
        last = sampler.take(placed)
    samples = sampler.samples
    first = next((s for s in samples if s.calls_placed), samples[0])
    report = Report(
        title=f"bench soak: {minutes:g} min of real SIP calls, {concurrency} at a time, "
              f"{workers} SIP worker(s)",
        series={"voice_to_voice": voice_to_voice},
        figures={
            "calls": placed, "failed_calls": failed, "unanswered_turns": unanswered,
            "stuck_calls (open after the last one ended)": last.open_calls,
            "rss_mb first round / last": f"{first.rss_mb:.0f} / {last.rss_mb:.0f}",
            "rss_mb per 100 calls": growth_per_100_calls(samples, "rss_mb"),
            "fds first round / last": f"{first.fds} / {last.fds}",
            "fds per 100 calls": growth_per_100_calls(samples, "fds"),
            "threads first round / last": f"{first.threads} / {last.threads}",
            "threads per 100 calls": growth_per_100_calls(samples, "threads"),
            "processes first round / last": f"{first.processes} / {last.processes}",
            "call rows per call": (last.call_rows - samples[0].call_rows) / max(1, placed),
            "turn rows per call": (last.turn_rows - samples[0].turn_rows) / max(1, placed),
        },
        notes=["The node's every process, sampled after each round of calls:",
               HEADER, *(s.row() for s in samples),
               "per 100 calls: least-squares slope over the rounds (start-up left out)."],
    )
    return report
