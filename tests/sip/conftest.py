"""One SIP media worker process for the SIP tests, on free ports of 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from switchboard.settings import PROJECT_ROOT
from tests.sip.peers import free_udp_port, options, stop_process

WORKER_START_TIMEOUT_S = 60.0
TRANSFER_URI = "sip:agents@127.0.0.1:5999"


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    port: int
    rtp_port: int
    data_dir: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="session")
def sip_worker(
    rasa_server: object, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    """``python -m switchboard sip-worker`` against the session's Rasa and database."""
    data_dir = tmp_path_factory.mktemp("sip-worker")
    port, rtp_port = free_udp_port(), free_udp_port(40)
    env = {
        **os.environ,
        "SWITCHBOARD_DATA_DIR": str(data_dir),
        "SWITCHBOARD_RASA_URL": rasa_server.url,  # type: ignore[attr-defined]
        "SWITCHBOARD_DATABASE_URL": database_url,
        "SWITCHBOARD_REDIS_URL": "",
        "SWITCHBOARD_SIP_HOST": "127.0.0.1",
        "SWITCHBOARD_SIP_PORT": str(port),
        "SWITCHBOARD_SIP_RTP_PORT": str(rtp_port),
        "SWITCHBOARD_SIP_TRANSFER_URI": TRANSFER_URI,
        "SWITCHBOARD_SIP_RECORD": "true",
        "SWITCHBOARD_STT_DEVICE": "cpu",
        "SWITCHBOARD_TTS_DEVICE": "cpu",
    }
    log_path = data_dir / "worker.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "switchboard", "sip-worker"], cwd=PROJECT_ROOT, env=env,
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    worker = Worker(proc, port, rtp_port, data_dir, log_path)
    try:
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        while options(port, 0.5) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the SIP worker did not start:\n{worker.log()[-3000:]}")
        yield worker
    finally:
        code = stop_process(proc)
        print(f"SIP worker exited with {code}; log: {log_path}")
