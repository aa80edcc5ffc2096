"""The agents' desk with SIP callers: a SIPp caller asks for a person on a real SIP worker
with the desk on (Redis); nobody accepts and the call falls back to the transfer target,
or an agent (aiortc, through the served console) accepts and transfers it (REFER to the
agent's target). Chromium with a baresip caller is in tests/admin/test_console_browser."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi import FastAPI
from sqlalchemy.orm import Session, sessionmaker

from speech.tts import PiperTTS
from switchboard.bench.local_cluster import RedisServer, free_udp_port
from switchboard.storage.desk import DeskQueue
from switchboard.storage.live import LiveState
from switchboard.storage.repository import AuditRepository, CallRepository
from tests.admin.conftest import board_server, http_client_as
from tests.support.desk_agent import AgentPage, csrf, until
from tests.telephony.sip.conftest import TRANSFER_URI
from tests.telephony.sip.peers import header, sipp_command
from tests.telephony.sip.scenarios import write_scenario
from tests.telephony.sip.test_sip_calls import sipp_caller_wav, stored_call
from tests.telephony.sip.workers import Worker, worker_process

pytestmark = pytest.mark.integration
__all__ = ["board_server"]  # a fixture used below
QUEUE_TIMEOUT_S = 6
AGENT_TARGET = "sip:desk-transfer@127.0.0.1:5998"


@contextmanager
def desk_worker(rasa_url: str, database_url: str, redis_url: str, data_dir: Path,
                queue_timeout_s: float) -> Iterator[Worker]:
    """A SIP worker with the desk on: a handoff waits in the queue on ``redis_url`` and
    falls back to a REFER to ``TRANSFER_URI`` after ``queue_timeout_s``."""
    with worker_process(
        data_dir, rasa_url, database_url, SWITCHBOARD_REDIS_URL=redis_url,
        SWITCHBOARD_SIP_TRANSFER_URI=TRANSFER_URI,
        SWITCHBOARD_DESK_QUEUE_TIMEOUT_S=str(queue_timeout_s),
        SWITCHBOARD_DESK_FALLBACK="transfer",
    ) as worker:
        yield worker


def test_nobody_accepts_and_the_call_falls_back_to_the_transfer_target(
        rasa_server: object, database_url: str, redis_server: RedisServer, tts: PiperTTS,
        calls: CallRepository, live: LiveState, tmp_path: Path) -> None:
    wav = sipp_caller_wav(tts, tmp_path, "agent", "I want to talk to a human agent.", 40000)
    scenario = write_scenario(tmp_path / "fallback.xml", "transferred", wav=wav,
                              wait_ms=45000)
    local_port = free_udp_port()
    with desk_worker(rasa_server.url, database_url,  # type: ignore[attr-defined]
                     redis_server.url, tmp_path / "worker", QUEUE_TIMEOUT_S) as worker:
        result = subprocess.run(sipp_command(scenario, worker.port, tmp_path,
                                             local_port=local_port, timeout_s=60),
                                cwd=tmp_path, capture_output=True, text=True, timeout=75)
    assert result.returncode == 0, (tmp_path / "fallback-errors.log").read_text()
    messages = (tmp_path / "fallback-messages.log").read_text()
    refer_to = header(messages, "REFER", "Refer-To")
    assert refer_to is not None and TRANSFER_URI in refer_to
    [call] = stored_call(calls, f"sipp{local_port}@")
    kinds = [e.kind for e in call.events]
    assert kinds.index("queued") < kinds.index("queue_left") < kinds.index("transfer"), kinds
    left = next(e for e in call.events if e.kind == "queue_left")
    assert left.data["outcome"] == "fallback", left.data
    queued = next(e for e in call.events if e.kind == "queued")
    waited_s = (left.at - queued.at).total_seconds()
    assert QUEUE_TIMEOUT_S - 1 <= waited_s < QUEUE_TIMEOUT_S + 10, waited_s
    assert any(t.speaker == "bot" and "queue" in t.text for t in call.turns), call.turns
    assert live.call(call.id) is None or live.call(call.id).state == "ended"  # type: ignore[union-attr]


async def test_an_agent_accepts_a_sip_call_and_transfers_it(
        rasa_server: object, database_url: str, redis_server: RedisServer,
        board_server: tuple[str, FastAPI], tts: PiperTTS, calls: CallRepository,
        sessions: sessionmaker[Session], live: LiveState, tmp_path: Path) -> None:
    """Ann accepts the queued SIP call, talks on it, and transfers it to her target: the
    caller gets a REFER to that target; the call is stored as the agent's, transferred."""
    url, app = board_server
    wav = sipp_caller_wav(tts, tmp_path, "agent", "I want to talk to a human agent.", 60000)
    scenario = write_scenario(tmp_path / "transfer.xml", "transferred", wav=wav,
                              wait_ms=70000)
    local_port = free_udp_port()
    agent = http_client_as(url, app, "agent", "ann")
    ann = AgentPage()
    queue = DeskQueue(redis_server.url)
    with desk_worker(rasa_server.url, database_url,  # type: ignore[attr-defined]
                     redis_server.url, tmp_path / "worker", 60) as worker:
        sipp = await asyncio.create_subprocess_exec(
            *sipp_command(scenario, worker.port, tmp_path, local_port=local_port,
                          timeout_s=90), cwd=tmp_path, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        try:
            token = await asyncio.to_thread(csrf, agent)
            presence = await asyncio.to_thread(agent.post, "/desk/presence", json={
                "status": "available"}, headers={"X-CSRF-Token": token})
            assert presence.status_code == 200, presence.text
            [(call_id, _)] = await until(queue.waiting, 40,
                                         "the SIP call to wait in the queue")
            accepted = await asyncio.to_thread(agent.post, f"/desk/calls/{call_id}/accept",
                                               headers={"X-CSRF-Token": token})
            assert accepted.status_code == 200, accepted.text
            await ann.connect(agent, call_id, token)
            await until(lambda: (s := live.call(call_id)) and s.state == "agent", 10,
                        "the call to be with the agent")
            await asyncio.sleep(1.0)
            ann.channel.send(json.dumps({"type": "transfer", "target": AGENT_TARGET}))
            code = await asyncio.wait_for(sipp.wait(), 60)
        finally:
            await ann.close()
            agent.close()
            queue.close()
            if sipp.returncode is None:
                sipp.terminate()
                await sipp.wait()
    assert code == 0, (tmp_path / "transfer-errors.log").read_text()
    messages = (tmp_path / "transfer-messages.log").read_text()
    refer_to = header(messages, "REFER", "Refer-To")
    assert refer_to is not None and AGENT_TARGET in refer_to, refer_to
    [call] = stored_call(calls, f"sipp{local_port}@")
    assert call.id == call_id and call.agent == "ann"
    kinds = [e.kind for e in call.events]
    assert kinds.index("queued") < kinds.index("agent_joined") < kinds.index("transfer"), kinds
    assert ("agent_request", {"agent": "ann", "request": f"transfer {AGENT_TARGET}"}) in [
        (e.kind, e.data) for e in call.events]
    accepted_by = app.state.console.audit.entries(action="desk.accept")
    assert [(a.actor, a.target) for a in accepted_by] == [("ann", call_id)]
    # the node writes the transfer to the audit log of its database
    transferred = AuditRepository(sessions).entries(action="desk.transfer")
    assert [(a.actor, a.target, a.detail) for a in transferred] == [
        ("ann", call_id, {"to": AGENT_TARGET})]
