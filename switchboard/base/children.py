"""Child processes: the one way Switchboard starts, health-checks, stops and reports on them.

The supervisor (web app, SIP workers, analytics worker), the Rasa servers, Kamailio, the
benches and the tests all use :class:`ChildProcess`: each child runs in a process group of
its own, appends its output to a log file, is probed until healthy, and is stopped with
SIGTERM and then SIGKILL (of its whole group, so nothing it forked outlives it). Errors
carry the last lines of the child's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx

HEALTH_POLL_S = 0.1
LOG_TAIL_LINES = 20
STOP_GRACE_S = 10.0
START_TIMEOUT_S = 60.0
START_HEADER = "=== switchboard started "
"""Starts the line written to a child's log before each start: time and command."""

DRAIN_SIGNAL = signal.SIGUSR1
"""Asks a child that carries calls (a SIP worker, the web app) to drain: take no new calls,
let the calls up end, then exit."""



def on_drain_signal(drain: Callable[[], Awaitable[object]], then: Callable[[], object]) -> None:
    """In a child that carries calls: on ``DRAIN_SIGNAL`` (the first one), run ``drain()``
    on the running loop, then ``then()`` (stop serving)."""
    loop = asyncio.get_running_loop()
    draining: list[asyncio.Future[object]] = []

    def start() -> None:
        if not draining:
            task = asyncio.ensure_future(drain(), loop=loop)
            task.add_done_callback(lambda _: then())
            draining.append(task)

    loop.add_signal_handler(DRAIN_SIGNAL, start)


Probe = Callable[[], str | None]
"""A health probe: ``None`` once the child is healthy, else what is still missing."""


class ChildError(RuntimeError):
    """A child failed to start or to become healthy; the message has its log tail."""


def http_probe(url: str, *, timeout_s: float = 1.0) -> Probe:
    """Healthy once ``GET url`` answers 200 (TLS certificates are not checked: the tests'
    and the node's own certificates are self-made)."""

    def probe() -> str | None:
        try:
            status = httpx.get(url, timeout=timeout_s, verify=False, trust_env=False).status_code
        except httpx.HTTPError as exc:
            return f"GET {url}: {type(exc).__name__}"
        return None if status == 200 else f"GET {url} answered {status}"

    return probe


def log_probe(path: Path, marker: str) -> Probe:
    """Healthy once the child's output in the log at ``path`` shows ``marker``: what follows
    the last start header, so neither an earlier run's output nor the command line counts."""

    def probe() -> str | None:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            text = ""
        output = text.rsplit(START_HEADER, 1)[-1].partition("\n")[2]
        return None if marker in output else f"no {marker!r} in {path} yet"

    return probe


