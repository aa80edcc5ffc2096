"""`switchboard run`: starts Rasa and the action server, restarts a child that dies, and
stops every child on Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from switchboard.base.children import ChildProcess, log_probe
from switchboard.base.processes import alive, descendants, free_port, free_sip_port
from telephony.sip_ping import options_ping

pytestmark = pytest.mark.integration
START_TIMEOUT_S = 240
CHILDREN_GONE_TIMEOUT_S = 10.0


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


def wait_in_log(node: ChildProcess, text: str, timeout: float, *, after: str = "") -> None:
    """Wait until ``text`` is logged (after the last ``after``, when given)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = node.log_path.read_text(errors="replace")
        if text in (log.rsplit(after, 1)[-1] if after else log):
            return
        assert node.poll() is None, node.log_tail(60)
        time.sleep(0.2)
    raise AssertionError(f"no {text!r} within {timeout} s. {node.log_tail(60)}")


def test_run_supervises_every_child_and_stops_them_all_on_ctrl_c(
    database_url: str, tmp_path: Path
) -> None:
    rasa_port, action_port, web_port = free_port(), free_port(), free_port()
    sip_port = free_sip_port()
    env = {**{k: v for k, v in os.environ.items() if k != "SWITCHBOARD_SPEECH_SERVERS"},
           "SWITCHBOARD_DATABASE_URL": database_url,
           "SWITCHBOARD_RASA_PORT": str(rasa_port), "SWITCHBOARD_ACTION_PORT": str(action_port),
           "SWITCHBOARD_WEB_PORT": str(web_port), "SWITCHBOARD_SIP_PORT": str(sip_port),
           "SWITCHBOARD_SIP_RTP_PORT": str(free_port(socket.SOCK_DGRAM)),
           "SWITCHBOARD_CELERY_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'broker.db'}"}
    node = ChildProcess("node", [sys.executable, "-m", "switchboard", "run"],
                        log_path=tmp_path / "node.log", healthy=log_probe(tmp_path / "node.log",
                                                                          "node ready"),
                        base_env=env, start_timeout_s=START_TIMEOUT_S, stop_grace_s=60.0)
    children: set[int] = set()
    with node:
        assert node.pid is not None
        children = descendants(node.pid)
        try:
            assert httpx.get(f"http://127.0.0.1:{rasa_port}/", timeout=5).status_code == 200
            assert httpx.get(f"http://127.0.0.1:{web_port}/healthz", timeout=5).status_code == 200
            assert options_ping("127.0.0.1", sip_port)
            assert any("analytics worker" in command_line(p) for p in children)
            speech = [p for p in children if "speech-server" in command_line(p)]
            assert len(speech) == 1  # its own: no SWITCHBOARD_SPEECH_SERVERS given

            action_server = next(p for p in children if "rasa_sdk" in command_line(p))
            os.kill(action_server, signal.SIGKILL)
            wait_in_log(node, "restarting", 30)
            wait_in_log(node, "dialog servers healthy", START_TIMEOUT_S, after="restarting")
            assert httpx.get(f"http://127.0.0.1:{action_port}/health",
                             timeout=5).status_code == 200
            children |= descendants(node.pid)

            assert node.process is not None
            node.process.send_signal(signal.SIGINT)  # Ctrl-C
            assert node.process.wait(timeout=60) == 0
            deadline = time.monotonic() + CHILDREN_GONE_TIMEOUT_S
            while left := [p for p in children if alive(p)]:
                assert time.monotonic() < deadline, f"children left: {left}"
                time.sleep(0.1)
        finally:
            for pid in children:  # only if the node failed to stop them (the test fails)
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)


def test_run_fails_clearly_when_the_database_is_unreachable() -> None:
    env = {**os.environ, "SWITCHBOARD_DATABASE_URL": "postgresql+psycopg://x@127.0.0.1:1/none"}
    done = subprocess.run([sys.executable, "-m", "switchboard", "run"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "cannot migrate database" in done.stderr and "127.0.0.1:1" in done.stderr
