"""What a security review of the console found, kept fixed: keypad digits in the timeline,
races (admins demoting each other, parallel password guesses), inputs that used to give a
500 or a wrong 503, tokens surviving a password change, user names differing in case,
and missing security headers."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from admin.accounts import AccountError, AccountRepository, UserView
from switchboard.conversation.turns import TurnRecord
from switchboard.storage.repository import CallRepository
from tests.admin.conftest import BASE_URL, PASSWORD, csrf_of, sign_in

ClientAs = Callable[[str], tuple[TestClient, UserView]]
CARD = "4111111111111111"


def test_keypad_digits_of_a_card_number_stay_hidden(client_as: ClientAs,
                                                    console_db: sessionmaker[Session]) -> None:
    calls = CallRepository(console_db)
    call_id = calls.create_call(transport="sip", caller="+15550100")
    for digit in CARD + "#":
        calls.add_event(call_id, "dtmf", {"digit": digit})
    calls.add_turn(call_id, TurnRecord(speaker="caller", text=f"[keypad] {CARD}",
                                       started_at=datetime.now(UTC)))
    calls.end_call(call_id, reason="caller_hangup")
    agent, _ = client_as("agent")
    page = agent.get(f"/calls/{call_id}").text
    api = agent.get(f"/api/calls/{call_id}").json()
    assert "[keypad] [card]" in page
    digits = "".join(e["data"]["digit"] for e in api["events"] if e["kind"] == "dtmf")
    assert digits == "•" * len(CARD) + "#"
    for shown in (page, str(api)):
        assert "4111" not in shown.replace(" ", "")


def test_two_admins_demoting_each_other_at_once_leave_one_admin(
        accounts: AccountRepository) -> None:
    ada = accounts.create_user("ada", PASSWORD, "admin")
    bob = accounts.create_user("bob", PASSWORD, "admin")
    start = threading.Barrier(2)

    def demote(user: UserView) -> str:
        start.wait()
        try:
            accounts.update_user(user.id, role="agent", active=True)
        except AccountError as exc:
            return str(exc)
        return "demoted"

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(demote, [ada, bob]))
    assert results.count("demoted") == 1, results
    assert any("last active admin" in result for result in results), results
    assert accounts.count_active_admins() == 1


def test_parallel_guesses_cannot_exceed_the_failed_login_limit(
        accounts: AccountRepository, monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight guesses at once, in the worst order: every one is recorded before any is
    counted. At most the limit are checked, and the name is locked afterwards."""
    accounts.create_user("carol", PASSWORD, "agent")
    start, recorded = threading.Barrier(8), threading.Barrier(8)
    count = accounts._locked_for

    def count_after_all_recorded(*args: Any) -> float:
        with contextlib.suppress(threading.BrokenBarrierError):
            recorded.wait(timeout=5)
        return count(*args)

    monkeypatch.setattr(accounts, "_locked_for", count_after_all_recorded)

    def guess(n: int) -> bool:
        start.wait()
        return accounts.authenticate("carol", f"wrong guess {n}", ip=f"10.0.0.{n}"
                                     ).locked_for_s == 0

    with ThreadPoolExecutor(8) as pool:
        checked = sum(pool.map(guess, range(8)))
    assert checked <= accounts.max_failures  # the rest were refused without a check
    monkeypatch.setattr(accounts, "_locked_for", count)
    assert accounts.authenticate("carol", PASSWORD, ip="10.0.1.1").locked_for_s > 0


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/calls?until=9999-12-31", 200),
    ("GET", "/api/calls?until=9999-12-31", 200),
    # the calendar's ends: figures (of no call), not an error
    ("GET", "/api/aggregates?until=9999-12-31", 200),
    ("GET", "/api/aggregates?until=0001-01-03", 200),
    ("GET", "/api/aggregates?since=0001-01-01T00:00:00%2B14:00&until=0001-01-02", 200),
    ("GET", "/calls?q=a%00b", 400),
    ("GET", "/calls/a%00", 400),
    ("GET", "/api/calls/a%00b", 400),
    ("POST", "/users/%C2%B2", 400),
    ("POST", "/users/99999999999", 400),
    ("POST", "/account/tokens/%C2%B2/revoke", 400),
    ("POST", "/account/tokens/99999999999/revoke", 400),
    ("PATCH", "/api/users/99999999999999999999", 422),
    ("PATCH", "/api/users/2147483648", 422),
])
def test_odd_input_gets_a_clear_answer_not_a_500(client_as: ClientAs,
                                                 accounts: AccountRepository, method: str,
                                                 path: str, status: int) -> None:
    admin, user = client_as("admin")
    csrf = csrf_of(admin.get("/account").text)
    if method == "POST":
        response = admin.post(path, data={"csrf_token": csrf, "role": "agent"})
    elif method == "PATCH":  # the API changes things only with a token
        token, _ = accounts.create_token(user.id, "test")
        response = admin.patch(path, json={"role": "agent", "active": True},
                               headers={"Authorization": f"Bearer {token}"})
    else:
        response = admin.get(path)
    assert response.status_code == status, (path, response.text[:300])


