"""Signing in and out of the console: the session cookie, wrong passwords, the failed-login
limit, CSRF on every form, safe redirects, password hashing, roles, and that no route of
the app answers anyone who has not signed in."""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from html import unescape
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import soundfile as sf
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker
from starlette.routing import Mount

from admin.accounts import IP_FAILURE_FACTOR, AccountRepository, UserView
from admin.app import create_app
from admin.console import install_console
from admin.security import SESSION_COOKIE
from switchboard.base.settings import Settings
from switchboard.node import Node
from switchboard.storage.models import ApiToken, ConsoleSession, LoginFailure, User
from switchboard.storage.repository import CallRepository
from tests.admin.conftest import (
    BASE_URL,
    PASSWORD,
    csrf_of,
    login,
    page_text,
    sign_in,
    signed_in,
)
from tests.analytics.calls import order_call, store_call
from tests.support.fakes import FakeDialog, FakeSTT, FakeTTS

if TYPE_CHECKING:  # the test client's responses
    from httpx2 import Response

ClientAs = Callable[[str], tuple[TestClient, UserView]]

WRONG = "not the password"
DAY1 = datetime(2026, 3, 2, 9, tzinfo=UTC)


def _session_cookie_header(response: Response) -> list[str]:
    """The attributes of the response's session cookie, lower case, value first."""
    headers = [h for h in response.headers.get_list("set-cookie")
               if h.startswith(f"{SESSION_COOKIE}=")]
    assert len(headers) == 1, response.headers.get_list("set-cookie")
    return [part.strip().lower() for part in headers[0].split(";")]


@pytest.fixture
def client(console_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(console_app, base_url=BASE_URL) as fresh:
        yield fresh


# --- signing in ------------------------------------------------------------------------

def test_sign_in_sets_an_http_only_secure_lax_session_cookie(
        client: TestClient, accounts: AccountRepository) -> None:
    accounts.create_user("alice", PASSWORD, "agent")
    response = login(client, "alice", next_path="/account")

    assert response.status_code == 303 and response.headers["location"] == "/account"
    attributes = _session_cookie_header(response)
    assert attributes[0] != f"{SESSION_COOKIE}=" and len(attributes[0]) > 40
    assert "httponly" in attributes and "secure" in attributes
    assert "samesite=lax" in attributes and "path=/" in attributes
    assert "max-age=43200" in attributes  # console_session_hours: 12
    page = client.get("/account")
    assert page.status_code == 200 and 'id="whoami">alice' in page.text


def test_without_secure_cookies_the_cookie_is_not_secure_and_works_over_http(
        tmp_path: Path, console_db: sessionmaker[Session]) -> None:
    settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'console.db'}",
                        console_secure_cookies=False)
    app = FastAPI()
    install_console(app, settings, console_db)
    app.state.console.accounts.create_user("alice", PASSWORD, "agent")
    with TestClient(app, base_url="http://console.example") as plain:
        page = plain.get("/login")
        assert "SECURE_COOKIES" not in page.text  # no warning: the cookie will stick
        response = login(plain, "alice")
        assert response.status_code == 303
        attributes = _session_cookie_header(response)
        assert "secure" not in attributes
        assert "httponly" in attributes and "samesite=lax" in attributes
        assert signed_in(plain)


def test_a_secure_cookie_over_plain_http_is_explained_on_the_login_page(
        console_app: FastAPI) -> None:
    with TestClient(console_app, base_url="http://console.example") as plain:
        page = plain.get("/login")
    assert page.status_code == 200
    assert "SWITCHBOARD_CONSOLE_SECURE_COOKIES=false" in page.text


def test_a_wrong_password_is_refused(client: TestClient, accounts: AccountRepository) -> None:
    accounts.create_user("alice", PASSWORD, "agent")
    response = login(client, "alice", WRONG)

    assert response.status_code == 401
    assert "Wrong user name or password" in page_text(response)
    assert not [h for h in response.headers.get_list("set-cookie")
                if h.startswith(f"{SESSION_COOKIE}=")]
    assert 'value="alice"' in response.text  # the name stays in the form
    assert WRONG not in response.text
    assert not signed_in(client)


def test_an_unknown_user_gets_the_same_answer(client: TestClient) -> None:
    response = login(client, "nobody", PASSWORD)
    assert response.status_code == 401
    assert "Wrong user name or password" in page_text(response)
    assert not signed_in(client)


