"""Live state in a real Redis: heartbeats, the call registry, claims, and writes kept
while Redis is away."""

from __future__ import annotations

import logging
import time

import pytest

from switchboard.bench.local_cluster import RedisServer
from switchboard.storage.live import CallState, LiveState, LiveStateUnavailable, LiveWriter


def call(call_id: str = "c1", **fields: object) -> CallState:
    return CallState(call_id=call_id, node="node-a", transport="sip", conversation_id=call_id,
                     caller="1001", **fields)  # type: ignore[arg-type]


def test_heartbeats_expire(live: LiveState) -> None:
    live.beat("node-a", {"pid": 1}, ttl_s=0.3)
    live.beat("node-b", {"pid": 2}, ttl_s=30)
    assert live.nodes() == {"node-a": True, "node-b": True}
    time.sleep(0.5)
    assert live.nodes() == {"node-a": False, "node-b": True}
    assert live.heartbeat_left("node-a") is None
    left = live.heartbeat_left("node-b")
    assert left is not None and 25 < left <= 30
    assert live.live_nodes() == {"node-b": {"pid": 2}}
    live.forget_node("node-a")
    assert live.nodes() == {"node-b": True}


def test_a_call_is_indexed_by_node_and_caller_while_it_runs(live: LiveState) -> None:
    state = call(slots={"order_number": "48213"}, turns=3, last_bot_text="Anything else?")
    live.write_calls([state])
    assert live.node_calls("node-a") == ["c1"]
    found = live.latest_call("sip", "1001")
    assert found is not None and found.slots == {"order_number": "48213"} and found.turns == 3
    assert live.latest_call("webrtc", "1001") is None

    state.state, state.end_reason = "ended", "caller_hangup"
    live.write_calls([state])
    assert live.node_calls("node-a") == []
    ended = live.call("c1")
    assert ended is not None and not ended.active and ended.end_reason == "caller_hangup"


def test_a_lost_call_is_claimed_once(live: LiveState) -> None:
    assert live.claim_lost("c1", "node-b")
    assert not live.claim_lost("c1", "node-c")


def test_a_dead_redis_raises_a_clear_error(redis_server: RedisServer, live: LiveState) -> None:
    redis_server.stop()
    expected = f"Redis at redis://127.0.0.1:{redis_server.port}"
    with pytest.raises(LiveStateUnavailable, match=expected):
        live.write_calls([call()])


def test_writes_are_kept_while_redis_is_away_and_written_when_it_returns(
        redis_server: RedisServer, live: LiveState, caplog: pytest.LogCaptureFixture) -> None:
    writer = LiveWriter(live, retry_s=0.1)
    try:
        state = call()
        writer.put(state)
        assert writer.flush(5)
        redis_server.stop()
        with caplog.at_level(logging.WARNING, logger="switchboard.storage.live"):
            for turn in range(1, 6):
                state.turns, state.last_bot_text = turn, f"line {turn}"
                writer.put(state)
                writer.put(call("c2", turns=turn))
                time.sleep(0.05)
            time.sleep(0.3)
            assert writer.redis_down and writer.unwritten == 2  # the latest of each call
            redis_server.start()
            assert writer.flush(10)
        assert not writer.redis_down
        written = live.call("c1")
        assert written is not None and (written.turns, written.last_bot_text) == (5, "line 5")
        other = live.call("c2")
        assert other is not None and other.turns == 5
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 2, lines
        assert "keeping call state in memory" in lines[0] and "is back" in lines[1]
    finally:
        writer.close()
