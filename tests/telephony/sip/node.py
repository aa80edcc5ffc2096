"""A whole node (`switchboard run`) for SIP tests, on free ports of 127.0.0.1."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from switchboard.base.children import ChildProcess, log_probe
from switchboard.base.processes import free_port
from switchboard.base.settings import PROJECT_ROOT
from tests.telephony.sip.peers import free_udp_port

NODE_START_TIMEOUT_S = 240.0


@dataclass
class RunningNode:
    child: ChildProcess
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
    child = ChildProcess(
        "node", [sys.executable, "-m", "switchboard", "run", *args], log_path=log_path,
        healthy=log_probe(log_path, "node ready"), base_env=environment, cwd=PROJECT_ROOT,
        start_timeout_s=NODE_START_TIMEOUT_S, stop_grace_s=60.0,
    )
    with child:
        yield RunningNode(child, sip_port, log_path)