def test_an_empty_form_is_refused_with_a_message(client: TestClient) -> None:
    page = client.get("/login")
    response = client.post("/login", data={"csrf_token": csrf_of(page.text)},
                           follow_redirects=False)
    assert response.status_code == 400
    assert "Enter your user name and password" in page_text(response)


def test_a_switched_off_user_cannot_sign_in(client: TestClient,
                                            accounts: AccountRepository) -> None:
    user = accounts.create_user("alice", PASSWORD, "agent")
    accounts.update_user(user.id, role="agent", active=False)
    response = login(client, "alice")
    assert response.status_code == 401
    assert "Wrong user name or password" in page_text(response)
    assert not signed_in(client)


# --- the failed-login limit -------------------------------------------------------------

def test_three_failures_lock_the_name_even_for_the_right_password(
        console_app: FastAPI, client: TestClient, accounts: AccountRepository) -> None:
    accounts.create_user("alice", PASSWORD, "agent")
    accounts.create_user("bob", PASSWORD, "agent")
    for _ in range(3):  # console_login_max_failures=3
        assert login(client, "alice", WRONG).status_code == 401

    refused = login(client, "alice")
    assert refused.status_code == 429
    assert "Too many failed sign-ins" in page_text(refused)
    assert "about 15 minutes" in page_text(refused)  # the default 15-minute window
    assert not signed_in(client)
    # the name is locked however it is typed
    assert login(client, " ALICE ").status_code == 429
    # another user, from the same address, is not affected
    with TestClient(console_app, base_url=BASE_URL) as other:
        assert login(other, "bob").status_code == 303
        assert signed_in(other)


def test_the_lock_ends_when_the_failures_leave_the_window(
        client: TestClient, accounts: AccountRepository,
        console_db: sessionmaker[Session]) -> None:
    accounts.create_user("alice", PASSWORD, "agent")
    for _ in range(3):
        login(client, "alice", WRONG)
    assert login(client, "alice").status_code == 429
    with console_db() as session:
        session.execute(update(LoginFailure).values(
            at=datetime.now(UTC) - timedelta(minutes=16)))
        session.commit()
    assert login(client, "alice").status_code == 303


def test_a_successful_sign_in_before_the_limit_resets_the_count(
        console_app: FastAPI, client: TestClient, accounts: AccountRepository) -> None:
    accounts.create_user("alice", PASSWORD, "agent")
    for _ in range(2):
        assert login(client, "alice", WRONG).status_code == 401
    with TestClient(console_app, base_url=BASE_URL) as other:
        assert login(other, "alice").status_code == 303
    for _ in range(2):  # four failures in the window, but only two since the success
        assert login(client, "alice", WRONG).status_code == 401
    assert login(client, "alice").status_code == 303


def test_one_address_may_not_walk_through_many_names(
        console_app: FastAPI, accounts: AccountRepository) -> None:
    """Four times the per-name limit from one address locks that address, not others."""
    accounts.create_user("bob", PASSWORD, "agent")
    with TestClient(console_app, base_url=BASE_URL, client=("203.0.113.7", 50000)) as attacker:
        for n in range(IP_FAILURE_FACTOR):  # 3 failures for each of 4 names: 12 in all
            for _ in range(3):
                assert login(attacker, f"name{n}", WRONG).status_code == 401
        assert login(attacker, "bob").status_code == 429
    with TestClient(console_app, base_url=BASE_URL, client=("198.51.100.2", 50000)) as office:
        assert login(office, "bob").status_code == 303


# --- CSRF on the sign-in form -----------------------------------------------------------

@pytest.mark.parametrize("token", [None, "", "forged-token"])
def test_the_login_form_needs_its_csrf_token(client: TestClient, accounts: AccountRepository,
                                             token: str | None) -> None:
    accounts.create_user("alice", PASSWORD, "agent")
    client.get("/login")  # the CSRF cookie is set, but the form does not carry its value
    data = {"username": "alice", "password": PASSWORD}
    if token is not None:
        data["csrf_token"] = token
    response = client.post("/login", data=data, follow_redirects=False)

    assert response.status_code == 400
    assert "The sign-in form expired" in page_text(response)
    assert not [h for h in response.headers.get_list("set-cookie")
                if h.startswith(f"{SESSION_COOKIE}=")]
    assert not signed_in(client)


