"""User management (admins) and each user's own account page: password and API tokens.

Every form carries the session's CSRF token; every mistake is a message on the page."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import Response

from admin.accounts import ROLES, AccountError, SessionView
from admin.audit import log_action
from admin.security import (
    FLASH_COOKIE,
    check_csrf,
    client_ip,
    console_of,
    ensure_allowed,
    page_session,
    redirect_with_flash,
    take_flash,
)

router = APIRouter()


def _users_page(request: Request, *, messages: list[dict[str, str]] | None = None,
                form: dict[str, str] | None = None, status_code: int = 200) -> Response:
    console = console_of(request)
    return console.render(request, "console/users.html", {
        "nav": "users", "users": console.accounts.list_users(), "roles": ROLES,
        "tokens": console.accounts.list_tokens(), "form": form or {},
        "messages": messages or [],
    }, status_code=status_code)


def _with_flash(request: Request, response: Response) -> Response:
    console_of(request).clear_cookie(response, FLASH_COOKIE)
    return response


def _user_id(text: str) -> int | None:
    """A row id from a path, or None: ASCII digits within the database's 32-bit ids."""
    if not (text.isascii() and text.isdigit() and len(text) <= 10):
        return None
    number = int(text)
    return number if 1 <= number <= 2**31 - 1 else None


@router.get("/users", include_in_schema=False)
def users_page(request: Request, view: SessionView = Depends(page_session)) -> Response:
    ensure_allowed(view.user, "users")
    return _with_flash(request, _users_page(request, messages=take_flash(request)))


@router.post("/users", include_in_schema=False)
def create_user(request: Request, username: str = Form(""), password: str = Form(""),
                role: str = Form(""), csrf_token: str = Form(""),
                view: SessionView = Depends(page_session)) -> Response:
    ensure_allowed(view.user, "users")
    check_csrf(view, csrf_token)
    try:
        user = console_of(request).accounts.create_user(username, password, role)
    except AccountError as exc:
        return _users_page(request, messages=[{"kind": "error", "text": str(exc)}],
                           form={"username": username, "role": role}, status_code=400)
    log_action(request, view.user.username, "user.create", target=user.username,
          detail={"role": user.role})
    return redirect_with_flash(request, "/users", f"Created {user.username} ({user.role}).")


@router.post("/users/{user_id}", include_in_schema=False)
def update_user(user_id: str, request: Request, role: str = Form(""),
                active: str = Form(""), csrf_token: str = Form(""),
                view: SessionView = Depends(page_session)) -> Response:
    ensure_allowed(view.user, "users")
    check_csrf(view, csrf_token)
    number = _user_id(user_id)
    try:
        if number is None:
            raise AccountError(f"no user with id {user_id[:20]!r}")
        user = console_of(request).accounts.update_user(number, role=role,
                                                         active=active == "on")
    except AccountError as exc:
        return _users_page(request, messages=[{"kind": "error", "text": str(exc)}],
                           status_code=400)
    state = "active" if user.active else "switched off"
    log_action(request, view.user.username, "user.update", target=user.username,
          detail={"role": user.role, "active": user.active})
    return redirect_with_flash(request, "/users", f"{user.username} is now {user.role}, {state}.")


@router.post("/users/{user_id}/password", include_in_schema=False)
def reset_password(user_id: str, request: Request, password: str = Form(""),
                   csrf_token: str = Form(""),
                   view: SessionView = Depends(page_session)) -> Response:
    ensure_allowed(view.user, "users")
    check_csrf(view, csrf_token)
    accounts = console_of(request).accounts
    number = _user_id(user_id)
    try:
        user = accounts.get_user(number) if number is not None else None
        if user is None:
            raise AccountError(f"no user with id {user_id[:20]!r}")
        accounts.set_password(user.id, password)
    except AccountError as exc:
        return _users_page(request, messages=[{"kind": "error", "text": str(exc)}],
                           status_code=400)
    log_action(request, view.user.username, "user.password_reset", target=user.username)
    return redirect_with_flash(request, "/users", f"New password set for {user.username}; "
                               "their sessions ended. Their API tokens were revoked.")


