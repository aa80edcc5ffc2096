"""Jinja filters of the console's pages: times, durations and milliseconds."""

from __future__ import annotations

from datetime import datetime

from fastapi.templating import Jinja2Templates

from switchboard.storage.models import as_utc


def when(moment: datetime | None) -> str:
    """UTC, to the second: ``2026-11-21 13:42:07``."""
    return "–" if moment is None else as_utc(moment).strftime("%Y-%m-%d %H:%M:%S")


def clock(moment: datetime | None) -> str:
    return "" if moment is None else as_utc(moment).strftime("%H:%M:%S.%f")[:-3]


def seconds(value: float | None) -> str:
    if value is None:
        return "–"
    total = round(value)
    if total < 60:
        return f"{value:.1f} s"
    return f"{total // 60} min {total % 60:02d} s"


def ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f} ms"


def percent(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.0f} %"


def add_filters(templates: Jinja2Templates) -> None:
    templates.env.filters.update(when=when, clock=clock, seconds=seconds, ms=ms,
                                 percent=percent)
