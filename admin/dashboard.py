"""The console's dashboard: the aggregates of a time range, with charts (server-side SVG).

The range comes from the query string: ``range=24h|7d|30d`` (the default is ``7d``) or
custom dates ``since=YYYY-MM-DD`` and/or ``until=YYYY-MM-DD`` (both inclusive, UTC). Bad
input never fails the page: it shows what was wrong (status 400) and the default range.
The route is a plain ``def`` so its database work runs in the thread pool, not on the
event loop that also carries the live WebRTC calls.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from markupsafe import Markup

from admin import charts
from admin.accounts import SessionView
from admin.load import heavy
from admin.security import console_of, ensure_allowed, page_session
from admin.templating import percent, seconds
from analytics.aggregates import Aggregates, compute_aggregates
from analytics.analysis import ABANDONED, FAILED, HANDED_OFF, IN_PROGRESS, RESOLVED, UNKNOWN

router = APIRouter()

PRESETS: dict[str, str] = {"24h": "Last 24 hours", "7d": "Last 7 days", "30d": "Last 30 days"}
DEFAULT_RANGE = "7d"
MAX_DAYS = 366
HOURLY_UP_TO = timedelta(days=2)
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")

OUTCOME_ORDER = (RESOLVED, HANDED_OFF, ABANDONED, FAILED, IN_PROGRESS, UNKNOWN)
OUTCOME_LABELS = {RESOLVED: "Resolved", HANDED_OFF: "Handed off", ABANDONED: "Abandoned",
                  FAILED: "Failed", IN_PROGRESS: "In progress", UNKNOWN: "Unknown"}
OUTCOME_COLORS = {RESOLVED: charts.GREEN, HANDED_OFF: charts.BLUE, ABANDONED: charts.GREY,
                  FAILED: charts.RED, IN_PROGRESS: charts.AMBER, UNKNOWN: "#cbd5e0"}


class RangeError(ValueError):
    """The query string's range cannot be used; the message says why, for the page."""


@dataclass(frozen=True)
class TimeRange:
    """``[since, until)`` in UTC, and how the page names it."""

    key: str  # a PRESETS key, or "custom"
    since: datetime
    until: datetime

    @property
    def first_day(self) -> date:
        return self.since.date()

    @property
    def last_day(self) -> date:
        """The last day the range touches (``until`` is exclusive)."""
        return (self.until - timedelta(microseconds=1)).date()

    @property
    def hourly(self) -> bool:
        return self.until - self.since <= HOURLY_UP_TO

    @property
    def title(self) -> str:
        return PRESETS.get(self.key, "Custom range")

    @property
    def span(self) -> str:
        if self.hourly and self.key == "24h":
            return (f"{_day(self.since)} {self.since:%H:%M} – "
                    f"{_day(self.until)} {self.until:%H:%M} UTC")
        if self.first_day == self.last_day:
            return f"{_day(self.first_day)}, {self.first_day.year} (UTC)"
        return (f"{_day(self.first_day)}, {self.first_day.year} – "
                f"{_day(self.last_day)}, {self.last_day.year} (UTC)")


def _day(moment: date) -> str:
    """``Mar 2`` (``%-d`` is not portable)."""
    return f"{moment:%b} {moment.day}"


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


def preset_range(key: str, now: datetime) -> TimeRange:
    """``24h``: the 24 whole hours up to and including the current one; ``7d``/``30d``:
    the days up to and including today."""
    now = now.astimezone(UTC)
    if key == "24h":
        end = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        return TimeRange(key, end - timedelta(hours=24), end)
    days = {"7d": 7, "30d": 30}[key]
    tomorrow = _midnight(now.date()) + timedelta(days=1)
    return TimeRange(key, tomorrow - timedelta(days=days), tomorrow)


def _clipped(text: str, chars: int = 40) -> str:
    return text if len(text) <= chars else text[: chars - 1] + "…"


