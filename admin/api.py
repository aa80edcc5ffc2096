"""The REST API under ``/api/``: calls, their detail and recordings, aggregates, users.

Clients authenticate with ``Authorization: Bearer sbt_…`` (tokens are made under Account in
the console or with ``switchboard users token``); a signed-in browser may read with its
session cookie. Every endpoint, the OpenAPI document (``/api/openapi.json``) and its docs
page (``/api/docs``, Swagger UI served from the ``fastapi-offline`` package, no CDN) refuse
anyone not signed in, and each checks the role.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi import Path as PathParam
from fastapi.encoders import jsonable_encoder
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from admin.accounts import AccountError, UserView
from admin.audit import log_action
from admin.calls import call_detail, parse_filters, recording_response
from admin.load import heavy
from admin.security import api_user, console_of, ensure_allowed
from analytics.aggregates import compute_aggregates
from switchboard.storage.models import as_utc
from switchboard.storage.repository import CallRow, CallSearch

MAX_AGGREGATE_RANGE = timedelta(days=366)
MAX_ID = 2**31 - 1  # ids are 32-bit integers in the database


DOCS_ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png")

bearer = HTTPBearer(auto_error=False, description="An API token (sbt_…) made under Account "
                                                  "in the console or by `switchboard users token`.")


def authenticated(request: Request,
                  _: HTTPAuthorizationCredentials | None = Depends(bearer)) -> UserView:
    return api_user(request)


def _allowed(permission: str) -> Any:
    def dependency(user: UserView = Depends(authenticated)) -> UserView:
        ensure_allowed(user, permission)
        return user
    return Depends(dependency)


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class NewUser(BaseModel):
    username: str = Field(max_length=64)
    password: str = Field(max_length=1024)
    role: str = Field(description="admin, supervisor or agent")


class UserChange(BaseModel):
    role: str
    active: bool


class CallPage(BaseModel):
    total: int = Field(description="Matching calls, counted up to 1,000.")
    total_exact: bool = Field(description="False when more than 1,000 match.")
    page: int
    per_page: int
    next_before: str | None = Field(
        description="Pass as ``before`` for the next (older) page: keyset paging, as fast "
                    "deep in the list as at its start; null on the last page.")
    calls: list[CallRow]


class TurnOut(BaseModel):
    seq: int
    speaker: str
    text: str = Field(description="redacted: card numbers, e-mail addresses, phone numbers")
    started_at: datetime | None
    ended_at: datetime | None
    offset_s: float | None
    intent: str | None
    confidence: float | None
    barge_in: bool
    latency_ms: dict[str, float | None]


class EventOut(BaseModel):
    at: datetime | None
    offset_s: float | None
    kind: str
    data: dict[str, Any]


class AnalysisOut(BaseModel):
    outcome: str
    analyzed_at: datetime | None
    duration_s: float | None
    caller_talk_s: float
    bot_talk_s: float
    silence_s: float | None
    turns: int
    caller_turns: int
    bot_turns: int
    barge_ins: int
    fallbacks: int
    intents: list[str]
    sentiment: float | None
    sentiment_label: str | None
    summary: str
    latency: dict[str, Any]
    redactions: int
    sentiment_by_turn: dict[int, float]


class CallDetail(BaseModel):
    id: str
    transport: str
    caller: str | None
    callee: str | None
    status: str
    started_at: datetime
    ended_at: datetime | None
    duration_s: float | None
    end_reason: str | None
    handoff_target: str | None
    worker: str | None
    has_recording: bool
    recording_deleted_at: datetime | None = Field(
        description="When the retention policy deleted the recording.")
    transcript_deleted_at: datetime | None = Field(
        description="When the retention policy deleted the call's words (turn texts, the "
        "analysis' summary); timings and intents stay.")
    turns: list[TurnOut]
    events: list[EventOut]
    analysis: AnalysisOut | None


def _moment(text: str, name: str, *, end_of_day: bool = False) -> datetime | None:
    if not text:
        return None
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime.combine(day + timedelta(days=1 if end_of_day else 0), time(), UTC)
        moment = datetime.fromisoformat(text)
        return as_utc(moment)
    except (ValueError, OverflowError):
        raise ApiError(400, f"{name}: {text[:40]!r} is neither YYYY-MM-DD nor an ISO 8601 "
                            "time within the calendar") from None


router = APIRouter(prefix="/api", tags=["console"])


@router.get("/me", response_model=UserView, summary="Who this token or session is")
def me(user: UserView = Depends(authenticated)) -> UserView:
    return user


@router.get("/calls", response_model=CallPage, summary="Calls, newest first, filtered",
            dependencies=[_allowed("calls")])
async def list_calls(request: Request, since: str = "", until: str = "", caller: str = "",
                     intent: str = "", outcome: str = "", transport: str = "", q: str = "",
                     page: str = "1", per_page: str = "25", before: str = "") -> Response:
    """``since``/``until`` are days (YYYY-MM-DD, ``until`` inclusive, UTC); ``outcome`` is
    resolved, handed_off, abandoned, failed, in_progress, unknown or pending (not analysed
    yet); ``caller`` and ``q`` match anywhere in the number / id / summary. ``before`` (the
    previous page's ``next_before``) pages by keyset, ``page`` by offset."""
    return await heavy(_list_calls, request, {
        "since": since, "until": until, "caller": caller, "intent": intent,
        "outcome": outcome, "transport": transport, "q": q, "page": page,
        "per_page": per_page, "before": before})


def _list_calls(request: Request, params: dict[str, str]) -> Response:
    parsed = parse_filters(params)
    if parsed.errors:
        raise ApiError(400, " ".join(parsed.errors))
    found = CallSearch(console_of(request).sessions).search(
        parsed.filters, limit=parsed.per_page, offset=(parsed.page - 1) * parsed.per_page,
        before=parsed.before)
    return JSONResponse(jsonable_encoder(CallPage(
        total=found.total, total_exact=found.exact, page=parsed.page,
        per_page=parsed.per_page, next_before=None if found.older is None else str(found.older),
        calls=found.rows)))


@router.get("/calls/{call_id}", response_model=CallDetail,
            summary="A call: redacted transcript with latencies, events and its analysis",
            dependencies=[_allowed("calls")])
def get_call(call_id: str, request: Request) -> Any:
    detail = call_detail(console_of(request).sessions, call_id)
    if detail is None:
        raise ApiError(404, f"no call with id {call_id[:64]!r}")
    return detail


@router.get("/calls/{call_id}/recording", summary="The call's recording (WAV)",
            responses={200: {"content": {"audio/wav": {}}}}, response_class=Response,
            dependencies=[_allowed("recordings")])
def get_recording(call_id: str, request: Request) -> Response:
    response = recording_response(console_of(request).sessions, call_id)
    if response is None:
        raise ApiError(404, "this call has no recording")
    return response


@router.get("/aggregates", summary="Figures over calls started in a time range",
            dependencies=[_allowed("dashboard")])
async def aggregates(request: Request, since: str = "", until: str = "") -> Response:
    """Default: the last 7 days. ``since``/``until``: YYYY-MM-DD (``until`` inclusive) or
    ISO 8601 times; at most 366 days."""
    return await heavy(_aggregates, request, since, until)


def _aggregates(request: Request, since: str, until: str) -> Response:
    end = _moment(until, "until", end_of_day=True) or datetime.now(UTC)
    try:
        start = _moment(since, "since") or end - timedelta(days=7)
    except OverflowError:
        raise ApiError(400, "until is too close to the start of the calendar") from None
    if start >= end:
        raise ApiError(400, "since must be before until")
    if end - start > MAX_AGGREGATE_RANGE:
        raise ApiError(400, "ranges are at most 366 days")
    return JSONResponse(jsonable_encoder(compute_aggregates(
        console_of(request).sessions, since=start, until=end).as_dict()))


@router.get("/users", response_model=list[UserView], summary="Console users (admins)",
            dependencies=[_allowed("users")])
def list_users(request: Request) -> list[UserView]:
    return console_of(request).accounts.list_users()


@router.post("/users", response_model=UserView, status_code=201,
             summary="Add a console user (admins)", dependencies=[_allowed("users")])
def add_user(body: NewUser, request: Request,
             user: Annotated[UserView, Depends(api_user)]) -> UserView:
    try:
        created = console_of(request).accounts.create_user(body.username, body.password,
                                                           body.role)
    except AccountError as exc:
        raise ApiError(400, str(exc)) from None
    log_action(request, user.username, "user.create", target=created.username,
          detail={"role": created.role, "via": "api"})
    return created


@router.patch("/users/{user_id}", response_model=UserView,
              summary="Change a user's role or switch them off (admins)",
              dependencies=[_allowed("users")])
def change_user(user_id: Annotated[int, PathParam(ge=1, le=MAX_ID)], body: UserChange,
                request: Request, user: Annotated[UserView, Depends(api_user)]) -> UserView:
    try:
        changed = console_of(request).accounts.update_user(user_id, role=body.role,
                                                           active=body.active)
    except AccountError as exc:
        raise ApiError(400, str(exc)) from None
    log_action(request, user.username, "user.update", target=changed.username,
          detail={"role": changed.role, "active": changed.active, "via": "api"})
    return changed


def install(app: FastAPI) -> None:
    """The API routes, their OpenAPI document and docs page, all behind sign-in."""
    app.include_router(router)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    schema: dict[str, Any] = {}

    @app.get("/api/openapi.json", include_in_schema=False)
    def openapi(_: UserView = Depends(authenticated)) -> dict[str, Any]:
        if not schema:
            schema.update(get_openapi(
                title="Switchboard API", version="1",
                description="Calls, analyses and figures of a Switchboard node. Send "
                            "`Authorization: Bearer <token>`.",
                routes=router.routes))
        return schema

    @app.get("/api/docs", include_in_schema=False)
    def docs(_: UserView = Depends(authenticated)) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/api/openapi.json", title="Switchboard API",
            swagger_js_url="/api/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/api/docs/assets/swagger-ui.css",
            swagger_favicon_url="/api/docs/assets/favicon.png")

    @app.get("/api/docs/assets/{name}", include_in_schema=False)
    def docs_asset(name: str, _: UserView = Depends(authenticated)) -> Response:
        if name not in DOCS_ASSETS:
            raise ApiError(404, "no such file")
        path = resources.files("fastapi_offline") / "static" / name
        return FileResponse(str(path))

