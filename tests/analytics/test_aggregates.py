"""Aggregate figures over a time range, on SQLite and on the real PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from analytics.aggregates import compute_aggregates
from analytics.analysis import analyze
from analytics.rollups import histogram_percentile, roll_after_analysis, roll_missing
from switchboard.storage.database import prepare_database
from switchboard.storage.repository import AnalysisRepository, CallRepository
from tests.analytics.calls import CallSpec, Said, desk_call, order_call, store_call

DAY1 = datetime(2026, 3, 2, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)


def _analysed(sessions: sessionmaker[Session], spec: CallSpec) -> float | None:
    call_id = store_call(sessions, spec)
    call = CallRepository(sessions).get_call(call_id)
    assert call is not None
    result = analyze(call)
    AnalysisRepository(sessions).save(result.as_row())
    return result.sentiment


@pytest.fixture
def sessions(url: str) -> sessionmaker[Session]:
    return prepare_database(url, demo_data=False)


ROLLED = pytest.mark.parametrize("rolled", [False, True],
                                 ids=["from the calls", "from the rollups"])


@ROLLED
def test_aggregates_over_a_range(sessions: sessionmaker[Session], rolled: bool) -> None:
    day1 = [
        _analysed(sessions, order_call(DAY1 + timedelta(hours=9, minutes=15))),
        _analysed(sessions, order_call(
            DAY1 + timedelta(hours=9, minutes=40), reason="handoff",
            caller_opening="This is ridiculous, I'm really angry. Get me a person.")),
        _analysed(sessions, order_call(DAY1 + timedelta(hours=10, minutes=5),
                                       reason="caller_hangup")),
    ]
    broken = CallSpec(
        start=DAY2 + timedelta(hours=14), length_s=12, reason="dialog_unavailable",
        status="failed", turns=[
            Said("bot", "Hello, how can I help?", 0, 2),
            Said("caller", "blorp", 3, 1, intent="nlu_fallback"),
            Said("bot", "Sorry, I'm having technical trouble.", 5, 3, response_ms=1500.0),
        ])
    day2 = [_analysed(sessions, broken)]
    store_call(sessions, order_call(DAY2 + timedelta(hours=15)))  # not analysed (yet)
    _analysed(sessions, order_call(DAY2 + timedelta(days=3)))  # outside the range
    if rolled:  # every hour since the first call, with calls or not
        assert roll_missing(sessions) > 24 * 5
        assert roll_missing(sessions) == 0

    figures = compute_aggregates(sessions, since=DAY1, until=DAY1 + timedelta(days=2))

    assert figures.calls == 5 and figures.analysed == 4
    assert figures.calls_per_hour == [
        {"bucket": "2026-03-02 09:00", "calls": 2},
        {"bucket": "2026-03-02 10:00", "calls": 1},
        {"bucket": "2026-03-03 14:00", "calls": 1},
        {"bucket": "2026-03-03 15:00", "calls": 1},
    ]
    assert figures.calls_per_day == [
        {"bucket": "2026-03-02", "calls": 3}, {"bucket": "2026-03-03", "calls": 2}]
    assert figures.outcomes == {"resolved": 1, "handed_off": 1, "abandoned": 1, "failed": 1}
    assert figures.containment_rate == figures.handoff_rate == 0.25
    assert figures.abandon_rate == figures.failure_rate == figures.fallback_rate == 0.25
    assert figures.average_handle_time_s == 25.5  # (3 × 30 s + 12 s) / 4
    assert figures.top_intents == [
        {"intent": "check_order", "turns": 4}, {"intent": "inform_order_number", "turns": 4},
        {"intent": "thank", "turns": 4}, {"intent": "nlu_fallback", "turns": 1}]
    # bot turns of the 5 calls in range: 4 × (500, 700, 900) ms and one 1500 ms apology
    assert figures.bot_turns_timed == 13
    assert figures.response_ms_p50 == 700.0
    assert figures.response_ms_p95 == 1140.0  # 900 + 0.4 × (1500 - 900): rank 11.4 of 0..12
    assert [row["day"] for row in figures.sentiment_trend] == ["2026-03-02", "2026-03-03"]
    assert figures.sentiment_trend[0]["calls"] == 3
    assert figures.sentiment_trend[0]["sentiment"] == pytest.approx(
        sum(s for s in day1 if s is not None) / 3, abs=1e-4)
    assert figures.sentiment_trend[1]["sentiment"] == pytest.approx(day2[0] or 0.0, abs=1e-4)


@ROLLED
def test_desk_figures_over_a_range(sessions: sessionmaker[Session], rolled: bool) -> None:
    start = DAY1 + timedelta(hours=9)
    for taken in (True, True, False):
        _analysed(sessions, desk_call(start, taken=taken))
    _analysed(sessions, order_call(start))  # never queued
    if rolled:
        roll_missing(sessions)

    figures = compute_aggregates(sessions, since=DAY1, until=DAY2)

    assert figures.queued_calls == 3
    assert figures.queue_abandon_rate == pytest.approx(1 / 3, abs=1e-4)
    assert figures.average_queue_wait_s == 20.0
    assert figures.average_agent_handle_s == 40.0  # the two calls agents took


def test_partial_hours_and_hours_rolled_again(sessions: sessionmaker[Session]) -> None:
    """A range's partial hours come from the calls, whole ones from the rollups; a call
    analysed after its hour was rolled counts once the worker rolls the hour again."""
    for minutes in (15, 40, 65):
        _analysed(sessions, order_call(DAY1 + timedelta(hours=9, minutes=minutes)))
    assert roll_missing(sessions) > 2  # 09:00, 10:00 and the hours since, empty
    figures = compute_aggregates(sessions, since=DAY1 + timedelta(hours=9, minutes=30),
                                 until=DAY1 + timedelta(hours=10, minutes=30))
    assert figures.calls == 2 and figures.analysed == 2  # 09:40 (raw) and 10:05 (raw)
    whole = compute_aggregates(sessions, since=DAY1, until=DAY2)
    assert whole.calls == 3 and whole.response_ms_p50 == 700.0

    late = DAY1 + timedelta(hours=9, minutes=50)
    _analysed(sessions, order_call(late, reason="handoff"))
    assert compute_aggregates(sessions, since=DAY1, until=DAY2).calls == 3  # not rolled yet
    roll_after_analysis(sessions, late)
    again = compute_aggregates(sessions, since=DAY1, until=DAY2)
    assert again.calls == 4 and again.outcomes == {"resolved": 3, "handed_off": 1}
    assert roll_missing(sessions) == 0  # nothing left to roll


def test_percentiles_of_a_histogram() -> None:
    assert histogram_percentile({}, 50) is None
    assert histogram_percentile({500.0: 4, 700.0: 4, 900.0: 4, 1500.0: 1}, 95) == 1140.0
    assert histogram_percentile({100.0: 1, 200.0: 1}, 50) == 150.0
    assert histogram_percentile({100.0: 3}, 95) == 100.0


def test_an_empty_range_has_no_rates(sessions: sessionmaker[Session]) -> None:
    figures = compute_aggregates(sessions, since=DAY1, until=DAY2)
    assert figures.calls == 0 and figures.containment_rate is None
    assert figures.response_ms_p50 is None and figures.average_handle_time_s is None
    assert figures.as_dict()["since"] == DAY1.isoformat()


def test_the_cli_prints_the_aggregates_as_json(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    sessions = prepare_database(url, demo_data=False)
    _analysed(sessions, order_call(datetime.now(UTC) - timedelta(hours=1)))
    env = {**os.environ, "SWITCHBOARD_DATABASE_URL": url, "SWITCHBOARD_DATA_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "switchboard", "analytics", "aggregates", "--days", "1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=True)
    figures = json.loads(done.stdout)
    assert figures["calls"] == 1 and figures["containment_rate"] == 1.0
    assert figures["response_ms_p95"] == 880.0