class Managed:
    """Something started, probed and stopped like a child process (one child, or a group
    such as the Rasa servers); ``with`` starts it, waits until healthy, and stops it."""

    def start(self) -> None:
        raise NotImplementedError

    def wait_healthy(self, timeout: float | None = None) -> float:
        raise NotImplementedError

    def stop(self) -> object:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class ChildProcess(Managed):
    """One child process, started with :meth:`start` or as a context manager.

    ``env`` is added to ``base_env`` (default: this process's environment). A child that
    supervises children of its own needs a ``stop_grace_s`` long enough to stop them, as
    they run in process groups of their own. ``error`` is the
    exception class raised when the child dies while starting or is not healthy in time;
    ``timeout_hint`` is appended to the timeout message (what to raise on a slow machine).
    """

    def __init__(
        self,
        name: str,
        command: list[str],
        *,
        log_path: Path,
        healthy: Probe | None = None,
        env: Mapping[str, str] | None = None,
        base_env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
        stop_grace_s: float = STOP_GRACE_S,
        error: type[Exception] = ChildError,
        timeout_hint: str = "",
    ) -> None:
        self.name = name
        self.command = command
        self.log_path = log_path
        self.start_timeout_s = start_timeout_s
        self.stop_grace_s = stop_grace_s
        self._healthy = healthy
        self._env = {**(os.environ if base_env is None else base_env), **(env or {})}
        self._cwd = cwd
        self.error = error
        self.timeout_hint = timeout_hint
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def start(self) -> None:
        """Start the child (returns at once; see :meth:`wait_healthy`)."""
        if self.process is not None and self.process.poll() is None:
            raise self.error(f"{self.name} is already running (pid {self.process.pid}).")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"\n{START_HEADER}{time.strftime('%Y-%m-%d %H:%M:%S')} "
                      f"{' '.join(self.command)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.command,
                cwd=self._cwd,
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: see stop()
            )

    def poll(self) -> int | None:
        """The exit code once the child has exited, else None (also before it started)."""
        return None if self.process is None else self.process.poll()

    def wait_healthy(self, timeout: float | None = None) -> float:
        """Block until the health probe passes; returns the seconds waited.

        Raises ``error`` with the log tail when the child exits or ``timeout`` (default:
        ``start_timeout_s``) passes first."""
        return wait_all_healthy([self], self.start_timeout_s if timeout is None else timeout)

    def stop(self, grace_s: float | None = None) -> int | None:
        """SIGTERM the child, SIGKILL its process group if it still runs after ``grace_s``
        (default: ``stop_grace_s``); whatever else is left in its group is killed too.
        Returns the exit code."""
        process, self.process = self.process, None
        if process is None:
            return None
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            _wait_unreaped(process.pid, self.stop_grace_s if grace_s is None else grace_s)
        _kill_group(process.pid)  # after the grace, or what it forked and left behind
        return process.wait()

    def send_signal(self, signum: int) -> None:
        """Signal the child (not its group), if it runs."""
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL the child's whole group at once, as a crash would (:meth:`poll` then
        reports the signal)."""
        if self.process is not None and self.process.returncode is None:
            _kill_group(self.process.pid)
            self.process.wait()

    def missing(self) -> str | None:
        """What keeps the starting child from being healthy (None: healthy). Raises
        ``error`` with the log tail if it exited."""
        code = self.poll()
        if self.process is None or code is not None:
            raise self.error(f"The {self.name} exited with code {code} while starting. "
                              + self.log_tail())
        return None if self._healthy is None else self._healthy()

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` of the child's log, each progress-bar line at its final state."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            text = ""
        return f"Last lines of {self.log_path}:\n" + last_lines(text, lines)

def wait_all_healthy(children: list[ChildProcess], timeout: float) -> float:
    """Block until every child's probe passes (probing them side by side); returns the
    seconds waited. The first child to exit, or the first still unhealthy at ``timeout``,
    raises its ``error`` with its log tail."""
    started = time.monotonic()
    while True:
        unhealthy = [(child, missing) for child in children
                     if (missing := child.missing()) is not None]
        if not unhealthy:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            waiting = " and the ".join(f"{child.name} ({missing})" for child, missing in unhealthy)
            first = unhealthy[0][0]
            hint = f" {first.timeout_hint}" if first.timeout_hint else ""
            raise first.error(f"The {waiting} did not become healthy within {timeout:.0f} s."
                              f"{hint} " + " ".join(child.log_tail() for child, _ in unhealthy))
        time.sleep(HEALTH_POLL_S)


def last_lines(text: str, count: int = LOG_TAIL_LINES) -> str:
    """The last ``count`` non-blank lines of a log, each progress-bar line (redrawn with
    carriage returns) reduced to its final state."""
    lines = [line.rsplit("\r", 1)[-1] for line in text.split("\n")]
    return "\n".join([line for line in lines if line.strip()][-count:])


def _wait_unreaped(pid: int, timeout_s: float) -> None:
    """Wait up to ``timeout_s`` for ``pid`` to exit without reaping it, so that its process
    group id cannot have been handed to another process when the group is killed."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return
        except ChildProcessError:
            return
        time.sleep(0.02)


def _kill_group(pid: int) -> None:
    """SIGKILL the process group ``pid`` leads (created for it by ``start_new_session``)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