def test_a_login_token_without_its_cookie_is_refused(
        console_app: FastAPI, client: TestClient, accounts: AccountRepository) -> None:
    """A cross-site form cannot reuse a token it got on another client."""
    accounts.create_user("alice", PASSWORD, "agent")
    token = csrf_of(client.get("/login").text)
    with TestClient(console_app, base_url=BASE_URL) as forger:
        response = forger.post("/login", data={"username": "alice", "password": PASSWORD,
                                               "csrf_token": token}, follow_redirects=False)
        assert response.status_code == 400
        assert not signed_in(forger)


# --- signing out ------------------------------------------------------------------------

def test_logout_needs_post_with_the_csrf_token(console_app: FastAPI,
                                               client_as: ClientAs) -> None:
    client, _ = client_as("agent")
    old_cookie = client.cookies.get(SESSION_COOKIE)
    assert old_cookie

    for data in ({}, {"csrf_token": "forged"}):
        refused = client.post("/logout", data=data, follow_redirects=False)
        assert refused.status_code == 403
        assert "CSRF check failed" in page_text(refused)
        assert signed_in(client)
    assert client.get("/logout", follow_redirects=False).status_code == 405
    assert signed_in(client)

    csrf = csrf_of(client.get("/account").text)
    response = client.post("/logout", data={"csrf_token": csrf}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/login"
    cleared = _session_cookie_header(response)
    assert cleared[0] in (f"{SESSION_COOKIE}=", f'{SESSION_COOKIE}=""')
    assert "max-age=0" in cleared
    assert not signed_in(client)

    # the old cookie value is dead on the server, not only forgotten by the browser
    with TestClient(console_app, base_url=BASE_URL,
                    cookies={SESSION_COOKIE: old_cookie}) as replay:
        again = replay.get("/account", follow_redirects=False)
        assert again.status_code == 303
        assert again.headers["location"].startswith("/login")
        assert replay.get("/api/me").status_code == 401


# --- where sign-in sends you ------------------------------------------------------------

def test_the_login_redirect_returns_to_the_page_asked_for(client: TestClient,
                                                         accounts: AccountRepository) -> None:
    accounts.create_user("alice", PASSWORD, "agent")
    asked = client.get("/calls?outcome=resolved&q=a+b", follow_redirects=False)
    assert asked.status_code == 303
    assert asked.headers["location"].startswith("/login?next=")

    page = client.get(asked.headers["location"])
    match = re.search(r'name="next" value="([^"]*)"', page.text)
    assert match and unescape(match.group(1)) == "/calls?outcome=resolved&q=a+b"
    response = client.post("/login", data={
        "username": "alice", "password": PASSWORD, "csrf_token": csrf_of(page.text),
        "next": unescape(match.group(1))}, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/calls?outcome=resolved&q=a+b"


EVIL_NEXT = [
    "https://evil.example", "https://evil.example/login", "//evil.example",
    "//evil.example/calls", "///evil.example", "/\\evil.example", "\\\\evil.example",
    "/\t/evil.example", "http:/evil.example", "javascript:alert(1)", "evil.example",
]


def _stays_on_site(location: str) -> bool:
    return (location.startswith("/") and location[1:2] not in ("/", "\\")
            and not re.search(r"[\s\\]", location))


@pytest.mark.parametrize("target", EVIL_NEXT)
def test_next_only_goes_to_paths_of_this_site(client: TestClient,
                                              accounts: AccountRepository,
                                              target: str) -> None:
    accounts.create_user("alice", PASSWORD, "agent")
    response = login(client, "alice", next_path=target)
    assert response.status_code == 303
    assert _stays_on_site(response.headers["location"]), response.headers["location"]
    if target.startswith(("https:", "//", "http:", "javascript:")):
        assert response.headers["location"] == "/"
    # signed in already: the login page redirects the same way
    again = client.get("/login", params={"next": target}, follow_redirects=False)
    assert again.status_code == 303
    assert _stays_on_site(again.headers["location"]), again.headers["location"]


# --- what the database keeps --------------------------------------------------------------

def test_passwords_and_secrets_are_stored_hashed(
        tmp_path: Path, client_as: ClientAs, accounts: AccountRepository,
        console_db: sessionmaker[Session]) -> None:
    client, user = client_as("admin")
    token, _ = accounts.create_token(user.id, "ci")
    accounts.create_user("bob", "another fine password", "agent")
    cookie = client.cookies.get(SESSION_COOKIE)
    assert cookie

    with console_db() as session:
        hashes = list(session.scalars(select(User.password_hash)))
        session_hashes = list(session.scalars(select(ConsoleSession.token_hash)))
        token_hashes = list(session.scalars(select(ApiToken.token_hash)))
    assert len(hashes) == 2
    assert all(h.startswith("$argon2id$") for h in hashes), hashes
    assert not any(PASSWORD in h or "another fine password" in h for h in hashes)
    assert cookie not in session_hashes and token not in token_hashes

    files = list(tmp_path.glob("console.db*"))
    assert files
    for path in files:  # the database file and any journal beside it
        data = path.read_bytes()
        for secret in (PASSWORD, "another fine password", cookie, token):
            assert secret.encode() not in data, f"{secret!r} in {path.name}"


# --- every route needs a sign-in ----------------------------------------------------------

def _routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, concrete path) of every HTTP route, path parameters filled in; fails on a
    kind of route this test does not know how to check."""
    found: list[tuple[str, str]] = []
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if isinstance(route, Mount):
            assert route.path == "/static", f"unchecked mount {route.path}: add a check for it"
            continue
        path = context.path_format or context.path
        assert path is not None, route
        methods = context.methods
        assert methods, f"{path} is not an HTTP route: add a check for it"
        concrete = re.sub(r"\{[^}]+\}", "1", path)
        found.extend((method, concrete) for method in sorted(methods) if method != "HEAD")
    return found


def _assert_all_refuse_anonymous(app: FastAPI, public: set[str]) -> int:
    checked = 0
    with TestClient(app, base_url=BASE_URL) as anonymous:
        for method, path in _routes(app):
            if path in public:
                continue
            response = anonymous.request(method, path, follow_redirects=False)
            where = f"{method} {path}"
            if path.startswith("/api/"):
                assert response.status_code == 401, (where, response.status_code)
                assert response.headers.get("www-authenticate") == "Bearer", where
                assert "error" in response.json(), where
            else:
                assert response.status_code == 303, (where, response.status_code)
                assert response.headers["location"].startswith("/login"), where
            checked += 1
        # unknown paths and methods reveal nothing either
        for method, path in (("GET", "/no-such-page"), ("DELETE", "/calls"),
                             ("GET", "/api/no-such-thing"), ("PUT", "/api/users")):
            response = anonymous.request(method, path, follow_redirects=False)
            assert response.status_code == (401 if path.startswith("/api/") else 303), path
    return checked


def test_every_console_route_refuses_an_anonymous_client(console_app: FastAPI) -> None:
    # The routes FastAPI() itself adds (docs, openapi.json) belong to the test fixture's app;
    # the real web app is checked below.
    framework = {path for _, path in _routes(FastAPI())}
    checked = _assert_all_refuse_anonymous(console_app, public={"/login"} | framework)
    assert checked >= 25  # pages, forms and the API: the enumeration found them


@pytest.mark.parametrize("softphone_public", [True, False])
def test_every_route_of_the_web_app_refuses_an_anonymous_client(tmp_path: Path,
                                                                 softphone_public: bool) -> None:
    """The app the server runs: only sign-in, the health probe, the metrics (aggregates
    for a scraper, no numbers or call ids), static files and (unless
    SWITCHBOARD_SOFTPHONE_PUBLIC=false) the softphone, the bot's public phone line."""
    settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'web.db'}",
                        softphone_public=softphone_public)
    node = Node.create(settings, stt=FakeSTT([]), tts=FakeTTS(),
                       dialog=FakeDialog(lambda message: []), analytics=False)
    app = create_app(node)
    public = {"/login", "/healthz", "/metrics"}
    if softphone_public:
        public |= {"/softphone", "/softphone/offer"}
    checked = _assert_all_refuse_anonymous(app, public)
    assert checked >= 25


