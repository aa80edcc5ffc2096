"""The audit log: console actions are recorded with who, what, on whom and from where;
only admins read it, newest first, filtered and paged."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI
from fastapi.testclient import TestClient

from admin.accounts import AccountRepository, UserView
from switchboard.storage.repository import AuditRepository
from tests.admin.conftest import BASE_URL, PASSWORD, csrf_of, login, page_text

ClientAs = Callable[[str], tuple[TestClient, UserView]]


def audit_log(app: FastAPI) -> AuditRepository:
    log: AuditRepository = app.state.console.audit
    return log


def test_user_management_and_sign_ins_are_recorded(console_app: FastAPI,
                                                   client_as: ClientAs) -> None:
    admin, me = client_as("admin")
    page = admin.get("/users")
    response = admin.post("/users", data={"username": "carol", "password": PASSWORD,
                                          "role": "agent", "csrf_token": csrf_of(page.text)},
                          follow_redirects=False)
    assert response.status_code == 303
    with TestClient(console_app, base_url=BASE_URL) as stranger:
        assert login(stranger, "carol", "not her password").status_code == 401
    entries = audit_log(console_app).entries()
    assert [(e.actor, e.action, e.target) for e in entries[:3]] == [
        ("carol", "login.failed", None),
        (me.username, "user.create", "carol"),
        (me.username, "login", None),
    ]
    assert entries[1].detail == {"role": "agent"} and entries[1].ip == "testclient"

    listing = admin.get("/audit")
    assert listing.status_code == 200
    text = page_text(listing)
    assert "user.create" in text and "carol" in text and "login.failed" in text
    only = page_text(admin.get("/audit?action=user.create"))
    assert "<code>user.create</code>" in only and "<code>login.failed</code>" not in only


def test_api_changes_are_recorded_too(console_app: FastAPI,
                                      accounts: AccountRepository) -> None:
    boss = accounts.create_user("boss", PASSWORD, "admin")
    token, _ = accounts.create_token(boss.id, "script")
    with TestClient(console_app, base_url=BASE_URL) as client:
        created = client.post("/api/users", json={"username": "dave", "password": PASSWORD,
                                                  "role": "supervisor"},
                              headers={"Authorization": f"Bearer {token}"})
        assert created.status_code == 201, created.text
    entry = audit_log(console_app).entries(action="user.create")[0]
    assert (entry.actor, entry.target, entry.detail["via"]) == ("boss", "dave", "api")


def test_only_admins_read_it(client_as: ClientAs) -> None:
    for role in ("agent", "supervisor"):
        client, _ = client_as(role)
        assert client.get("/audit").status_code == 403
        assert "/audit" not in client.get("/calls").text  # no link either
    admin, _ = client_as("admin")
    assert 'href="/audit"' in admin.get("/calls").text


def test_it_pages_back_by_id(console_app: FastAPI, client_as: ClientAs) -> None:
    admin, _ = client_as("admin")
    log = audit_log(console_app)
    for number in range(60):
        log.record("system", "test.entry", target=f"entry {number}")
    first = page_text(admin.get("/audit?action=test.entry"))
    assert "entry 59" in first and "entry 10" in first and "entry 9<" not in first
    older = admin.get("/audit?action=test.entry&before=" + str(
        log.entries(action="test.entry")[49].id))
    text = page_text(older)
    assert "entry 9<" in text and "entry 0<" in text and "entry 10<" not in text
    assert "id=\"older\"" not in text
    assert admin.get("/audit?before=abc").status_code == 200  # ignored, not an error
