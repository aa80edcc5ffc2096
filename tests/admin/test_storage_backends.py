"""The console's storage on SQLite and on the real PostgreSQL: accounts (hashing, sessions,
tokens, the failed-login limit across time zones) and the calls search with every filter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from admin.accounts import AccountError, AccountRepository
from analytics.analysis import analyze
from switchboard.storage.database import prepare_database
from switchboard.storage.models import LoginFailure, User
from switchboard.storage.repository import (
    AnalysisRepository,
    CallFilters,
    CallRepository,
    CallSearch,
)
from tests.analytics.calls import CallSpec, Said, order_call, store_call

PASSWORD = "a long enough password"
DAY1 = datetime(2026, 3, 2, 9, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)


@pytest.fixture
def sessions(url: str) -> sessionmaker[Session]:
    return prepare_database(url, demo_data=False)


@pytest.fixture
def accounts(sessions: sessionmaker[Session]) -> AccountRepository:
    return AccountRepository(sessions, session_lifetime=timedelta(hours=1), max_failures=3,
                             failure_window=timedelta(minutes=15))


def test_passwords_are_argon2_hashes_and_sign_in_works(
        accounts: AccountRepository, sessions: sessionmaker[Session]) -> None:
    user = accounts.create_user("ada", PASSWORD, "admin")
    with sessions() as session:
        stored = session.scalar(select(User.password_hash).where(User.id == user.id))
    assert stored is not None and stored.startswith("$argon2id$") and PASSWORD not in stored
    assert accounts.authenticate("ada", PASSWORD, ip="10.0.0.1").user == accounts.get_user(
        user.id)
    assert not accounts.authenticate("ada", "wrong password!", ip="10.0.0.1").ok
    with pytest.raises(AccountError, match="already exists"):
        accounts.create_user("ADA", PASSWORD, "agent")


def test_the_failed_login_limit_locks_the_name_then_expires(
        accounts: AccountRepository, sessions: sessionmaker[Session]) -> None:
    accounts.create_user("bob", PASSWORD, "agent")
    for _ in range(3):
        assert not accounts.authenticate("bob", "nope nope nope", ip="10.0.0.2").ok
    locked = accounts.authenticate("bob", PASSWORD, ip="10.0.0.3")
    assert not locked.ok and 0 < locked.locked_for_s <= 15 * 60
    # The failures age out of the window: sign-in works again.
    with sessions() as session:
        for failure in session.scalars(select(LoginFailure)):
            failure.at = failure.at - timedelta(minutes=16)
        session.commit()
    assert accounts.authenticate("bob", PASSWORD, ip="10.0.0.3").ok


def test_sessions_and_tokens_end_when_revoked_or_expired(
        accounts: AccountRepository) -> None:
    user = accounts.create_user("cy", PASSWORD, "supervisor")
    cookie, view = accounts.start_session(user.id, ip=None, user_agent="test")
    found = accounts.session_for(cookie)
    assert found is not None and found.user.username == "cy"
    assert found.csrf_token == view.csrf_token
    token, _ = accounts.create_token(user.id, "reports")
    assert accounts.user_for_token(token) == found.user
    assert accounts.user_for_token(token + "x") is None

    accounts.update_user(user.id, role="agent", active=True)  # a new role: sign in again
    assert accounts.session_for(cookie) is None
    [listed] = accounts.list_tokens(user.id)
    accounts.revoke_token(listed.id, user_id=user.id)
    assert accounts.user_for_token(token) is None

    short = AccountRepository(accounts._sessions, session_lifetime=timedelta(seconds=-1))
    expired_cookie, _ = short.start_session(user.id, ip=None, user_agent=None)
    assert short.session_for(expired_cookie) is None


def _analysed(sessions: sessionmaker[Session], spec: CallSpec, caller: str) -> str:
    call_id = store_call(sessions, spec)
    with sessions() as session:
        from switchboard.storage.models import Call

        call = session.get(Call, call_id)
        assert call is not None
        call.caller = caller
        session.commit()
    stored = CallRepository(sessions).get_call(call_id)
    assert stored is not None
    AnalysisRepository(sessions).save(analyze(stored).as_row())
    return call_id


def test_the_calls_search_filters_and_pages(sessions: sessionmaker[Session]) -> None:
    resolved = _analysed(sessions, order_call(DAY1), "+15550100")
    handed = _analysed(sessions, CallSpec(
        start=DAY2, length_s=12.0, reason="handoff",
        turns=[Said("bot", "Hello, how can I help?", 0.0, 2.0),
               Said("caller", "Get me a human_agent 100%", 3.0, 2.0, intent="request_agent"),
               Said("bot", "Connecting you now.", 5.5, 2.0, response_ms=600.0)],
    ), "sip:alice@example.com")
    pending = store_call(sessions, order_call(DAY2 + timedelta(hours=2)))
    search = CallSearch(sessions)

    def ids(**filters: object) -> list[str]:
        found = search.search(CallFilters(**filters), limit=10)  # type: ignore[arg-type]
        assert found.total == len(found.rows) and found.exact and found.older is None
        return [row.id for row in found.rows]

    assert ids() == [pending, handed, resolved]  # newest first
    assert ids(since=DAY2.replace(hour=0), until=DAY2.replace(hour=0) + timedelta(days=1)) \
        == [pending, handed]
    assert ids(caller="ALICE") == [handed]
    assert ids(caller="%") == []  # LIKE wildcards are matched literally
    assert ids(intent="request_agent") == [handed]
    assert ids(intent="check_order") == [pending, resolved]
    assert ids(outcome="handed_off") == [handed]
    assert ids(outcome="pending") == [pending]
    assert ids(transport="webrtc") == []
    assert ids(text=handed[:8]) == [handed]
    assert ids(text="agent") == [handed]  # in the summary
    found = search.search(CallFilters(), limit=2, offset=2)
    assert found.total == 3 and [row.id for row in found.rows] == [resolved]
    assert found.rows[0].turns == 7 and found.rows[0].outcome == "resolved"
    first = search.search(CallFilters(), limit=2)
    assert [row.id for row in first.rows] == [pending, handed] and first.older is not None
    assert [r.id for r in search.search(CallFilters(), limit=2, before=first.older).rows] \
        == [resolved]
    assert search.known_intents() == ["check_order", "inform_order_number", "request_agent",
                                      "thank"]