def _parse_day(text: str, name: str) -> date:
    try:
        if not _DATE.fullmatch(text):
            raise ValueError(text)
        return date.fromisoformat(text)
    except ValueError:
        raise RangeError(f"The {name} date '{_clipped(text)}' is not a date: use YYYY-MM-DD, "
                         f"e.g. 2026-03-02.") from None


def parse_range(key: str, since: str, until: str, now: datetime) -> TimeRange:
    """The range the query string asks for; :class:`RangeError` if it cannot be used.
    Dates are inclusive days (UTC); a missing ``until`` is today, a missing ``since`` the
    sixth day before ``until``."""
    key, since, until = key.strip(), since.strip(), until.strip()
    if key and key != "custom" and key not in PRESETS:
        choices = ", ".join(PRESETS)
        raise RangeError(f"Unknown range '{_clipped(key)}': choose {choices}, or dates.")
    if not since and not until:
        return preset_range(key if key in PRESETS else DEFAULT_RANGE, now)
    today = now.astimezone(UTC).date()
    try:
        last = _parse_day(until, "to") if until else today
        first = _parse_day(since, "from") if since else last - timedelta(days=6)
        if first > last:
            raise RangeError(f"The from date ({first}) is after the to date ({last}).")
        days = (last - first).days + 1
        if days > MAX_DAYS:
            raise RangeError(f"That range is {days} days long; the dashboard shows at most "
                             f"{MAX_DAYS} days at a time.")
        return TimeRange("custom", _midnight(first), _midnight(last) + timedelta(days=1))
    except OverflowError:
        raise RangeError("Those dates are out of range.") from None


# --- links into the calls list -------------------------------------------------------------
def calls_link(time_range: TimeRange | None = None, *, first: date | None = None,
               last: date | None = None, **filters: str) -> str:
    """``/calls?…`` for the days of the range (or ``first``..``last``) and ``filters``."""
    params: dict[str, str] = {}
    if time_range is not None:
        first, last = time_range.first_day, time_range.last_day
    if first is not None:
        params["since"] = first.isoformat()
    if last is not None:
        params["until"] = last.isoformat()
    params.update({k: v for k, v in filters.items() if v})
    return "/calls?" + urlencode(params) if params else "/calls"


# --- chart data ----------------------------------------------------------------------------
def _slots(time_range: TimeRange) -> list[datetime]:
    step = timedelta(hours=1) if time_range.hourly else timedelta(days=1)
    moment = (time_range.since.replace(minute=0, second=0, microsecond=0)
              if time_range.hourly else _midnight(time_range.first_day))
    slots = []
    while moment < time_range.until:
        slots.append(moment)
        moment += step
    return slots


def calls_chart(figures: Aggregates, time_range: TimeRange) -> Markup:
    """Calls per hour (ranges up to two days) or per day, every slot of the range shown."""
    if time_range.hourly:
        counts = {row["bucket"]: int(row["calls"]) for row in figures.calls_per_hour}
        bars = []
        for slot in _slots(time_range):
            n = counts.get(f"{slot:%Y-%m-%d %H:00}", 0)
            bars.append(charts.Bar(
                label=f"{slot:%H:00}", group=_day(slot), value=n,
                title=f"{slot:%a} {_day(slot)}, {slot:%H:00}–"
                      f"{slot + timedelta(hours=1):%H:00} UTC: {n} call{'s' if n != 1 else ''}",
                href=calls_link(first=slot.date(), last=slot.date())))
        title = "Calls per hour (UTC)"
    else:
        counts = {row["bucket"]: int(row["calls"]) for row in figures.calls_per_day}
        bars = []
        for slot in _slots(time_range):
            n = counts.get(f"{slot:%Y-%m-%d}", 0)
            bars.append(charts.Bar(
                label=_day(slot), group=f"{slot:%Y}", value=n,
                title=f"{slot:%a} {_day(slot)}, {slot:%Y}: {n} call{'s' if n != 1 else ''}",
                href=calls_link(first=slot.date(), last=slot.date())))
        title = "Calls per day (UTC)"
    return charts.bar_chart(bars, title=f"{title}, {time_range.span}")


