"""The Celery app of the post-call analytics.

Broker and result backend come from the settings. With none configured it needs no server:
kombu's SQLAlchemy transport keeps the queue in ``<data_dir>/celery-broker.db`` (one
machine). In production set ``SWITCHBOARD_CELERY_BROKER_URL=redis://host:6379/1``.

Run a worker with ``switchboard analytics worker`` (or ``celery -A analytics.celery_app
worker``). Tasks are acknowledged only after they finish (``task_acks_late``), so a task
whose worker dies is delivered again: at once when a prefork child dies
(``task_reject_on_worker_lost``), after ``celery_visibility_timeout_s`` with Redis when the
whole worker dies. Analyses are idempotent, so a second delivery stores the same one row.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from switchboard.base.settings import Settings, get_settings

QUEUE = "switchboard-analytics"


def broker_url(settings: Settings) -> str:
    """The configured broker, or the server-less SQLite one inside ``data_dir``."""
    return settings.celery_broker_url or f"sqla+sqlite:///{settings.data_dir / 'celery-broker.db'}"


def celery_config(settings: Settings) -> dict[str, Any]:
    url = broker_url(settings)
    transport_options: dict[str, Any] = {}
    if url.startswith(("redis://", "rediss://")):
        visibility = settings.celery_visibility_timeout_s
        transport_options = {
            "visibility_timeout": visibility,
            # look for tasks of dead workers every few seconds, not every 100 s (the default)
            "unacked_restore_interval": max(1, min(10, round(visibility / 3))),
            "unacked_restore_throttle": 1,
            "socket_connect_timeout": settings.celery_enqueue_timeout_s,
            # above the worker's 1 s BRPOP, so an idle worker's reads do not time out
            "socket_timeout": max(settings.celery_enqueue_timeout_s, 2.0),
        }
    return {
        "broker_url": url,
        "result_backend": settings.celery_result_backend or None,
        "task_ignore_result": not settings.celery_result_backend,
        "broker_transport_options": transport_options,
        "broker_connection_timeout": settings.celery_enqueue_timeout_s,
        "broker_connection_retry_on_startup": True,
        "task_default_queue": QUEUE,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_serializer": "json",
        "accept_content": ["json"],
        "timezone": "UTC",
        # Celery beat runs inside the analytics worker (``-B``); the task is idempotent, so
        # each node's worker may run it.
        "beat_schedule": {
            "retention": {"task": "switchboard.apply_retention",
                          "schedule": settings.retention_check_minutes * 60.0},
            "sweep": {"task": "switchboard.analyze_pending_calls",
                      "schedule": settings.analytics_sweep_after_s},
            "stale": {"task": "switchboard.end_stale_calls",
                      "schedule": settings.analytics_sweep_after_s},
        },
    }


def create_app(settings: Settings) -> Celery:
    if broker_url(settings).startswith("sqla+sqlite:///"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    celery = Celery("switchboard", include=["analytics.tasks"])
    celery.conf.update(celery_config(settings))
    return celery


app = create_app(get_settings())
