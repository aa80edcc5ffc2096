"""The console's calls: the list (search, filters, paging), a call's detail page and its
recording. ``parse_filters`` and ``call_detail`` are shared with the REST API.

Transcripts are shown redacted (card numbers, e-mail addresses, phone numbers), the same
way the analytics store them; the raw words stay only in the database and the recording.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, Response
from sqlalchemy.orm import Session, sessionmaker

from admin.accounts import SessionView
from admin.load import heavy
from admin.security import allowed, console_of, ensure_allowed, page_session
from analytics.analysis import (
    ABANDONED,
    FAILED,
    HANDED_OFF,
    IN_PROGRESS,
    LATENCY_FIELDS,
    RESOLVED,
    UNKNOWN,
    redact,
)
from switchboard.storage.models import Call, CallAnalysis
from switchboard.storage.repository import (
    AnalysisRepository,
    CallCursor,
    CallFilters,
    CallRepository,
    CallSearch,
)

router = APIRouter()

PAGE_SIZE = 25
MAX_PAGE_SIZE = 200
OUTCOMES = (RESOLVED, HANDED_OFF, ABANDONED, FAILED, IN_PROGRESS, UNKNOWN, "pending")
TRANSPORTS = ("sip", "webrtc", "simulate")
FILTER_KEYS = ("since", "until", "caller", "intent", "outcome", "transport", "q")
MAX_TEXT = 100
LIVE_RELOAD_S = 5
ANALYSIS_RELOAD_S = 2
ANALYSIS_WAIT = timedelta(minutes=10)  # past that, the worker is down: stop reloading


@dataclass
class ParsedFilters:
    """The filters of a request, what to show back in the form, and what was wrong."""

    filters: CallFilters
    values: dict[str, str]
    page: int = 1
    per_page: int = PAGE_SIZE
    errors: list[str] = field(default_factory=list)
    before: CallCursor | None = None
    """Keyset paging: the calls older than this (the "Older" link's)."""


def _date(text: str, name: str, errors: list[str]) -> date | None:
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        errors.append(f"{name}: {text[:40]!r} is not a date; use YYYY-MM-DD.")
        return None


def _positive_int(text: str, name: str, default: int, maximum: int,
                  errors: list[str]) -> int:
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        errors.append(f"{name}: {text[:20]!r} is not a whole number.")
        return default
    if not 1 <= value <= maximum:
        errors.append(f"{name} must be between 1 and {maximum}.")
        return default
    return value


def parse_filters(params: Mapping[str, str]) -> ParsedFilters:
    """Filters from query parameters; anything wrong is reported and left out, never
    raised (``since``/``until`` are days, ``until`` inclusive, UTC)."""
    errors: list[str] = []
    values = {key: (params.get(key) or "").replace("\x00", "").strip() for key in FILTER_KEYS}
    for key in ("caller", "intent", "q"):
        if len(values[key]) > MAX_TEXT:
            errors.append(f"{key} is longer than {MAX_TEXT} characters.")
            values[key] = values[key][:MAX_TEXT]
    since = _date(values["since"], "From", errors)
    until = _date(values["until"], "To", errors)
    if since and until and since > until:
        errors.append("From is after To; showing calls of any date.")
        since = until = None
    outcome = values["outcome"]
    if outcome and outcome not in OUTCOMES:
        errors.append(f"Outcome must be one of {', '.join(OUTCOMES)}.")
        outcome = ""
    transport = values["transport"]
    if transport and transport not in TRANSPORTS:
        errors.append(f"Channel must be one of {', '.join(TRANSPORTS)}.")
        transport = ""
    page = _positive_int(params.get("page", ""), "Page", 1, 1_000_000, errors)
    per_page = _positive_int(params.get("per_page", ""), "per_page", PAGE_SIZE,
                             MAX_PAGE_SIZE, errors)
    if until is not None and until == date.max:
        until = None  # the end of the calendar: no upper bound
    before = None
    if params.get("before"):
        try:
            before = CallCursor.parse(params["before"])
        except ValueError:
            errors.append("That position in the list is not valid; showing the newest calls.")
    filters = CallFilters(
        since=datetime.combine(since, time(), UTC) if since else None,
        until=datetime.combine(until + timedelta(days=1), time(), UTC) if until else None,
        caller=values["caller"], intent=values["intent"], outcome=outcome,
        transport=transport, text=values["q"],
    )
    return ParsedFilters(filters, values, page, per_page, errors, before)


def _offset_s(moment: datetime | None, start: datetime) -> float | None:
    return None if moment is None else round((moment - start).total_seconds(), 2)


def _is_call_id(text: str) -> bool:
    return len(text) <= 32 and text.isalnum()


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)[0]
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return value