def outcomes_chart(figures: Aggregates, time_range: TimeRange) -> Markup:
    known = [o for o in OUTCOME_ORDER if figures.outcomes.get(o)]
    others = sorted(o for o in figures.outcomes if o not in OUTCOME_ORDER and figures.outcomes[o])
    bars = []
    for outcome in [*known, *others]:
        n = figures.outcomes[outcome]
        share = n / figures.analysed if figures.analysed else 0.0
        label = OUTCOME_LABELS.get(outcome, outcome)
        bars.append(charts.Bar(
            label=label, value=n, color=OUTCOME_COLORS.get(outcome),
            title=f"{label}: {n} call{'s' if n != 1 else ''} ({share:.0%} of analysed)",
            href=calls_link(time_range, outcome=outcome)))
    return charts.horizontal_bar_chart(
        bars, title="Outcomes of the analysed calls",
        empty_note=charts.NO_DATA if not figures.calls else "No analysed calls in this range")


def intents_chart(figures: Aggregates, time_range: TimeRange) -> Markup:
    bars = [charts.Bar(label=str(row["intent"]), value=int(row["turns"]),
                       title=f"{row['intent']}: {row['turns']} caller turns",
                       href=calls_link(time_range, intent=str(row["intent"])))
            for row in figures.top_intents]
    return charts.horizontal_bar_chart(
        bars, title="Top intents (caller turns)",
        empty_note=charts.NO_DATA if not figures.calls else "No recognised intents in this range")


def sentiment_chart(figures: Aggregates, time_range: TimeRange) -> Markup:
    """Average sentiment per day (-1..1), a point for each day with analysed calls."""
    by_day = {row["day"]: row for row in figures.sentiment_trend}
    days = [_midnight(time_range.first_day) + timedelta(days=i)
            for i in range((time_range.last_day - time_range.first_day).days + 1)]
    points = []
    for day in days:
        row = by_day.get(f"{day:%Y-%m-%d}")
        value = float(row["sentiment"]) if row else None
        calls = int(row["calls"]) if row else 0
        points.append(charts.Point(
            label=_day(day), group=f"{day:%Y}", value=value,
            title=(f"{day:%a} {_day(day)}, {day:%Y}: {value:+.2f} average over {calls} "
                   f"call{'s' if calls != 1 else ''}") if value is not None else "",
            href=calls_link(first=day.date(), last=day.date()) if row else None))
    return charts.line_chart(
        points, title="Average caller sentiment per day (−1 negative … +1 positive)",
        empty_note=charts.NO_DATA if not figures.calls else "No analysed calls in this range",
        height=200)


# --- figure tiles --------------------------------------------------------------------------
def _share(part: int, whole: int) -> str:
    return f"{part} of {whole} analysed" if whole else "no analysed calls"


