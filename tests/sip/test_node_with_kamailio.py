"""`switchboard run --sip-workers 2`: Kamailio in front of two real PJSUA2 workers takes
8 concurrent calls; a full worker's 486 fails over to the other one."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from switchboard.settings import PROJECT_ROOT
from switchboard.storage.repository import CallRepository
from tests.dialog_fixtures import free_port
from tests.sip.peers import free_udp_port, sipp_command, stop_process, ulaw_wav
from tests.sip.scenarios import write_scenario
from tests.sip.test_sip_calls import audio, stored_call

pytestmark = pytest.mark.integration
NODE_START_TIMEOUT_S = 240.0


def test_eight_calls_through_kamailio_reach_both_workers(
    database_url: str, calls: CallRepository, tmp_path: Path
) -> None:
    sip_port = free_udp_port()
    log_path = tmp_path / "node.log"
    env = {
        **os.environ,
        "SWITCHBOARD_DATABASE_URL": database_url,
        "SWITCHBOARD_CELERY_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        "SWITCHBOARD_SIP_PORT": str(sip_port),
        "SWITCHBOARD_SIP_WORKER_BASE_PORT": str(free_udp_port(4)),
        "SWITCHBOARD_SIP_RTP_PORT": str(free_udp_port(200)),
        "SWITCHBOARD_SIP_RECORD": "false",
        "SWITCHBOARD_WEB_PORT": str(free_port()),
        "SWITCHBOARD_RASA_PORT": str(free_port()),
        "SWITCHBOARD_ACTION_PORT": str(free_port()),
    }
    with log_path.open("wb") as log:
        node = subprocess.Popen(
            [sys.executable, "-m", "switchboard", "run", "--sip-workers", "2"],
            cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + NODE_START_TIMEOUT_S
        while "node ready" not in log_path.read_text(errors="replace"):
            assert node.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.5)

        wav = ulaw_wav(tmp_path / "quiet.wav", audio([8000]))
        scenario = write_scenario(tmp_path / "hold.xml", "caller_hangs_up", wav=wav,
                                  hold_ms=6000)
        local_port = free_udp_port()
        eight = subprocess.run(
            sipp_command(scenario, sip_port, tmp_path, local_port=local_port, calls=8,
                         timeout_s=60),
            cwd=tmp_path, capture_output=True, text=True, timeout=90,
        )
        assert eight.returncode == 0, (tmp_path / "hold-errors.log").read_text()
        ended = stored_call(calls, f"sipp{local_port}@", count=8)
        assert len(ended) == 8
        assert Counter(c.worker for c in ended) == {"sip-0": 4, "sip-1": 4}
        assert all(c.end_reason == "caller_hangup" for c in ended)
    finally:
        node.terminate()
        try:
            node.wait(60)
        finally:
            stop_process(node)
