"""`switchboard run --sip-workers 2`: Kamailio in front of two real PJSUA2 workers takes
8 concurrent calls; a full worker's 486 fails over to the other one."""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path

import pytest

from switchboard.storage.repository import CallRepository
from tests.telephony.sip.node import running_node
from tests.telephony.sip.peers import free_udp_port, sipp_command, ulaw_wav
from tests.telephony.sip.scenarios import write_scenario
from tests.telephony.sip.test_sip_calls import audio, stored_call

pytestmark = pytest.mark.integration


def test_eight_calls_through_kamailio_reach_both_workers(
    database_url: str, calls: CallRepository, tmp_path: Path
) -> None:
    base_port = str(free_udp_port(4))
    with running_node(tmp_path, database_url, "--sip-workers", "2",
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
