"""The retention policy: recordings and transcripts of calls older than
``retention_recordings_days`` / ``retention_transcripts_days`` are deleted (0 keeps them).
Celery beat, embedded in the analytics worker, runs :func:`apply_retention` every
``retention_check_minutes``; each run that deletes something leaves an audit entry. Runs are
idempotent: several workers (nodes) may run it at once; each deletes the recordings of its
own node's calls (they are on its disk) and anybody's words (they are in the database)."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from switchboard.base.settings import Settings
from switchboard.storage.models import utcnow
from switchboard.storage.repository import AuditRepository, CallRepository

log = logging.getLogger(__name__)

BATCH = 200
MAX_BATCHES = 50
"""A run deletes at most BATCH × MAX_BATCHES of each; the next run goes on."""
ACTOR = "retention"


@dataclass
class RetentionRun:
    recordings_deleted: int = 0
    recordings_missing: int = 0
    """Recordings whose file was already gone (forgotten all the same)."""
    recordings_failed: int = 0
    """Files that could not be deleted (kept, and tried again next run)."""
    transcripts_deleted: int = 0


def apply_retention(settings: Settings, sessions: sessionmaker[Session],
                    now: datetime | None = None) -> RetentionRun:
    now = now or utcnow()
    calls = CallRepository(sessions)
    run = RetentionRun()
    if settings.retention_recordings_days > 0:  # this node's: they are on its disk
        _delete_recordings(calls, now - timedelta(days=settings.retention_recordings_days),
                           settings.effective_node_id, run)
    if settings.retention_transcripts_days > 0:
        cutoff = now - timedelta(days=settings.retention_transcripts_days)
        for _ in range(MAX_BATCHES):
            deleted = calls.delete_transcripts(cutoff, limit=BATCH)
            run.transcripts_deleted += deleted
            if deleted < BATCH:
                break
    if run.recordings_deleted or run.recordings_missing or run.transcripts_deleted:
        log.info("retention: %s", run)
        AuditRepository(sessions).record(ACTOR, "retention.delete", detail={
            **asdict(run), "recordings_days": settings.retention_recordings_days,
            "transcripts_days": settings.retention_transcripts_days})
    return run


def _delete_recordings(calls: CallRepository, cutoff: datetime, node: str,
                       run: RetentionRun) -> None:
    failed: set[str] = set()
    for _ in range(MAX_BATCHES):
        batch = calls.recordings_started_before(cutoff, node=node, limit=BATCH,
                                                skip=frozenset(failed))
        for call_id, path in batch:
            try:
                Path(path).unlink()
                run.recordings_deleted += 1
            except FileNotFoundError:
                run.recordings_missing += 1
            except OSError as exc:
                log.warning("retention: cannot delete the recording %s of call %s: %s", path,
                            call_id, exc)
                run.recordings_failed += 1
                failed.add(call_id)
                continue
            calls.forget_recording(call_id)
        if len(batch) < BATCH:
            return
