"""The REST API under ``/api/``: calls, their detail and recordings, aggregates, users.

Clients authenticate with ``Authorization: Bearer sbt_…`` (tokens are made under Account in
the console or with ``switchboard users token``); a signed-in browser may read with its
session cookie. Every endpoint, the OpenAPI document (``/api/openapi.json``) and its docs
page (``/api/docs``, Swagger UI served from the ``fastapi-offline`` package, no CDN) refuse
anyone not signed in, and each checks the role.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.encoders import jsonable_encoder
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_serializer

from admin.accounts import (
    MAX_PASSWORD_LENGTH,
    MIN_PASSWORD_LENGTH,
    PASSWORD_RE,
    ROLES,
    USERNAME_RE,
    AccountError,
    UserView,
)
from admin.audit import log_action
from admin.calls import (
    MAX_PAGE_SIZE,
    MAX_TEXT,
    OUTCOMES,
    PAGE_SIZE,
    TRANSPORTS,
    call_detail,
    parse_filters,
    recording_response,
)
from admin.load import heavy
from admin.security import api_user, console_of, ensure_allowed
from analytics.aggregates import compute_aggregates
from switchboard.storage.models import as_utc
from switchboard.storage.repository import CallCursor, CallRow, CallSearch

MAX_PAGE = 1_000_000
CALL_ID_PATTERN = "^[0-9A-Za-z]{1,64}$"
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


class ErrorBody(BaseModel):
    error: str = Field(description="What was wrong, in a sentence.")


ROLE_PATTERN = f"^({'|'.join(ROLES)})$"


class NewUser(BaseModel):
    model_config = ConfigDict(strict=True)  # what the schema says: "0" is no boolean
    username: str = Field(pattern=USERNAME_RE.pattern, max_length=64)
    password: str = Field(min_length=MIN_PASSWORD_LENGTH, max_length=MAX_PASSWORD_LENGTH,
                          pattern=f"^{PASSWORD_RE.pattern}$")
    role: str = Field(pattern=ROLE_PATTERN, description="admin, supervisor or agent")


class UserChange(BaseModel):
    model_config = ConfigDict(strict=True)
    role: str = Field(pattern=ROLE_PATTERN, description="admin, supervisor or agent")
    active: bool


class CallPage(BaseModel):
    total: int = Field(description="Matching calls, counted up to 1,000.")
    total_exact: bool = Field(description="False when more than 1,000 match.")
    page: int
    per_page: int
    next_before: datetime | None = Field(
        description="With ``next_before_id``, pass as ``before`` and ``before_id`` for the "
                    "next (older) page: keyset paging, as fast deep in the list as at its "
                    "start; null on the last page.")
    next_before_id: str | None = Field(description="See ``next_before``.")

    @field_serializer("next_before")
    def _utc_z(self, moment: datetime | None) -> str | None:
        """"Z", not "+00:00": a "+" not URL-encoded reads back as a space."""
        return None if moment is None else as_utc(moment).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
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


def _bound(value: date | datetime | None, *, end_of_day: bool = False) -> datetime | None:
    """A day (midnight UTC; the next midnight for an inclusive end) or a time (as UTC);
    clamped to the calendar."""
    if value is None or isinstance(value, datetime):
        return None if value is None else as_utc(value)
    if end_of_day and value == date.max:
        return datetime.max.replace(tzinfo=UTC)
    return datetime.combine(value + timedelta(days=1 if end_of_day else 0), time(), UTC)


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the errors a route answers (every error body is ErrorBody)."""
    meaning = {400: "The request cannot be read (a body that is no JSON, a NUL byte in the "
                    "URL).",
               401: "No valid API token (or console session).",
               403: "The token's user may not do this (their role).",
               404: "Not found.", 409: "It clashes with how things are (the message says).",
               422: "A parameter or the body does not fit this document's schema."}
    return {status: {"model": ErrorBody, "description": meaning[status]}
            for status in statuses}


router = APIRouter(prefix="/api", tags=["console"], responses=_errors(400, 401, 403, 422))


@router.get("/me", response_model=UserView, summary="Who this token or session is")
def me(user: UserView = Depends(authenticated)) -> UserView:
    return user


TEXT = Annotated[str, Query(max_length=MAX_TEXT, pattern=r"^[^\x00]*$")]  # no NUL byte
ISO_8601 = re.compile(r"^\d{4}-\d{2}-\d{2}(?:[T ].*)?$")


def _iso_8601(value: Any) -> Any:
    """Days and times only as ISO 8601 text (pydantic would read "0" as 1970-01-01)."""
    if isinstance(value, str) and not ISO_8601.match(value):
        raise ValueError("expected YYYY-MM-DD or an ISO 8601 time")
    return value


Day = Annotated[date, BeforeValidator(_iso_8601)]
Moment = Annotated[datetime, BeforeValidator(_iso_8601)]
DayOrMoment = Annotated[date | datetime, BeforeValidator(_iso_8601)]


def _choice(values: tuple[str, ...]) -> str:
    return f"^({'|'.join(('', *values))})$"


@router.get("/calls", response_model=CallPage, summary="Calls, newest first, filtered",
            dependencies=[_allowed("calls")])
