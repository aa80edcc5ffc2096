"""Aggregate figures over the calls started in a time range, for the console and the CLI.

Counts and averages are SQL (SQLAlchemy 2) that run on SQLite and PostgreSQL alike; the
only dialect-specific parts are the hour/day buckets and the percentiles (PostgreSQL's
``percentile_cont``; on SQLite the values are read and interpolated the same way).

Rates are shares of the *analysed* calls in the range:
``containment_rate`` = resolved by the bot alone, ``handoff_rate`` = handed to an agent,
``abandon_rate`` = caller hung up or went silent, ``failure_rate`` = something broke,
``fallback_rate`` = calls in which the bot failed to understand the caller at least once.
The agents' desk: ``queued_calls`` waited in the handoff queue, ``queue_abandon_rate`` =
their callers hung up while waiting, ``average_queue_wait_s`` = time waited,
``average_agent_handle_s`` = time agents had the calls they took.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, func, select
from sqlalchemy.orm import Session, sessionmaker

from analytics.analysis import ABANDONED, FAILED, HANDED_OFF, RESOLVED, percentile
from switchboard.storage.models import Call, CallAnalysis, Turn, as_utc

TOP_INTENTS = 10
BUCKET_FORMATS = {  # (SQLite strftime, PostgreSQL to_char); both give the same text
    "hour": ("%Y-%m-%d %H:00", "YYYY-MM-DD HH24:00"),
    "day": ("%Y-%m-%d", "YYYY-MM-DD"),
}


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


def _bucket(dialect: str, column: Any, size: str) -> ColumnElement[str]:
    sqlite_format, pg_format = BUCKET_FORMATS[size]
    if dialect == "postgresql":
        return func.to_char(func.timezone("UTC", column), pg_format)
    return func.strftime(sqlite_format, column)


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _percentiles(session: Session, dialect: str, query: Select[Any]) -> tuple[
        float | None, float | None, int]:
    values = query.subquery()
    column = values.c.response_ms
    if dialect == "postgresql":
        p50, p95, n = session.execute(select(
            func.percentile_cont(0.5).within_group(column),
            func.percentile_cont(0.95).within_group(column),
            func.count(column),
        )).one()
        return (round(float(p50), 1) if p50 is not None else None,
                round(float(p95), 1) if p95 is not None else None, int(n))
    found = [float(v) for v in session.scalars(select(column))]
    return percentile(found, 50), percentile(found, 95), len(found)


def compute_aggregates(sessions: sessionmaker[Session], *, since: datetime,
                       until: datetime) -> Aggregates:
    """The figures of the calls started in ``[since, until)`` (times are taken as UTC)."""
    since, until = as_utc(since), as_utc(until)
    in_range = (Call.started_at >= since, Call.started_at < until)
    with sessions() as session:
        dialect = session.get_bind().dialect.name
        total = session.scalar(select(func.count(Call.id)).where(*in_range)) or 0
        figures = Aggregates(since=since, until=until, calls=total, analysed=0)

        for size, target in (("hour", figures.calls_per_hour), ("day", figures.calls_per_day)):
            bucket = _bucket(dialect, Call.started_at, size).label("bucket")
            rows = session.execute(
                select(bucket, func.count(Call.id)).where(*in_range)
                .group_by(bucket).order_by(bucket)
            )
            target.extend({"bucket": b, "calls": n} for b, n in rows)

        analysed = select(CallAnalysis).join(Call, Call.id == CallAnalysis.call_id).where(
            *in_range)
        outcomes = session.execute(
            analysed.with_only_columns(CallAnalysis.outcome, func.count(CallAnalysis.id))
            .group_by(CallAnalysis.outcome)
        )
        figures.outcomes = {outcome: n for outcome, n in outcomes}
        figures.analysed = n = sum(figures.outcomes.values())
        figures.containment_rate = _rate(figures.outcomes.get(RESOLVED, 0), n)
        figures.handoff_rate = _rate(figures.outcomes.get(HANDED_OFF, 0), n)
        figures.abandon_rate = _rate(figures.outcomes.get(ABANDONED, 0), n)
        figures.failure_rate = _rate(figures.outcomes.get(FAILED, 0), n)
        with_fallback = session.scalar(
            analysed.with_only_columns(func.count(CallAnalysis.id))
            .where(CallAnalysis.fallbacks > 0)
        ) or 0
        figures.fallback_rate = _rate(with_fallback, n)
        aht = session.scalar(analysed.with_only_columns(func.avg(CallAnalysis.duration_s)))
        figures.average_handle_time_s = round(float(aht), 1) if aht is not None else None
        queued, abandoned, wait, handle = session.execute(analysed.with_only_columns(
            func.count(CallAnalysis.queue_outcome),
            func.count(CallAnalysis.id).filter(CallAnalysis.queue_outcome == "abandoned"),
            func.avg(CallAnalysis.queue_wait_s), func.avg(CallAnalysis.agent_handle_s))).one()
        figures.queued_calls = int(queued or 0)
        figures.queue_abandon_rate = _rate(int(abandoned or 0), figures.queued_calls)
        figures.average_queue_wait_s = round(float(wait), 1) if wait is not None else None
        figures.average_agent_handle_s = round(float(handle), 1) if handle is not None else None

        day = _bucket(dialect, Call.started_at, "day").label("day")
        trend = session.execute(
            analysed.with_only_columns(day, func.avg(CallAnalysis.sentiment),
                                       func.count(CallAnalysis.sentiment))
            .where(CallAnalysis.sentiment.is_not(None)).group_by(day).order_by(day)
        )
        figures.sentiment_trend = [
            {"day": d, "sentiment": round(float(avg), 4), "calls": count}
            for d, avg, count in trend
        ]

        turns_in_range = select(Turn).join(Call, Call.id == Turn.call_id).where(*in_range)
        intents = session.execute(
            turns_in_range.with_only_columns(Turn.intent, func.count(Turn.id).label("n"))
            .where(Turn.speaker == "caller", Turn.intent.is_not(None))
            .group_by(Turn.intent).order_by(func.count(Turn.id).desc(), Turn.intent)
            .limit(TOP_INTENTS)
        )
        figures.top_intents = [{"intent": i, "turns": count} for i, count in intents]

        (figures.response_ms_p50, figures.response_ms_p95,
         figures.bot_turns_timed) = _percentiles(
            session, dialect,
            turns_in_range.with_only_columns(Turn.response_ms)
            .where(Turn.speaker == "bot", Turn.response_ms.is_not(None)),
        )
    return figures
