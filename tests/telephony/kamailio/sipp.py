"""SIPp as real SIP peers around Kamailio: stand-in workers (UAS) and callers (UAC).

Every SIPp run is bounded (-timeout, -recv_timeout and a subprocess timeout) and every
worker process is stopped by its PID.
"""

from __future__ import annotations

import csv
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import pytest

from switchboard.bench.local_cluster import free_udp_port

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
LOOPBACK = "127.0.0.1"
STOP_GRACE_S = 3.0
CALLER_RECV_TIMEOUT_MS = 5000
STAT_COLUMNS = ("SuccessfulCall(C)", "FailedCall(C)")


def require_sipp() -> str:
    path = shutil.which("sipp")
    if path is None:
        pytest.fail("sipp is needed for this test: apt-get install sip-tester "
                    "(`make test` installs it)")
    return path


@dataclass(frozen=True)
class Invite:
    caller: str
    call_id: str
    record_route: str


@dataclass
class WorkerLog:
    invites: list[Invite] = field(default_factory=list)
    byes: set[str] = field(default_factory=set)
    hung_up: set[str] = field(default_factory=set)

    @property
    def callers(self) -> set[str]:
        return {invite.caller for invite in self.invites}

    @property
    def call_ids(self) -> set[str]:
        return {invite.call_id for invite in self.invites}