# --- roles ------------------------------------------------------------------------------

@pytest.mark.parametrize("role", ["agent", "supervisor"])
def test_only_admins_manage_users(client_as: ClientAs, accounts: AccountRepository,
                                  role: str) -> None:
    client, user = client_as(role)
    token, token_view = accounts.create_token(user.id, "mine")

    page = client.get("/users")
    assert page.status_code == 403 and "cannot open user management" in page_text(page)
    csrf = csrf_of(client.get("/account").text)
    forms: list[tuple[str, dict[str, str]]] = [
        ("/users", {"username": "mallory", "password": PASSWORD, "role": "admin"}),
        (f"/users/{user.id}", {"role": "admin", "active": "on"}),
        (f"/users/{user.id}/password", {"password": "taken over password"}),
        (f"/users/tokens/{token_view.id}/revoke", {}),
    ]
    for path, data in forms:
        response = client.post(path, data={**data, "csrf_token": csrf}, follow_redirects=False)
        assert response.status_code == 403, path
    assert client.get("/api/users").status_code == 403
    with TestClient(client.app, base_url=BASE_URL,
                    headers={"Authorization": f"Bearer {token}"}) as api:
        assert api.get("/api/users").status_code == 403
        created = api.post("/api/users", json={"username": "mallory", "password": PASSWORD,
                                               "role": "admin"})
        assert created.status_code == 403 and "error" in created.json()
        promoted = api.patch(f"/api/users/{user.id}", json={"role": "admin", "active": True})
        assert promoted.status_code == 403
    assert accounts.find_user("mallory") is None
    assert [(u.username, u.role) for u in accounts.list_users()] == [(user.username, role)]
    assert accounts.authenticate(user.username, PASSWORD, ip=None).ok
    assert accounts.list_tokens()[0].revoked_at is None