def figure_tiles(figures: Aggregates, time_range: TimeRange) -> list[dict[str, Any]]:
    """The tiles at the top: id, value, label, note and link."""
    outcomes, analysed = figures.outcomes, figures.analysed
    pending = figures.calls - analysed
    analysed_note = (f"{pending:,} awaiting analysis" if pending > 0
                     else "all analysed" if figures.calls else "")
    p50, p95 = figures.response_ms_p50, figures.response_ms_p95
    latency = "–" if p50 is None or p95 is None else f"{p50:.0f} / {p95:.0f} ms"
    return [
        {"id": "figure-calls", "value": f"{figures.calls:,}", "label": "calls",
         "note": time_range.title.lower() if time_range.key != "custom" else "in this range",
         "href": calls_link(time_range)},
        {"id": "figure-analysed", "value": f"{analysed:,}", "label": "analysed",
         "note": analysed_note, "href": calls_link(time_range)},
        {"id": "figure-containment", "value": percent(figures.containment_rate),
         "label": "containment rate", "note": _share(outcomes.get(RESOLVED, 0), analysed),
         "href": calls_link(time_range, outcome=RESOLVED)},
        {"id": "figure-handoff", "value": percent(figures.handoff_rate), "label": "handoff rate",
         "note": _share(outcomes.get(HANDED_OFF, 0), analysed),
         "href": calls_link(time_range, outcome=HANDED_OFF)},
        {"id": "figure-fallback", "value": percent(figures.fallback_rate),
         "label": "fallback rate", "note": "calls with a misunderstood turn",
         "href": calls_link(time_range, intent="nlu_fallback")},
        {"id": "figure-abandon", "value": percent(figures.abandon_rate), "label": "abandon rate",
         "note": _share(outcomes.get(ABANDONED, 0), analysed),
         "href": calls_link(time_range, outcome=ABANDONED)},
        {"id": "figure-aht", "value": seconds(figures.average_handle_time_s),
         "label": "average handle time", "note": "per analysed call", "href": None},
        {"id": "figure-queue-wait", "value": seconds(figures.average_queue_wait_s),
         "label": "queue wait", "note": f"average of {figures.queued_calls:,} queued calls"
         if figures.queued_calls else "no call queued", "href": None},
        {"id": "figure-queue-abandon", "value": percent(figures.queue_abandon_rate),
         "label": "abandoned in queue", "note": "callers who hung up waiting", "href": None},
        {"id": "figure-agent-handle", "value": seconds(figures.average_agent_handle_s),
         "label": "agent handle time", "note": "per call an agent took", "href": None},
        {"id": "figure-latency", "value": latency, "label": "bot response p50 / p95",
         "note": f"voice to voice, {figures.bot_turns_timed:,} bot turns timed"
         if figures.bot_turns_timed else "no timed bot turns", "href": None},
    ]


def _range_links(current: TimeRange) -> list[dict[str, Any]]:
    return [{"key": key, "label": label, "href": f"/?range={key}", "active": current.key == key}
            for key, label in PRESETS.items()]


def dashboard_context(figures: Aggregates, time_range: TimeRange,
                      messages: Sequence[dict[str, str]] = ()) -> dict[str, Any]:
    return {
        "nav": "dashboard",
        "messages": list(messages),
        "figures": figures,
        "range": time_range,
        "ranges": _range_links(time_range),
        "tiles": figure_tiles(figures, time_range),
        "calls_href": calls_link(time_range),
        "chart_calls": calls_chart(figures, time_range),
        "chart_outcomes": outcomes_chart(figures, time_range),
        "chart_intents": intents_chart(figures, time_range),
        "chart_sentiment": sentiment_chart(figures, time_range),
    }


@router.get("/", include_in_schema=False)
async def dashboard(
    request: Request,
    view: SessionView = Depends(page_session),
    range_key: str = Query("", alias="range"),
    since: str = "",
    until: str = "",
) -> Response:
    return await heavy(_dashboard, request, view, range_key, since, until)


def _dashboard(request: Request, view: SessionView, range_key: str, since: str,
               until: str) -> Response:
    ensure_allowed(view.user, "dashboard")
    console = console_of(request)
    now = datetime.now(UTC)
    messages: list[dict[str, str]] = []
    status = 200
    try:
        time_range = parse_range(range_key, since, until, now)
    except RangeError as problem:
        messages.append({"kind": "error",
                         "text": f"{problem} Showing the {PRESETS[DEFAULT_RANGE].lower()}."})
        status = 400
        time_range = preset_range(DEFAULT_RANGE, now)
    figures = compute_aggregates(console.sessions, since=time_range.since,
                                 until=time_range.until)
    return console.render(request, "console/dashboard.html",
                          dashboard_context(figures, time_range, messages), status_code=status)
