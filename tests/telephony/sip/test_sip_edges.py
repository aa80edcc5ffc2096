"""SIP edges, with real peers on 127.0.0.1: ``switchboard call`` (outbound, to a baresip
that answers by itself, and to a port where nothing listens), the inbound source filter
(SWITCHBOARD_SIP_ALLOWED_NETWORKS) and the RTP inactivity timeout. Each worker here is its
own process with its own settings; every process is stopped by its PID."""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest.mock import MagicMock

import numpy as np
import pytest

from speech.stt import WhisperSTT
from switchboard.base.processes import free_port
from switchboard.base.settings import PROJECT_ROOT
from switchboard.bench.local_cluster import free_udp_port
from switchboard.conversation.pipeline import CallResult
from switchboard.storage.models import Call
from switchboard.storage.repository import CallRepository
from telephony.sip.call import CallLeg
from telephony.sip.worker import SipWorker
from tests.support.audio_tools import silence, write_wav
from tests.telephony.sip.peers import (
    Baresip,
    invite,
    options,
    run_sipp,
    sip_request,
    stop_process,
)
from tests.telephony.sip.scenarios import write_scenario
from tests.telephony.sip.workers import Worker, env_for, worker_process

pytestmark = pytest.mark.integration
RATE = 8000
CALL_ANSWERED_TIMEOUT_S = 120.0
"""``switchboard call`` loads Whisper and Piper before it dials; then the callee answers."""
LISTEN_S = 9.0
"""How long the callee listens (the greeting) before it hangs up."""
CALL_EXIT_TIMEOUT_S = 30.0
"""How long ``switchboard call`` may take to exit once the callee hung up."""
RING_TIMEOUT_S = 4
UNANSWERED_TIMEOUT_S = 120.0
"""Model loading, then the ring limit (``--ring-timeout``)."""
RTP_TIMEOUT_S = 3.0
STORED_TIMEOUT_S = 30.0


def sip_calls_from(calls: CallRepository, caller_part: str) -> list[Call]:
    return [c for c in calls.list_calls(limit=200)
            if c.transport == "sip" and caller_part in (c.caller or "")]


# ---------------------------------------------------------------------- switchboard call


def call_command(uri: str, rasa_url: str) -> list[str]:
    return [sys.executable, "-m", "switchboard", "call", uri, "--rasa-url", rasa_url]


def test_call_command_talks_to_an_answering_phone_and_exits_0(
    rasa_server: object, database_url: str, calls: CallRepository, stt: WhisperSTT,
    tmp_path: Path,
) -> None:
    """The bot calls a baresip that answers by itself; the phone hears the greeting and
    hangs up; the command prints the call and exits 0; the call is stored."""
    rasa_url: str = rasa_server.url  # type: ignore[attr-defined]
    wav = tmp_path / "callee.wav"
    write_wav(wav, silence(120_000, RATE), RATE)
    phone = Baresip(tmp_path / "phone", wav, sip_port=free_udp_port(3),
                    ctrl_port=free_port(), user="me", answermode="auto")
    uri = f"sip:me@127.0.0.1:{phone.sip_port}"
    out, err = tmp_path / "call.out", tmp_path / "call.err"
    phone.start()
    proc: subprocess.Popen[bytes] | None = None
    try:
        with out.open("wb") as stdout, err.open("wb") as stderr:
            proc = subprocess.Popen(
                call_command(uri, rasa_url), cwd=PROJECT_ROOT, stdin=subprocess.DEVNULL,
                stdout=stdout, stderr=stderr,
                env=env_for(tmp_path / "data", rasa_url, database_url),
            )
        started = time.monotonic()
        deadline = started + CALL_ANSWERED_TIMEOUT_S
        while "Call established" not in phone.log():
            assert proc.poll() is None, (
                f"switchboard call exited with {proc.returncode} before the call was up:\n"
                f"{err.read_text()[-3000:]}")
            assert time.monotonic() < deadline, f"no call:\n{phone.log()[-3000:]}"
            time.sleep(0.2)
        answered_s = time.monotonic() - started
        time.sleep(LISTEN_S)
        phone.command("hangup")
        hung_up = time.monotonic()
        try:
            code = proc.wait(CALL_EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"switchboard call did not exit after the hang-up:\n"
                        f"{err.read_text()[-3000:]}")
        exit_s = time.monotonic() - hung_up
        assert phone.wait_for_log("terminated", 10), phone.log()
        heard, heard_rate = phone.heard()
    finally:
        if proc is not None:
            stop_process(proc)
        phone.stop()

    stdout_text, stderr_text = out.read_text(), err.read_text()
    print(f"switchboard call: answered {answered_s:.1f} s after start (model loading "
          f"included), exited {exit_s:.2f} s after the callee's BYE")
    assert code == 0, f"exit {code}\n{stderr_text[-3000:]}"
    match = re.search(r"^call (\w+) ended: (\S+)$", stdout_text, re.M)
    assert match, stdout_text
    assert match.group(2) == "caller_hangup", stdout_text

    text = stt.transcribe_sync(heard.astype(np.int16), heard_rate).text.lower()
    print(f"the callee heard: {text!r}")
    assert "help" in text

    call = calls.get_call(match.group(1))
    assert call is not None
    assert call.transport == "sip"
    assert call.ended_at is not None and call.end_reason == "caller_hangup"
    assert call.callee == uri
    assert call.call_metadata.get("direction") == "outbound"
    assert call.call_metadata.get("sip_call_id")
    assert call.turns and call.turns[0].speaker == "bot"