def _event_data(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    """An event's details as shown: redacted, and keypad digits hidden (one event per key,
    so a card number typed on the keypad would otherwise read out across the timeline;
    the keypad turn of the transcript shows the entry, redacted)."""
    if kind == "dtmf" and isinstance(data.get("digit"), str) and data["digit"].isdigit():
        data = {**data, "digit": "•"}
    redacted: dict[str, Any] = _redacted(data)
    return redacted


def recording_file(call: Call) -> Path | None:
    if not call.recording_path:
        return None
    path = Path(call.recording_path)
    return path if path.is_file() else None


def call_detail(sessions: sessionmaker[Session], call_id: str) -> dict[str, Any] | None:
    """Everything the detail page and ``GET /api/calls/{id}`` show, redacted, JSON-ready
    apart from datetimes; None when there is no such call."""
    call = CallRepository(sessions).get_call(call_id) if _is_call_id(call_id) else None
    if call is None:
        return None
    analysis = AnalysisRepository(sessions).get(call_id)
    start = call.started_at
    turns = []
    for turn in call.turns:
        text, _ = redact(turn.text)
        turns.append({
            "seq": turn.seq, "speaker": turn.speaker, "text": text,
            "started_at": turn.started_at, "ended_at": turn.ended_at,
            "offset_s": _offset_s(turn.started_at, start), "intent": turn.intent,
            "confidence": turn.confidence, "barge_in": turn.barge_in,
            "latency_ms": {name: getattr(turn, name) for name in LATENCY_FIELDS},
        })
    events = [{"at": e.at, "offset_s": _offset_s(e.at, start), "kind": e.kind,
               "data": _event_data(e.kind, e.data or {})} for e in call.events]
    ended = call.ended_at
    if ended is not None:  # the timeline closes with the end the call record keeps
        events.append({"at": ended, "offset_s": _offset_s(ended, start), "kind": "ended",
                       "data": {"reason": call.end_reason}})
    result: dict[str, Any] = {
        "id": call.id, "transport": call.transport, "caller": call.caller,
        "callee": call.callee, "status": call.status, "started_at": start,
        "ended_at": ended, "duration_s": round((ended - start).total_seconds(), 1)
        if ended else None,
        "end_reason": call.end_reason, "handoff_target": call.handoff_target,
        "agent": call.agent, "disposition": call.disposition, "agent_notes": call.agent_notes,
        "worker": call.worker, "has_recording": recording_file(call) is not None,
        "recording_deleted_at": call.recording_deleted_at,
        "transcript_deleted_at": call.transcript_deleted_at,
        "turns": turns, "events": events, "analysis": None,
    }
    if analysis is not None:
        shown = {column.key: getattr(analysis, column.key)
                 for column in CallAnalysis.__table__.columns
                 if column.key not in ("id", "call_id", "runs", "transcript")}
        shown["sentiment_by_turn"] = {entry["seq"]: entry["sentiment"]
                                      for entry in analysis.transcript if "sentiment" in entry}
        result["analysis"] = shown
    return result


def _list_link(values: dict[str, str], per_page: int, before: CallCursor | None) -> str:
    query = {k: v for k, v in values.items() if v}
    if per_page != PAGE_SIZE:
        query["per_page"] = str(per_page)
    if before is not None:
        query["before"] = str(before)
    return "/calls" + (f"?{urlencode(query)}" if query else "")


@router.get("/calls", include_in_schema=False)
async def calls_list(request: Request,
                     view: SessionView = Depends(page_session)) -> Response:
    return await heavy(_calls_list, request, view)


def _calls_list(request: Request, view: SessionView) -> Response:
    """Keyset-paged: "Older" carries the last call's position, so a page deep in a million
    calls costs what the first does."""
    ensure_allowed(view.user, "calls")
    console = console_of(request)
    parsed = parse_filters(request.query_params)
    search = CallSearch(console.sessions)
    found = search.search(parsed.filters, limit=parsed.per_page, before=parsed.before)
    intents = search.known_intents()
    return console.render(request, "console/calls.html", {
        "nav": "calls", "rows": found.rows, "total": found.total, "exact": found.exact,
        "values": parsed.values, "outcomes": OUTCOMES, "transports": TRANSPORTS,
        "intents": intents,
        "newest_link": _list_link(parsed.values, parsed.per_page, None)
        if parsed.before is not None else None,
        "older_link": _list_link(parsed.values, parsed.per_page, found.older)
        if found.older is not None else None,
        "messages": [{"kind": "error", "text": e} for e in parsed.errors],
    }, status_code=400 if parsed.errors else 200)


@router.get("/calls/{call_id}", include_in_schema=False)
def call_page(call_id: str, request: Request,
              view: SessionView = Depends(page_session)) -> Response:
    ensure_allowed(view.user, "calls")
    console = console_of(request)
    detail = call_detail(console.sessions, call_id)
    if detail is None:
        return console.render(request, "console/error.html", {
            "heading": "No such call", "detail": f"There is no call with id {call_id[:64]!r}."},
            status_code=404)
    return console.render(request, "console/call.html", {
        "nav": "calls", "call": detail,
        "can_play": allowed(view.user, "recordings"),
        "watch": _watch_s(detail),
    })


def _watch_s(detail: dict[str, Any]) -> int:
    """Seconds between reloads of a call page that is still changing: a live call, or a
    call that ended lately and whose analysis has not arrived; 0 when it is settled."""
    if detail["status"] == "active":
        return LIVE_RELOAD_S
    ended = detail["ended_at"]
    if detail["analysis"] is None and ended is not None and \
            datetime.now(UTC) - ended < ANALYSIS_WAIT:
        return ANALYSIS_RELOAD_S
    return 0


def recording_response(sessions: sessionmaker[Session], call_id: str) -> Response | None:
    """The call's recording as a WAV file (range requests work), or None if there is none."""
    if not _is_call_id(call_id):
        return None
    with sessions() as session:
        call = session.get(Call, call_id)
        path = recording_file(call) if call is not None else None
    if path is None:
        return None
    return FileResponse(path, media_type="audio/wav",
                        filename=f"call-{call_id}.wav", content_disposition_type="inline")


@router.get("/calls/{call_id}/recording", include_in_schema=False)
def call_recording(call_id: str, request: Request,
                   view: SessionView = Depends(page_session)) -> Response:
    ensure_allowed(view.user, "recordings")
    console = console_of(request)
    response = recording_response(console.sessions, call_id)
    if response is None:
        return console.render(request, "console/error.html", {
            "heading": "No recording", "detail": "This call has no recording."},
            status_code=404)
    return response