@pytest.fixture
def recorded_call(console_db: sessionmaker[Session], tmp_path: Path) -> tuple[str, bytes]:
    call_id = store_call(console_db, order_call(DAY1))
    wav = tmp_path / "recording.wav"
    tone = (np.sin(2 * np.pi * 440 * np.arange(8000) / 8000) * 8000).astype(np.int16)
    sf.write(wav, tone, 8000, subtype="PCM_16")
    CallRepository(console_db).set_recording(call_id, str(wav))
    return call_id, wav.read_bytes()


def test_agents_do_not_get_recordings(client_as: ClientAs, accounts: AccountRepository,
                                      recorded_call: tuple[str, bytes]) -> None:
    call_id, _ = recorded_call
    client, user = client_as("agent")
    token, _ = accounts.create_token(user.id, "mine")

    page = client.get(f"/calls/{call_id}")
    assert page.status_code == 200
    assert "recording-restricted" in page.text and "<audio" not in page.text
    refused = client.get(f"/calls/{call_id}/recording")
    assert refused.status_code == 403 and "call recordings" in page_text(refused)
    assert b"RIFF" not in refused.content
    assert client.get(f"/api/calls/{call_id}/recording").status_code == 403
    with TestClient(client.app, base_url=BASE_URL,
                    headers={"Authorization": f"Bearer {token}"}) as api:
        response = api.get(f"/api/calls/{call_id}/recording")
        assert response.status_code == 403 and response.json()["error"]


@pytest.mark.parametrize("role", ["supervisor", "admin"])
def test_supervisors_and_admins_get_the_wav(client_as: ClientAs, accounts: AccountRepository,
                                            recorded_call: tuple[str, bytes],
                                            role: str) -> None:
    call_id, wav = recorded_call
    client, user = client_as(role)
    token, _ = accounts.create_token(user.id, "mine")

    page = client.get(f"/calls/{call_id}")
    assert f'src="/calls/{call_id}/recording"' in page.text
    response = client.get(f"/calls/{call_id}/recording")
    assert response.status_code == 200
    assert response.headers["content-type"] == "audio/wav"
    assert response.content == wav
    data, rate = sf.read(io.BytesIO(response.content), dtype="int16")
    assert rate == 8000 and len(data) == 8000
    partial = client.get(f"/calls/{call_id}/recording", headers={"Range": "bytes=0-3"})
    assert partial.status_code == 206 and partial.content == b"RIFF"
    with TestClient(client.app, base_url=BASE_URL,
                    headers={"Authorization": f"Bearer {token}"}) as api:
        via_api = api.get(f"/api/calls/{call_id}/recording")
        assert via_api.status_code == 200 and via_api.content == wav


def test_a_call_without_a_recording_says_so(client_as: ClientAs,
                                            console_db: sessionmaker[Session]) -> None:
    call_id = store_call(console_db, order_call(DAY1))
    client, _ = client_as("supervisor")
    assert "no-recording" in client.get(f"/calls/{call_id}").text
    assert client.get(f"/calls/{call_id}/recording").status_code == 404
    assert client.get(f"/api/calls/{call_id}/recording").status_code == 404


