"""`switchboard run`: starts Rasa and the action server, restarts a child that dies, and
stops every child on Ctrl-C."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from switchboard.base.processes import descendants, free_port
from telephony.sip_ping import options_ping

pytestmark = pytest.mark.integration
START_TIMEOUT_S = 240
CHILDREN_GONE_TIMEOUT_S = 10.0


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


class Output:
    """Lines of a child's stderr, read on a thread so the test can wait with a timeout."""

    def __init__(self, stream: object) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.lines.put(line)

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            self.seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"no {text!r} within {timeout} s; output:\n{''.join(self.seen)}")


def test_run_supervises_every_child_and_stops_them_all_on_ctrl_c(
    database_url: str, tmp_path: Path
) -> None:
    rasa_port, action_port, web_port = free_port(), free_port(), free_port()
    sip_port = free_port(socket.SOCK_DGRAM)
    env = {**os.environ, "SWITCHBOARD_DATABASE_URL": database_url,
           "SWITCHBOARD_RASA_PORT": str(rasa_port), "SWITCHBOARD_ACTION_PORT": str(action_port),
           "SWITCHBOARD_WEB_PORT": str(web_port), "SWITCHBOARD_SIP_PORT": str(sip_port),
           "SWITCHBOARD_SIP_RTP_PORT": str(free_port(socket.SOCK_DGRAM)),
           "SWITCHBOARD_CELERY_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'broker.db'}"}
    node = subprocess.Popen([sys.executable, "-m", "switchboard", "run"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    children: set[int] = set()
    try:
        output = Output(node.stderr)
        output.wait_for("node ready", START_TIMEOUT_S)
        children = descendants(node.pid)
        assert httpx.get(f"http://127.0.0.1:{rasa_port}/", timeout=5).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{web_port}/healthz", timeout=5).status_code == 200
        assert options_ping("127.0.0.1", sip_port)
        assert any("analytics worker" in command_line(p) for p in children)

        action_server = next(p for p in children if "rasa_sdk" in command_line(p))
        os.kill(action_server, signal.SIGKILL)
        output.wait_for("restarting", 30)
        output.wait_for("dialog servers healthy", START_TIMEOUT_S)
        assert httpx.get(f"http://127.0.0.1:{action_port}/health", timeout=5).status_code == 200
        children |= descendants(node.pid)

        node.send_signal(signal.SIGINT)
        assert node.wait(timeout=60) == 0
        deadline = time.monotonic() + CHILDREN_GONE_TIMEOUT_S
        while left := [p for p in children if alive(p)]:
            assert time.monotonic() < deadline, f"children left: {left}"
            time.sleep(0.1)
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
        for pid in children:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_run_fails_clearly_when_the_database_is_unreachable() -> None:
    env = {**os.environ, "SWITCHBOARD_DATABASE_URL": "postgresql+psycopg://x@127.0.0.1:1/none"}
    done = subprocess.run([sys.executable, "-m", "switchboard", "run"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "cannot migrate database" in done.stderr and "127.0.0.1:1" in done.stderr
