"""The retention policy: recordings and the words of old calls are deleted, figures stay;
a real analytics worker applies it on its own (Celery beat) and audits what it deleted."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from analytics.analysis import analyze
from analytics.retention import apply_retention
from switchboard.base.settings import Settings
from switchboard.storage.database import prepare_database
from switchboard.storage.models import Call
from switchboard.storage.repository import AnalysisRepository, AuditRepository, CallRepository
from tests.admin.conftest import (
    accounts,
    client_as,
    console_app,
    console_db,
    console_settings,
    page_text,
)
from tests.analytics.calls import order_call, store_call
from tests.analytics.test_worker import Workers, redis_url, wait_for, workers_on

__all__ = ["accounts", "client_as", "console_app", "console_db", "console_settings",
           "redis_url", "workers_on"]  # fixtures used below

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def settings(tmp_path: Path, *, recordings: float = 0, transcripts: float = 0) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None, data_dir=tmp_path, retention_recordings_days=recordings,
        retention_transcripts_days=transcripts)


def recorded_call(sessions: object, tmp_path: Path, started: datetime, name: str) -> str:
    call_id = store_call(sessions, order_call(started))  # type: ignore[arg-type]
    recording = tmp_path / f"{name}.wav"
    recording.write_bytes(b"RIFF")
    calls = CallRepository(sessions)  # type: ignore[arg-type]
    calls.set_recording(call_id, str(recording))
    call = calls.get_call(call_id)
    assert call is not None
    AnalysisRepository(sessions).save(analyze(call).as_row())  # type: ignore[arg-type]
    return call_id


def test_old_recordings_and_words_go_figures_and_new_calls_stay(tmp_path: Path) -> None:
    sessions = prepare_database(f"sqlite:///{tmp_path / 'db.sqlite'}", demo_data=False)
    old = recorded_call(sessions, tmp_path, NOW - timedelta(days=40), "old")
    middle = recorded_call(sessions, tmp_path, NOW - timedelta(days=10), "middle")
    new = recorded_call(sessions, tmp_path, NOW - timedelta(hours=2), "new")
    calls, analyses = CallRepository(sessions), AnalysisRepository(sessions)
    calls.add_event(old, "dtmf", {"digit": "4"})
    calls.add_event(old, "empty_reply", {"sent": "my card number is 4242"})
    calls.wrap_up(old, agent="ann", disposition="resolved", notes="card ends 4242")
    before = analyses.get(old)
    assert before is not None and before.summary and before.transcript

    run = apply_retention(settings(tmp_path, recordings=7, transcripts=30), sessions, NOW)
    assert (run.recordings_deleted, run.transcripts_deleted) == (2, 1)

    gone, kept = calls.get_call(old), calls.get_call(new)
    assert gone is not None and kept is not None
    assert gone.recording_path is None and not (tmp_path / "old.wav").exists()
    assert calls.get_call(middle).recording_path is None  # type: ignore[union-attr]
    assert gone.transcript_deleted_at is not None
    assert [t.text for t in gone.turns] == [""] * len(gone.turns)
    assert {e.kind: e.data for e in gone.events if e.kind in ("dtmf", "empty_reply")} == {
        "dtmf": {}, "empty_reply": {}}  # the keys and words go, that they happened stays
    assert gone.agent_notes == "" and gone.disposition == "resolved"
    assert [t.intent for t in gone.turns] == [t.intent for t in kept.turns]  # figures stay
    assert any(t.response_ms for t in gone.turns)
    after = analyses.get(old)
    assert after is not None and after.transcript == [] and after.summary == ""
    assert after.outcome == before.outcome and after.duration_s == before.duration_s
    middle_call = calls.get_call(middle)
    assert middle_call is not None and middle_call.turns[1].text  # 10 days: words kept
    assert kept.recording_path and (tmp_path / "new.wav").exists()
    assert all(t.text for t in kept.turns)
    [entry] = AuditRepository(sessions).entries(action="retention.delete")
    assert entry.actor == "retention" and entry.detail["recordings_deleted"] == 2

    again = apply_retention(settings(tmp_path, recordings=7, transcripts=30), sessions, NOW)
    assert (again.recordings_deleted, again.transcripts_deleted) == (0, 0)
    assert len(AuditRepository(sessions).entries(action="retention.delete")) == 1


def test_a_file_that_cannot_be_deleted_is_kept_and_a_missing_one_forgotten(
    tmp_path: Path,
) -> None:
    sessions = prepare_database(f"sqlite:///{tmp_path / 'db.sqlite'}", demo_data=False)
    stuck = recorded_call(sessions, tmp_path, NOW - timedelta(days=9), "stuck")
    missing = recorded_call(sessions, tmp_path, NOW - timedelta(days=8), "missing")
    calls = CallRepository(sessions)
    (tmp_path / "stuck.wav").unlink()
    (tmp_path / "stuck.wav").mkdir()  # unlink() fails on a directory
    (tmp_path / "missing.wav").unlink()
    run = apply_retention(settings(tmp_path, recordings=7), sessions, NOW)
    assert (run.recordings_deleted, run.recordings_failed, run.recordings_missing) == (0, 1, 1)
    assert calls.get_call(stuck).recording_path  # type: ignore[union-attr]
    assert calls.get_call(missing).recording_path is None  # type: ignore[union-attr]
    assert apply_retention(settings(tmp_path), sessions, NOW).recordings_failed == 0  # off


def test_the_analytics_worker_applies_the_policy_on_its_own(
    redis_url: str, workers_on: Callable[[str], Workers], tmp_path: Path
) -> None:
    workers = workers_on(redis_url)
    old = recorded_call(workers.sessions, tmp_path, datetime.now(UTC) - timedelta(days=3), "o")
    new = recorded_call(workers.sessions, tmp_path, datetime.now(UTC) - timedelta(hours=1), "n")
    workers.start("retention", SWITCHBOARD_RETENTION_RECORDINGS_DAYS="2",
                  SWITCHBOARD_RETENTION_TRANSCRIPTS_DAYS="2",
                  SWITCHBOARD_RETENTION_CHECK_MINUTES="0.02")  # every 1.2 s
    calls = CallRepository(workers.sessions)
    wait_for(lambda: calls.get_call(old).transcript_deleted_at,  # type: ignore[union-attr]
             30, "the worker's retention run")
    assert not (tmp_path / "o.wav").exists()
    assert (tmp_path / "n.wav").exists()
    assert calls.get_call(new).transcript_deleted_at is None  # type: ignore[union-attr]
    assert AuditRepository(workers.sessions).entries(action="retention.delete")


def test_the_console_says_what_the_policy_deleted(
    console_db: sessionmaker[Session], client_as: Callable[[str], tuple[TestClient, object]],
    console_settings: Settings, tmp_path: Path,
) -> None:
    old = recorded_call(console_db, tmp_path, NOW - timedelta(days=40), "old")
    apply_retention(console_settings.model_copy(update={
        "retention_recordings_days": 7, "retention_transcripts_days": 7}), console_db, NOW)
    client, _ = client_as("supervisor")
    page = client.get(f"/calls/{old}")
    assert page.status_code == 200
    text = page_text(page)
    assert "The recording was deleted on" in text and "The words of this call were deleted" in text
    assert "check on my order" not in text
    detail = client.get(f"/api/calls/{old}").json()
    assert detail["recording_deleted_at"] and detail["transcript_deleted_at"]
    assert detail["has_recording"] is False and all(t["text"] == "" for t in detail["turns"])


def test_another_nodes_recordings_are_left_to_it(tmp_path: Path) -> None:
    """Recordings are on the disk of the node that took the call: each node's worker
    deletes its own (the words, in the shared database, go whoever's they are)."""
    sessions = prepare_database(f"sqlite:///{tmp_path / 'db.sqlite'}", demo_data=False)
    theirs = recorded_call(sessions, tmp_path, NOW - timedelta(days=40), "theirs")
    with sessions.begin() as session:
        session.execute(update(Call).where(Call.id == theirs).values(node="node-b"))
    mine = settings(tmp_path, recordings=7, transcripts=7).model_copy(
        update={"node_id": "node-a"})
    run = apply_retention(mine, sessions, NOW)
    assert (run.recordings_deleted, run.recordings_missing, run.transcripts_deleted) == (0, 0, 1)
    assert (tmp_path / "theirs.wav").exists()
    assert CallRepository(sessions).get_call(theirs).recording_path  # type: ignore[union-attr]