def test_call_command_to_a_silent_port_fails_with_one_clear_line(
    rasa_server: object, database_url: str, tmp_path: Path
) -> None:
    """Nothing listens on the port: the command gives up once the call has rung for
    ``--ring-timeout`` seconds, and says so."""
    rasa_url: str = rasa_server.url  # type: ignore[attr-defined]
    uri = f"sip:nobody@127.0.0.1:{free_udp_port()}"
    started = time.monotonic()
    proc = subprocess.Popen(
        [*call_command(uri, rasa_url), "--ring-timeout", str(RING_TIMEOUT_S)],
        cwd=PROJECT_ROOT, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=env_for(tmp_path, rasa_url, database_url),
    )
    try:
        stdout, stderr = proc.communicate(timeout=UNANSWERED_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        stop_process(proc)
        pytest.fail(f"switchboard call did not give up within {UNANSWERED_TIMEOUT_S:.0f} s")
    finally:
        stop_process(proc)
    elapsed = time.monotonic() - started
    out, err = stdout.decode(errors="replace"), stderr.decode(errors="replace")
    print(f"switchboard call to a silent port: exit {proc.returncode} after {elapsed:.1f} s; "
          f"stderr: {err.strip()!r}")
    assert proc.returncode not in (0, None), out + err
    assert proc.returncode > 0, f"killed by signal {-proc.returncode}"
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert errors[0] == f"error: {uri} did not answer within {RING_TIMEOUT_S} s", errors[0]
    assert "ended:" not in out


# ---------------------------------------------------------------------- source filter


@pytest.fixture(scope="module")
def filtered_worker(
    rasa_server: object, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    """A worker that takes calls from 10.0.0.0/8 only (the tests call from 127.0.0.1)."""
    with worker_process(tmp_path_factory.mktemp("sip-filtered"),
                        rasa_server.url,  # type: ignore[attr-defined]
                        database_url, SWITCHBOARD_SIP_ALLOWED_NETWORKS="10.0.0.0/8") as worker:
        yield worker


def test_invite_from_outside_the_allowed_networks_is_forbidden(
    filtered_worker: Worker, calls: CallRepository, tmp_path: Path
) -> None:
    port = filtered_worker.port
    scenario = write_scenario(tmp_path / "forbidden.xml", "forbidden")
    local_port = free_udp_port()
    started = time.monotonic()
    result = run_sipp(scenario, port, tmp_path, local_port=local_port, timeout_s=15)
    print(f"INVITE → 403 (SIPp, ACKed): {time.monotonic() - started:.2f} s")
    assert result.returncode == 0, (tmp_path / "forbidden-errors.log").read_text()

    status = sip_request(port, invite(port, "0", "a=rtpmap:0 PCMU/8000\r\n"))
    assert status is not None and status.startswith("SIP/2.0 403"), status

    assert filtered_worker.child.poll() is None
    assert options(port) == "SIP/2.0 200 OK"
    assert "rejecting call from 127.0.0.1" in filtered_worker.log()
    time.sleep(1.0)
    assert sip_calls_from(calls, f"sipp{local_port}@") == []
    assert sip_calls_from(calls, "raw@127.0.0.1") == []


# ---------------------------------------------------------------------- RTP timeout


@pytest.fixture(scope="module")
def impatient_worker(
    rasa_server: object, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    """A worker that hangs up a call after 3 s without RTP."""
    with worker_process(tmp_path_factory.mktemp("sip-rtp-timeout"),
                        rasa_server.url,  # type: ignore[attr-defined]
                        database_url,
                        SWITCHBOARD_SIP_RTP_TIMEOUT_S=str(RTP_TIMEOUT_S)) as worker:
        yield worker


_TRACE = re.compile(r"^-{10,} \S+\s+(\d+):(\d+):(\d+(?:\.\d+)?).*?\n"
                    r"UDP message (sent|received).*?\n\s*\n(.+?)\r?$", re.M)


def trace_times(messages: str) -> list[tuple[float, str, str]]:
    """(seconds of the day, sent/received, first line) of each message in a SIPp trace."""
    return [(int(h) * 3600 + int(m) * 60 + float(s), way, line.strip())
            for h, m, s, way, line in _TRACE.findall(messages)]


def test_call_without_rtp_is_hung_up_after_the_rtp_timeout(
    impatient_worker: Worker, calls: CallRepository, tmp_path: Path
) -> None:
    """A SIPp caller sets up a call, sends no RTP at all and never hangs up: the worker
    sends BYE after SWITCHBOARD_SIP_RTP_TIMEOUT_S and stores the call with an event."""
    scenario = write_scenario(tmp_path / "silent.xml", "silent_until_bye", wait_ms=20000)
    local_port = free_udp_port()
    started = time.monotonic()
    result = run_sipp(scenario, impatient_worker.port, tmp_path, local_port=local_port,
                      timeout_s=30)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, (tmp_path / "silent-errors.log").read_text()

    trace = trace_times((tmp_path / "silent-messages.log").read_text())
    ok = next((t for t, way, line in trace if way == "received"
               and line.startswith("SIP/2.0 200")), None)
    bye = next((t for t, way, line in trace if way == "received"
                and line.startswith("BYE ")), None)
    assert bye is not None, trace
    waited = bye - ok if ok is not None else elapsed
    print(f"200 OK → BYE without RTP: {waited:.2f} s (SIPp ran {elapsed:.2f} s, "
          f"timeout {RTP_TIMEOUT_S:.0f} s)")
    assert RTP_TIMEOUT_S - 0.2 <= waited <= RTP_TIMEOUT_S + 5
    assert elapsed <= RTP_TIMEOUT_S + 8

    deadline = time.monotonic() + STORED_TIMEOUT_S
    while True:
        found = sip_calls_from(calls, f"sipp{local_port}@")
        call = calls.get_call(found[0].id) if len(found) == 1 else None
        events = [e for e in call.events if e.kind == "rtp_timeout"] if call else []
        if call is not None and call.ended_at is not None and events:
            break
        assert time.monotonic() < deadline, (
            f"no ended call with an rtp_timeout event: {found}\n"
            f"{impatient_worker.log()[-3000:]}")
        time.sleep(0.3)
    assert events[0].data == {"timeout_s": RTP_TIMEOUT_S}
    assert call.status != "active" and call.end_reason == "rtp_timeout"
    assert f"no RTP for {RTP_TIMEOUT_S:.0f} s, hanging up" in impatient_worker.log()
    assert impatient_worker.child.poll() is None
    assert options(impatient_worker.port) == "SIP/2.0 200 OK"


# ---------------------------------------------------------------------- outbound, at once


class _AnswerAtOnce:
    """Stands in for the PJSIP thread: runs each command on a thread of its own and, like a
    callee whose 200 OK comes back in a few microseconds, reports the dialled call answered
    (and a hung-up one disconnected) before the event loop has seen the command's result."""

    def __init__(self, worker: SipWorker) -> None:
        self.worker = worker
        self.legs: dict[int, CallLeg] = {}

    def submit(self, fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            result = fn()
            future.set_result(result)
            if isinstance(result, CallLeg):
                self.worker.confirmed(result)

        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
        return future

    def dial(self, uri: str, headers: dict[str, str] | None = None) -> CallLeg:
        leg = CallLeg(1, "outbound", MagicMock(), MagicMock(), remote_uri=uri)
        self.legs[leg.key] = leg
        self.headers = dict(headers or {})
        return leg

    def hangup(self, key: int) -> None:
        self.worker.disconnected(self.legs[key], 200, "Normal call clearing")


async def test_an_outbound_call_answered_at_once_is_not_missed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The CONFIRMED event of an outbound call may reach the loop before the call's session
    exists; it must not be dropped (the call would ring out, then fail)."""
    ringing = SimpleNamespace(sip_ring_timeout_s=2.0)
    worker = SipWorker(SimpleNamespace(settings=ringing))  # type: ignore[arg-type]
    worker._loop = asyncio.get_running_loop()
    worker._endpoint = _AnswerAtOnce(worker)  # type: ignore[assignment]

    async def converse(session: Any) -> CallResult:
        return CallResult("c1", "caller_hangup", "ended", None)

    monkeypatch.setattr(worker, "_converse", converse)
    result = await asyncio.wait_for(worker.call("sip:me@127.0.0.1:9"), 10)
    assert result.reason == "caller_hangup"
    assert worker.sessions == {}
    endpoint = worker._endpoint
    sent = endpoint.headers  # type: ignore[union-attr]
    assert len(sent["X-Call-UUID"]) == 32 and "Replaces" not in sent  # the call's id
