"""Aggregate figures over the calls started in a time range, for the console and the CLI.

Whole hours come from the analytics worker's hourly rollups, the rest from the calls
(``analytics/rollups.py``), so a 30-day range reads about 720 rollup rows and the few calls
of its partial hours. Response-time percentiles are those of the times rounded to 10 ms,
interpolated as PostgreSQL's ``percentile_cont``. Days and hours are UTC.

Rates are shares of the *analysed* calls in the range:
``containment_rate`` = resolved by the bot alone, ``handoff_rate`` = handed to an agent,
``abandon_rate`` = caller hung up or went silent, ``failure_rate`` = something broke,
``fallback_rate`` = calls in which the bot failed to understand the caller at least once.
The agents' desk: ``queued_calls`` waited in the handoff queue, ``queue_abandon_rate`` =
their callers hung up while waiting, ``average_queue_wait_s`` = time waited,
``average_agent_handle_s`` = time agents had the calls they took.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from analytics.analysis import ABANDONED, FAILED, HANDED_OFF, RESOLVED
from analytics.rollups import Mean, histogram_percentile, tally
from switchboard.storage.models import as_utc

TOP_INTENTS = 10


@dataclass
class Aggregates:
    since: datetime
    until: datetime
    calls: int
    analysed: int
    calls_per_hour: list[dict[str, Any]] = field(default_factory=list)
    calls_per_day: list[dict[str, Any]] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)
    containment_rate: float | None = None
    handoff_rate: float | None = None
    abandon_rate: float | None = None
    failure_rate: float | None = None
    fallback_rate: float | None = None
    average_handle_time_s: float | None = None
    queued_calls: int = 0
    queue_abandon_rate: float | None = None
    average_queue_wait_s: float | None = None
    average_agent_handle_s: float | None = None
    top_intents: list[dict[str, Any]] = field(default_factory=list)
    sentiment_trend: list[dict[str, Any]] = field(default_factory=list)
    response_ms_p50: float | None = None
    response_ms_p95: float | None = None
    bot_turns_timed: int = 0

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["since"] = self.since.isoformat()
        data["until"] = self.until.isoformat()
        return data


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def compute_aggregates(sessions: sessionmaker[Session], *, since: datetime,
                       until: datetime) -> Aggregates:
    """The figures of the calls started in ``[since, until)`` (times are taken as UTC):
    whole hours from the worker's rollups where it has rolled them, the rest from the
    calls (see ``analytics/rollups.py``)."""
    since, until = as_utc(since), as_utc(until)
    with sessions() as session:
        counted = tally(session, since, until)
    figures = Aggregates(since=since, until=until, calls=counted.calls,
                         analysed=counted.analysed)
    figures.calls_per_hour = [{"bucket": hour, "calls": n}
                              for hour, n in sorted(counted.calls_per_hour.items()) if n]
    per_day: Counter[str] = Counter()
    for hour, n in counted.calls_per_hour.items():
        per_day[hour[:10]] += n
    figures.calls_per_day = [{"bucket": day, "calls": n}
                             for day, n in sorted(per_day.items()) if n]
    figures.outcomes = {outcome: n for outcome, n in sorted(counted.outcomes.items()) if n}
    n = figures.analysed
    figures.containment_rate = _rate(counted.outcomes[RESOLVED], n)
    figures.handoff_rate = _rate(counted.outcomes[HANDED_OFF], n)
    figures.abandon_rate = _rate(counted.outcomes[ABANDONED], n)
    figures.failure_rate = _rate(counted.outcomes[FAILED], n)
    figures.fallback_rate = _rate(counted.with_fallback, n)
    figures.average_handle_time_s = counted.duration_s.value(1)
    figures.queued_calls = counted.queued
    figures.queue_abandon_rate = _rate(counted.queue_abandoned, counted.queued)
    figures.average_queue_wait_s = counted.queue_wait_s.value(1)
    figures.average_agent_handle_s = counted.agent_handle_s.value(1)
    sentiment_per_day: dict[str, Mean] = {}
    for hour, mean in counted.sentiment_per_hour.items():
        sentiment_per_day.setdefault(hour[:10], Mean()).add(mean.total, mean.count)
    figures.sentiment_trend = [
        {"day": day, "sentiment": mean.value(4), "calls": mean.count}
        for day, mean in sorted(sentiment_per_day.items()) if mean.count]
    ranked = sorted(counted.intents.items(), key=lambda item: (-item[1], item[0]))
    figures.top_intents = [{"intent": intent, "turns": turns}
                           for intent, turns in ranked[:TOP_INTENTS] if turns]
    figures.response_ms_p50 = histogram_percentile(counted.response_ms, 50)
    figures.response_ms_p95 = histogram_percentile(counted.response_ms, 95)
    figures.bot_turns_timed = sum(counted.response_ms.values())
    return figures
