"""Runs the SIP benchmark against a node it starts itself (or one given by URI)."""

from __future__ import annotations

import math
import socket
import sys
import tempfile
from pathlib import Path

from switchboard.base.children import ChildProcess, log_probe
from switchboard.base.processes import free_port, process_tree_cpu_s
from switchboard.base.settings import Settings
from switchboard.bench.kit import Report, piper_lines
from switchboard.bench.sip_callers import CALLS_PER_PROCESS, RATE, run_sip_bench

NODE_START_TIMEOUT_S = 300.0


def bench_sip(settings: Settings, *, calls: int, concurrency: int, turns: int,
              target: str | None) -> Report:
    lines = piper_lines(settings, turns, RATE)
    if target is not None:
        return run_sip_bench(target, calls, concurrency, lines).report()
    workers = max(1, math.ceil(concurrency / CALLS_PER_PROCESS))
    with tempfile.TemporaryDirectory(prefix="switchboard-bench-") as tmp:
        sip_port = free_port(socket.SOCK_DGRAM)
        log_path = Path(tmp) / "node.log"
        node = ChildProcess(
            "node", [sys.executable, "-m", "switchboard", "run", "--sip-workers", str(workers)],
            log_path=log_path, healthy=log_probe(log_path, "node ready"), stop_grace_s=30.0,
            env={
                "SWITCHBOARD_DATABASE_URL": f"sqlite:///{tmp}/bench.db",
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
            pid = node.pid
            assert pid is not None
            result = run_sip_bench(f"sip:bot@127.0.0.1:{sip_port}", calls, concurrency, lines,
                                   node_cpu=lambda: process_tree_cpu_s(pid),
                                   media_cpu=lambda: process_tree_cpu_s(
                                       pid, command_has="sip-worker"))
        finally:
            node.stop()
    report = result.report()
    report.figures["sip_workers"] = workers
    return report
