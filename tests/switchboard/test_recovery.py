"""Several nodes sharing Redis: every turn's state is written, a caller cut off by a lost
node resumes on another, and survivors end a lost node's calls exactly once."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid

import numpy as np
import pytest

from switchboard.base.settings import Settings
from switchboard.cluster import NodeKeeper
from switchboard.conversation.engines import BotMessage
from switchboard.node import Node, caller_identity
from switchboard.simulate import simulate_call
from switchboard.storage.database import prepare_database
from switchboard.storage.live import CallState, LiveState
from switchboard.storage.repository import CallRepository
from tests.support.audio_tools import espeak, silence
from tests.support.fakes import FakeDialog, FakeSTT, FakeTTS
from tests.support.redis_server import RedisServer

RATE = 16000
ASKED = "Order 4 8 2 1 3 is on its way. Is there anything else I can help you with?"


def script(message: str) -> list[BotMessage]:
    if message == "/call_start":
        return [BotMessage(text="Hi, you've reached Acme support. How can I help you today?")]
    if "48213" in message:
        return [BotMessage(text=ASKED)]
    return [BotMessage(text="Sure. What's your order number?")]


def slots(message: str) -> dict[str, object]:
    return {"order_number": "48213"} if "48213" in message else {}


def settings_for(node: str, database_url: str, redis_url: str, **more: object) -> Settings:
    return Settings(database_url=database_url, redis_url=redis_url, node_id=node,
                    **more)  # type: ignore[arg-type]


async def one_call(settings: Settings, dialog: FakeDialog, lines: list[str],
                   caller: str = "sip:1001@127.0.0.1", lead_ms: int = 3000):
    stt = FakeSTT(lines)
    node = Node.create(settings, stt=stt, tts=FakeTTS(), dialog=dialog, analytics=False)
    audio = [silence(lead_ms)]
    for line in lines:
        audio += [espeak(line), silence(2500)]
    try:
        return await simulate_call(node, np.concatenate(audio), RATE, caller=caller)
    finally:
        await node.aclose()


def test_caller_identity_is_the_sip_user() -> None:
    assert caller_identity('"Ann" <sip:1001@pbx.example;transport=udp>') == "1001"
    assert caller_identity("sips:Alice@example.com") == "alice"
    assert caller_identity("<sip:anonymous@anonymous.invalid>") is None
    assert caller_identity(None) is None
    assert caller_identity("simulator") == "simulator"


async def test_every_turn_is_written_to_redis(database_url: str, redis_server: RedisServer,
                                              live: LiveState, calls: CallRepository) -> None:
    dialog = FakeDialog(script, slots=slots,
                        expects=lambda m: "order_number" if "order" in m else None)
    sim = await one_call(settings_for("node-a", database_url, redis_server.url), dialog,
                         ["I want to check my order", "It's 48213"])
    state = live.latest_call("simulate", "1001")
    assert state is not None and state.call_id == sim.result.call_id
    assert (state.node, state.conversation_id, state.turns) == ("node-a", state.call_id, 5)
    assert state.slots == {"order_number": "48213"}
    assert state.last_bot_text == ASKED
    assert (state.state, state.end_reason) == ("ended", "caller_hangup")
    stored = calls.get_call(sim.result.call_id)
    assert stored is not None and stored.node == "node-a"


def lost_call(live: LiveState, **fields: object) -> CallState:
    state = CallState(call_id="old-call", node="node-a", transport="simulate",
                      conversation_id="conversation-1", caller="1001", turns=4,
                      slots={"order_number": "48213"}, last_intent="inform",
                      last_bot_text=ASKED, **fields)  # type: ignore[arg-type]
    live.write_calls([state])
    return state


async def test_a_caller_cut_off_by_a_lost_node_resumes_on_another(
        database_url: str, redis_server: RedisServer, live: LiveState,
        calls: CallRepository) -> None:
    lost_call(live)  # node-a has no heartbeat: it is gone
    dialog = FakeDialog(script, slots=slots)
    sim = await one_call(settings_for("node-b", database_url, redis_server.url), dialog,
                         ["No thanks that is all"], lead_ms=9000)  # after the opening

    assert "/call_start" not in dialog.received
    assert set(dialog.senders) == {"conversation-1"}
    opening = sim.result.turns[0]
    assert opening.speaker == "bot" and opening.text == (
        "Sorry, we got cut off. You were asking about order 4 8 2 1 3. "
        "Is there anything else I can help you with?")
    assert [t.speaker for t in sim.result.turns] == ["bot", "caller", "bot"]
    stored = calls.get_call(sim.result.call_id)
    assert stored is not None and stored.call_metadata["resumed_from"] == "old-call"
    state = live.call(sim.result.call_id)
    assert state is not None and state.resumed_from == "old-call"
    assert state.turns == 4 + 3 and state.conversation_id == "conversation-1"
    assert state.slots == {"order_number": "48213"}  # carried over: a second cut-off resumes


@pytest.mark.parametrize("case", ["ended normally", "node alive", "too old"])
async def test_other_callers_start_afresh(case: str, database_url: str,
                                          redis_server: RedisServer, live: LiveState) -> None:
    if case == "ended normally":
        lost_call(live, state="ended", end_reason="bot_hangup")
    else:
        lost_call(live)
    if case == "node alive":
        live.beat("node-a", {}, ttl_s=30)
    settings = settings_for("node-b", database_url, redis_server.url,
                            recovery_window_s=1 if case == "too old" else 600)
    if case == "too old":
        await asyncio.sleep(1.2)
    dialog = FakeDialog(script)
    sim = await one_call(settings, dialog, ["I want to check my order"])
    assert dialog.received[0] == "/call_start"
    assert set(dialog.senders) == {sim.result.call_id}


def test_survivors_end_a_lost_nodes_calls_exactly_once(
        database_url: str, redis_server: RedisServer, live: LiveState,
        calls: CallRepository) -> None:
    analysed: list[str] = []
    lock = threading.Lock()

    def analyse(call_id: str) -> None:
        with lock:
            analysed.append(call_id)

    def keeper(node: str) -> NodeKeeper:
        return NodeKeeper(settings_for(node, database_url, redis_server.url,
                                       heartbeat_ttl_s=0.4, heartbeat_interval_s=0.1),
                          calls, analyse)

    node_a = keeper("node-a")
    node_a.start()
    ids = [calls.create_call(transport="sip", caller=f"100{i}", node="node-a")
           for i in range(3)]
    live.write_calls([CallState(call_id=i, node="node-a", transport="sip",
                                conversation_id=i, caller=f"c{i}") for i in ids])
    survivors = [keeper("node-b"), keeper("node-c")]
    assert [s.sweep() for s in survivors] == [[], []]  # node-a is alive
    node_a.stop()  # its heartbeat is no longer renewed: as good as kill -9 for Redis
    ended: list[list[str]] = []
    threads = [threading.Thread(target=lambda s=s: ended.append(_sweep_until_found(s)))
               for s in survivors]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert sorted(analysed) == sorted(ids)  # each call once, whoever swept it
    assert sorted(call for found in ended for call in found) == sorted(ids)
    for call_id in ids:
        stored = calls.get_call(call_id)
        assert stored is not None and (stored.status, stored.end_reason) == ("ended",
                                                                            "node_lost")
        state = live.call(call_id)
        assert state is not None and state.end_reason == "node_lost"
    assert "node-a" not in live.nodes()
    for survivor in survivors:
        survivor.stop()


def _sweep_until_found(keeper: NodeKeeper, timeout_s: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if keeper.live.nodes().get("node-a") is not True:
            return keeper.sweep()
        time.sleep(0.05)
    return []


def test_a_restarted_node_ends_what_it_left_behind(database_url: str,
                                                   redis_server: RedisServer,
                                                   live: LiveState) -> None:
    sessions = prepare_database(database_url)
    calls = CallRepository(sessions)
    call_id = calls.create_call(transport="sip", caller="1001", node="node-r")
    live.write_calls([CallState(call_id=call_id, node="node-r", transport="sip",
                                conversation_id=call_id, caller="1001")])
    analysed: list[str] = []
    keeper = NodeKeeper(settings_for("node-r", database_url, redis_server.url), calls,
                        analysed.append)
    keeper.start()
    try:
        assert analysed == [call_id]
        stored = calls.get_call(call_id)
        assert stored is not None and stored.end_reason == "node_lost"
        assert live.heartbeat_left("node-r") is not None
    finally:
        keeper.stop()


async def test_calls_go_on_while_redis_is_down_and_their_state_follows(
        database_url: str, redis_server: RedisServer, live: LiveState,
        caplog: pytest.LogCaptureFixture) -> None:
    redis_server.stop()
    dialog = FakeDialog(script, slots=slots)
    node = Node.create(settings_for("node-a", database_url, redis_server.url),
                       stt=FakeSTT(["It's 48213"]), tts=FakeTTS(), dialog=dialog,
                       analytics=False)
    caller = np.concatenate([silence(3000), espeak("It's 48213"), silence(2500)])
    try:
        with caplog.at_level(logging.INFO):
            sim = await simulate_call(node, caller, RATE, caller="sip:1001@127.0.0.1")
            assert sim.result.reason == "caller_hangup"
            assert [t.speaker for t in sim.result.turns] == ["bot", "caller", "bot"]
            assert node.live is not None and node.live.redis_down
            redis_server.start()
            assert await asyncio.to_thread(node.live.flush, 10)
    finally:
        await node.aclose()
    state = live.latest_call("simulate", "1001")
    assert state is not None and state.call_id == sim.result.call_id
    assert (state.turns, state.end_reason, state.slots) == (3, "caller_hangup",
                                                            {"order_number": "48213"})
    said = [r.getMessage() for r in caplog.records if "Redis" in r.getMessage()]
    assert len(said) == 2, said  # gone (once), back
    assert "keeping call state in memory" in said[0] and "is back" in said[1]


async def test_a_caller_cut_off_by_a_dead_worker_resumes_on_the_same_node(
        database_url: str, redis_server: RedisServer, live: LiveState) -> None:
    lost_call(live)
    live.beat("node-a", {}, ttl_s=30)  # the node lives on; only the call's worker died
    keeper = NodeKeeper(settings_for("node-a", database_url, redis_server.url),
                        CallRepository(prepare_database(database_url)), lambda _: None)
    try:
        keeper.end_calls(["old-call"], "worker_died")  # what the supervisor does
    finally:
        keeper.stop()
    state = live.call("old-call")
    assert state is not None and (state.state, state.end_reason) == ("ended", "worker_died")
    dialog = FakeDialog(script, slots=slots)
    sim = await one_call(settings_for("node-a", database_url, redis_server.url), dialog,
                         ["No thanks that is all"], lead_ms=9000)
    assert "/call_start" not in dialog.received and set(dialog.senders) == {"conversation-1"}
    assert sim.result.turns[0].text.startswith("Sorry, we got cut off.")


async def test_a_redial_before_the_lost_nodes_heartbeat_expires_still_resumes(
        database_url: str, redis_server: RedisServer, live: LiveState) -> None:
    lost_call(live)
    live.beat("node-a", {}, ttl_s=0.8)  # last renewed 1.2 s ago: node-a stopped beating
    dialog = FakeDialog(script, slots=slots)
    sim = await one_call(settings_for("node-b", database_url, redis_server.url), dialog,
                         ["No thanks that is all"], lead_ms=9000)
    assert set(dialog.senders) == {"conversation-1"}
    assert sim.result.turns[0].text.startswith("Sorry, we got cut off.")


def test_ending_a_lost_call_does_not_point_its_caller_back_at_it(live: LiveState) -> None:
    lost = lost_call(live)
    redial = CallState(call_id="redial", node="node-b", transport="simulate",
                       conversation_id="conversation-1", caller="1001")
    live.write_calls([redial])  # the redial is up on the survivor
    lost.state, lost.end_reason = "ended", "node_lost"
    live.write_calls([lost], index_callers=False)  # then a survivor reaps the lost call
    latest = live.latest_call("simulate", "1001")
    assert latest is not None and latest.call_id == "redial"


def test_a_call_given_a_taken_id_gets_a_new_one(database_url: str) -> None:
    settings = Settings(database_url=database_url)  # type: ignore[call-arg]
    node = Node.create(settings, stt=FakeSTT([]), tts=FakeTTS(), dialog=FakeDialog(script),
                       analytics=False)
    given = uuid.uuid4().hex
    assert node._store_call(given, transport="sip") == given
    again = node._store_call(given, transport="sip")
    assert again != given and len(again) == 32
    asyncio.run(node.aclose())


@pytest.mark.parametrize("enabled", [True, False])
def test_a_survivor_hands_lost_sip_calls_it_can_call_back_to_its_workers(
        enabled: bool, database_url: str, redis_server: RedisServer, live: LiveState) -> None:
    calls = CallRepository(prepare_database(database_url))
    target = {"uri": "sip:1001@127.0.0.1:5062", "replaces": "abc;to-tag=1;from-tag=2",
              "caller": "sip:1001@127.0.0.1", "callee": "sip:bot@127.0.0.1"}
    states = [CallState(call_id=calls.create_call(transport="sip", node="node-a"),
                        node="node-a", transport="sip", conversation_id=f"c{i}",
                        caller=f"100{i}", rejoin=target if i < 2 else None)
              for i in range(3)]
    live.write_calls(states)
    live.beat("node-a", {}, ttl_s=0.001)  # seen once, beating no more: it is gone
    time.sleep(0.05)
    keeper = NodeKeeper(settings_for("node-b", database_url, redis_server.url,
                                     sip_rejoin_lost_calls=enabled), calls, lambda _: None)
    try:
        assert sorted(keeper.sweep()) == sorted(s.call_id for s in states)
    finally:
        keeper.stop()
    jobs = []
    while (job := live.next_rejoin("node-b", 0.05)) is not None:
        jobs.append(job)
    if not enabled:
        assert jobs == []
        return
    assert sorted((j.call_id, j.caller) for j in jobs) == sorted(
        (s.call_id, s.caller) for s in states[:2])  # the third has no target: a redial
    assert all(j.rejoin == target for j in jobs)
    assert live.next_rejoin("node-a", 0.05) is None
    live._redis.rpush("switchboard:live:rejoin:node-b", "{not json")
    assert live.next_rejoin("node-b", 0.05) is None  # dropped, said in the log
