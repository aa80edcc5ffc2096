"""Child processes of a node: started with a log file, probed for health, stopped by PID."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

HEALTH_POLL_S = 0.25
LOG_TAIL_LINES = 20


class ChildError(RuntimeError):
    """A child failed to start or to become healthy; the message has its log tail."""


class ManagedChild:
    """One long-running child process of the node (web app, SIP worker, …)."""

    def __init__(
        self,
        name: str,
        command: list[str],
        *,
        log_path: Path,
        healthy: Callable[[], bool],
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.command = command
        self.log_path = log_path
        self._healthy = healthy
        self._env = env or {}
        self._cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(self.command)}\n"
                      .encode())
            log.flush()
            self.process = subprocess.Popen(
                self.command,
                cwd=self._cwd,
                env={**os.environ, **self._env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def poll(self) -> int | None:
        """The exit code once the child has exited, else None."""
        return None if self.process is None else self.process.poll()

    def wait_healthy(self, timeout: float) -> float:
        """Block until the health probe passes; returns the seconds waited."""
        started = time.monotonic()
        while True:
            code = self.poll()
            if code is not None:
                raise ChildError(f"{self.name} exited with code {code} while starting. "
                                 + self.log_tail())
            if self._healthy():
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise ChildError(f"{self.name} did not become healthy within {timeout:.0f} s. "
                                 + self.log_tail())
            time.sleep(HEALTH_POLL_S)

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        except OSError:
            lines = []
        return f"Last lines of {self.log_path}:\n" + "\n".join(lines)
