"""`switchboard run`: a SIP worker killed mid-call is restarted, and the call it held is
stored as ended with the reason worker_died."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from switchboard.settings import PROJECT_ROOT
from switchboard.storage.repository import CallRepository
from tests.dialog_fixtures import free_port
from tests.integration.test_node import command_line, descendants
from tests.sip.peers import free_udp_port, options, sipp_command, stop_process, ulaw_wav
from tests.sip.scenarios import write_scenario
from tests.sip.test_sip_calls import audio

pytestmark = pytest.mark.integration
NODE_START_TIMEOUT_S = 240.0


def wait_for(check: object, timeout: float, what: str, log_path: Path) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()  # type: ignore[operator]
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"no {what} within {timeout} s:\n{log_path.read_text()[-3000:]}")


def test_a_dead_worker_is_restarted_and_its_call_ended(
    database_url: str, calls: CallRepository, tmp_path: Path
) -> None:
    sip_port = free_udp_port()
    log_path = tmp_path / "node.log"
    env = {
        **os.environ,
        "SWITCHBOARD_DATABASE_URL": database_url,
        "SWITCHBOARD_CELERY_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        "SWITCHBOARD_SIP_PORT": str(sip_port),
        "SWITCHBOARD_SIP_RTP_PORT": str(free_udp_port(100)),
        "SWITCHBOARD_SIP_RECORD": "false",
        "SWITCHBOARD_WEB_PORT": str(free_port()),
        "SWITCHBOARD_RASA_PORT": str(free_port()),
        "SWITCHBOARD_ACTION_PORT": str(free_port()),
    }
    with log_path.open("wb") as log:
        node = subprocess.Popen([sys.executable, "-m", "switchboard", "run"], cwd=PROJECT_ROOT,
                                env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    caller: subprocess.Popen[bytes] | None = None
    try:
        wait_for(lambda: "node ready" in log_path.read_text(errors="replace"),
                 NODE_START_TIMEOUT_S, "node ready", log_path)
        wav = ulaw_wav(tmp_path / "quiet.wav", audio([20000]))
        scenario = write_scenario(tmp_path / "long.xml", "caller_hangs_up", wav=wav,
                                  hold_ms=20000)
        local_port = free_udp_port()
        caller = subprocess.Popen(
            sipp_command(scenario, sip_port, tmp_path, local_port=local_port, timeout_s=40),
            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def active_call() -> str | None:
            for call in calls.list_calls(limit=50):
                if f"sipp{local_port}@" in (call.caller or "") and call.status == "active":
                    return call.id
            return None

        call_id = wait_for(active_call, 20, "an active SIP call", log_path)
        worker = next(p for p in descendants(node.pid) if "sip-worker" in command_line(p))
        os.kill(worker, signal.SIGKILL)

        def ended() -> bool:
            call = calls.get_call(str(call_id))
            return call is not None and call.end_reason == "worker_died"

        wait_for(ended, 30, "the call ended as worker_died", log_path)
        wait_for(lambda: "SIP worker 0 healthy" in log_path.read_text(errors="replace")
                 .split("died")[-1], 120, "the worker restarted", log_path)
        assert options(sip_port) == "SIP/2.0 200 OK"
        assert node.poll() is None
    finally:
        if caller is not None:
            stop_process(caller)
        node.terminate()
        try:
            node.wait(60)
        finally:
            stop_process(node)
