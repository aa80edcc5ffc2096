"""Floods from one source address (SIPp at high rates from 127.0.0.2, bounded in count and
time) against a lone worker and against a node with Kamailio in front: callers from other
addresses are still answered and greeted, and the flooder gets a bounded share."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from switchboard.bench.local_cluster import free_udp_port, running_node
from switchboard.storage.repository import CallRepository
from tests.support.dialog_fixtures import shared_dialog
from tests.telephony.sip.peers import run_sipp, sipp_command, stop_process, ulaw_wav
from tests.telephony.sip.scenarios import write_scenario
from tests.telephony.sip.test_sip_calls import audio, stored_call
from tests.telephony.sip.workers import Worker, worker_process

pytestmark = pytest.mark.integration

FLOODER = "127.0.0.2"
CALLER = "127.0.0.3"
"""A legitimate caller from an address of its own (neither trusted nor the flooder)."""
FLOOD_S = 6
FLOOD_HOLD_MS = 8000
"""An answered flood call is held this long (below the worker's 10 s RTP timeout)."""

_OUT_OF_DIALOG = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="{method} flood">
  <send><![CDATA[
{method} sip:bot@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: flood <sip:flood@[local_ip]:[local_port]>;tag=[pid]F[call_number]
To: <sip:{to}@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 {method}
Contact: <sip:flood@[local_ip]:[local_port]>
Max-Forwards: 70
Expires: 60
Content-Length: 0
  ]]></send>
  <recv response="200" optional="true" next="done"/>
  <recv response="401" optional="true" next="done"/>
  <recv response="404" optional="true" next="done"/>
  <recv response="405" optional="true" next="done"/>
  <recv response="501" optional="true" next="done"/>
  <recv response="503" optional="true" next="done"/>
  <recv response="603"/>
  <label id="done"/>
</scenario>
"""


def flood_command(scenario: Path, port: int, workdir: Path, *, rate: int,
                  seconds: int) -> list[str]:
    """SIPp from FLOODER at ``rate`` calls/s for ``seconds`` (bounded by -m and -timeout)."""
    command = sipp_command(scenario, port, workdir, local_port=free_udp_port(),
                           calls=rate * seconds, timeout_s=seconds + FLOOD_HOLD_MS / 1000 + 10)
    command[command.index("-i") + 1] = FLOODER
    command[command.index("-r") + 1] = str(rate)
    command[command.index("-l") + 1] = str(rate * seconds)
    return [*command, "-recv_timeout", "3000", "-trace_stat", "-stf",
            str(workdir / f"{scenario.stem}-stats.csv")]


@contextmanager
def floods(port: int, workdir: Path, wav: Path) -> Iterator[None]:
    """INVITEs at 20/s, OPTIONS and REGISTER at 100/s each, all from FLOODER for FLOOD_S."""
    invite = write_scenario(workdir / "invite-flood.xml", "flood", wav=wav,
                            hold_ms=FLOOD_HOLD_MS)
    scenarios = [(invite, 20)]
    for method, to in (("OPTIONS", "bot"), ("REGISTER", "flood")):
        path = workdir / f"{method.lower()}-flood.xml"
        path.write_text(_OUT_OF_DIALOG.format(method=method, to=to))
        scenarios.append((path, 100))
    running = [subprocess.Popen(flood_command(path, port, workdir, rate=rate, seconds=FLOOD_S),
                                cwd=workdir, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
               for path, rate in scenarios]
    try:
        time.sleep(1.5)  # the flood is on
        yield
    finally:
        for process in running:
            try:
                process.wait(timeout=FLOOD_S + FLOOD_HOLD_MS / 1000 + 30)
            except subprocess.TimeoutExpired:
                stop_process(process)


def legitimate_call(port: int, workdir: Path, calls: CallRepository) -> None:
    """A caller from CALLER is answered, greeted, and hangs up."""
    wav = ulaw_wav(workdir / "quiet.wav", audio([6000]))
    scenario = write_scenario(workdir / "caller.xml", "caller_hangs_up", wav=wav,
                              hold_ms=5000)
    local_port = free_udp_port()
    command = sipp_command(scenario, port, workdir, local_port=local_port, timeout_s=40)
    command[command.index("-i") + 1] = CALLER
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, (workdir / "caller-errors.log").read_text()
    [call] = stored_call(calls, f"sipp{local_port}@")
    assert call.end_reason == "caller_hangup"
    assert call.turns and call.turns[0].speaker == "bot"  # greeted


def answered_flood_calls(workdir: Path) -> int:
    """How many of the flood's calls were answered 200 (SIPp's message trace)."""
    trace = (workdir / "invite-flood-messages.log").read_text(errors="replace")
    answers = re.findall(r"^SIP/2\.0 200 OK\r?\n(?:[^\r\n]+\r?\n)*?Call-ID: *(\S+)"
                         r"(?:[^\r\n]*\r?\n)*?CSeq: *1 INVITE", trace, re.M)
    return len(set(answers))


@pytest.fixture
def limited_worker(rasa_server: object, database_url: str,
                   tmp_path: Path) -> Iterator[Worker]:
    with worker_process(tmp_path / "worker", rasa_server.url,  # type: ignore[attr-defined]
                        database_url) as worker:
        yield worker


def test_a_flood_from_one_address_leaves_a_lone_worker_to_other_callers(
    limited_worker: Worker, calls: CallRepository, tmp_path: Path
) -> None:
    quiet = ulaw_wav(tmp_path / "silence.wav", audio([1000]))
    with floods(limited_worker.port, tmp_path, quiet):
        legitimate_call(limited_worker.port, tmp_path, calls)
    assert limited_worker.child.poll() is None
    answered = answered_flood_calls(tmp_path)
    assert 1 <= answered <= 10  # at most 10 new calls a minute from one address
    log = limited_worker.log()
    assert f"refusing a call from {FLOODER}" in log
    # the worker answers as before
    again = write_scenario(tmp_path / "after.xml", "caller_hangs_up",
                           wav=ulaw_wav(tmp_path / "after.wav", audio([3000])), hold_ms=2000)
    after = run_sipp(again, limited_worker.port, tmp_path, local_port=free_udp_port())
    assert after.returncode == 0, (tmp_path / "after-errors.log").read_text()


def test_kamailio_drops_a_flood_and_the_node_answers_other_callers(
    database_url: str, rasa_server: object, calls: CallRepository, tmp_path: Path
) -> None:
    data_dir = tmp_path / "node"
    with running_node(data_dir, database_url, "--sip-workers", "2", **shared_dialog(rasa_server),
                      SWITCHBOARD_DATA_DIR=str(data_dir),
                      SWITCHBOARD_SIP_WORKER_BASE_PORT=str(free_udp_port(4))) as node:
        quiet = ulaw_wav(tmp_path / "silence.wav", audio([1000]))
        with floods(node.sip_port, tmp_path, quiet):
            legitimate_call(node.sip_port, tmp_path, calls)
        assert node.child.poll() is None
        text = (data_dir / "logs" / "kamailio.log").read_text(errors="replace")
        assert f"from {FLOODER}" in text and "dropped: too many requests" in text
        assert answered_flood_calls(tmp_path) <= 2  # two calls at once per address (if pike
        # lets its INVITEs through before the OPTIONS flood trips it)
        # once the flood is over the node takes calls as before
        (tmp_path / "after").mkdir()
        legitimate_call(node.sip_port, tmp_path / "after", calls)