async def list_calls(
    request: Request,
    since: Annotated[Day | None, Query(description="First day (UTC).")] = None,
    until: Annotated[Day | None, Query(description="Last day (UTC), included; before "
                                                    "``since``: nothing matches.")] = None,
    caller: TEXT = "", intent: TEXT = "",
    outcome: Annotated[str, Query(pattern=_choice(OUTCOMES))] = "",
    transport: Annotated[str, Query(pattern=_choice(TRANSPORTS))] = "",
    q: TEXT = "",
    page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1,
    per_page: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = PAGE_SIZE,
    before: Annotated[Moment | None, Query(
        description="The previous page's ``next_before``: calls older than that one.")] = None,
    before_id: Annotated[str, Query(pattern=CALL_ID_PATTERN, description=(
        "The previous page's ``next_before_id`` (with ``before``)."))] = "0",
) -> Response:
    """``outcome`` is resolved, handed_off, abandoned, failed, in_progress, unknown or pending
    (not analysed yet); ``caller`` and ``q`` match anywhere in the number / id / summary.
    ``before``/``before_id`` (the previous page's ``next_before``/``next_before_id``) page by
    keyset, ``page`` by offset."""
    params = {"since": since.isoformat() if since else "",
              "until": until.isoformat() if until else "", "caller": caller,
              "intent": intent, "outcome": outcome, "transport": transport, "q": q,
              "page": str(page), "per_page": str(per_page)}
    cursor = None if before is None else CallCursor(as_utc(before), before_id)
    empty = since is not None and until is not None and since > until
    return await heavy(_list_calls, request, params, cursor, empty)


def _list_calls(request: Request, params: dict[str, str], cursor: CallCursor | None,
                empty: bool) -> Response:
    parsed = parse_filters(params)
    if parsed.errors and not empty:  # the parameters' schema leaves nothing else wrong
        raise ApiError(400, " ".join(parsed.errors))
    if empty:
        return JSONResponse(jsonable_encoder(CallPage(
            total=0, total_exact=True, page=parsed.page, per_page=parsed.per_page,
            next_before=None, next_before_id=None, calls=[])))
    found = CallSearch(console_of(request).sessions).search(
        parsed.filters, limit=parsed.per_page, offset=(parsed.page - 1) * parsed.per_page,
        before=cursor)
    older = found.older
    return JSONResponse(jsonable_encoder(CallPage(
        total=found.total, total_exact=found.exact, page=parsed.page,
        per_page=parsed.per_page, next_before=None if older is None else older.started_at,
        next_before_id=None if older is None else older.id, calls=found.rows)))


@router.get("/calls/{call_id}", response_model=CallDetail,
            summary="A call: redacted transcript with latencies, events and its analysis",
            dependencies=[_allowed("calls")], responses=_errors(404))
def get_call(call_id: str, request: Request) -> Any:
    detail = call_detail(console_of(request).sessions, call_id)
    if detail is None:
        raise ApiError(404, f"no call with id {call_id[:64]!r}")
    return detail


@router.get("/calls/{call_id}/recording", summary="The call's recording (WAV)",
            responses={200: {"content": {"audio/wav": {}}}, **_errors(404)},
            response_class=Response,
            dependencies=[_allowed("recordings")])
def get_recording(call_id: str, request: Request) -> Response:
    response = recording_response(console_of(request).sessions, call_id)
    if response is None:
        raise ApiError(404, "this call has no recording")
    return response


@router.get("/aggregates", summary="Figures over calls started in a time range",
            dependencies=[_allowed("dashboard")])
async def aggregates(
    request: Request,
    since: Annotated[DayOrMoment | None, Query(
        description="A day (its midnight, UTC) or a time; default: 7 days before until.")
    ] = None,
    until: Annotated[DayOrMoment | None, Query(
        description="A day (included) or a time (excluded); default: now. A range that "
                    "ends before it starts holds no calls.")] = None,
) -> Response:
    """The dashboard's figures over calls started from ``since`` until ``until``."""
    end = _bound(until, end_of_day=True) or datetime.now(UTC)
    start = _bound(since)
    if start is None:
        start = (end - timedelta(days=7) if end - datetime.min.replace(tzinfo=UTC)
                 > timedelta(days=7) else datetime.min.replace(tzinfo=UTC))
    return await heavy(_aggregates, request, start, end)


def _aggregates(request: Request, start: datetime, end: datetime) -> Response:
    return JSONResponse(jsonable_encoder(compute_aggregates(
        console_of(request).sessions, since=start, until=end).as_dict()))


@router.get("/users", response_model=list[UserView], summary="Console users (admins)",
            dependencies=[_allowed("users")])
def list_users(request: Request) -> list[UserView]:
    return console_of(request).accounts.list_users()


@router.post("/users", response_model=UserView, status_code=201,
             summary="Add a console user (admins)", dependencies=[_allowed("users")],
             responses=_errors(409))
def add_user(body: NewUser, request: Request,
             user: Annotated[UserView, Depends(api_user)]) -> UserView:
    try:
        created = console_of(request).accounts.create_user(body.username, body.password,
                                                           body.role)
    except AccountError as exc:
        raise ApiError(exc.status, str(exc)) from None
    log_action(request, user.username, "user.create", target=created.username,
          detail={"role": created.role, "via": "api"})
    return created


@router.patch("/users/{user_id}", response_model=UserView,
              summary="Change a user's role or switch them off (admins)",
              dependencies=[_allowed("users")], responses=_errors(404, 409))
def change_user(user_id: Annotated[int, PathParam(ge=1, le=MAX_ID)], body: UserChange,
                request: Request, user: Annotated[UserView, Depends(api_user)]) -> UserView:
    try:
        changed = console_of(request).accounts.update_user(user_id, role=body.role,
                                                           active=body.active)
    except AccountError as exc:
        raise ApiError(exc.status, str(exc)) from None
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

