"""The admin console: sign-in, the dashboard, calls, users and the REST API, added to the
web app by ``install_console``. Every page and API endpoint needs a signed-in user (or an
API token) and checks the role; the public exceptions are the sign-in page itself, the
softphone (the bot's public phone line) and ``/healthz``."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Depends, FastAPI, Form, Request
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

from admin import api, audit, calls, dashboard, desk, live, users
from admin.accounts import SessionView
from admin.audit import log_action
from admin.security import (
    FLASH_COOKIE,
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    Console,
    CsrfFailed,
    Forbidden,
    LoginRequired,
    api_user,
    check_csrf,
    client_ip,
    console_of,
    current_session,
    new_login_csrf,
    page_session,
    take_flash,
)
from admin.templating import add_filters
from switchboard.base.settings import Settings

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
LOGIN_CSRF_MAX_AGE_S = 3600
SECURITY_HEADERS = {  # no framing (clickjacking), no sniffing, no referrers off-site
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

router = APIRouter()


def _safe_next(target: str) -> str:
    """Only same-site paths: ``next`` must never send a signed-in user elsewhere."""
    parts = urlsplit(target)
    if (not target.startswith("/") or target.startswith("//") or parts.scheme
            or parts.netloc or "\\" in target or any(ord(c) < 32 for c in target)):
        return "/"  # browsers read "/\\evil.example" as "//evil.example"
    return target


def _login_page(request: Request, *, next_path: str = "/", username: str = "",
                error: str = "", status_code: int = 200) -> Response:
    console = console_of(request)
    token = new_login_csrf()
    messages = [{"kind": "error", "text": error}] if error else take_flash(request)
    if not console.cookie_is_usable(request):
        messages.append({"kind": "error", "text": (
            "This console's session cookie is Secure and this page came over plain HTTP: "
            "serve HTTPS (SWITCHBOARD_WEB_TLS_CERT/KEY or a TLS proxy) or, on a trusted "
            "network only, set SWITCHBOARD_CONSOLE_SECURE_COOKIES=false.")})
    response = console.render(request, "console/login.html", {
        "login_csrf": token, "next": _safe_next(next_path), "username": username,
        "messages": messages}, status_code=status_code)
    console.set_cookie(response, LOGIN_CSRF_COOKIE, token, max_age=LOGIN_CSRF_MAX_AGE_S,
                       samesite="strict")
    console.clear_cookie(response, FLASH_COOKIE)
    return response


@router.get("/login", include_in_schema=False)
def login_form(request: Request, next: str = "/") -> Response:
    if current_session(request) is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    return _login_page(request, next_path=next)


@router.post("/login", include_in_schema=False)
def login(request: Request, username: str = Form(""), password: str = Form(""),
          csrf_token: str = Form(""), next: str = Form("/")) -> Response:
    console = console_of(request)
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not csrf_token or not expected or csrf_token != expected:
        return _login_page(request, next_path=next, username=username, status_code=400,
                           error="The sign-in form expired; please sign in again.")
    if not username.strip() or not password:
        return _login_page(request, next_path=next, username=username, status_code=400,
                           error="Enter your user name and password.")
    result = console.accounts.authenticate(username, password, ip=client_ip(request))
    if result.locked_for_s:
        minutes = max(1, round(result.locked_for_s / 60))
        log.warning("sign-in refused for %r from %s: too many failures", username,
                    client_ip(request))
        log_action(request, username.strip(), "login.locked")
        return _login_page(
            request, next_path=next, username=username, status_code=429,
            error=f"Too many failed sign-ins. Try again in about {minutes} minute"
                  f"{'s' if minutes != 1 else ''}.")
    if result.user is None:
        log.info("failed sign-in for %r from %s", username, client_ip(request))
        log_action(request, username.strip(), "login.failed")
        return _login_page(request, next_path=next, username=username, status_code=401,
                           error="Wrong user name or password.")
    previous = request.cookies.get(SESSION_COOKIE, "")
    if previous:  # signing in again (maybe as someone else) ends the earlier session
        console.accounts.end_session(previous)
    token, _ = console.accounts.start_session(
        result.user.id, ip=client_ip(request), user_agent=request.headers.get("user-agent"))
    log.info("%s signed in from %s", result.user.username, client_ip(request))
    log_action(request, result.user.username, "login")
    response = RedirectResponse(_safe_next(next), status_code=303)
    console.set_cookie(response, SESSION_COOKIE, token,
                       max_age=int(console.accounts.session_lifetime.total_seconds()))
    console.clear_cookie(response, LOGIN_CSRF_COOKIE)
    return response


@router.post("/logout", include_in_schema=False)
def logout(request: Request, csrf_token: str = Form(""),
           view: SessionView = Depends(page_session)) -> Response:
    check_csrf(view, csrf_token)
    console = console_of(request)
    console.accounts.end_session(request.cookies.get(SESSION_COOKIE, ""))
    log_action(request, view.user.username, "logout")
    response = RedirectResponse("/login", status_code=303)
    console.clear_cookie(response, SESSION_COOKIE)
    return response


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def _to_login(request: Request) -> Response:
    if _wants_json(request):
        return JSONResponse(
            {"error": "sign in: send 'Authorization: Bearer <API token>' (create one under "
                      "Account in the console)"},
            status_code=401, headers={"WWW-Authenticate": "Bearer"})
    if request.method != "GET":  # after sign-in, go back to a page, not to a form target
        return RedirectResponse("/login", status_code=303)
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target)}", status_code=303)


def _error_page(request: Request, heading: str, detail: str, status: int,
                headers: Mapping[str, str] | None = None) -> Response:
    if _wants_json(request):
        return JSONResponse({"error": detail}, status_code=status, headers=headers)
    response = console_of(request).render(request, "console/error.html",
                                          {"heading": heading, "detail": detail}, status)
    response.headers.update(headers or {})
    return response


def problems_of(exc: RequestValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in error['loc'][1:]) or 'body'}: {error['msg']}"
        for error in exc.errors())


def validation_error(request: Request, exc: RequestValidationError) -> Response:
    """A request FastAPI could not parse: anonymous API callers learn only that they must
    sign in; others get what was wrong (422)."""
    if _wants_json(request):
        try:
            api_user(request)
        except LoginRequired:
            return _to_login(request)
        return JSONResponse({"error": problems_of(exc)}, status_code=422)
    if current_session(request) is None:
        return _to_login(request)
    return _error_page(request, "Bad request", problems_of(exc), 422)


def install_console(app: FastAPI, settings: Settings, sessions: sessionmaker[Session]) -> None:
    """Add the console's pages, API and error handling to ``app``."""
    templates = Jinja2Templates(directory=HERE / "templates")
    add_filters(templates)
    app.state.console = Console.create(settings, sessions, templates)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        return validation_error(request, exc)

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]
                    ) -> Response:
        raw = request.scope.get("raw_path", b"") + b"?" + request.scope.get("query_string", b"")
        if b"%00" in raw or b"\x00" in raw:  # no text column stores a NUL byte
            if _wants_json(request):
                return JSONResponse({"error": "NUL bytes are not allowed in URLs"},
                                    status_code=400)
            return PlainTextResponse("NUL bytes are not allowed in URLs", status_code=400)
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if not request.url.path.startswith("/static/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired) -> Response:
        return _to_login(request)

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, exc: Forbidden) -> Response:
        return _error_page(request, "Not allowed", exc.message, 403)

    @app.exception_handler(CsrfFailed)
    async def csrf_failed(request: Request, exc: CsrfFailed) -> Response:
        return _error_page(request, "Form expired",
                           "This form was not sent from this session (CSRF check failed). "
                           "Reload the page and try again.", 403)

    @app.exception_handler(SQLAlchemyError)
    async def database_down(request: Request, exc: SQLAlchemyError) -> Response:
        log.error("database error on %s: %s", request.url.path, exc)
        return _error_page(request, "Database unavailable",
                           "The console cannot reach its database right now; the calls "
                           "are safe. Try again in a moment.", 503)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        detail = exc.detail if isinstance(exc.detail, str) else "Request refused."
        if exc.status_code in (404, 405):  # unknown paths reveal nothing before sign-in
            try:
                api_user(request) if _wants_json(request) else page_session(request)
            except LoginRequired:
                return _to_login(request)
            if exc.status_code == 404:
                return _error_page(request, "Not found", "There is no such page.", 404)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # every method of the path, not of its first route
            headers["Allow"] = ", ".join(sorted({
                method for route in request.app.routes
                if isinstance(route, Route) and route.methods
                and route.path_regex.match(request.url.path) for method in route.methods}))
        return _error_page(request, "Request refused", detail, exc.status_code, headers)

    app.include_router(router)
    app.include_router(dashboard.router)
    app.include_router(calls.router)
    app.include_router(live.router)
    app.include_router(desk.router)
    app.include_router(audit.router)
    app.include_router(users.router)
    api.install(app)
