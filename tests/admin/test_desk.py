"""The agents' desk against a real Redis and a served console: the atomic accept, presence,
roles, and an agent taking a queued call with a WebRTC leg (aiortc on both sides) that the
console relays to the process holding the call (speech engines are fakes here; Chromium
and real engines in test_console_browser)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from switchboard.base.settings import Settings
from switchboard.bench.local_cluster import RedisServer
from switchboard.conversation.call import CallRequest
from switchboard.conversation.desk import QueuePolicy
from switchboard.conversation.engines import BotMessage
from switchboard.desk import NodeDesk
from switchboard.node import Node, spooled_calls
from switchboard.simulate import CaptureSink, FileSource
from switchboard.storage.database import prepare_database
from switchboard.storage.desk import DeskQueue
from switchboard.storage.live import CallState, LiveState, LiveWriter
from switchboard.storage.models import CallEvent
from telephony.webrtc.agent import BrowserAgentLegs
from tests.admin.conftest import http_client_as
from tests.support.desk_agent import LEG_RATE, AgentPage, csrf, hears, tone, until
from tests.support.fakes import FakeDialog, FakeSTT, FakeTTS

RATE = 16000


def queued_call(desk: DeskQueue, live: LiveState, call_id: str) -> None:
    live.write_calls([CallState(call_id=call_id, node="n1", transport="sip",
                                conversation_id=call_id, state="queued", owner="n1:sip-1:1",
                                queue={"summary": "wants a person", "queued_at": 1.0})])
    desk.enqueue(call_id)


@pytest.fixture
def desk_queue(redis_server: RedisServer) -> Iterator[DeskQueue]:
    queue = DeskQueue(redis_server.url)
    yield queue
    queue.close()


def test_two_agents_accepting_at_once_one_wins(board_server: tuple[str, FastAPI],
                                               desk_queue: DeskQueue, live: LiveState) -> None:
    url, app = board_server
    ann, bob = (http_client_as(url, app, "agent", name) for name in ("ann", "bob"))
    try:
        tokens = {"ann": csrf(ann), "bob": csrf(bob)}
        queued_call(desk_queue, live, "q1")
        # away: cannot take calls
        refused = ann.post("/desk/calls/q1/accept", headers={"X-CSRF-Token": tokens["ann"]})
        assert refused.status_code == 409 and "available" in refused.json()["error"]
        for name, client in (("ann", ann), ("bob", bob)):
            ok = client.post("/desk/presence", json={"status": "available"},
                             headers={"X-CSRF-Token": tokens[name]})
            assert ok.status_code == 200, ok.text
        no_csrf = ann.post("/desk/presence", json={"status": "available"})
        assert no_csrf.status_code in (400, 403)

        answers: dict[str, httpx.Response] = {}
        barrier = threading.Barrier(2)

        def accept(name: str, client: httpx.Client) -> None:
            barrier.wait()
            answers[name] = client.post("/desk/calls/q1/accept",
                                        headers={"X-CSRF-Token": tokens[name]})

        threads = [threading.Thread(target=accept, args=(n, c))
                   for n, c in (("ann", ann), ("bob", bob))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        codes = sorted(r.status_code for r in answers.values())
        assert codes == [200, 409], {n: r.text for n, r in answers.items()}
        winner = next(n for n, r in answers.items() if r.status_code == 200)
        loser = next(n for n, r in answers.items() if r.status_code == 409)
        assert f"already taken by {winner}" in answers[loser].json()["error"]
        assert desk_queue.claimed_by("q1") == winner and desk_queue.waiting() == []
        assert desk_queue.presence(winner).status == "on_call"  # type: ignore[union-attr]
        # agents cannot listen in; nobody but the winner may talk on the call
        offer = {"sdp": "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n", "type": "offer"}
        listen = ann.post("/desk/calls/q1/connect", json={**offer, "mode": "listen"},
                          headers={"X-CSRF-Token": tokens["ann"]})
        assert listen.status_code == 403
        loser_client, winner_client = (ann, bob) if loser == "ann" else (bob, ann)
        talk = loser_client.post("/desk/calls/q1/connect", json=offer,
                                 headers={"X-CSRF-Token": tokens[loser]})
        assert talk.status_code == 403
        # after the call: only the winner wraps it up; it is saved with the call
        app.state.console.calls.create_call(call_id="q1", transport="sip")
        wrap = {"disposition": "follow_up", "notes": "Parcel lost; resend by Friday."}
        assert loser_client.post("/desk/calls/q1/wrapup", json=wrap, headers={
            "X-CSRF-Token": tokens[loser]}).status_code == 403
        bad = winner_client.post("/desk/calls/q1/wrapup", json={"disposition": "meh"},
                                 headers={"X-CSRF-Token": tokens[winner]})
        assert bad.status_code == 400
        saved = winner_client.post("/desk/calls/q1/wrapup", json=wrap,
                                   headers={"X-CSRF-Token": tokens[winner]})
        assert saved.status_code == 200, saved.text
        call_page = winner_client.get("/calls/q1")
        assert "follow up" in call_page.text and "Parcel lost" in call_page.text
    finally:
        ann.close()
        bob.close()
    accepted = app.state.console.audit.entries(action="desk.accept")
    assert [(a.actor, a.target) for a in accepted] == [(winner, "q1")]
    stored = app.state.console.calls.get_call("q1")
    assert (stored.agent, stored.disposition) == (winner, "follow_up")
    assert desk_queue.presence(winner).status == "available"  # type: ignore[union-attr]
    assert [a.detail for a in app.state.console.audit.entries(action="desk.wrapup")] == [
        {"disposition": "follow_up"}]


def handoff_script(message: str) -> list[BotMessage]:
    if message == "/call_start":
        return [BotMessage(text="Connecting you."),
                BotMessage(custom={"handoff": {"queue": "agents"}})]
    return [BotMessage(text="Tell me more.")]


async def test_an_agent_takes_a_queued_call_and_talks_with_the_caller_in_the_browser(
        tmp_path: Path, board_server: tuple[str, FastAPI], redis_server: RedisServer,
        live: LiveState) -> None:
    """Ann takes the queued call and talks with the caller; Sue (a supervisor) listens in
    and sends nothing; Max (an admin) barges in: the caller and Ann hear him; Ann's tab dies
    and the bot takes the caller back."""
    url, app = board_server
    settings = Settings(data_dir=tmp_path / "node", database_url=f"sqlite:///{tmp_path / 'n.db'}",
                        redis_url=redis_server.url, webrtc_ice_addresses="127.0.0.1",
                        webrtc_media_timeout_s=3, desk_queue_timeout_s=60
                        )  # type: ignore[call-arg]
    sessions = prepare_database(settings.effective_database_url)
    writer = LiveWriter(LiveState(redis_server.url))
    desk = NodeDesk(settings, BrowserAgentLegs(settings), writer)
    node = Node(settings, sessions, spooled_calls(settings, sessions), FakeSTT([]), FakeTTS(),
                FakeDialog(handoff_script), analytics=None, live=writer, desk=desk)
    source = FileSource(tone(90_000, 440), RATE, realtime=True, tail_s=5)
    sink = CaptureSink(RATE)
    handle = node.start_call(CallRequest(transport="webrtc", source=source, sink=sink,
                                         caller="203.0.113.9"))
    source.call = handle
    agent = http_client_as(url, app, "agent", "ann")
    supervisor = http_client_as(url, app, "supervisor", "sue")
    admin = http_client_as(url, app, "admin", "max")
    ann, sue, max_ = AgentPage(), AgentPage("listen"), AgentPage("barge")
    try:
        call_id = await handle.started()
        state = await until(lambda: (s := live.call(call_id)) and s.state == "queued" and s,
                            20, "the call to wait in the queue")
        assert state.queue["summary"] and state.owner == desk.owner
        token = await asyncio.to_thread(csrf, agent)
        post = agent.post
        assert (await asyncio.to_thread(post, "/desk/presence", json={"status": "available"},
                                        headers={"X-CSRF-Token": token})).status_code == 200
        accepted = await asyncio.to_thread(post, f"/desk/calls/{call_id}/accept",
                                           headers={"X-CSRF-Token": token})
        assert accepted.status_code == 200, accepted.text
        await ann.connect(agent, call_id, token)
        await until(lambda: (s := live.call(call_id)) and s.state == "agent", 10,
                    "the call to be with the agent")
        await sue.connect(supervisor, call_id, await asyncio.to_thread(csrf, supervisor))
        await asyncio.sleep(1.0)
        said_at, sue_at = len(sink.frames), len(sue.heard)
        assert ann.mic is not None
        await ann.mic.say(tone(1500, 1000))
        await asyncio.sleep(0.5)
        caller_heard = np.concatenate(sink.frames[said_at:])
        ann_heard = ann.heard_since(len(ann.heard) - 100)
        sue_heard = sue.heard_since(sue_at)
        sue_sent = await sue.packets_sent()
        # Max barges in while Ann is silent: the caller and Ann hear him
        await max_.connect(admin, call_id, await asyncio.to_thread(csrf, admin))
        await asyncio.sleep(1.0)
        said_at, ann_at = len(sink.frames), len(ann.heard)
        assert max_.mic is not None
        await max_.mic.say(tone(1500, 1500))
        await asyncio.sleep(0.5)
        caller_heard_max = np.concatenate(sink.frames[said_at:])
        ann_heard_max = ann.heard_since(ann_at)
        # Ann's tab dies without a word: the bot takes the caller back
        bot_said = len(sink.frames)
        await ann.pc.close()
        await until(lambda: (s := live.call(call_id)) and s.state == "bot", 15,
                    "the bot to take the caller back")
        await asyncio.sleep(1.0)
        handle.hang_up()
        result = await asyncio.wait_for(handle.result(), 15)
    finally:
        await ann.pc.close()
        await sue.pc.close()
        await max_.pc.close()
        agent.close()
        supervisor.close()
        admin.close()
        handle.cancel()
        await node.aclose()
        desk.close()
    assert hears(caller_heard, RATE, 1000), "the caller never heard the agent"
    assert hears(ann_heard, LEG_RATE, 440), "the agent never heard the caller"
    assert hears(sue_heard, LEG_RATE, 1000) and hears(sue_heard, LEG_RATE, 440), \
        "the supervisor must hear both sides"
    assert sue_sent == 0  # listening in sends nothing
    assert hears(caller_heard_max, RATE, 1500), "the caller never heard the barge-in"
    assert hears(ann_heard_max, LEG_RATE, 1500), "the agent never heard the barge-in"
    assert np.abs(np.concatenate(sink.frames[bot_said:])).max() > 2000  # not left in silence
    spoken = [t.text for t in result.turns if t.speaker == "bot"]
    assert spoken[-1] == QueuePolicy().agent_lost_text
    with sessions() as session:
        events = [(e.kind, e.data) for e in session.scalars(select(CallEvent).where(
            CallEvent.call_id == call_id).order_by(CallEvent.id))]
    kinds = [kind for kind, _ in events]
    assert kinds.index("queued") < kinds.index("agent_joined")
    assert "listen" in kinds and "barge" in kinds
    assert ("agent_request", {"agent": "ann", "request": "gone"}) in events
    listened = app.state.console.audit.entries(action="desk.listen")
    assert [(a.actor, a.target) for a in listened] == [("sue", call_id)]
    barged = app.state.console.audit.entries(action="desk.barge")
    assert [(a.actor, a.target) for a in barged] == [("max", call_id)]
