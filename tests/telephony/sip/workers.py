"""SIP media worker processes (``python -m switchboard sip-worker``) for the SIP tests, on
free ports of 127.0.0.1; each is stopped by its PID."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from switchboard.base.children import ChildProcess
from switchboard.base.settings import PROJECT_ROOT
from switchboard.bench.local_cluster import free_udp_port
from tests.telephony.sip.peers import options

WORKER_START_TIMEOUT_S = 60.0


@dataclass
class Worker:
    child: ChildProcess
    port: int
    rtp_port: int
    data_dir: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def env_for(data_dir: Path, rasa_url: str, database_url: str, **extra: str) -> dict[str, str]:
    """The environment of a worker (or ``switchboard call``) on the given Rasa and database,
    CPU models, 127.0.0.1 and a free RTP range; ``extra`` settings override these."""
    return {
        **os.environ,
        "SWITCHBOARD_DATA_DIR": str(data_dir),
        "SWITCHBOARD_RASA_URL": rasa_url,
        "SWITCHBOARD_DATABASE_URL": database_url,
        "SWITCHBOARD_REDIS_URL": "",
        "SWITCHBOARD_SIP_HOST": "127.0.0.1",
        "SWITCHBOARD_SIP_RTP_PORT": str(free_udp_port(40)),
        "SWITCHBOARD_STT_DEVICE": "cpu",
        "SWITCHBOARD_TTS_DEVICE": "cpu",
        **extra,
    }


@contextmanager
def worker_process(data_dir: Path, rasa_url: str, database_url: str,
                   **extra: str) -> Iterator[Worker]:
    """``python -m switchboard sip-worker`` with ``extra`` settings (environment variables;
    recording is off unless they say otherwise), up once it answers OPTIONS; stopped
    (SIGTERM, then SIGKILL) on exit."""
    port = free_udp_port()
    env = env_for(data_dir, rasa_url, database_url, SWITCHBOARD_SIP_PORT=str(port),
                  **{"SWITCHBOARD_SIP_RECORD": "false", **extra})
    log_path = data_dir / "worker.log"

    def answers_options() -> str | None:
        return None if options(port, 0.5) is not None else f"no OPTIONS answer on {port}"

    child = ChildProcess(
        "SIP worker", [sys.executable, "-m", "switchboard", "sip-worker"], log_path=log_path,
        healthy=answers_options, base_env=env, cwd=PROJECT_ROOT,
        start_timeout_s=WORKER_START_TIMEOUT_S,
    )
    with child:
        yield Worker(child, port, int(env["SWITCHBOARD_SIP_RTP_PORT"]), data_dir, log_path)
    print(f"SIP worker stopped; log: {log_path}")
