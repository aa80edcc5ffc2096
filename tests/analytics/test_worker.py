"""A real Celery worker process on a real broker: analyses appear, a killed worker's task
runs to completion exactly once on the next worker, and enqueueing never blocks the call."""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from analytics.celery_app import create_app
from analytics.rollups import floor_hour
from analytics.tasks import enqueue_call_analysis
from switchboard.base.children import ChildProcess, log_probe
from switchboard.base.processes import free_port
from switchboard.base.settings import Settings
from switchboard.bench.local_cluster import RedisServer
from switchboard.storage.database import prepare_database
from switchboard.storage.models import HourRollup
from switchboard.storage.repository import AnalysisRepository
from tests.analytics.calls import order_call, store_call

WORKER_START_TIMEOUT_S = 30.0
ANALYSIS_TIMEOUT_S = 30.0
VISIBILITY_TIMEOUT_S = 3.0


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A redis-server of our own on a free port, without persistence."""
    with RedisServer(tmp_path) as server:
        yield server.url


class Workers:
    """Starts `switchboard analytics worker` processes on one database and broker."""

    def __init__(self, tmp_path: Path, broker_url: str) -> None:
        self.tmp_path = tmp_path
        self.database_url = f"sqlite:///{tmp_path / 'switchboard.db'}"
        self.broker_url = broker_url
        self.processes: list[ChildProcess] = []
        self.sessions: sessionmaker[Session] = prepare_database(self.database_url,
                                                                demo_data=False)
        self.settings = Settings(  # type: ignore[call-arg]
            _env_file=None, data_dir=tmp_path, database_url=self.database_url,
            celery_broker_url=broker_url, celery_visibility_timeout_s=VISIBILITY_TIMEOUT_S)
        self.celery = create_app(self.settings)

    def start(self, name: str, **env: str) -> tuple[ChildProcess, Path]:
        log_path = self.tmp_path / f"{name}.log"
        environment = {
            **os.environ,
            "SWITCHBOARD_DATA_DIR": str(self.tmp_path),
            "SWITCHBOARD_DATABASE_URL": self.database_url,
            "SWITCHBOARD_CELERY_BROKER_URL": self.broker_url,
            "SWITCHBOARD_CELERY_VISIBILITY_TIMEOUT_S": str(VISIBILITY_TIMEOUT_S),
            "SWITCHBOARD_ANALYTICS_SWEEP_AFTER_S": "86400",
            "SWITCHBOARD_DEMO_DATA": "false",
            "SWITCHBOARD_LOG_LEVEL": "INFO",
            "SWITCHBOARD_WORKER_NAME": name,
            **env,
        }
        process = ChildProcess(
            f"worker {name}", [sys.executable, "-m", "switchboard", "analytics", "worker"],
            log_path=log_path, healthy=log_probe(log_path, " ready."), base_env=environment,
            cwd=self.tmp_path, start_timeout_s=WORKER_START_TIMEOUT_S,
        )
        self.processes.append(process)
        process.start()
        process.wait_healthy()
        return process, log_path

    def close(self) -> None:
        for process in self.processes:
            process.stop()
        self.celery.close()


@pytest.fixture
def workers_on(tmp_path: Path) -> Iterator[Callable[[str], Workers]]:
    made: list[Workers] = []

    def make(broker_url: str) -> Workers:
        made.append(Workers(tmp_path, broker_url))
        return made[-1]

    yield make
    for workers in made:
        workers.close()


@pytest.mark.parametrize("broker", ["redis", "embedded_sqlite"])
def test_a_real_worker_analyses_an_ended_call(
        broker: str, request: pytest.FixtureRequest, tmp_path: Path,
        workers_on: Callable[[str], Workers]) -> None:
    url = (request.getfixturevalue("redis_url") if broker == "redis"
           else f"sqla+sqlite:///{tmp_path / 'celery-broker.db'}")
    workers = workers_on(url)
    _, log = workers.start("w1")
    started = datetime.now(UTC) - timedelta(hours=2)
    call_id = store_call(workers.sessions, order_call(started))
    analyses = AnalysisRepository(workers.sessions)

    enqueue_call_analysis(call_id, celery=workers.celery)
    stored = wait_for(lambda: analyses.get(call_id), ANALYSIS_TIMEOUT_S, "the analysis")

    assert stored.outcome == "resolved" and stored.runs == 1 and stored.turns == 7

    def rolled() -> HourRollup | None:  # the worker rolls the call's hour after it
        with workers.sessions() as session:
            row = session.get(HourRollup, floor_hour(started))
            return row if row is not None and row.calls == 1 else None

    assert wait_for(rolled, ANALYSIS_TIMEOUT_S, "the call's hour rolled up").closed
    # the call's id travels in the task's headers: the worker's log lines name the call
    assert f"[call {call_id}] analysis of call {call_id} completed" in log.read_text()


def test_a_task_whose_worker_is_killed_mid_task_completes_once_on_the_next_worker(
        redis_url: str, workers_on: Callable[[str], Workers]) -> None:
    workers = workers_on(redis_url)
    slow, slow_log = workers.start("slow", SWITCHBOARD_CELERY_WORKER_POOL="solo",
                                   SWITCHBOARD_ANALYTICS_TEST_DELAY_S="60")
    call_id = store_call(workers.sessions, order_call(datetime.now(UTC)))
    analyses = AnalysisRepository(workers.sessions)
    started = f"analysis of call {call_id} started"
    completed = f"analysis of call {call_id} completed"

    enqueue_call_analysis(call_id, celery=workers.celery)
    wait_for(lambda: started in slow_log.read_text(), ANALYSIS_TIMEOUT_S, "the slow task")
    slow.kill()  # as a crash would: SIGKILL, no warm shutdown
    assert analyses.get(call_id) is None

    _, next_log = workers.start("next", SWITCHBOARD_CELERY_WORKER_POOL="solo")
    stored = wait_for(lambda: analyses.get(call_id), VISIBILITY_TIMEOUT_S + ANALYSIS_TIMEOUT_S,
                      "the redelivered analysis")
    time.sleep(VISIBILITY_TIMEOUT_S + 2)  # long enough for a second delivery to show

    assert completed not in slow_log.read_text()
    assert next_log.read_text().count(started) == 1
    assert next_log.read_text().count(completed) == 1
    assert analyses.count(call_id) == 1
    stored = analyses.get(call_id)
    assert stored is not None and stored.runs == 1


def _settings(tmp_path: Path, broker_url: str) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None, data_dir=tmp_path, celery_broker_url=broker_url,
        celery_enqueue_timeout_s=1.0)


def enqueue_limit_s(settings: Settings) -> float:
    """How long enqueueing may block on a broker that is down or silent: a few attempts of
    ``celery_enqueue_timeout_s`` (at least 2 s each with Redis), with a generous margin.
    Without the timeout it would block for minutes or for ever."""
    return 4 * max(settings.celery_enqueue_timeout_s, 2.0) + 2


def test_enqueue_gives_up_and_logs_when_the_broker_is_down(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = _settings(tmp_path, f"redis://127.0.0.1:{free_port()}/0")
    celery = create_app(settings)
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="analytics.tasks"):
        enqueue_call_analysis("c0ffee", celery=celery)
    elapsed = time.monotonic() - started
    assert elapsed < enqueue_limit_s(settings), f"enqueue blocked {elapsed:.1f} s"
    assert "call c0ffee: could not queue its analysis" in caplog.text
    celery.close()


def test_enqueue_returns_when_the_broker_accepts_but_never_answers(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as silent:  # accepts connections (backlog), never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        settings = _settings(tmp_path, f"redis://127.0.0.1:{port}/0")
        celery = create_app(settings)
        started = time.monotonic()
        with caplog.at_level(logging.ERROR, logger="analytics.tasks"):
            enqueue_call_analysis("c0ffee", celery=celery)
        elapsed = time.monotonic() - started
        celery.close()
    assert elapsed < enqueue_limit_s(settings), f"enqueue blocked {elapsed:.1f} s"
    assert "could not queue its analysis" in caplog.text


def test_a_starting_worker_analyses_calls_that_ended_long_ago_without_analysis(
        redis_url: str, workers_on: Callable[[str], Workers]) -> None:
    workers = workers_on(redis_url)
    lost = store_call(workers.sessions, order_call(datetime.now(UTC) - timedelta(hours=2)))
    recent = store_call(workers.sessions, order_call(datetime.now(UTC)))
    analyses = AnalysisRepository(workers.sessions)

    workers.start("w1", SWITCHBOARD_ANALYTICS_SWEEP_AFTER_S="3600")

    stored = wait_for(lambda: analyses.get(lost), ANALYSIS_TIMEOUT_S, "the swept analysis")
    assert stored.runs == 1
    assert analyses.get(recent) is None  # its own task may still be on its way


def test_a_running_worker_sweeps_calls_that_ended_while_the_broker_was_down(
        redis_url: str, workers_on: Callable[[str], Workers]) -> None:
    workers = workers_on(redis_url)
    analyses = AnalysisRepository(workers.sessions)
    workers.start("w1", SWITCHBOARD_ANALYTICS_SWEEP_AFTER_S="2")
    # It ends 2 s from now, after the worker's start-up sweep; its task was never sent (the
    # broker was down).
    lost = store_call(workers.sessions, order_call(datetime.now(UTC) - timedelta(seconds=28)))

    stored = wait_for(lambda: analyses.get(lost), ANALYSIS_TIMEOUT_S, "the beat's sweep")
    time.sleep(3)  # a later sweep leaves the analysed call alone
    assert stored.runs == 1 and analyses.get(lost).runs == 1  # type: ignore[union-attr]
