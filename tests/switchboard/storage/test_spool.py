"""A call's writes while its PostgreSQL server is down: spooled on disk in order, written
when it is back, nothing lost, nothing twice. The server is a real one of the test's own,
crashed (immediate shutdown) and started again."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from switchboard.bench.local_cluster import PostgresServer
from switchboard.conversation.turns import TurnRecord
from switchboard.storage.database import prepare_database
from switchboard.storage.repository import CallRepository
from switchboard.storage.spool import TURN_FIELDS, SpooledCalls, WriteSpool

pytestmark = pytest.mark.integration

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def turn(speaker: str, text: str, second: int) -> TurnRecord:
    return TurnRecord(speaker=speaker, text=text, started_at=T0 + timedelta(seconds=second),
                      ended_at=T0 + timedelta(seconds=second + 1),
                      intent="check_order" if speaker == "caller" else None)


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[PostgresServer]:
    with PostgresServer(tmp_path) as server:
        yield server


@pytest.fixture
def pg_sessions(postgres: PostgresServer) -> sessionmaker[Session]:
    return prepare_database(postgres.url, demo_data=False)


def spool_lines(folder: Path) -> list[dict[str, object]]:
    return [json.loads(line) for path in sorted(folder.glob("*.jsonl"))
            for line in path.read_text().splitlines()]


def test_writes_made_while_the_database_is_down_land_in_order_once_it_is_back(
    postgres: PostgresServer, pg_sessions: sessionmaker[Session], tmp_path: Path,
) -> None:
    repository = CallRepository(pg_sessions)
    spool = WriteSpool(tmp_path / "spool", "sip-worker-0")
    calls = SpooledCalls(repository, spool)
    call_id = calls.create_call(transport="sip", caller="sip:1001@pbx", node="n1")
    calls.add_turn(call_id, turn("bot", "Hello, how can I help?", 0))
    assert not calls.spooled(call_id) and not spool.pending()

    postgres.crash()
    calls.add_turn(call_id, turn("caller", "where is my order", 2))
    calls.add_event(call_id, "dtmf", {"digit": "4"}, at=T0 + timedelta(seconds=3))
    other = calls.create_call(transport="webrtc", caller="browser", node="n1")
    assert calls.spooled(call_id) and calls.spooled(other)
    assert [line["op"] for line in spool_lines(spool.folder)] == [
        "add_turn", "add_event", "create_call"]

    down = calls.replay()  # still down: everything stays, in order
    assert (down.written, down.left, down.ended) == (0, 3, [])

    postgres.start()
    # The database answers again, but the call's earlier writes wait: its next ones queue
    # behind them rather than overtake them.
    calls.add_turn(call_id, turn("bot", "What is the order number?", 4))
    assert calls.end_call(call_id, reason="hangup", ended_at=T0 + timedelta(seconds=9)) is False
    assert calls.end_call(other, reason="hangup", ended_at=T0 + timedelta(seconds=5)) is False

    result = calls.replay()
    assert (result.written, result.left) == (6, 0)
    assert set(result.ended) == {call_id, other}
    assert not spool.pending() and not calls.spooled(call_id)
    assert not list(spool.folder.glob("*.jsonl"))

    stored = repository.get_call(call_id)
    assert stored is not None and stored.status == "ended" and stored.end_reason == "hangup"
    assert [(t.seq, t.speaker, t.text) for t in stored.turns] == [
        (1, "bot", "Hello, how can I help?"), (2, "caller", "where is my order"),
        (3, "bot", "What is the order number?")]
    assert stored.turns[1].intent == "check_order"
    assert [(e.kind, e.data) for e in stored.events] == [("dtmf", {"digit": "4"})]
    later = repository.get_call(other)
    assert later is not None and later.transport == "webrtc" and later.ended_at is not None

    assert not list(spool.folder.glob("*.claimed"))
    again = calls.replay()  # nothing left: nothing written twice
    assert again.written == 0 and len(repository.get_call(call_id).turns) == 3  # type: ignore[union-attr]

    calls.add_event(call_id, "after", {})  # the call's writes go straight in again
    assert not spool.pending()


def test_another_process_replays_a_dead_ones_spool_and_a_wrong_write_is_not_spooled(
    postgres: PostgresServer, pg_sessions: sessionmaker[Session], tmp_path: Path,
) -> None:
    folder = tmp_path / "spool"
    dead = SpooledCalls(CallRepository(pg_sessions), WriteSpool(folder, "sip-worker-1"))
    postgres.crash()
    call_id = dead.create_call(transport="sip", caller="sip:1002@pbx", node="n1")
    dead.end_call(call_id, reason="worker_died", status="failed")
    postgres.start()

    successor = SpooledCalls(CallRepository(pg_sessions), WriteSpool(folder, "sip-worker-1"))
    assert successor.spool.pending()
    result = successor.replay()
    assert result.ended == [call_id]
    stored = successor.calls.get_call(call_id)
    assert stored is not None and stored.end_reason == "worker_died"

    with pytest.raises(KeyError):  # not an outage: the write itself is wrong
        successor.end_call("no-such-call", reason="hangup")
    assert not successor.spool.pending()


def test_a_line_that_cannot_be_stored_is_kept_aside_and_the_rest_written_once(
    pg_sessions: sessionmaker[Session], tmp_path: Path,
) -> None:
    folder = tmp_path / "spool"
    repository = CallRepository(pg_sessions)
    web = SpooledCalls(repository, WriteSpool(folder, "web"))
    worker = SpooledCalls(repository, WriteSpool(folder, "sip-worker-0"))
    call_id = repository.create_call(transport="sip", caller="sip:1003@pbx", node="n1")
    worker.spool.append("add_turn", call_id, **{name: getattr(turn("bot", "Hello.", 0), name)
                                                for name in TURN_FIELDS})
    with worker.spool.path.open("a") as file:
        file.write('{"op": "add_turn", "call_id": "torn\n')  # a write cut short
    worker.spool.append("end_call", "no-such-call", reason="hangup", status="ended",
                        handoff_target=None, ended_at=T0)
    worker.spool.append("end_call", call_id, reason="hangup", status="ended",
                        handoff_target=None, ended_at=T0 + timedelta(seconds=30))

    result = web.replay()  # any process of the node replays any file
    assert (result.written, result.rejected, result.left) == (2, 2, 0)
    assert result.ended == [call_id]
    rejected = (folder / f"{worker.spool.stem}.rejected").read_text().splitlines()
    assert len(rejected) == 2 and "no-such-call" in rejected[1]
    assert not web.spool.pending()
    assert web.replay().written == 0
    stored = repository.get_call(call_id)
    assert stored is not None and [t.text for t in stored.turns] == ["Hello."]


def test_appends_while_a_file_is_claimed_go_to_a_new_file(tmp_path: Path) -> None:
    spool = WriteSpool(tmp_path / "spool", "sip-worker-0")
    spool.append("add_event", "c1", kind="a", data={}, at=T0)
    seen: list[str] = []

    def write(item: dict[str, object]) -> None:  # a write arrives during the replay
        seen.append(str(item["kind"]))
        if item["kind"] == "a":
            spool.append("add_event", "c1", kind="b", data={}, at=T0)

    first = spool.replay(write)
    assert (first.written, seen) == (1, ["a"])
    assert spool.pending() and spool_lines(spool.folder)[0]["kind"] == "b"
    assert spool.replay(write).written == 1 and seen == ["a", "b"]
    assert not spool.pending()