def test_a_non_ascii_csrf_token_is_refused_not_a_crash(client_as: ClientAs) -> None:
    client, _ = client_as("agent")
    response = client.post("/logout", data={"csrf_token": "é"}, follow_redirects=False)
    assert response.status_code == 403
    assert client.get("/calls").status_code == 200  # still signed in


def test_a_new_password_revokes_api_tokens_and_lifts_the_lock(
        accounts: AccountRepository, console_app: FastAPI) -> None:
    user = accounts.create_user("dave", PASSWORD, "supervisor")
    token, _ = accounts.create_token(user.id, "script")
    for _ in range(accounts.max_failures):
        accounts.authenticate("dave", "not it at all", ip=None)
    assert accounts.authenticate("dave", PASSWORD, ip=None).locked_for_s > 0
    accounts.set_password(user.id, "a brand new password")
    assert accounts.user_for_token(token) is None
    assert accounts.authenticate("dave", "a brand new password", ip=None).ok


def test_user_names_are_one_person_whatever_their_case(accounts: AccountRepository,
                                                       console_app: FastAPI) -> None:
    accounts.create_user("Erin", PASSWORD, "agent")
    with pytest.raises(AccountError, match="already exists"):
        accounts.create_user("erin", PASSWORD, "agent")
    client = TestClient(console_app, base_url=BASE_URL)
    sign_in(client, "ERIN")
    assert client.get("/api/me").json()["username"] == "Erin"


def test_pages_say_they_may_not_be_framed_or_cached(client_as: ClientAs) -> None:
    client, _ = client_as("agent")
    for path in ("/login", "/calls", "/api/me"):
        headers = client.get(path).headers
        assert headers["x-frame-options"] == "DENY", path
        assert "frame-ancestors 'none'" in headers["content-security-policy"], path
        assert headers["cache-control"] == "no-store", path
        assert headers["x-content-type-options"] == "nosniff", path


def test_a_form_sent_after_the_session_ended_leads_back_to_a_page(
        client_as: ClientAs, accounts: AccountRepository) -> None:
    client, user = client_as("agent")
    csrf = csrf_of(client.get("/account").text)
    accounts.set_password(user.id, "another good password")  # ends every session
    response = client.post("/account/tokens", data={"csrf_token": csrf, "name": "x"},
                           follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/login"


def test_signing_in_again_ends_the_earlier_session(console_app: FastAPI,
                                                   accounts: AccountRepository) -> None:
    accounts.create_user("fay", PASSWORD, "agent")
    accounts.create_user("gus", PASSWORD, "agent")
    client = TestClient(console_app, base_url=BASE_URL)
    sign_in(client, "fay")
    first = client.cookies.get("switchboard_session")
    assert first and accounts.session_for(first) is not None
    # a login form opened earlier (another tab), sent while signed in as fay
    form = TestClient(console_app, base_url=BASE_URL)
    token = csrf_of(form.get("/login").text)
    login_cookie = form.cookies.get("switchboard_login_csrf")
    again = TestClient(console_app, base_url=BASE_URL, headers={
        "Cookie": f"switchboard_session={first}; switchboard_login_csrf={login_cookie}"})
    response = again.post("/login", data={"username": "gus", "password": PASSWORD,
                                          "csrf_token": token}, follow_redirects=False)
    assert response.status_code == 303
    assert accounts.session_for(first) is None
