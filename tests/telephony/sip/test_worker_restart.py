"""`switchboard run`: a SIP worker killed mid-call is restarted, and the call it held is
stored as ended with the reason worker_died."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from switchboard.base.processes import descendants
from switchboard.bench.local_cluster import free_udp_port, running_node
from switchboard.storage.repository import AnalysisRepository, CallRepository
from tests.integration.test_node import command_line
from tests.support.dialog_fixtures import shared_dialog
from tests.telephony.sip.peers import options, sipp_command, stop_process, ulaw_wav
from tests.telephony.sip.scenarios import write_scenario
from tests.telephony.sip.test_sip_calls import audio

pytestmark = pytest.mark.integration


def wait_for(check: object, timeout: float, what: str, log_path: Path) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()  # type: ignore[operator]
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"no {what} within {timeout} s:\n{log_path.read_text()[-3000:]}")


def test_a_dead_worker_is_restarted_and_its_call_ended(
    database_url: str, rasa_server: object, calls: CallRepository,
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    caller: subprocess.Popen[bytes] | None = None
    with running_node(tmp_path, database_url, **shared_dialog(rasa_server)) as node:
        try:
            wav = ulaw_wav(tmp_path / "quiet.wav", audio([20000]))
            scenario = write_scenario(tmp_path / "long.xml", "caller_hangs_up", wav=wav,
                                      hold_ms=20000)
            local_port = free_udp_port()
            caller = subprocess.Popen(
                sipp_command(scenario, node.sip_port, tmp_path, local_port=local_port,
                             timeout_s=40),
                cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

            def active_call() -> str | None:
                for call in calls.list_calls(limit=50):
                    if f"sipp{local_port}@" in (call.caller or "") and call.status == "active":
                        return call.id
                return None

            call_id = wait_for(active_call, 20, "an active SIP call", node.log_path)
            worker = next(p for p in descendants(node.child.pid or 0)
                          if "sip-worker" in command_line(p))
            os.kill(worker, signal.SIGKILL)

            def ended() -> bool:
                call = calls.get_call(str(call_id))
                return call is not None and call.end_reason == "worker_died"

            wait_for(ended, 30, "the call ended as worker_died", node.log_path)
            wait_for(lambda: "SIP worker 0 healthy" in node.log().split("died")[-1],
                     120, "the worker restarted", node.log_path)
            assert options(node.sip_port) == "SIP/2.0 200 OK"
            assert node.child.poll() is None
            # the cut-off call is analysed all the same (queued by the supervisor)
            analyses = AnalysisRepository(sessions)
            wait_for(lambda: analyses.get(str(call_id)), 60, "the dead call's analysis",
                     node.log_path)
        finally:
            if caller is not None:
                stop_process(caller)
