"""A whole node (`switchboard run`) for SIP tests, on free ports of 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from switchboard.base.processes import free_port
from switchboard.base.settings import PROJECT_ROOT
from tests.sip.peers import free_udp_port, stop_process

NODE_START_TIMEOUT_S = 240.0


@dataclass
class RunningNode:
    process: subprocess.Popen[bytes]
    sip_port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def running_node(tmp_path: Path, database_url: str, *args: str,
                 **env: str) -> Iterator[RunningNode]:
    """`switchboard run ARGS` until it logs "node ready"; terminated (by PID) afterwards."""
    sip_port = free_udp_port()
    log_path = tmp_path / "node.log"
    environment = {
        **os.environ,
        "SWITCHBOARD_DATABASE_URL": database_url,
        "SWITCHBOARD_CELERY_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        "SWITCHBOARD_SIP_PORT": str(sip_port),
        "SWITCHBOARD_SIP_RTP_PORT": str(free_udp_port(200)),
        "SWITCHBOARD_SIP_RECORD": "false",
        "SWITCHBOARD_WEB_PORT": str(free_port()),
        "SWITCHBOARD_RASA_PORT": str(free_port()),
        "SWITCHBOARD_ACTION_PORT": str(free_port()),
        **env,
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "switchboard", "run", *args], cwd=PROJECT_ROOT,
            env=environment, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    node = RunningNode(process, sip_port, log_path)
    try:
        deadline = time.monotonic() + NODE_START_TIMEOUT_S
        while "node ready" not in node.log():
            assert process.poll() is None, node.log()
            assert time.monotonic() < deadline, node.log()
            time.sleep(0.5)
        yield node
    finally:
        process.terminate()
        try:
            process.wait(60)
        finally:
            stop_process(process)
