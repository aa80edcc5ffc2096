"""The live board's data: what nodes publish to Redis after every turn, the snapshot the
board starts from, and its event stream (a real server, a real Redis), which an agent may
follow and nobody signed out may."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import httpx
from fastapi import FastAPI
from fastapi.testclient import TestClient

from admin.accounts import UserView
from admin.live import board_update, snapshot
from switchboard.bench.local_cluster import RedisServer
from switchboard.storage.live import CallState, LiveState, LiveWriter, TurnEvent
from tests.admin.conftest import http_client_as


def call(call_id: str, node: str = "node-a", **fields: object) -> CallState:
    return CallState(call_id=call_id, node=node, transport="sip", conversation_id=call_id,
                     caller="secret-token", caller_label="sip:1001@pbx",
                     **fields)  # type: ignore[arg-type]


def turn(call_id: str, seq: int, speaker: str, text: str) -> TurnEvent:
    return TurnEvent(call_id=call_id, seq=seq, speaker=speaker, text=text, at=time.time())


def test_the_snapshot_has_every_nodes_calls_up_with_their_transcripts(
        live: LiveState, redis_server: RedisServer) -> None:
    live.write_calls([call("a1", started_at=1.0), call("b1", node="node-b", started_at=2.0),
                      call("gone", state="ended", end_reason="caller_hangup")],
                     turns=[turn("a1", 1, "bot", "Hi, how can I help?"),
                            turn("a1", 2, "caller", "My card is 4111 1111 1111 1111")])
    for node in ("node-a", "node-b"):
        live.beat(node, {}, ttl_s=30)
    board = snapshot(redis_server.url)
    assert [c["call_id"] for c in board["calls"]] == ["a1", "b1"]  # oldest first, no ended
    first = board["calls"][0]
    assert first["caller"] == "sip:1001@pbx" and "secret-token" not in json.dumps(board)
    assert "rejoin" not in first and "sip_call_id" not in first
    assert [(t["seq"], t["speaker"]) for t in first["transcript"]] == [(1, "bot"),
                                                                      (2, "caller")]
    assert first["transcript"][1]["text"] == "My card is [card]"
    assert board["calls"][1]["transcript"] == []


def test_writes_are_published_for_the_board_and_turns_redacted(
        live: LiveState, redis_server: RedisServer) -> None:
    import redis

    listener = redis.Redis.from_url(redis_server.url, decode_responses=True)
    pubsub = listener.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("switchboard:live:events")
    writer = LiveWriter(live)
    try:
        state = call("c1")
        writer.put(state)
        state.turns = 1
        writer.put(state, turn("c1", 1, "caller", "call me at +1 415 555 0100"))
        assert writer.flush(5)
        got = []
        deadline = time.monotonic() + 5
        while len(got) < 3 and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.5)
            if message:
                got.append(board_update(message["data"]))
    finally:
        writer.close()
        pubsub.close()
        listener.close()
    kinds = [event["kind"] for event in got if event]
    assert sorted(kinds) == ["call", "call", "turn"] or sorted(kinds) == ["call", "turn"], got
    turn_event = next(e for e in got if e and e["kind"] == "turn")
    assert turn_event["turn"]["text"] == "call me at [phone]"
    assert live.transcript("c1")[0].text == "call me at +1 415 555 0100"  # raw in Redis
    assert board_update("not json") is None and board_update('{"kind": "other"}') is None


def test_turns_written_while_redis_is_away_reach_the_transcript(
        live: LiveState, redis_server: RedisServer) -> None:
    redis_server.stop()
    writer = LiveWriter(LiveState(redis_server.url), retry_s=0.1)
    try:
        state = call("d1")
        for seq in (1, 2, 3):
            state.turns = seq
            writer.put(state, turn("d1", seq, "caller" if seq % 2 else "bot", f"line {seq}"))
        time.sleep(0.3)
        assert writer.redis_down and writer.unwritten >= 3
        redis_server.start()
        assert writer.flush(10)
    finally:
        writer.close()
        writer.live.close()
    assert [t.text for t in live.transcript("d1")] == ["line 1", "line 2", "line 3"]


def _events(response: httpx.Response, wanted: int, timeout_s: float
            ) -> list[tuple[str, dict[str, object]]]:
    """The first ``wanted`` named events of a server-sent event stream."""
    events: list[tuple[str, dict[str, object]]] = []
    name = ""
    deadline = time.monotonic() + timeout_s
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[6:])))
            if len(events) >= wanted:
                break
        if time.monotonic() > deadline:
            break
    return events


def test_an_agent_follows_the_board_as_calls_change(
        board_server: tuple[str, FastAPI], live: LiveState) -> None:
    url, app = board_server
    live.beat("node-a", {}, ttl_s=30)
    live.write_calls([call("e1", started_at=5.0)], turns=[turn("e1", 1, "bot", "Hello")])
    client = http_client_as(url, app, "agent")
    try:
        assert "live-board" in client.get("/live").text
        with client.stream("GET", "/live/events") as response:
            assert response.headers["content-type"].startswith("text/event-stream")

            def later() -> None:
                time.sleep(0.5)
                live.write_calls([call("e1", started_at=5.0, turns=2)],
                                 turns=[turn("e1", 2, "caller", "It's 48213")])

            writer = threading.Thread(target=later)
            writer.start()
            events = _events(response, 3, 15)
            writer.join()
    finally:
        client.close()
    assert events[0][0] == "snapshot"
    snap = events[0][1]
    assert [c["call_id"] for c in snap["calls"]] == ["e1"]  # type: ignore[index, union-attr]
    updates = [data for name, data in events[1:] if name == "update"]
    assert {u["kind"] for u in updates} == {"call", "turn"}
    said = next(u["turn"] for u in updates if u["kind"] == "turn")
    assert said["text"] == "It's 48213" and said["seq"] == 2  # type: ignore[index]


def test_the_board_is_for_signed_in_users(console_app: FastAPI,
                                          client_as: Callable[[str], tuple[TestClient,
                                                                           UserView]]) -> None:
    with TestClient(console_app, base_url="https://testserver") as anonymous:
        assert anonymous.get("/live", follow_redirects=False).status_code == 303
        assert anonymous.get("/live/events", follow_redirects=False).status_code == 303
    client, _ = client_as("agent")
    page = client.get("/live")
    assert page.status_code == 200 and "SWITCHBOARD_REDIS_URL" in page.text  # no Redis here
    assert client.get("/live/events").status_code == 503