def _save_user(admin: TestClient, user: UserView, *, role: str,
               active: bool) -> Response:
    csrf = csrf_of(admin.get("/users").text)
    data = {"role": role, "csrf_token": csrf, **({"active": "on"} if active else {})}
    return admin.post(f"/users/{user.id}", data=data, follow_redirects=False)


def test_a_user_switched_off_is_signed_out_at_once(console_app: FastAPI, client_as: ClientAs,
                                                   accounts: AccountRepository) -> None:
    admin, _ = client_as("admin")
    agent, agent_user = client_as("agent")
    token, _ = accounts.create_token(agent_user.id, "mine")
    assert signed_in(agent)

    response = _save_user(admin, agent_user, role="agent", active=False)
    assert response.status_code == 303
    assert "switched off" in page_text(admin.get("/users"))

    assert not signed_in(agent)
    with TestClient(console_app, base_url=BASE_URL,
                    headers={"Authorization": f"Bearer {token}"}) as api:
        assert api.get("/api/me").status_code == 401
    with TestClient(console_app, base_url=BASE_URL) as again:
        assert login(again, agent_user.username).status_code == 401


def test_changing_a_role_ends_the_sessions(console_app: FastAPI, client_as: ClientAs,
                                           recorded_call: tuple[str, bytes]) -> None:
    call_id, _ = recorded_call
    admin, _ = client_as("admin")
    agent, agent_user = client_as("agent")

    # saving without a change keeps the user signed in
    assert _save_user(admin, agent_user, role="agent", active=True).status_code == 303
    assert signed_in(agent)

    assert _save_user(admin, agent_user, role="supervisor", active=True).status_code == 303
    assert not signed_in(agent)
    sign_in(agent, agent_user.username)
    assert 'class="role">supervisor' in agent.get("/account").text
    assert agent.get(f"/calls/{call_id}/recording").status_code == 200


# --- CSRF on every form that changes something -------------------------------------------

def _state(sessions: sessionmaker[Session]) -> dict[str, Any]:
    with sessions() as session:
        return {
            "users": sorted(session.execute(select(
                User.username, User.role, User.active, User.password_hash)).all()),
            "tokens": sorted(session.execute(select(ApiToken.id, ApiToken.revoked_at)).all()),
            "sessions": session.scalar(select(func.count()).select_from(ConsoleSession)),
        }


CSRF_FORMS = [
    ("/users", {"username": "mallory", "password": PASSWORD, "role": "admin"}),
    ("/users/{bob}", {"role": "admin", "active": "on"}),
    ("/users/{bob}", {"role": "agent"}),  # switch bob off
    ("/users/{bob}/password", {"password": "hijacked password"}),
    ("/account/password", {"current": PASSWORD, "password": "hijacked password",
                           "confirm": "hijacked password"}),
    ("/account/tokens", {"name": "evil"}),
    ("/account/tokens/{own_token}/revoke", {}),
    ("/users/tokens/{bob_token}/revoke", {}),
    ("/logout", {}),
]


@pytest.mark.parametrize(("path", "data"), CSRF_FORMS, ids=[
    "create-user", "promote", "switch-off", "reset-password", "own-password", "new-token",
    "revoke-own-token", "revoke-any-token", "logout"])
def test_every_form_needs_the_csrf_token(client_as: ClientAs, accounts: AccountRepository,
                                         console_db: sessionmaker[Session], path: str,
                                         data: dict[str, str]) -> None:
    admin, admin_user = client_as("admin")
    bob_client, bob = client_as("agent")
    _, own_token = accounts.create_token(admin_user.id, "mine")
    _, bob_token = accounts.create_token(bob.id, "bob's")
    target = path.format(bob=bob.id, own_token=own_token.id, bob_token=bob_token.id)
    before = _state(console_db)
    bob_csrf = csrf_of(bob_client.get("/account").text)

    for csrf in (None, "", "forged", bob_csrf):  # none, empty, made up, another session's
        form = dict(data) if csrf is None else {**data, "csrf_token": csrf}
        response = admin.post(target, data=form, follow_redirects=False)
        assert response.status_code == 403, (csrf, response.status_code)
        assert "CSRF check failed" in page_text(response)
        assert _state(console_db) == before
    assert signed_in(admin) and signed_in(bob_client)

    # and with the token the same form goes through (the test sends what the form sends)
    own_csrf = csrf_of(admin.get("/account").text)
    done = admin.post(target, data={**data, "csrf_token": own_csrf}, follow_redirects=False)
    assert done.status_code in (200, 303), done.text
    assert _state(console_db) != before
