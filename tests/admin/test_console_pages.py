"""The console's pages: the calls list (filters, paging, bad input), a call's detail
(transcript, latencies, events, analysis, redaction), user management and the account
page (API tokens, password)."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from html import unescape
from typing import TYPE_CHECKING

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from admin.accounts import AccountRepository, UserView
from analytics.analysis import analyze
from switchboard.storage.models import Call
from switchboard.storage.repository import AnalysisRepository, CallRepository
from tests.admin.conftest import (
    BASE_URL,
    PASSWORD,
    can_sign_in,
    csrf_of,
    page_text,
    sign_in,
    signed_in,
)
from tests.analytics.calls import CallSpec, Said, order_call, store_call

if TYPE_CHECKING:  # the test client's responses
    from httpx2 import Response

ClientAs = Callable[[str], tuple[TestClient, UserView]]

DAY1 = datetime(2026, 3, 2, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)
NEW_PASSWORD = "a brand new password"
CARD_TURN = "My card is 4111 1111 1111 1111 and my email is jane.doe@example.com, thanks."


def _ids(response: Response) -> list[str]:
    return re.findall(r'data-call-id="([^"]+)"', response.text)


def store(sessions: sessionmaker[Session], spec: CallSpec, *, caller: str = "+15550100",
          transport: str = "sip", analysed: bool = True) -> str:
    """A stored call with the given caller and channel, analysed unless told otherwise."""
    call_id = store_call(sessions, spec)
    with sessions() as session:
        call = session.get(Call, call_id)
        assert call is not None
        call.caller, call.transport = caller, transport
        session.commit()
    if analysed:
        stored = CallRepository(sessions).get_call(call_id)
        assert stored is not None
        AnalysisRepository(sessions).save(analyze(stored).as_row())
    return call_id


def broken_call(start: datetime) -> CallSpec:
    return CallSpec(
        start=start, length_s=12, reason="dialog_unavailable", status="failed", turns=[
            Said("bot", "Hello, how can I help?", 0, 2),
            Said("caller", "blorp", 3, 1, intent="nlu_fallback"),
            Said("bot", "Sorry, I'm having technical trouble.", 5, 3, response_ms=1500.0),
        ])


def seed_calls(sessions: sessionmaker[Session]) -> dict[str, str]:
    """Five calls, by name: two on 2026-03-02, two on 03-03, one a week later."""
    return {
        "resolved": store(sessions, order_call(DAY1 + timedelta(hours=9, minutes=15)),
                          caller="+15550111"),
        "handoff": store(sessions, order_call(
            DAY1 + timedelta(hours=10), reason="handoff",
            caller_opening="My parcel to Reykjavik is late, get me a person."),
            caller="+15550222", transport="webrtc"),
        "failed": store(sessions, broken_call(DAY2 + timedelta(hours=14)), caller="+15550333",
                        transport="simulate"),
        "pending": store(sessions, order_call(DAY2 + timedelta(hours=15)), caller="+15550444",
                         analysed=False),
        "later": store(sessions, order_call(DAY1 + timedelta(days=8)), caller="+15550555"),
    }


# (query, names of the calls expected, newest first)
FILTERS: list[tuple[dict[str, str], list[str]]] = [
    ({}, ["later", "pending", "failed", "handoff", "resolved"]),
    ({"since": "2026-03-03", "until": "2026-03-03"}, ["pending", "failed"]),
    ({"since": "2026-03-02", "until": "2026-03-02"}, ["handoff", "resolved"]),
    ({"since": "2026-03-03"}, ["later", "pending", "failed"]),
    ({"until": "2026-03-03"}, ["pending", "failed", "handoff", "resolved"]),
    ({"caller": "0222"}, ["handoff"]),
    ({"caller": "+1555"}, ["later", "pending", "failed", "handoff", "resolved"]),
    ({"caller": "5550%"}, []),  # % and _ are matched literally
    ({"caller": "_"}, []),
    ({"intent": "nlu_fallback"}, ["failed"]),
    ({"intent": "check_order"}, ["later", "pending", "handoff", "resolved"]),
    ({"outcome": "resolved"}, ["later", "resolved"]),
    ({"outcome": "handed_off"}, ["handoff"]),
    ({"outcome": "failed"}, ["failed"]),
    ({"outcome": "pending"}, ["pending"]),
    ({"outcome": "abandoned"}, []),
    ({"transport": "webrtc"}, ["handoff"]),
    ({"transport": "simulate"}, ["failed"]),
    ({"transport": "sip"}, ["later", "pending", "resolved"]),
    ({"q": "REYKJAVIK"}, ["handoff"]),  # the summary, any case
    ({"q": "0333"}, ["failed"]),  # the caller
    ({"since": "2026-03-02", "until": "2026-03-03", "transport": "sip"},
     ["pending", "resolved"]),
    ({"outcome": "resolved", "since": "2026-03-04"}, ["later"]),
]


@pytest.fixture
def seeded(console_db: sessionmaker[Session]) -> dict[str, str]:
    return seed_calls(console_db)


# --- the calls list -----------------------------------------------------------------------

def test_the_calls_list_filters(client_as: ClientAs, seeded: dict[str, str]) -> None:
    client, _ = client_as("agent")
    for query, expected in FILTERS:
        response = client.get("/calls", params=query)
        assert response.status_code == 200, (query, page_text(response))
        assert _ids(response) == [seeded[name] for name in expected], query
        assert f"{len(expected)} found" in response.text, query
        if not expected:
            assert 'id="no-calls"' in response.text, query
        for key, value in query.items():  # the form shows the filters back
            assert value in page_text(response), (query, key)


def test_a_call_id_is_searchable(client_as: ClientAs, seeded: dict[str, str]) -> None:
    client, _ = client_as("agent")
    response = client.get("/calls", params={"q": seeded["failed"][:10]})
    assert _ids(response) == [seeded["failed"]]


def test_the_list_shows_outcome_sentiment_and_summary(client_as: ClientAs,
                                                      seeded: dict[str, str]) -> None:
    client, _ = client_as("agent")
    page = page_text(client.get("/calls"))
    assert 'Caller asked: "My parcel to Reykjavik is late' in page
    assert '<span class="badge handed_off">handed off</span>' in page
    assert '<span class="badge pending">analysing</span>' in page
    assert f'href="/calls/{seeded["resolved"]}"' in page
    assert "2026-03-02 09:15:00" in page  # started, UTC


@pytest.fixture
def thirty_calls(console_db: sessionmaker[Session]) -> list[str]:
    """Thirty calls a minute apart, newest first."""
    ids = [store_call(console_db, CallSpec(start=DAY1 + timedelta(minutes=i), length_s=10,
                                           reason="bot_hangup"))
           for i in range(30)]
    return ids[::-1]


def _link(response: Response, rel: str) -> str | None:
    match = re.search(rf'<a href="([^"]+)" rel="{rel}">', response.text)
    return unescape(match.group(1)) if match else None


def test_paging_through_the_calls(client_as: ClientAs, thirty_calls: list[str]) -> None:
    """Keyset paging: "Older" carries the last call's position; "Newest" goes back."""
    client, _ = client_as("agent")
    first = client.get("/calls")
    assert _ids(first) == thirty_calls[:25]
    assert "30 found" in first.text
    assert _link(first, "first") is None
    next_link = _link(first, "next")
    assert next_link and next_link.startswith("/calls?before=")

    second = client.get(next_link)
    assert _ids(second) == thirty_calls[25:]
    assert _link(second, "next") is None
    assert _link(second, "first") == "/calls"

    ten = client.get("/calls", params={"per_page": "10"})
    third_link = _link(client.get(_link(ten, "next") or ""), "next")
    assert third_link and _ids(client.get(third_link)) == thirty_calls[20:]
    bad = client.get("/calls", params={"before": "yesterday"})
    assert bad.status_code == 400 and "not valid" in bad.text
    assert _ids(bad) == thirty_calls[:25]


