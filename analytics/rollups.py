"""Hourly rollups of the calls, kept by the analytics worker, so that figures over days and
weeks read a few hundred rows instead of every call, turn and analysis.

An hour's rollup is recomputed from its calls, never incremented: rolling an hour twice, or
after a call is analysed again, gives the same rows. The worker rolls a call's hour after
storing its analysis, and the hours of the last two days that no analysis touched (hours
without calls, hours rolled while they were still running); its start-up sweep rolls every
hour that was never rolled. :func:`tally` reads the hours rolled after they closed from the
rollups and everything else (a range's partial first and last hours, the hour now running,
hours not rolled yet) from the calls, and adds the two: the figures are the same either way.

Response times are kept as a histogram of 10 ms buckets (the percentiles are those of the
times rounded to 10 ms, interpolated as PostgreSQL's ``percentile_cont``).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, func, insert, or_, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from switchboard.storage.models import (
    Call,
    CallAnalysis,
    HourCount,
    HourRollup,
    Turn,
    as_utc,
    utcnow,
)

log = logging.getLogger(__name__)

HOUR = timedelta(hours=1)
RESPONSE_BUCKET_MS = 10
RECENT = timedelta(days=2)
"""How far back each analysis makes sure every closed hour is rolled."""
ROLL_ATTEMPTS = 3
CLOSE_MARGIN = timedelta(minutes=1)
"""An hour's rollup counts as final when its figures were read this long after it ended
(calls stored a moment late, clocks of the nodes and the worker a little apart)."""
EMPTY_BATCH = 2000
HOUR_KEY = "%Y-%m-%d %H:00"


def floor_hour(moment: datetime) -> datetime:
    return as_utc(moment).replace(minute=0, second=0, microsecond=0)


def ceil_hour(moment: datetime) -> datetime:
    """The hour ``moment`` starts or the next one (the calendar's last hour at its end)."""
    floor = floor_hour(moment)
    if floor == as_utc(moment) or floor.replace(tzinfo=None) > datetime.max - HOUR:
        return floor
    return floor + HOUR


@dataclass
class Mean:
    total: float = 0.0
    count: int = 0

    def add(self, total: float | None, count: float | None) -> None:
        self.total += float(total or 0.0)
        self.count += int(count or 0)

    def value(self, digits: int) -> float | None:
        return round(self.total / self.count, digits) if self.count else None


@dataclass
class Tally:
    """What the figures of a time range are made of; tallies of disjoint times add up."""

    calls_per_hour: Counter[str] = field(default_factory=Counter)
    """``"YYYY-MM-DD HH:00"`` (UTC) → calls started in that hour."""
    outcomes: Counter[str] = field(default_factory=Counter)
    with_fallback: int = 0
    duration_s: Mean = field(default_factory=Mean)
    queued: int = 0
    queue_abandoned: int = 0
    queue_wait_s: Mean = field(default_factory=Mean)
    agent_handle_s: Mean = field(default_factory=Mean)
    sentiment_per_hour: dict[str, Mean] = field(default_factory=dict)
    intents: Counter[str] = field(default_factory=Counter)
    """Caller turns per intent."""
    response_ms: Counter[float] = field(default_factory=Counter)
    """Bot turns' response times, rounded to ``RESPONSE_BUCKET_MS``, → turns."""

    @property
    def calls(self) -> int:
        return sum(self.calls_per_hour.values())

    @property
    def analysed(self) -> int:
        return sum(self.outcomes.values())

    def add(self, other: Tally) -> None:
        self.calls_per_hour.update(other.calls_per_hour)
        self.outcomes.update(other.outcomes)
        self.with_fallback += other.with_fallback
        for mine, theirs in ((self.duration_s, other.duration_s),
                             (self.queue_wait_s, other.queue_wait_s),
                             (self.agent_handle_s, other.agent_handle_s)):
            mine.add(theirs.total, theirs.count)
        self.queued += other.queued
        self.queue_abandoned += other.queue_abandoned
        for hour, mean in other.sentiment_per_hour.items():
            self.sentiment_per_hour.setdefault(hour, Mean()).add(mean.total, mean.count)
        self.intents.update(other.intents)
        self.response_ms.update(other.response_ms)


def histogram_percentile(counts: Mapping[float, int], q: float) -> float | None:
    """The ``q``-th percentile of the values ``counts`` holds (value → how many), with
    linear interpolation between ranks as ``percentile_cont``."""
    items = sorted((value, n) for value, n in counts.items() if n > 0)
    total = sum(n for _, n in items)
    if not total:
        return None
    rank = q / 100 * (total - 1)
    low = math.floor(rank)

    def at(index: int) -> float:
        seen = 0
        for value, n in items:
            seen += n
            if index < seen:
                return float(value)
        return float(items[-1][0])

    below = at(low)
    fraction = rank - low
    value = below if fraction == 0 else below + fraction * (at(low + 1) - below)
    return round(value, 1)


# ---------------------------------------------------------------------- from the calls


def _hour_bucket(dialect: str, column: Any) -> ColumnElement[str]:
    if dialect == "postgresql":
        return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD HH24:00")
    return func.strftime(HOUR_KEY, column)


def raw_tally(session: Session, windows: list[tuple[datetime, datetime]]) -> Tally:
    """The tally of the calls started in the ``windows`` (``[start, end)`` each), read
    from the calls, their analyses and turns."""
    tally = Tally()
    if not windows:
        return tally
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":  # a few partial hours: index lookups, not parallel scans
        session.execute(text("SET LOCAL max_parallel_workers_per_gather = 0"))
    in_windows = or_(*(and_(Call.started_at >= start, Call.started_at < end)
                       for start, end in windows))
    hour = _hour_bucket(dialect, Call.started_at).label("hour")
    tally.calls_per_hour.update({h: n for h, n in session.execute(
        select(hour, func.count(Call.id)).where(in_windows).group_by(hour))})

    analysed = select(CallAnalysis).join(Call, Call.id == CallAnalysis.call_id).where(
        in_windows)
    tally.outcomes.update({o: n for o, n in session.execute(
        analysed.with_only_columns(CallAnalysis.outcome, func.count(CallAnalysis.id))
        .group_by(CallAnalysis.outcome))})
    (fallbacks, duration, durations, queued, abandoned, wait, waits, handle,
     handles) = session.execute(analysed.with_only_columns(
         func.count(CallAnalysis.id).filter(CallAnalysis.fallbacks > 0),
         func.sum(CallAnalysis.duration_s), func.count(CallAnalysis.duration_s),
         func.count(CallAnalysis.queue_outcome),
         func.count(CallAnalysis.id).filter(CallAnalysis.queue_outcome == "abandoned"),
         func.sum(CallAnalysis.queue_wait_s), func.count(CallAnalysis.queue_wait_s),
         func.sum(CallAnalysis.agent_handle_s), func.count(CallAnalysis.agent_handle_s),
     )).one()
    tally.with_fallback = int(fallbacks or 0)
    tally.duration_s.add(duration, durations)
    tally.queued, tally.queue_abandoned = int(queued or 0), int(abandoned or 0)
    tally.queue_wait_s.add(wait, waits)
    tally.agent_handle_s.add(handle, handles)
    for h, total, count in session.execute(
            analysed.with_only_columns(hour, func.sum(CallAnalysis.sentiment),
                                       func.count(CallAnalysis.sentiment))
            .where(CallAnalysis.sentiment.is_not(None)).group_by(hour)):
        tally.sentiment_per_hour.setdefault(h, Mean()).add(total, count)

    turns = select(Turn).join(Call, Call.id == Turn.call_id).where(in_windows)
    tally.intents.update({i: n for i, n in session.execute(
        turns.with_only_columns(Turn.intent, func.count(Turn.id))
        .where(Turn.speaker == "caller", Turn.intent.is_not(None)).group_by(Turn.intent))
        if i})
    bucket = (func.round(Turn.response_ms / RESPONSE_BUCKET_MS) * RESPONSE_BUCKET_MS
              ).label("bucket")
    tally.response_ms.update({float(b): n for b, n in session.execute(
        turns.with_only_columns(bucket, func.count(Turn.id))
        .where(Turn.speaker == "bot", Turn.response_ms.is_not(None)).group_by(bucket))})
    return tally


# ---------------------------------------------------------------------- the rollups


def _rolled_tally(session: Session, first: datetime, last: datetime
                  ) -> tuple[Tally, set[datetime]]:
    """The tally of the hours in ``[first, last)`` rolled after they closed, and which
    (summed by the database: a month is one row per hour and a few dozen sums)."""
    tally = Tally()
    rolled: set[datetime] = set()
    if first >= last:
        return tally, rolled
    closed = (HourRollup.hour >= first, HourRollup.hour < last, HourRollup.closed)
    for hour, calls, sentiment, sentiments in session.execute(select(
            HourRollup.hour, HourRollup.calls, HourRollup.sentiment_sum,
            HourRollup.sentiment_n).where(*closed)):
        hour = as_utc(hour)
        rolled.add(hour)
        key = hour.strftime(HOUR_KEY)
        if calls:
            tally.calls_per_hour[key] += calls
        if sentiments:
            tally.sentiment_per_hour.setdefault(key, Mean()).add(sentiment, sentiments)
    if not rolled:
        return tally, rolled
    # the hours read above, whatever was rolled since (else an hour closed meanwhile
    # would be summed here and read from the calls too)
    these = HourRollup.hour.in_(sorted(rolled))
    sums = session.execute(select(*(func.sum(column) for column in (
        HourRollup.with_fallback, HourRollup.duration_sum, HourRollup.duration_n,
        HourRollup.queued, HourRollup.queue_abandoned, HourRollup.queue_wait_sum,
        HourRollup.queue_wait_n, HourRollup.agent_handle_sum, HourRollup.agent_handle_n,
    ))).where(these)).one()
    tally.with_fallback = int(sums[0] or 0)
    tally.duration_s.add(sums[1], sums[2])
    tally.queued, tally.queue_abandoned = int(sums[3] or 0), int(sums[4] or 0)
    tally.queue_wait_s.add(sums[5], sums[6])
    tally.agent_handle_s.add(sums[7], sums[8])
    counts = session.execute(
        select(HourCount.kind, HourCount.key, func.sum(HourCount.n))
        .where(HourCount.hour.in_(sorted(rolled)))
        .group_by(HourCount.kind, HourCount.key))
    targets: dict[str, Counter[Any]] = {"outcome": tally.outcomes, "intent": tally.intents}
    for kind, key, n in counts:
        if kind == "response_ms":
            tally.response_ms[float(key)] += int(n)
        else:
            targets[kind][key] += int(n)
    return tally, rolled


def _windows(since: datetime, until: datetime, rolled: set[datetime]
             ) -> list[tuple[datetime, datetime]]:
    """``[since, until)`` less the rolled hours, as few windows as it takes."""
    windows: list[tuple[datetime, datetime]] = []
    start = since
    for hour in sorted(h for h in rolled if since <= h and h + HOUR <= until):
        if start < hour:  # (the rolled hours, not every hour: ranges may span years)
            windows.append((start, hour))
        start = hour + HOUR
    if start < until:
        windows.append((start, until))
    return windows


def tally(session: Session, since: datetime, until: datetime) -> Tally:
    """The tally of the calls started in ``[since, until)``: rolled hours from the
    rollups, the rest from the calls."""
    since, until = as_utc(since), as_utc(until)
    total, rolled = _rolled_tally(session, ceil_hour(since), floor_hour(until))
    total.add(raw_tally(session, _windows(since, until, rolled)))
    return total


def _rows(hour: datetime, part: Tally, now: datetime) -> tuple[dict[str, Any],
                                                            list[dict[str, Any]]]:
    sentiment = Mean()
    for mean in part.sentiment_per_hour.values():
        sentiment.add(mean.total, mean.count)
    row = {"hour": hour, "rolled_at": now, "closed": now >= hour + HOUR + CLOSE_MARGIN,
           "calls": part.calls,
           "analysed": part.analysed, "with_fallback": part.with_fallback,
           "duration_sum": part.duration_s.total, "duration_n": part.duration_s.count,
           "queued": part.queued, "queue_abandoned": part.queue_abandoned,
           "queue_wait_sum": part.queue_wait_s.total, "queue_wait_n": part.queue_wait_s.count,
           "agent_handle_sum": part.agent_handle_s.total,
           "agent_handle_n": part.agent_handle_s.count,
           "sentiment_sum": sentiment.total, "sentiment_n": sentiment.count}
    counts = [{"hour": hour, "kind": kind, "key": str(key), "n": n}
              for kind, counter in (("outcome", part.outcomes), ("intent", part.intents),
                                    ("response_ms", part.response_ms))
              for key, n in counter.items() if n]
    return row, counts


def _hours_with_calls(session: Session, hours: list[datetime]) -> set[datetime]:
    """Which of ``hours`` (sorted) have calls: one query per run of consecutive hours (a
    call's old hour and the recent ones are two, not a scan of everything between)."""
    dialect = session.get_bind().dialect.name
    bucket = _hour_bucket(dialect, Call.started_at)
    runs: list[list[datetime]] = []
    for hour in hours:
        if runs and runs[-1][-1] + HOUR == hour:
            runs[-1].append(hour)
        else:
            runs.append([hour])
    found: set[datetime] = set()
    for run in runs:
        found.update(datetime.strptime(h, HOUR_KEY).replace(tzinfo=UTC)
                     for h in session.scalars(select(bucket).where(
                         Call.started_at >= run[0], Call.started_at < run[-1] + HOUR)
                         .distinct()))
    return found


def _clear(session: Session, hours: list[datetime]) -> None:
    """Delete the hours' rollups first, so that a worker rolling one of them meanwhile
    waits for this transaction (its rows are locked) and then fails on the insert and
    rolls it again, instead of overwriting newer figures with older ones."""
    session.execute(delete(HourCount).where(HourCount.hour.in_(hours)))
    session.execute(delete(HourRollup).where(HourRollup.hour.in_(hours)))


def _insert(session: Session, rows: list[dict[str, Any]],
            counts: list[dict[str, Any]]) -> None:
    session.execute(insert(HourRollup), rows)
    if counts:
        session.execute(insert(HourCount), counts)


def roll_hours(sessions: sessionmaker[Session], hours: Iterable[datetime]) -> int:
    """Recompute the rollups of ``hours`` (each floored to its hour) from their calls;
    returns how many were rolled. Hours without calls are written in batches, the others
    one by one. Two workers rolling one hour at once: the loser recomputes it."""
    wanted = sorted({floor_hour(h) for h in hours})
    if not wanted:
        return 0
    with sessions() as session:
        busy = _hours_with_calls(session, wanted)
    now = utcnow()
    empty = [h for h in wanted if h not in busy]
    for start in range(0, len(empty), EMPTY_BATCH):
        def store_empty(session: Session, batch: list[datetime] = empty[
                start : start + EMPTY_BATCH]) -> None:
            _clear(session, batch)
            _insert(session, [_rows(h, Tally(), now)[0] for h in batch], [])
        _attempts(sessions, store_empty)
    for hour in (h for h in wanted if h in busy):
        def roll(session: Session, hour: datetime = hour) -> None:
            read_at = utcnow()  # before the read: "closed" means read after the hour
            _clear(session, [hour])
            row, counts = _rows(hour, raw_tally(session, [(hour, hour + HOUR)]), read_at)
            _insert(session, [row], counts)
        _attempts(sessions, roll)
    return len(wanted)


def _attempts(sessions: sessionmaker[Session], work: Callable[[Session], None]) -> None:
    for attempt in range(ROLL_ATTEMPTS):
        try:
            with sessions.begin() as session:
                work(session)
            return
        except IntegrityError:
            if attempt == ROLL_ATTEMPTS - 1:
                raise
            log.info("an hour was rolled by another worker meanwhile; rolling it again")


def hours_to_roll(sessions: sessionmaker[Session], *, since: datetime | None = None,
                  now: datetime | None = None) -> list[datetime]:
    """The closed hours from ``since`` (default: the first call's) to now that were never
    rolled after they closed."""
    now = as_utc(now or utcnow())
    with sessions() as session:
        if since is None:
            first = session.scalar(select(func.min(Call.started_at)))
            if first is None:
                return []
            since = first
        start, end = floor_hour(since), floor_hour(now - CLOSE_MARGIN)
        done = {as_utc(h) for h in session.scalars(select(HourRollup.hour).where(
            HourRollup.hour >= start, HourRollup.hour < end, HourRollup.closed))}
    hours, hour = [], start
    while hour < end:
        if hour not in done:
            hours.append(hour)
        hour += HOUR
    return hours


def roll_after_analysis(sessions: sessionmaker[Session], started_at: datetime) -> int:
    """After a call's analysis: its hour, and the recent closed hours not rolled yet."""
    now = utcnow()
    return roll_hours(sessions, [started_at, *hours_to_roll(sessions, since=now - RECENT,
                                                             now=now)])


def roll_missing(sessions: sessionmaker[Session]) -> int:
    """Every closed hour never rolled after it closed (the worker's start-up sweep, a
    database that had calls before the rollups existed)."""
    return roll_hours(sessions, hours_to_roll(sessions))