@router.post("/users/tokens/{token_id}/revoke", include_in_schema=False)
def admin_revoke_token(token_id: str, request: Request, csrf_token: str = Form(""),
                       view: SessionView = Depends(page_session)) -> Response:
    ensure_allowed(view.user, "users")
    check_csrf(view, csrf_token)
    try:
        number = _user_id(token_id)
        if number is None:
            raise AccountError(f"no API token with id {token_id[:20]!r}")
        console_of(request).accounts.revoke_token(number)
    except AccountError as exc:
        return _users_page(request, messages=[{"kind": "error", "text": str(exc)}],
                           status_code=400)
    log_action(request, view.user.username, "token.revoke", target=f"token {number}")
    return redirect_with_flash(request, "/users", "Token revoked.")


# --- the signed-in user's own account ---------------------------------------------------

def _account_page(request: Request, view: SessionView, *,
                  messages: list[dict[str, str]] | None = None, new_token: str = "",
                  status_code: int = 200) -> Response:
    console = console_of(request)
    context: dict[str, Any] = {
        "nav": "account", "tokens": console.accounts.list_tokens(view.user.id),
        "messages": messages or [], "new_token": new_token,
    }
    return console.render(request, "console/account.html", context, status_code=status_code)


@router.get("/account", include_in_schema=False)
def account_page(request: Request, view: SessionView = Depends(page_session)) -> Response:
    return _with_flash(request, _account_page(request, view, messages=take_flash(request)))


@router.post("/account/password", include_in_schema=False)
def change_password(request: Request, current: str = Form(""), password: str = Form(""),
                    confirm: str = Form(""), csrf_token: str = Form(""),
                    view: SessionView = Depends(page_session)) -> Response:
    check_csrf(view, csrf_token)
    accounts = console_of(request).accounts
    error = ""
    if password != confirm:
        error = "The new password and its confirmation differ."
    else:
        check = accounts.authenticate(view.user.username, current, ip=client_ip(request))
        if check.locked_for_s:
            error = (f"Too many wrong passwords; try again in about "
                     f"{max(1, round(check.locked_for_s / 60))} min.")
        elif not check.ok:
            error = "The current password is wrong."
    if not error:
        try:
            accounts.set_password(view.user.id, password)
        except AccountError as exc:
            error = str(exc)
    if error:
        return _account_page(request, view, messages=[{"kind": "error", "text": error}],
                             status_code=400)
    log_action(request, view.user.username, "account.password", target=view.user.username)
    return redirect_with_flash(request, "/login", "Password changed; sign in with the new one.")


@router.post("/account/tokens", include_in_schema=False)
def create_token(request: Request, name: str = Form(""), csrf_token: str = Form(""),
                 view: SessionView = Depends(page_session)) -> Response:
    check_csrf(view, csrf_token)
    try:
        token, _ = console_of(request).accounts.create_token(view.user.id, name)
    except AccountError as exc:
        return _account_page(request, view, messages=[{"kind": "error", "text": str(exc)}],
                             status_code=400)
    log_action(request, view.user.username, "token.create", target=name.strip())
    return _account_page(request, view, new_token=token, messages=[{
        "kind": "ok", "text": f"Token {name.strip()!r} created. Copy it now: it is not shown "
                              "again."}])


@router.post("/account/tokens/{token_id}/revoke", include_in_schema=False)
def revoke_token(token_id: str, request: Request, csrf_token: str = Form(""),
                 view: SessionView = Depends(page_session)) -> Response:
    check_csrf(view, csrf_token)
    try:
        number = _user_id(token_id)
        if number is None:
            raise AccountError(f"no API token with id {token_id[:20]!r}")
        console_of(request).accounts.revoke_token(number, user_id=view.user.id)
    except AccountError as exc:
        return _account_page(request, view, messages=[{"kind": "error", "text": str(exc)}],
                             status_code=400)
    log_action(request, view.user.username, "token.revoke", target=f"token {number}")
    return redirect_with_flash(request, "/account", "Token revoked.")
