"""Celery tasks of the post-call analytics, and the one call the real-time side makes.

When a call has ended (its end is stored), the node calls :func:`enqueue_call_analysis`.
A worker then runs :func:`analyze_call`, which reads the call, its turns and events, and
stores one ``call_analyses`` row. Running it again for the same call replaces that row.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict
from datetime import timedelta
from functools import cache
from typing import Any

from celery import Celery, Task
from celery.signals import after_setup_logger, task_postrun, task_prerun, worker_ready
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from analytics.analysis import analyze
from analytics.celery_app import app
from analytics.retention import apply_retention
from analytics.rollups import roll_after_analysis, roll_missing
from switchboard.base.logs import CALL_ID, CallContext
from switchboard.base.logs import FORMAT as LOG_FORMAT
from switchboard.base.settings import get_settings
from switchboard.storage.database import make_engine
from switchboard.storage.models import utcnow
from switchboard.storage.repository import AnalysisRepository, CallRepository

log = logging.getLogger(__name__)

CALL_UUID_TASK_HEADER = "call_uuid"
"""The message header that carries the call's id (as SIP's ``X-Call-UUID`` does) into the
worker, where every log line of the task names the call."""

_settings = get_settings()


class CallNotEnded(RuntimeError):
    """The call is still active: analysing it now would store a half call."""


@cache
def _sessions(url: str) -> sessionmaker[Session]:
    # Created lazily, in the process that runs tasks (after a prefork child is forked).
    # The database is migrated by whoever starts the worker (`switchboard analytics worker`).
    return sessionmaker(make_engine(url), expire_on_commit=False)


def _repositories() -> tuple[CallRepository, AnalysisRepository]:
    sessions = _sessions(get_settings().effective_database_url)
    return CallRepository(sessions), AnalysisRepository(sessions)


@app.task(
    bind=True,
    name="switchboard.analyze_call",
    autoretry_for=(DBAPIError, CallNotEnded),
    retry_backoff=True,
    retry_backoff_max=_settings.celery_retry_backoff_max_s,
    retry_jitter=True,
    max_retries=_settings.celery_max_retries,
)
def analyze_call(self: Task, call_id: str) -> dict[str, Any] | None:
    """Analyse one ended call and store the result (upsert on ``call_id``: idempotent).

    Returns a small summary (outcome, runs), or None when the call does not exist.
    Database errors and a call that has not ended yet are retried with exponential backoff.
    """
    delivery = self.request.delivery_info or {}
    log.info("analysis of call %s started (pid %d, retry %d, redelivered %s)", call_id,
             os.getpid(), self.request.retries, bool(delivery.get("redelivered")))
    calls, analyses = _repositories()
    call = calls.get_call(call_id)
    if call is None:
        log.warning("analysis of call %s skipped: no such call in the database", call_id)
        return None
    if call.status == "active":
        raise CallNotEnded(f"call {call_id} is still active")
    result = analyze(call)
    delay = get_settings().analytics_test_delay_s
    if delay:
        time.sleep(delay)  # test hook (SWITCHBOARD_ANALYTICS_TEST_DELAY_S), 0 in production
    runs = analyses.save(result.as_row())
    log.info("analysis of call %s completed: %s, stored %d time(s)", call_id, result.outcome,
             runs)
    roll_after_analysis(_sessions(get_settings().effective_database_url), call.started_at)
    return {"call_id": call_id, "outcome": result.outcome, "runs": runs}


@app.task(name="switchboard.analyze_pending_calls")
def analyze_pending_calls() -> int:
    """Queue an analysis for every call that ended ``analytics_sweep_after_s`` ago or more
    without one (tasks lost with the embedded broker, or calls ended while the broker was
    down). Runs when a worker starts and every ``analytics_sweep_after_s`` (Celery beat);
    returns how many were queued."""
    settings = get_settings()
    _, analyses = _repositories()
    ended_before = utcnow() - timedelta(seconds=settings.analytics_sweep_after_s)
    call_ids = analyses.unanalyzed_call_ids(ended_before=ended_before)
    for call_id in call_ids:
        analyze_call.delay(call_id)
    if call_ids:
        log.info("queued %d calls that ended without an analysis", len(call_ids))
    return len(call_ids)


@app.task(name="switchboard.end_stale_calls")
def end_stale_calls() -> int:
    """End the calls still marked active ``stale_call_hours`` after they started, longer
    than any call lasts: their end was lost with a process that died unsupervised, or
    their spooled writes came back after the node had ended its dead worker's calls. The
    next sweep analyses them. Runs every ``analytics_sweep_after_s`` (Celery beat)."""
    calls, _ = _repositories()
    hours = get_settings().stale_call_hours
    ended = calls.end_active_calls(reason="lost", started_before=utcnow() - timedelta(
        hours=hours))
    if ended:
        log.warning("ended %d call(s) still marked active after %g hours: %s", len(ended),
                    hours, ", ".join(ended))
    return len(ended)


@app.task(name="switchboard.roll_missing_hours")
def roll_missing_hours() -> int:
    """Roll every closed hour that was never rolled after it closed (see
    ``analytics/rollups.py``). Runs when a worker starts; returns how many hours."""
    rolled = roll_missing(_sessions(get_settings().effective_database_url))
    if rolled:
        log.info("rolled up %d hours of calls", rolled)
    return rolled


@app.task(name="switchboard.apply_retention")
def apply_retention_policy() -> dict[str, int]:
    """Delete the recordings and transcripts the retention policy no longer keeps (run by
    Celery beat every ``retention_check_minutes``)."""
    settings = get_settings()
    return asdict(apply_retention(settings, _sessions(settings.effective_database_url)))


@task_prerun.connect
def _enter_call(task: Task, **_: Any) -> None:
    request = task.request
    call_id = request.get(CALL_UUID_TASK_HEADER) or (request.headers or {}).get(
        CALL_UUID_TASK_HEADER)
    CALL_ID.set(str(call_id) if call_id else None)


@task_postrun.connect
def _leave_call(**_: Any) -> None:
    CALL_ID.set(None)


@after_setup_logger.connect
def _name_calls_in_logs(logger: logging.Logger, **_: Any) -> None:
    """The worker's log lines carry `` [call ID]`` like the node's."""
    for handler in logger.handlers:
        handler.addFilter(CallContext())
        handler.setFormatter(logging.Formatter(LOG_FORMAT))


@worker_ready.connect
def _sweep_on_start(**_: Any) -> None:
    try:
        analyze_pending_calls.delay()
        roll_missing_hours.delay()
    except Exception as exc:
        log.warning("could not queue the sweeps of unanalysed calls and hours: %s", exc)


def enqueue_call_analysis(call_id: str, *, celery: Celery | None = None) -> None:
    """Hand the analysis of an ended call to the broker. Never raises.

    Call it after the call's end is stored. ``celery`` is the app to send with (one made
    by ``analytics.celery_app.create_app(settings)`` for the node's settings; default: the
    app configured from the environment). When the broker is unreachable or silent it gives
    up after a few seconds (``celery_enqueue_timeout_s``, at least 2 s, per attempt), logs
    and returns; a worker's start-up sweep analyses the call later. It does network I/O, so
    from async code run it in a thread:
    ``await asyncio.to_thread(enqueue_call_analysis, call_id, celery=app)``.
    """
    sender = celery or app
    try:
        sender.send_task(analyze_call.name, (call_id,), retry=False,
                         headers={CALL_UUID_TASK_HEADER: call_id})
    except Exception as exc:
        broker = str(sender.conf.broker_url).rsplit("@", 1)[-1]
        log.error("call %s: could not queue its analysis (broker %s): %s", call_id, broker, exc)
