"""The console's dashboard: figures and SVG charts of a range, the range picker and its
errors, and the chart functions on their own."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from html import unescape

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from admin import charts
from admin.accounts import UserView
from admin.dashboard import RangeError, parse_range, preset_range
from analytics.analysis import analyze
from switchboard.storage.repository import AnalysisRepository, CallRepository
from tests.admin.conftest import BASE_URL
from tests.analytics.calls import CallSpec, Said, order_call, store_call

ClientAs = Callable[[str], tuple[TestClient, UserView]]

DAY1 = datetime(2026, 3, 2, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)
TWO_DAYS = "/?since=2026-03-02&until=2026-03-03"
WEEK = "/?since=2026-03-01&until=2026-03-07"


def _analysed(sessions: sessionmaker[Session], spec: CallSpec) -> str:
    call_id = store_call(sessions, spec)
    call = CallRepository(sessions).get_call(call_id)
    assert call is not None
    AnalysisRepository(sessions).save(analyze(call).as_row())
    return call_id


def _broken(start: datetime, intent: str = "nlu_fallback") -> CallSpec:
    return CallSpec(
        start=start, length_s=12, reason="dialog_unavailable", status="failed", turns=[
            Said("bot", "Hello, how can I help?", 0, 2),
            Said("caller", "blorp", 3, 1, intent=intent),
            Said("bot", "Sorry, I'm having technical trouble.", 5, 3, response_ms=1500.0),
        ])


@pytest.fixture
def seeded(console_db: sessionmaker[Session]) -> sessionmaker[Session]:
    """Five calls on 2026-03-02/03 (four analysed: resolved, handed off, abandoned, failed)
    and one a week later, outside the ranges the tests ask for."""
    _analysed(console_db, order_call(DAY1 + timedelta(hours=9, minutes=15)))
    _analysed(console_db, order_call(DAY1 + timedelta(hours=9, minutes=40), reason="handoff"))
    _analysed(console_db, order_call(DAY1 + timedelta(hours=10, minutes=5),
                                     reason="caller_hangup"))
    _analysed(console_db, _broken(DAY2 + timedelta(hours=14)))
    store_call(console_db, order_call(DAY2 + timedelta(hours=15)))  # not analysed yet
    _analysed(console_db, order_call(DAY1 + timedelta(days=8)))
    return console_db


def _section(html: str, element_id: str) -> str:
    match = re.search(rf'<section class="card" id="{element_id}">(.*?)</section>', html, re.S)
    assert match, f"no #{element_id} on the page"
    return match.group(1)


def _figure(html: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}">\s*<(?:a|div) class="value"[^>]*>([^<]*)<', html)
    assert match, f"no #{element_id} on the page"
    return unescape(match.group(1)).strip()


def _bars(svg: str) -> int:
    return svg.count('<rect class="bar"')


def _errors(html: str) -> list[str]:
    return [unescape(m) for m in re.findall(r'<p class="flash error"[^>]*>(.*?)</p>', html, re.S)]


# --- the page ------------------------------------------------------------------------------
@pytest.mark.parametrize("role", ["admin", "supervisor", "agent"])
def test_every_role_sees_the_figures_of_a_range(client_as: ClientAs, seeded: object,
                                                role: str) -> None:
    client, _ = client_as(role)
    page = client.get(TWO_DAYS)
    assert page.status_code == 200, page.text
    html = page.text
    assert 'id="dashboard"' in html and not _errors(html)
    assert _figure(html, "figure-calls") == "5"
    assert _figure(html, "figure-analysed") == "4"
    assert _figure(html, "figure-containment") == "25 %"
    assert _figure(html, "figure-handoff") == "25 %"
    assert _figure(html, "figure-abandon") == "25 %"
    assert _figure(html, "figure-fallback") == "25 %"
    assert _figure(html, "figure-aht") == "25.5 s"  # (3 × 30 s + 12 s) / 4
    assert _figure(html, "figure-latency") == "700 / 1140 ms"
    assert "bot response p50 / p95" in html
    assert "1 awaiting analysis" in html
    assert "Custom range" in html and "Mar 2, 2026 – Mar 3, 2026" in html


def test_the_charts_have_a_bar_per_bucket_and_intent(client_as: ClientAs,
                                                     seeded: object) -> None:
    client, _ = client_as("agent")
    html = client.get(TWO_DAYS).text
    calls = _section(html, "chart-calls")
    assert "Calls per hour" in calls
    assert _bars(calls) == 4  # 09:00, 10:00 on Mar 2; 14:00, 15:00 on Mar 3
    assert 'aria-label="Calls per hour (UTC)' in calls and 'viewBox="0 0 ' in calls
    assert "<title>Mon Mar 2, 09:00–10:00 UTC: 2 calls</title>" in calls
    assert _bars(_section(html, "chart-outcomes")) == 4
    intents = _section(html, "chart-intents")
    assert _bars(intents) == 4
    assert 'href="/calls?since=2026-03-02&amp;until=2026-03-03&amp;intent=check_order"' \
        in intents
    outcomes = _section(html, "chart-outcomes")
    assert 'href="/calls?since=2026-03-02&amp;until=2026-03-03&amp;outcome=handed_off"' \
        in outcomes
    sentiment = _section(html, "chart-sentiment")
    assert sentiment.count('<circle class="point"') == 2
    assert 'class="zero"' in sentiment and '<polyline class="line"' in sentiment
    assert 'href="/calls?since=2026-03-02&amp;until=2026-03-03&amp;outcome=resolved"' in html


def test_a_longer_range_counts_per_day(client_as: ClientAs, seeded: object) -> None:
    client, _ = client_as("supervisor")
    html = client.get(WEEK).text
    calls = _section(html, "chart-calls")
    assert "Calls per day" in calls and _bars(calls) == 2
    assert calls.count('<text class="axis" x=') >= 7  # 7 day labels plus the y ticks
    assert 'href="/calls?since=2026-03-03&amp;until=2026-03-03"' in calls
    assert _figure(html, "figure-calls") == "5"


def test_the_default_range_is_the_last_seven_days(client_as: ClientAs,
                                                  console_db: sessionmaker[Session]) -> None:
    now = datetime.now(UTC)
    _analysed(console_db, order_call(now - timedelta(hours=1)))
    _analysed(console_db, order_call(now - timedelta(days=3), reason="handoff"))
    _analysed(console_db, order_call(now - timedelta(days=20)))  # only in the last 30 days
    client, _ = client_as("agent")
    html = client.get("/").text
    assert _figure(html, "figure-calls") == "2"
    assert _figure(html, "figure-containment") == "50 %"
    assert 'id="range-7d" class="active"' in html
    assert _figure(client.get("/?range=30d").text, "figure-calls") == "3"
    day = client.get("/?range=24h").text
    assert _figure(day, "figure-calls") == "1" and "Calls per hour" in day
    assert _bars(_section(day, "chart-calls")) == 1


def test_an_empty_range_says_so(client_as: ClientAs, seeded: object) -> None:
    client, _ = client_as("admin")
    page = client.get("/?since=2025-01-01&until=2025-01-31")
    assert page.status_code == 200
    html = page.text
    assert _figure(html, "figure-calls") == "0"
    assert _figure(html, "figure-containment") == "–"
    for chart in ("chart-calls", "chart-outcomes", "chart-intents", "chart-sentiment"):
        section = _section(html, chart)
        assert charts.NO_DATA in section and _bars(section) == 0, chart


@pytest.mark.parametrize(("query", "problem"), [
    ("since=2026-13-45", "is not a date"),
    ("until=yesterday", "is not a date"),
    ("since=2026-03-09&until=2026-03-02", "after the to date"),
    ("range=bogus", "Unknown range 'bogus'"),
    ("since=2024-01-01&until=2026-01-01", "at most 366 days"),
    ("since=9999-12-31&until=9999-12-31", "out of range"),
    ("since=2026-03-02T10:00", "is not a date"),
])
def test_bad_ranges_show_an_error_and_the_default(client_as: ClientAs, seeded: object,
                                                  query: str, problem: str) -> None:
    client, _ = client_as("agent")
    page = client.get(f"/?{query}")
    assert page.status_code == 400
    errors = _errors(page.text)
    assert len(errors) == 1 and problem in errors[0], errors
    assert "Showing the last 7 days" in errors[0]
    assert 'id="range-7d" class="active"' in page.text  # the default range, rendered
    assert 'id="chart-calls"' in page.text


def test_the_error_message_escapes_what_was_typed(client_as: ClientAs) -> None:
    client, _ = client_as("agent")
    page = client.get("/", params={"since": "<script>alert(1)</script>"})
    assert page.status_code == 400
    assert "<script>alert(1)" not in page.text
    assert "&lt;script&gt;alert(1)" in page.text


def test_intent_names_are_escaped_on_the_page(client_as: ClientAs,
                                              console_db: sessionmaker[Session]) -> None:
    _analysed(console_db, _broken(DAY1 + timedelta(hours=9), intent="<script>x()</script>"))
    client, _ = client_as("agent")
    html = client.get(TWO_DAYS).text
    intents = _section(html, "chart-intents")
    assert "<script>" not in html
    assert "&lt;script&gt;x()&lt;/script&gt;" in intents
    assert "intent=%3Cscript%3Ex%28%29%3C%2Fscript%3E" in intents


def test_signed_out_visitors_are_sent_to_the_login_page(console_app: FastAPI) -> None:
    with TestClient(console_app, base_url=BASE_URL) as client:
        response = client.get("/", follow_redirects=False)
        assert response.status_code == 303
        assert response.headers["location"].startswith("/login")
        bad = client.get("/?since=2026-13-45", follow_redirects=False)
        assert bad.status_code == 303  # no range checking before sign-in


# --- the range parser ----------------------------------------------------------------------
NOW = datetime(2026, 3, 10, 13, 25, tzinfo=UTC)


def test_presets_end_with_the_current_hour_or_day() -> None:
    day = preset_range("24h", NOW)
    assert (day.since, day.until) == (datetime(2026, 3, 9, 14, tzinfo=UTC),
                                      datetime(2026, 3, 10, 14, tzinfo=UTC))
    assert day.hourly
    week = parse_range("", "", "", NOW)
    assert week.key == "7d" and not week.hourly
    assert (week.first_day.isoformat(), week.last_day.isoformat()) == ("2026-03-04",
                                                                        "2026-03-10")
    month = parse_range("30d", "", "", NOW)
    assert (month.last_day - month.first_day).days == 29


def test_custom_dates_are_inclusive_days() -> None:
    one = parse_range("", "2026-03-02", "2026-03-02", NOW)
    assert one.key == "custom" and one.hourly
    assert one.until - one.since == timedelta(days=1)
    only_since = parse_range("custom", " 2026-03-01 ", "", NOW)
    assert only_since.last_day.isoformat() == "2026-03-10"
    only_until = parse_range("", "", "2026-03-08", NOW)
    assert only_until.first_day.isoformat() == "2026-03-02"
    longest = parse_range("", "2025-03-11", "2026-03-11", NOW)
    assert (longest.last_day - longest.first_day).days + 1 == 366
    with pytest.raises(RangeError):
        parse_range("", "2025-03-10", "2026-03-11", NOW)


# --- the charts on their own ---------------------------------------------------------------
def _is_chart(svg: str) -> None:
    assert svg.startswith('<svg class="chart') and svg.endswith("</svg>")
    assert 'role="img"' in svg and "aria-label=" in svg and "<title>" in svg
    assert re.search(r'viewBox="0 0 \d+ \d+"', svg)


def test_charts_with_no_data_show_a_note() -> None:
    for svg in (charts.bar_chart([], title="Calls"),
                charts.bar_chart([charts.Bar("Mar 2", 0)], title="Calls"),
                charts.horizontal_bar_chart([], title="Intents"),
                charts.line_chart([charts.Point("Mar 2", None)], title="Sentiment"),
                charts.line_chart([], title="Sentiment")):
        _is_chart(svg)
        assert charts.NO_DATA in svg and "<rect class=\"bar\"" not in svg
    custom = charts.horizontal_bar_chart([], title="Outcomes", empty_note="Nothing <here>")
    assert "Nothing &lt;here&gt;" in custom


def test_charts_with_one_point() -> None:
    bar = charts.bar_chart([charts.Bar("09:00", 3, href="/calls?since=a&until=b")],
                           title="Calls")
    _is_chart(bar)
    assert _bars(bar) == 1 and '<a href="/calls?since=a&amp;until=b">' in bar
    assert "<title>09:00: 3</title>" in bar
    row = charts.horizontal_bar_chart([charts.Bar("check_order", 7)], title="Intents")
    _is_chart(row)
    assert _bars(row) == 1 and ">check_order<" in row
    line = charts.line_chart([charts.Point("Mar 2", -0.4)], title="Sentiment")
    _is_chart(line)
    assert line.count('<circle class="point"') == 1
    assert "<polyline" not in line and 'class="zero"' in line
    assert f'fill="{charts.RED}"' in line


def test_charts_with_many_points() -> None:
    bars = [charts.Bar(f"d{i}", i % 3, group="2026") for i in range(60)]
    svg = charts.bar_chart(bars, title="Calls per day", max_labels=10)
    assert _bars(svg) == 40  # one per slot with calls; zero slots draw nothing
    assert svg.count('<text class="axis" x=') - svg.count('text-anchor="end"') == 10
    assert svg.count(">2026<") == 1  # the group shows where it changes: once
    assert 'class="value"' not in svg  # no per-bar counts when the bars are thin
    rows = charts.horizontal_bar_chart(
        [charts.Bar(f"intent_{i}", 10 - i) for i in range(10)], title="Intents")
    assert _bars(rows) == 10
    points = [charts.Point(f"d{i}", None if i % 4 == 0 else (i % 5 - 2) / 2) for i in range(30)]
    line = charts.line_chart(points, title="Sentiment")
    assert line.count('<circle class="point"') == 22
    polyline = re.search(r'<polyline class="line" points="([^"]+)"', line)
    assert polyline and len(polyline.group(1).split()) == 22


def test_chart_labels_and_links_are_escaped() -> None:
    evil = '<script>alert("x")</script>'
    svgs = [
        charts.bar_chart([charts.Bar(evil, 2, title=evil, href=f"/calls?intent={evil}",
                                     group=evil)], title=evil),
        charts.horizontal_bar_chart([charts.Bar(evil, 2, href='/x?a="b"')], title=evil),
        charts.line_chart([charts.Point(evil, 0.5, title=evil, href=evil, group=evil)],
                          title=evil),
    ]
    for svg in svgs:
        assert "<script>" not in svg and '"x"' not in svg
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in svg
    assert 'href="/x?a=&#34;b&#34;"' in svgs[1]


def test_long_labels_are_clipped_with_the_full_name_in_a_tooltip() -> None:
    name = "ask_about_the_extended_warranty_programme"
    svg = charts.horizontal_bar_chart([charts.Bar(name, 1)], title="Intents")
    assert f"<title>{name}</title>" in svg and ">ask_about_the_extende…<" in svg


def test_nice_axis_maximum() -> None:
    assert charts.nice_ceiling(0) == (1.0, 1.0)
    assert charts.nice_ceiling(1) == (1.0, 1.0)
    assert charts.nice_ceiling(7) == (8.0, 2.0)
    assert charts.nice_ceiling(130) == (150.0, 50.0)
    assert charts.label_every(366, 10) == 37 and charts.label_every(5, 10) == 1