def test_past_the_count_limit_calls_are_not_counted_exactly(
        client_as: ClientAs, console_db: sessionmaker[Session],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("switchboard.storage.repository.COUNT_LIMIT", 3)
    for i in range(5):
        store_call(console_db, CallSpec(start=DAY1 + timedelta(minutes=i), length_s=10,
                                        reason="bot_hangup"))
    client, _ = client_as("agent")
    assert "more than 3 found" in client.get("/calls").text


def test_the_pager_keeps_the_filters(client_as: ClientAs, thirty_calls: list[str]) -> None:
    client, _ = client_as("agent")
    first = client.get("/calls", params={"transport": "sip", "since": "2026-03-02"})
    next_link = _link(first, "next")
    assert next_link and "transport=sip" in next_link and "since=2026-03-02" in next_link
    assert _ids(client.get(next_link)) == thirty_calls[25:]


def test_the_pager_keeps_the_page_size(client_as: ClientAs, thirty_calls: list[str]) -> None:
    """Following "Older" from a page of ten must show calls 11-20, not skip to 26-30."""
    client, _ = client_as("agent")
    first = client.get("/calls", params={"per_page": "10"})
    assert _ids(first) == thirty_calls[:10]
    next_link = _link(first, "next")
    assert next_link
    second = client.get(next_link)
    assert _ids(second) == thirty_calls[10:20], next_link


BAD_LIST_INPUT: list[tuple[dict[str, str], str]] = [
    ({"since": "2026-13-45"}, "'2026-13-45' is not a date"),
    ({"until": "yesterday"}, "'yesterday' is not a date"),
    ({"since": "2026-03-02T10:00"}, "is not a date"),
    ({"page": "abc"}, "'abc' is not a whole number"),
    ({"page": "0"}, "Page must be between 1"),
    ({"page": "-1"}, "Page must be between 1"),
    ({"page": "1.5"}, "is not a whole number"),
    ({"page": "9" * 40}, "Page must be between 1"),
    ({"per_page": "100000"}, "per_page must be between 1 and 200"),
    ({"since": "2026-03-05", "until": "2026-03-01"}, "From is after To"),
    ({"outcome": "exploded"}, "Outcome must be one of"),
    ({"transport": "fax"}, "Channel must be one of"),
    ({"caller": "5" * 500}, "caller is longer than 100 characters"),
    ({"q": "x" * 500}, "q is longer than 100 characters"),
    ({"intent": "i" * 500}, "intent is longer than 100 characters"),
]


def test_bad_list_input_is_a_message_not_a_crash(client_as: ClientAs,
                                                 seeded: dict[str, str]) -> None:
    client, _ = client_as("agent")
    for query, message in BAD_LIST_INPUT:
        response = client.get("/calls", params=query)
        assert response.status_code == 400, (query, response.status_code)
        assert message in page_text(response), query
        assert 'role="alert"' in response.text, query
        # the page, with its form and the calls, not a bare error
        assert 'id="call-filters"' in response.text, query


def test_an_unknown_call_is_a_404_page(client_as: ClientAs) -> None:
    client, _ = client_as("agent")
    for call_id in ("0" * 32, "x" * 300):
        response = client.get(f"/calls/{call_id}")
        assert response.status_code == 404
        assert "No such call" in response.text
        assert "x" * 65 not in response.text


# --- a call's page ------------------------------------------------------------------------

@pytest.fixture
def card_call(console_db: sessionmaker[Session]) -> str:
    spec = CallSpec(
        start=DAY1 + timedelta(hours=9), length_s=20, reason="bot_hangup", turns=[
            Said("bot", "Hello, how can I help?", 0.0, 2.0),
            Said("caller", CARD_TURN, 3.0, 4.0, intent="pay", stt_ms=210.0),
            Said("bot", "Thanks, your payment is booked. Goodbye!", 7.5, 3.0,
                 response_ms=640.0),
        ],
        events=[("dtmf", {"digits": "4111111111111111", "note": "mail jane.doe@example.com"}),
                ("barge_in", {"at_ms": 4000})])
    return store(console_db, spec, caller="+15550999")


def test_the_call_page_shows_transcript_events_and_analysis(client_as: ClientAs,
                                                           card_call: str) -> None:
    client, _ = client_as("agent")
    response = client.get(f"/calls/{card_call}")
    assert response.status_code == 200
    page = page_text(response)

    # the transcript, with offsets, clock times and per-turn latency
    assert re.findall(r'data-seq="(\d+)"', response.text) == ["1", "2", "3"]
    assert "+3.0 s · 09:00:03.000" in page and "+7.5 s · 09:00:07.500" in page
    assert "intent <code>pay</code>" in page
    assert "response 640 ms" in page
    assert "Thanks, your payment is booked. Goodbye!" in page
    # the events
    events = page[page.index('id="events"'):]
    assert "dtmf" in events and "barge_in" in events and "at_ms=4000" in events
    # the analysis
    assert re.search(r'id="outcome">\s*resolved', page)
    assert re.search(r'id="sentiment">(positive|neutral|negative) \(-?\d\.\d\d\)', page)
    assert 'id="summary">Caller asked: "My card is [card] and my email is [email]' in page
    assert "Outcome: resolved by the bot (bot_hangup)." in page
    assert "2 items" in page  # redacted
    assert "2026-03-02 09:00:00 UTC" in page  # started
    assert "+15550999" in page


def test_the_call_page_never_shows_card_numbers_or_addresses(client_as: ClientAs,
                                                            card_call: str) -> None:
    client, _ = client_as("admin")
    page = client.get(f"/calls/{card_call}").text
    assert "My card is [card] and my email is [email], thanks." in unescape(page)
    assert "digits=[card]" in page and "note=mail [email]" in page
    for secret in ("4111", "1111 1111", "jane.doe", "example.com"):
        assert secret not in page, secret


def test_a_call_not_analysed_yet_says_so(client_as: ClientAs, seeded: dict[str, str]) -> None:
    client, _ = client_as("agent")
    page = client.get(f"/calls/{seeded['pending']}").text
    assert 'id="analysis-pending"' in page and "Analysis pending" in page


# --- user management ----------------------------------------------------------------------

def _users_csrf(admin: TestClient) -> str:
    return csrf_of(admin.get("/users").text)


def test_an_admin_creates_a_user_who_can_then_sign_in(console_app: FastAPI,
                                                      client_as: ClientAs,
                                                      accounts: AccountRepository) -> None:
    admin, _ = client_as("admin")
    response = admin.post("/users", data={
        "username": "bob", "password": PASSWORD, "role": "supervisor",
        "csrf_token": _users_csrf(admin)}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/users"

    page = admin.get("/users")
    assert "Created bob (supervisor)." in page_text(page)
    assert 'data-user="bob"' in page.text
    assert "Created bob" not in admin.get("/users").text  # the message is shown once
    bob = accounts.find_user("bob")
    assert bob is not None and bob.role == "supervisor" and bob.active
    with TestClient(console_app, base_url=BASE_URL) as client:
        sign_in(client, "bob")
        assert 'class="role">supervisor' in client.get("/account").text


BAD_NEW_USERS: list[tuple[dict[str, str], str]] = [
    ({"username": "bob", "password": "Sh0rt!pw", "role": "agent"}, "at least 10 characters"),
    ({"username": "bob", "password": "", "role": "agent"}, "at least 10 characters"),
    ({"username": "bob", "password": " padded password ", "role": "agent"},
     "may not start or end with spaces"),
    ({"username": "admin1", "password": PASSWORD, "role": "agent"}, "already exists"),
    ({"username": "ADMIN1", "password": PASSWORD, "role": "agent"}, "already exists"),
    ({"username": "bob", "password": PASSWORD, "role": "root"}, "role must be one of"),
    ({"username": "bob", "password": PASSWORD, "role": ""}, "role must be one of"),
    ({"username": "bad name!", "password": PASSWORD, "role": "agent"}, "user names are"),
    ({"username": "", "password": PASSWORD, "role": "agent"}, "user names are"),
    ({"username": "b" * 65, "password": PASSWORD, "role": "agent"}, "user names are"),
    ({"username": "<script>", "password": PASSWORD, "role": "agent"}, "user names are"),
]


def test_bad_new_users_are_refused_with_a_message(client_as: ClientAs,
                                                  accounts: AccountRepository) -> None:
    admin, _ = client_as("admin")  # named admin1
    before = accounts.list_users()
    for form, message in BAD_NEW_USERS:
        response = admin.post("/users", data={**form, "csrf_token": _users_csrf(admin)},
                              follow_redirects=False)
        assert response.status_code == 400, form
        assert message in page_text(response), form
        assert accounts.list_users() == before, form
        assert "<script>" not in response.text  # what was typed is escaped
        if form["password"]:
            assert form["password"] not in response.text, form  # and never echoed


def test_the_last_active_admin_stays_an_admin(console_app: FastAPI, client_as: ClientAs,
                                              accounts: AccountRepository) -> None:
    admin, me = client_as("admin")
    for data in ({"role": "agent", "active": "on"}, {"role": "admin"}):
        response = admin.post(f"/users/{me.id}", data={**data, "csrf_token": _users_csrf(admin)},
                              follow_redirects=False)
        assert response.status_code == 400
        assert "is the last active admin" in page_text(response)
        still = accounts.get_user(me.id)
        assert still is not None and still.role == "admin" and still.active
        assert signed_in(admin)

    accounts.create_user("second", PASSWORD, "admin")
    response = admin.post(f"/users/{me.id}", data={
        "role": "agent", "active": "on", "csrf_token": _users_csrf(admin)},
        follow_redirects=False)
    assert response.status_code == 303
    demoted = accounts.get_user(me.id)
    assert demoted is not None and demoted.role == "agent"
    assert not signed_in(admin)  # a new role: signed out


def test_updating_an_unknown_user_is_a_message(client_as: ClientAs) -> None:
    admin, _ = client_as("admin")
    for user_id in ("999", "abc", "1" * 30):
        response = admin.post(f"/users/{user_id}", data={
            "role": "agent", "active": "on", "csrf_token": _users_csrf(admin)})
        assert response.status_code == 400 and "no user with id" in page_text(response)


def test_an_admin_resets_a_password(console_app: FastAPI, client_as: ClientAs,
                                    accounts: AccountRepository) -> None:
    admin, _ = client_as("admin")
    bob_client, bob = client_as("agent")

    short = admin.post(f"/users/{bob.id}/password", data={
        "password": "short", "csrf_token": _users_csrf(admin)})
    assert short.status_code == 400 and "at least 10 characters" in page_text(short)
    assert signed_in(bob_client)

    response = admin.post(f"/users/{bob.id}/password", data={
        "password": NEW_PASSWORD, "csrf_token": _users_csrf(admin)}, follow_redirects=False)
    assert response.status_code == 303
    assert "New password set for agent2; their sessions ended." in page_text(admin.get("/users"))
    assert not signed_in(bob_client)
    assert not can_sign_in(console_app, bob.username, PASSWORD)
    assert can_sign_in(console_app, bob.username, NEW_PASSWORD)

    unknown = admin.post("/users/999/password", data={
        "password": NEW_PASSWORD, "csrf_token": _users_csrf(admin)})
    assert unknown.status_code == 400 and "no user with id" in page_text(unknown)


def test_an_admin_revokes_anyones_token(console_app: FastAPI, client_as: ClientAs,
                                        accounts: AccountRepository) -> None:
    admin, _ = client_as("admin")
    _, bob = client_as("agent")
    token, view = accounts.create_token(bob.id, "bob's script")
    page = admin.get("/users").text
    assert "bob&#39;s script" in page and view.prefix in page and token not in page

    response = admin.post(f"/users/tokens/{view.id}/revoke",
                          data={"csrf_token": _users_csrf(admin)}, follow_redirects=False)
    assert response.status_code == 303
    assert "Token revoked." in page_text(admin.get("/users"))
    with TestClient(console_app, base_url=BASE_URL,
                    headers={"Authorization": f"Bearer {token}"}) as api:
        assert api.get("/api/me").status_code == 401


# --- the account page ---------------------------------------------------------------------

def _new_token(client: TestClient, name: str) -> Response:
    csrf = csrf_of(client.get("/account").text)
    return client.post("/account/tokens", data={"name": name, "csrf_token": csrf})


def test_an_api_token_is_shown_once_works_and_can_be_revoked(console_app: FastAPI,
                                                             client_as: ClientAs) -> None:
    client, me = client_as("agent")
    created = _new_token(client, "grafana")
    assert created.status_code == 200
    assert "Token 'grafana' created. Copy it now" in page_text(created)
    match = re.search(r'id="new-token">(sbt_[A-Za-z0-9_-]+)<', created.text)
    assert match
    token = match.group(1)
    account = client.get("/account").text
    assert token not in account and token[:10] in account  # only the prefix, from now on

    with TestClient(console_app, base_url=BASE_URL,
                    headers={"Authorization": f"Bearer {token}"}) as api:
        me_now = api.get("/api/me")
        assert me_now.status_code == 200
        assert me_now.json()["username"] == me.username and me_now.json()["role"] == "agent"

        revoke = re.search(r'action="(/account/tokens/\d+/revoke)"', account)
        assert revoke
        response = client.post(revoke.group(1), data={"csrf_token": csrf_of(account)},
                               follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"] == "/account"
        after = client.get("/account").text
        assert "Token revoked." in after and '<span class="badge">revoked</span>' in after
        assert api.get("/api/me").status_code == 401


def test_a_token_needs_a_name(client_as: ClientAs, accounts: AccountRepository) -> None:
    client, _ = client_as("agent")
    for name in ("", "   ", "n" * 65):
        response = _new_token(client, name)
        assert response.status_code == 400
        assert "give the token a name" in page_text(response)
        assert "sbt_" not in response.text
    assert accounts.list_tokens() == []


def test_nobody_revokes_someone_elses_token_from_their_account(
        console_app: FastAPI, client_as: ClientAs, accounts: AccountRepository) -> None:
    _, admin = client_as("admin")
    client, _ = client_as("agent")
    token, view = accounts.create_token(admin.id, "admin's")
    for token_id in (str(view.id), "999", "abc"):
        response = client.post(f"/account/tokens/{token_id}/revoke",
                               data={"csrf_token": csrf_of(client.get("/account").text)})
        assert response.status_code == 400 and "no API token with id" in page_text(response)
    with TestClient(console_app, base_url=BASE_URL,
                    headers={"Authorization": f"Bearer {token}"}) as api:
        assert api.get("/api/me").status_code == 200


def _change_password(client: TestClient, current: str, new: str,
                     confirm: str | None = None) -> Response:
    csrf = csrf_of(client.get("/account").text)
    return client.post("/account/password", data={
        "current": current, "password": new,
        "confirm": new if confirm is None else confirm, "csrf_token": csrf},
        follow_redirects=False)


def test_changing_the_own_password(console_app: FastAPI, client_as: ClientAs) -> None:
    client, me = client_as("supervisor")
    with TestClient(console_app, base_url=BASE_URL) as elsewhere:
        sign_in(elsewhere, me.username)

        wrong = _change_password(client, "not my password", NEW_PASSWORD)
        assert wrong.status_code == 400 and "The current password is wrong." in page_text(wrong)
        differ = _change_password(client, PASSWORD, NEW_PASSWORD, "a different password")
        assert differ.status_code == 400 and "confirmation differ" in page_text(differ)
        short = _change_password(client, PASSWORD, "short")
        assert short.status_code == 400 and "at least 10 characters" in page_text(short)
        assert signed_in(client) and can_sign_in(console_app, me.username, PASSWORD)
        for response in (wrong, differ, short):
            assert NEW_PASSWORD not in response.text

        done = _change_password(client, PASSWORD, NEW_PASSWORD)
        assert done.status_code == 303 and done.headers["location"] == "/login"
        assert not signed_in(client)
        assert not signed_in(elsewhere)  # every session of the user ended
    assert not can_sign_in(console_app, me.username, PASSWORD)
    assert can_sign_in(console_app, me.username, NEW_PASSWORD)


def test_the_login_page_says_the_password_was_changed(client_as: ClientAs) -> None:
    """The change redirects to /login with a message for that page; it must be shown."""
    client, _ = client_as("agent")
    done = _change_password(client, PASSWORD, NEW_PASSWORD)
    assert done.status_code == 303
    login = client.get(done.headers["location"])
    assert login.status_code == 200
    assert "Password changed; sign in with the new one." in page_text(login)


def test_a_call_page_reloads_itself_until_the_call_is_settled(
        client_as: ClientAs, console_db: sessionmaker[Session]) -> None:
    calls = CallRepository(console_db)
    live = calls.create_call(transport="sip", caller="+15550100")
    client, _ = client_as("agent")
    refresh = '<meta http-equiv="refresh"'
    assert refresh in client.get(f"/calls/{live}").text  # a live call
    calls.end_call(live, reason="caller_hangup")
    page = client.get(f"/calls/{live}").text  # ended, analysis not there yet
    assert refresh in page and "reloads until it arrives" in page
    stored = calls.get_call(live)
    assert stored is not None
    AnalysisRepository(console_db).save(analyze(stored).as_row())
    assert refresh not in client.get(f"/calls/{live}").text  # settled
