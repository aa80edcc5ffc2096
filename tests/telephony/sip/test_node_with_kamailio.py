"""`switchboard run --sip-workers 2`: Kamailio in front of two real PJSUA2 workers takes
8 concurrent calls; a full worker's 486 fails over to the other one. Drained
(`switchboard drain`), the node answers OPTIONS and new INVITEs 503, lets its call end,
then exits."""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path

import pytest

from switchboard.bench.local_cluster import free_udp_port, running_node
from switchboard.storage.repository import CallRepository
from tests.analytics.test_worker import wait_for
from tests.support.dialog_fixtures import shared_dialog
from tests.telephony.sip.peers import (
    invite,
    options,
    sip_request,
    sipp_command,
    ulaw_wav,
)
from tests.telephony.sip.scenarios import write_scenario
from tests.telephony.sip.test_nodes_recovery import drain_node
from tests.telephony.sip.test_sip_calls import audio, stored_call

pytestmark = pytest.mark.integration


def test_eight_calls_through_kamailio_reach_both_workers(
    database_url: str, rasa_server: object, calls: CallRepository, tmp_path: Path
) -> None:
    base_port = str(free_udp_port(4))
    with running_node(tmp_path, database_url, "--sip-workers", "2", **shared_dialog(rasa_server),
                      SWITCHBOARD_SIP_WORKER_BASE_PORT=base_port) as node:
        wav = ulaw_wav(tmp_path / "quiet.wav", audio([8000]))
        scenario = write_scenario(tmp_path / "hold.xml", "caller_hangs_up", wav=wav,
                                  hold_ms=6000)
        local_port = free_udp_port()
        eight = subprocess.run(
            sipp_command(scenario, node.sip_port, tmp_path, local_port=local_port, calls=8,
                         timeout_s=60),
            cwd=tmp_path, capture_output=True, text=True, timeout=90,
        )
        assert eight.returncode == 0, (tmp_path / "hold-errors.log").read_text()
        ended = stored_call(calls, f"sipp{local_port}@", count=8)
        assert len(ended) == 8
        assert Counter(c.worker for c in ended) == {"sip-0": 4, "sip-1": 4}
        assert all(c.end_reason == "caller_hangup" for c in ended)

        held = write_scenario(tmp_path / "held.xml", "caller_hangs_up", wav=wav, hold_ms=8000)
        held_port = free_udp_port()
        one = subprocess.Popen(
            sipp_command(held, node.sip_port, tmp_path, local_port=held_port, timeout_s=60),
            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: any(c.ended_at is None for c in calls.list_calls(limit=20)
                                 if f"sipp{held_port}@" in (c.caller or "")),
                     20, "the held call's start")
            drained = drain_node()
            assert drained.returncode == 0, drained.stderr
            assert "draining" in drained.stdout
            wait_for(lambda: (options(node.sip_port) or "").startswith("SIP/2.0 503"), 10,
                     "Kamailio answering OPTIONS 503")
            refused = sip_request(node.sip_port, invite(node.sip_port, "0",
                                                        "a=rtpmap:0 PCMU/8000\r\n"))
            assert refused is not None and refused.startswith("SIP/2.0 503"), refused
            assert one.wait(timeout=60) == 0, (tmp_path / "held-errors.log").read_text()
        finally:
            if one.poll() is None:
                one.kill()
                one.wait()
        [held_call] = stored_call(calls, f"sipp{held_port}@", count=1)
        assert held_call.end_reason == "caller_hangup"
        wait_for(lambda: node.child.poll() is not None, 60, "the node's exit")
        assert node.child.poll() == 0, node.log()[-3000:]
        assert "drained: no call left on this node" in node.log()
