"""SIP media worker processes (``python -m switchboard sip-worker``) for the SIP tests, on
free ports of 127.0.0.1; each is stopped by its PID."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from switchboard.base.settings import PROJECT_ROOT
from tests.sip.peers import free_udp_port, options, stop_process

WORKER_START_TIMEOUT_S = 60.0


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
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
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "switchboard", "sip-worker"], cwd=PROJECT_ROOT, env=env,
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    worker = Worker(proc, port, int(env["SWITCHBOARD_SIP_RTP_PORT"]), data_dir, log_path)
    try:
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        while options(port, 0.5) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the SIP worker did not start:\n{worker.log()[-3000:]}")
        yield worker
    finally:
        code = stop_process(proc)
        print(f"SIP worker exited with {code}; log: {log_path}")
