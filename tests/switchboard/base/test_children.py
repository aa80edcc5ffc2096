"""ChildProcess: the one way children are started, probed, stopped and reported on."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

from switchboard.base.children import ChildError, ChildProcess, log_probe, wait_all_healthy
from switchboard.base.processes import alive


def python_child(tmp_path: Path, code: str, name: str = "child", **options: object) -> ChildProcess:
    return ChildProcess(name, [sys.executable, "-c", code], log_path=tmp_path / f"{name}.log",
                        **options)  # type: ignore[arg-type]


READY_THEN_WAIT = "import time; print('ready', flush=True); time.sleep(60)"


def test_waits_for_the_probe_then_stops_with_sigterm(tmp_path: Path) -> None:
    child = python_child(tmp_path, READY_THEN_WAIT,
                         healthy=log_probe(tmp_path / "child.log", "ready"))
    with child:
        assert child.poll() is None
        pid = child.pid
        assert pid is not None and alive(pid)
    assert not alive(pid)
    assert child.pid is None


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(60)")
    child = python_child(tmp_path, code, healthy=log_probe(tmp_path / "child.log", "ready"),
                         stop_grace_s=0.5)
    child.start()
    child.wait_healthy(10)
    assert child.stop() == -signal.SIGKILL  # it would have slept for 60 s


def test_stop_also_ends_what_the_child_forked(tmp_path: Path) -> None:
    code = ("import subprocess, sys, time; "
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            "print('grandchild', p.pid, flush=True); time.sleep(60)")
    child = python_child(tmp_path, code, healthy=log_probe(tmp_path / "child.log", "grandchild"))
    with child:
        line = next(x for x in child.log_path.read_text().splitlines()
                    if x.startswith("grandchild "))
        grandchild = int(line.split()[-1])
        assert alive(grandchild)
    deadline = time.monotonic() + 5
    while alive(grandchild):
        assert time.monotonic() < deadline, "the grandchild outlived its parent's stop()"
        time.sleep(0.05)


def test_a_child_that_exits_while_starting_is_reported_with_its_log(tmp_path: Path) -> None:
    child = python_child(tmp_path, "print('port 5005 already in use'); raise SystemExit(3)",
                         name="dialog server", healthy=lambda: "not yet")
    child.start()
    with pytest.raises(ChildError, match="dialog server exited with code 3") as failure:
        child.wait_healthy(10)
    assert "port 5005 already in use" in str(failure.value)
    child.stop()


def test_the_timeout_names_what_is_missing_and_the_hint(tmp_path: Path) -> None:
    class Unready(RuntimeError):
        pass

    child = python_child(tmp_path, READY_THEN_WAIT, name="proxy",
                         healthy=lambda: "no answer to OPTIONS yet", error=Unready,
                         timeout_hint="Raise THE_TIMEOUT.")
    child.start()
    try:
        with pytest.raises(Unready, match=r"proxy \(no answer to OPTIONS yet\).*Raise THE_TIMEOUT"):
            child.wait_healthy(0.3)
    finally:
        child.stop()


def test_children_are_probed_side_by_side(tmp_path: Path) -> None:
    """The second child's crash is reported, not the first one's timeout (one after the
    other, the wait would end with "slow did not become healthy")."""
    slow = python_child(tmp_path, READY_THEN_WAIT, name="slow", healthy=lambda: "never")
    broken = python_child(tmp_path, "raise SystemExit(5)", name="broken")
    for child in (slow, broken):
        child.start()
    try:
        with pytest.raises(ChildError, match="broken exited with code 5"):
            wait_all_healthy([slow, broken], 30)
    finally:
        slow.stop()
        broken.stop()


def test_kill_is_a_crash_the_poll_reports(tmp_path: Path) -> None:
    child = python_child(tmp_path, READY_THEN_WAIT)
    child.start()
    child.kill()
    assert child.poll() == -signal.SIGKILL
    child.stop()


def test_env_is_added_to_the_base_environment(tmp_path: Path) -> None:
    code = "import os; print(os.environ['A'], os.environ['B'], 'PATH' in os.environ, flush=True)"
    child = python_child(tmp_path, code, env={"B": "2"}, base_env={"A": "1"})
    child.start()
    assert child.process is not None
    child.process.wait(10)
    assert "1 2 False" in child.log_path.read_text()
    child.stop()


def test_a_running_child_is_not_started_twice(tmp_path: Path) -> None:
    child = python_child(tmp_path, READY_THEN_WAIT)
    child.start()
    try:
        with pytest.raises(ChildError, match="already running"):
            child.start()
    finally:
        child.stop()
