"""Who may do what in the console, and how a request proves who it is.

Browsers sign in at ``/login`` and carry an HTTP-only session cookie (Secure unless
``SWITCHBOARD_CONSOLE_SECURE_COOKIES=false``, SameSite=Lax). Every form that changes
something carries the session's CSRF token. API clients send ``Authorization: Bearer
sbt_…``; a signed-in browser may also *read* the API with its cookie (GET only, so a
cross-site form can never change anything through it).
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session, sessionmaker

from admin.accounts import AccountRepository, SessionView, UserView
from switchboard.base.settings import Settings
from switchboard.storage.repository import AuditRepository, CallRepository

SESSION_COOKIE = "switchboard_session"
LOGIN_CSRF_COOKIE = "switchboard_login_csrf"
FLASH_COOKIE = "switchboard_flash"  # a one-time "done" message after a redirect
FLASH_MAX_AGE_S = 30
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})

# What each role may do. Agents see calls and figures; recordings (raw audio, which may
# hold card numbers the transcript redacts) are for supervisors and admins; only admins
# manage users.
PERMISSIONS: dict[str, frozenset[str]] = {
    "dashboard": frozenset({"admin", "supervisor", "agent"}),
    "calls": frozenset({"admin", "supervisor", "agent"}),
    "live": frozenset({"admin", "supervisor", "agent"}),
    "desk": frozenset({"admin", "supervisor", "agent"}),
    "monitor": frozenset({"admin", "supervisor"}),
    "recordings": frozenset({"admin", "supervisor"}),
    "users": frozenset({"admin"}),
    "audit": frozenset({"admin"}),
}
PERMISSION_NAMES = {
    "dashboard": "the dashboard",
    "calls": "calls",
    "live": "live calls",
    "desk": "the agents' desk",
    "monitor": "listening in and barging in",
    "recordings": "call recordings",
    "users": "user management",
    "audit": "the audit log",
}


class LoginRequired(Exception):
    """The request has no valid session; pages redirect to /login, the API answers 401."""


class Forbidden(Exception):
    """Signed in, but the role may not do this."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class CsrfFailed(Exception):
    """A form arrived without this session's CSRF token."""


def allowed(user: UserView, permission: str) -> bool:
    return user.role in PERMISSIONS[permission]


def ensure_allowed(user: UserView, permission: str) -> None:
    if not allowed(user, permission):
        raise Forbidden(f"Your role ({user.role}) cannot open {PERMISSION_NAMES[permission]}.")


@dataclass
class Console:
    """What the console's routes share: settings, accounts, the database, the templates."""

    settings: Settings
    sessions: sessionmaker[Session]
    accounts: AccountRepository
    templates: Jinja2Templates
    audit: AuditRepository
    calls: CallRepository

    @classmethod
    def create(cls, settings: Settings, sessions: sessionmaker[Session],
               templates: Jinja2Templates) -> Console:
        accounts = AccountRepository.from_settings(settings, sessions)
        return cls(settings, sessions, accounts, templates, AuditRepository(sessions),
                   CallRepository(sessions))

    def render(self, request: Request, template: str, context: dict[str, Any],
               status_code: int = 200) -> Response:
        view: SessionView | None = getattr(request.state, "console_session", None)
        base = {"me": view.user if view else None, "csrf_token": view.csrf_token if view else "",
                "can": (lambda p: view is not None and allowed(view.user, p))}
        return self.templates.TemplateResponse(
            request, template, {**base, **context}, status_code=status_code)

    # --- cookies ------------------------------------------------------------------------
    def cookie_is_usable(self, request: Request) -> bool:
        """A Secure cookie over plain HTTP only sticks on localhost; say so, rather than
        signing in and bouncing back to the login page."""
        if not self.settings.console_secure_cookies or request.url.scheme == "https":
            return True
        return (request.url.hostname or "") in LOCAL_HOSTS

    def set_cookie(self, response: Response, name: str, value: str, *, max_age: int,
                   samesite: str = "lax") -> None:
        response.set_cookie(
            name, value, max_age=max_age, path="/", httponly=True,
            secure=self.settings.console_secure_cookies,
            samesite=samesite,  # type: ignore[arg-type]
        )

    def clear_cookie(self, response: Response, name: str) -> None:
        response.delete_cookie(name, path="/", httponly=True,
                               secure=self.settings.console_secure_cookies)


def redirect_with_flash(request: Request, path: str, message: str) -> Response:
    """303 to ``path``, which shows ``message`` once (post/redirect/get)."""
    response = RedirectResponse(path, status_code=303)
    console_of(request).set_cookie(response, FLASH_COOKIE, message[:300],
                                   max_age=FLASH_MAX_AGE_S)
    return response


def take_flash(request: Request) -> list[dict[str, str]]:
    """The pending flash message, as the page's ``messages`` (the caller clears the cookie
    with ``Console.clear_cookie``)."""
    message = request.cookies.get(FLASH_COOKIE)
    return [{"kind": "ok", "text": message[:300]}] if message else []


def console_of(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


def current_session(request: Request) -> SessionView | None:
    """The request's signed-in session (cached on the request), or None."""
    if hasattr(request.state, "console_session"):
        cached: SessionView | None = request.state.console_session
        return cached
    token = request.cookies.get(SESSION_COOKIE, "")
    view = console_of(request).accounts.session_for(token) if token else None
    request.state.console_session = view
    return view


def page_session(request: Request) -> SessionView:
    """Dependency of every console page: the signed-in session, or off to /login."""
    view = current_session(request)
    if view is None:
        raise LoginRequired()
    return view


def check_csrf(view: SessionView, submitted: str) -> None:
    if not submitted or not hmac.compare_digest(submitted.encode(), view.csrf_token.encode()):
        raise CsrfFailed()


def new_login_csrf() -> str:
    return secrets.token_urlsafe(32)


def api_user(request: Request) -> UserView:
    """Dependency of every API endpoint: a bearer token's user, or (GET/HEAD only) the
    signed-in browser's user."""
    header = request.headers.get("authorization", "")
    scheme, _, credential = header.partition(" ")
    if header:
        if scheme.lower() != "bearer" or not credential.strip():
            raise LoginRequired()
        user = console_of(request).accounts.user_for_token(credential.strip())
        if user is None:
            raise LoginRequired()
        return user
    if request.method in ("GET", "HEAD"):
        view = current_session(request)
        if view is not None:
            return view.user
    raise LoginRequired()