class SilentPort:
    """A worker port that receives but never answers, like a dead or hung worker (to
    Kamailio, no answer over UDP is the same either way); records the Call-IDs of the
    INVITEs that reached it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.invites: set[str] = set()
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind((LOOPBACK, port))
        self._socket.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._socket.recv(65535)
            except TimeoutError:
                continue
            text = data.decode(errors="replace")
            call_id = re.search(r"^(?:Call-ID|i):\s*(\S+)", text, re.M | re.I)
            if text.startswith("INVITE ") and call_id:
                self.invites.add(call_id.group(1))

    def __enter__(self) -> SilentPort:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(5)
        self._socket.close()


class SippWorker:
    """A SIPp UAS standing in for a SIP media worker on ``127.0.0.1:port``."""

    def __init__(
        self,
        port: int,
        work_dir: Path,
        *,
        scenario: str = "worker.xml",
        reject_code: int | None = None,
        hold_ms: int = 0,
    ) -> None:
        self.port = port
        self.log_path = work_dir / f"worker-{port}.log"
        self.output_path = work_dir / f"worker-{port}.out"
        scenario_path = SCENARIOS / scenario
        if reject_code is not None:  # SIPp takes no keyword in a status line
            scenario_path = work_dir / f"{scenario_path.stem}-{reject_code}.xml"
            text = (SCENARIOS / scenario).read_text()
            scenario_path.write_text(text.replace("486 Rejected", f"{reject_code} Rejected"))
        self.command = [
            require_sipp(),
            "-sf", str(scenario_path),
            "-i", LOOPBACK, "-p", str(port),
            "-nostdin",
            "-d", str(hold_ms),
            "-trace_logs", "-log_file", str(self.log_path),
            "-trace_err", "-error_file", str(work_dir / f"worker-{port}.errors"),
        ]  # fmt: skip
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> SippWorker:
        with self.output_path.open("wb") as output:
            self._process = subprocess.Popen(
                self.command,
                cwd=self.log_path.parent,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        time.sleep(0.2)
        if self._process.poll() is not None:
            raise RuntimeError(
                f"SIPp worker on port {self.port} exited: {self.output_path.read_text()[-2000:]}"
            )
        return self

    def stop(self) -> WorkerLog:
        """Stop it (SIGTERM, then SIGKILL) and return what it logged."""
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return self.read_log()

    def read_log(self) -> WorkerLog:
        log = WorkerLog()
        if not self.log_path.exists():
            return log
        for line in self.log_path.read_text().splitlines():
            words = line.split()
            if len(words) >= 3 and words[0] == "INVITE":
                record_route = line.split("record-route=", 1)[1].split(" from=", 1)[0]
                log.invites.append(Invite(words[1], words[2], record_route))
            elif len(words) >= 2 and words[0] == "BYE":
                log.byes.add(words[1])
            elif len(words) >= 2 and words[0] == "HUNG-UP":
                log.hung_up.add(words[1])
        return log

    def __enter__(self) -> SippWorker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass(frozen=True)
class CallsResult:
    exit_code: int
    successful: int
    failed: int
    seconds: float
    messages: str
    errors: str

    def describe(self) -> str:
        return (
            f"sipp exit {self.exit_code}: {self.successful} successful, {self.failed} failed "
            f"in {self.seconds:.1f} s; errors:\n{self.errors[-3000:]}"
        )


def place_calls(
    proxy_host: str,
    proxy_port: int,
    callers: list[str],
    work_dir: Path,
    *,
    concurrent: int = 4,
    hold_ms: int = 50,
    scenario: str = "caller.xml",
    local_ip: str = LOOPBACK,
    timeout_s: float = 20.0,
    name: str = "calls",
) -> CallsResult:
    """One SIPp UAC run placing one call per entry of ``callers`` (the From user)."""
    injection = work_dir / f"{name}-callers.csv"
    injection.write_text("SEQUENTIAL\n" + "".join(f"{caller}\n" for caller in callers))
    stats = work_dir / f"{name}-stats.csv"
    messages = work_dir / f"{name}-messages.log"
    errors = work_dir / f"{name}-errors.log"
    command = [
        require_sipp(),
        "-sf", str(SCENARIOS / scenario),
        "-inf", str(injection),
        "-s", "support",
        "-i", local_ip, "-p", str(free_udp_port()),
        "-m", str(len(callers)), "-l", str(concurrent), "-r", "50",
        "-d", str(hold_ms),
        "-nostdin",
        "-recv_timeout", str(CALLER_RECV_TIMEOUT_MS),
        "-timeout", f"{int(timeout_s)}s", "-timeout_error",
        "-trace_stat", "-stf", str(stats), "-fd", "1",
        "-trace_msg", "-message_file", str(messages),
        "-trace_err", "-error_file", str(errors),
        f"{proxy_host}:{proxy_port}",
    ]  # fmt: skip
    started = time.monotonic()
    completed = subprocess.run(
        command,
        cwd=work_dir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=timeout_s + 10,
        check=False,
    )
    seconds = time.monotonic() - started
    successful, failed = _final_counts(stats)
    return CallsResult(
        exit_code=completed.returncode,
        successful=successful,
        failed=failed,
        seconds=seconds,
        messages=messages.read_text(errors="replace") if messages.exists() else "",
        errors=(errors.read_text(errors="replace") if errors.exists() else "")
        + completed.stderr.decode(errors="replace"),
    )


def peak_calls(messages: str) -> int:
    """The most calls a caller's SIPp message trace had up at once: a call is up from the
    ACK of its INVITE's 200 until its BYE (the order of the trace, not its clock)."""
    up: set[str] = set()
    peak = 0
    for entry in re.split(r"^-{5,}.*$", messages, flags=re.M):
        if "message sent" not in entry:
            continue
        call_id = re.search(r"^\s*Call-ID:\s*(\S+)", entry, re.M | re.I)
        request = re.search(r"^\s*(ACK|BYE) sip:", entry, re.M)
        if call_id is None or request is None:
            continue
        if request.group(1) == "ACK":
            up.add(call_id.group(1))
        else:
            up.discard(call_id.group(1))
        peak = max(peak, len(up))
    return peak


def _final_counts(stats: Path) -> tuple[int, int]:
    if not stats.exists():
        return 0, 0
    rows = list(csv.reader(stats.read_text().splitlines(), delimiter=";"))
    if len(rows) < 2:
        return 0, 0
    header, last = rows[0], rows[-1]
    successful, failed = (int(last[header.index(column)]) for column in STAT_COLUMNS)
    return successful, failed
