"""Migrations and the repository layer against SQLite and a real PostgreSQL server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, inspect, text

from switchboard.conversation.turns import TurnRecord
from switchboard.storage.database import DatabaseError, prepare_database
from switchboard.storage.repository import CallIdTaken, CallRepository, OrderRepository


def test_migrations_create_every_table_and_are_idempotent(url: str) -> None:
    prepare_database(url)
    prepare_database(url)
    tables = set(inspect(create_engine(url)).get_table_names())
    assert {"calls", "turns", "call_events", "users", "orders", "alembic_version"} <= tables


def test_demo_orders_are_seeded_once(url: str) -> None:
    sessions = prepare_database(url)
    prepare_database(url)
    orders = OrderRepository(sessions)
    order = orders.get("48213")
    assert order is not None and order.status == "shipped" and order.carrier == "UPS"
    with sessions() as session:
        assert session.execute(text("SELECT count(*) FROM orders")).scalar_one() == 5


def test_a_call_keeps_its_turns_in_order_with_latencies(url: str) -> None:
    calls = CallRepository(prepare_database(url))
    call_id = calls.create_call(transport="sip", caller="+15550100", metadata={"trunk": "a"})
    t0 = datetime.now(UTC)
    calls.add_turn(call_id, TurnRecord(speaker="bot", text="Hi.", started_at=t0))
    calls.add_turn(call_id, TurnRecord(
        speaker="caller", text="check my order", started_at=t0 + timedelta(seconds=2),
        ended_at=t0 + timedelta(seconds=3), confidence=0.8, barge_in=True,
        endpoint_ms=500, stt_ms=210.5))
    calls.add_turn(call_id, TurnRecord(
        speaker="bot", text="What's your order number?", started_at=t0 + timedelta(seconds=4),
        dialog_ms=12.0, tts_ms=80.0, response_ms=802.5))
    calls.add_event(call_id, "barge_in", {"at_ms": 2100})
    calls.end_call(call_id, reason="caller_hangup")

    call = calls.get_call(call_id)
    assert call is not None
    assert call.status == "ended" and call.end_reason == "caller_hangup"
    assert call.call_metadata == {"trunk": "a"}
    assert [(t.seq, t.speaker) for t in call.turns] == [(1, "bot"), (2, "caller"), (3, "bot")]
    assert call.turns[1].barge_in and call.turns[1].stt_ms == 210.5
    assert call.turns[2].response_ms == 802.5
    assert [e.kind for e in call.events] == ["barge_in"]
    assert calls.list_calls(limit=10)[0].id == call_id


def test_calls_left_active_by_a_dead_worker_are_ended(url: str) -> None:
    calls = CallRepository(prepare_database(url))
    lost = calls.create_call(transport="sip", worker="sip-1")
    other = calls.create_call(transport="sip", worker="sip-0")
    assert len(calls.end_active_calls(reason="worker_died", worker="sip-1")) == 1
    call = calls.get_call(lost)
    assert call is not None and call.end_reason == "worker_died" and call.status == "ended"
    assert calls.get_call(other).status == "active"  # type: ignore[union-attr]
    assert len(calls.end_active_calls(reason="node_restarted")) == 1


def test_unreachable_database_is_a_clear_error() -> None:
    with pytest.raises(DatabaseError, match=r"127\.0\.0\.1:1"):
        prepare_database("postgresql+psycopg://nobody:secret@127.0.0.1:1/none")


def test_a_call_id_already_taken_is_refused_and_nothing_is_lost(url: str) -> None:
    calls = CallRepository(prepare_database(url))
    first = calls.create_call(transport="sip", caller="1001", call_id="a" * 32)
    with pytest.raises(CallIdTaken):
        calls.create_call(transport="sip", caller="1002", call_id="a" * 32)
    stored = calls.get_call(first)
    assert stored is not None and stored.caller == "1001"
    assert calls.create_call(transport="sip", caller="1002", call_id="b" * 32) == "b" * 32


def test_calls_left_active_for_hours_are_ended_and_recent_ones_kept(url: str) -> None:
    """The analytics worker's ``end_stale_calls``: an end lost with a process that died
    unsupervised does not leave its call active (unanalysed, never purged) for ever."""
    calls = CallRepository(prepare_database(url))
    now = datetime.now(UTC)
    stale = calls.create_call(transport="sip", started_at=now - timedelta(hours=13))
    recent = calls.create_call(transport="sip", started_at=now - timedelta(hours=1))
    ended = calls.end_active_calls(reason="lost", started_before=now - timedelta(hours=12))
    assert ended == [stale]
    assert calls.get_call(stale).end_reason == "lost"  # type: ignore[union-attr]
    assert calls.get_call(recent).status == "active"  # type: ignore[union-attr]
