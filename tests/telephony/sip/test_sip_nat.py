"""Behind NAT: a worker configured with a public address (as in a container or a cloud VM)
writes it in Contact and the SDP it answers with; a caller whose own Via, Contact and SDP
name a private address it cannot be reached at (a phone behind its own NAT) still hears
the bot, because the worker sends media back to where the caller's RTP comes from
(symmetric RTP) and answers to the port its requests come from (rport). With several
workers, Kamailio in front advertises the public address."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile

from switchboard.bench.local_cluster import free_udp_port, running_node
from switchboard.storage.repository import CallRepository
from tests.support.dialog_fixtures import shared_dialog
from tests.telephony.sip.raw_caller import RawCaller, header, ulaw_to_linear
from tests.telephony.sip.test_sip_calls import stored_call
from tests.telephony.sip.workers import Worker, worker_process

pytestmark = pytest.mark.integration

PUBLIC = "203.0.113.7"
"""The node's public address (TEST-NET-3: never routed)."""
CALLER_PRIVATE = "10.255.255.1"
"""What the caller claims: an address nobody here can reach."""


@pytest.fixture(scope="module")
def natted_worker(rasa_server: object, database_url: str,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    with worker_process(
        tmp_path_factory.mktemp("nat"), rasa_server.url,  # type: ignore[attr-defined]
        database_url, SWITCHBOARD_SIP_PUBLIC_ADDRESS=PUBLIC,
    ) as worker:
        yield worker


def test_a_caller_behind_nat_hears_the_bot_and_sees_the_public_address(
    natted_worker: Worker, calls: CallRepository, tmp_path: Path,
) -> None:
    port = natted_worker.port
    caller = RawCaller(port, user="natted", claims=CALLER_PRIVATE, request_host=PUBLIC)
    try:
        ok = caller.invite()
        assert f"@{PUBLIC}:{port}" in (header(ok, "Contact") or ""), ok
        assert f"c=IN IP4 {PUBLIC}" in ok, ok
        caller.talk(8.0)  # from the caller's real socket; the greeting comes back to it
        assert caller.bye().startswith("SIP/2.0 200")
    finally:
        caller.close()
    heard = ulaw_to_linear(bytes(caller.heard))
    soundfile.write(str(tmp_path / "heard.wav"), heard, 8000)  # to listen when it fails
    assert len(heard) > 8000 * 3, f"only {len(heard) / 8000:.1f} s of audio came back"
    assert np.abs(heard.astype(np.int32)).mean() > 200  # the greeting, not silence
    [call] = stored_call(calls, "natted@")
    assert call.turns and call.turns[0].speaker == "bot"
    assert call.end_reason == "caller_hangup"


def test_a_node_with_kamailio_behind_nat_advertises_the_public_address(
    database_url: str, rasa_server: object, calls: CallRepository, tmp_path: Path
) -> None:
    """`switchboard run --sip-workers 2` behind NAT: Kamailio advertises the public address
    to the caller (Record-Route) and reaches its workers from a socket of their own; the
    worker's SDP carries the public address; the caller behind its own NAT hears the bot
    and hangs up through Kamailio."""
    with running_node(tmp_path / "node", database_url, "--sip-workers", "2",
                      **shared_dialog(rasa_server),
                      SWITCHBOARD_DATA_DIR=str(tmp_path / "node"),
                      SWITCHBOARD_SIP_WORKER_BASE_PORT=str(free_udp_port(4)),
                      SWITCHBOARD_SIP_PUBLIC_ADDRESS=PUBLIC) as node:
        caller = RawCaller(node.sip_port, user="nattednode", claims=CALLER_PRIVATE,
                           request_host=PUBLIC)
        try:
            ok = caller.invite()
            assert caller.route and PUBLIC in caller.route[0], ok  # its first hop
            assert f"c=IN IP4 {PUBLIC}" in ok, ok
            caller.talk(8.0)
            assert caller.bye().startswith("SIP/2.0 200")
        finally:
            caller.close()
    heard = ulaw_to_linear(bytes(caller.heard))
    assert len(heard) > 8000 * 3 and np.abs(heard.astype(np.int32)).mean() > 200
    [call] = stored_call(calls, "nattednode@")
    assert call.end_reason == "caller_hangup" and call.worker in ("sip-0", "sip-1")
