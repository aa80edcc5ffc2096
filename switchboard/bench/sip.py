"""Runs the SIP benchmark against a node it starts itself (or one given by URI)."""

from __future__ import annotations

import math
import socket
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from switchboard.base.children import ChildProcess, log_probe
from switchboard.base.processes import free_port, free_sip_port, process_tree_cpu_s
from switchboard.base.settings import Settings
from switchboard.bench.kit import Report, percentile, piper_lines
from switchboard.bench.sip_callers import CALLS_PER_PROCESS, RATE, run_sip_bench
from switchboard.storage.database import prepare_database
from switchboard.storage.repository import CallRepository

NODE_START_TIMEOUT_S = 300.0


STAGES = ("endpoint_ms", "stt_ms", "dialog_ms", "tts_ms", "response_ms")


def server_stages(database_url: str, calls: int) -> dict[str, list[float]]:
    """Where each bot answer's time went on the node (its turn records): end-of-turn wait,
    transcription, dialog, first synthesized audio, and the whole response as the node
    saw it (end of the caller's speech in the received audio -> first frame sent)."""
    repository = CallRepository(prepare_database(database_url, demo_data=False))
    stages: dict[str, list[float]] = {}
    for listed in repository.list_calls(limit=calls):
        call = repository.get_call(listed.id)
        for turn in call.turns if call is not None else []:
            if turn.speaker != "bot" or turn.response_ms is None or turn.endpoint_ms is None:
                continue  # greetings answer no caller turn
            for stage in STAGES:
                value = getattr(turn, stage)
                if value is not None:
                    name = "server response" if stage == "response_ms" else (
                        f"server {stage.removesuffix('_ms')}")
                    stages.setdefault(name, []).append(float(value))
    return stages


@dataclass(frozen=True)
class BenchNode:
    """A node a bench started for itself: its SIP URI, supervisor PID and database."""

    uri: str
    pid: int
    database_url: str
    log_path: Path


@contextmanager
def bench_node(workers: int, tmp: str) -> Iterator[BenchNode]:
    """`switchboard run --sip-workers N` on free ports, its database and log in the
    folder ``tmp``, until the block ends (the folder stays: read the calls after)."""
    sip_port = free_sip_port()
    log_path = Path(tmp) / "node.log"
    database_url = f"sqlite:///{tmp}/bench.db"
    node = ChildProcess(
        "node", [sys.executable, "-m", "switchboard", "run", "--sip-workers", str(workers)],
        log_path=log_path, healthy=log_probe(log_path, "node ready"), stop_grace_s=30.0,
        env={
            "SWITCHBOARD_DATABASE_URL": database_url,
            "SWITCHBOARD_CELERY_BROKER_URL": f"sqla+sqlite:///{tmp}/broker.db",
            "SWITCHBOARD_SIP_PORT": str(sip_port),
            "SWITCHBOARD_SIP_WORKER_BASE_PORT": str(free_port(socket.SOCK_DGRAM)),
            "SWITCHBOARD_SIP_RTP_PORT": "42000",
            "SWITCHBOARD_SIP_RECORD": "false",
            "SWITCHBOARD_WEB_PORT": str(free_port(socket.SOCK_STREAM)),
            "SWITCHBOARD_RASA_PORT": str(free_port(socket.SOCK_STREAM)),
            "SWITCHBOARD_ACTION_PORT": str(free_port(socket.SOCK_STREAM)),
        },
    )
    print(f"starting a node with {workers} SIP worker(s) (log: {log_path})...", flush=True)
    node.start()
    try:
        node.wait_healthy(NODE_START_TIMEOUT_S)
        assert node.pid is not None
        yield BenchNode(f"sip:bot@127.0.0.1:{sip_port}", node.pid, database_url, log_path)
    finally:
        node.stop()


def bench_sip(settings: Settings, *, calls: int, concurrency: int, turns: int,
              target: str | None) -> Report:
    lines = piper_lines(settings, turns, RATE)
    if target is not None:
        return run_sip_bench(target, calls, concurrency, lines).report()
    workers = max(1, math.ceil(concurrency / CALLS_PER_PROCESS))
    with tempfile.TemporaryDirectory(prefix="switchboard-bench-") as tmp:
        with bench_node(workers, tmp) as node:
            pid = node.pid
            result = run_sip_bench(node.uri, calls, concurrency, lines,
                                   node_cpu=lambda: process_tree_cpu_s(pid),
                                   media_cpu=lambda: process_tree_cpu_s(
                                       pid, command_has="sip-worker"))
        stages = server_stages(node.database_url, calls)  # all stored once it stopped
    report = result.report()
    report.series.update(stages)
    caller, server = (percentile(report.series.get(name, []), 50)
                      for name in ("voice_to_voice", "server response"))
    if caller is not None and server is not None:
        report.figures["transport_ms_p50 (caller p50 - server p50)"] = caller - server
    report.figures["sip_workers"] = workers
    return report
