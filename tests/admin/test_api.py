"""The REST API under /api/: bearer tokens, the browser cookie (read only), calls with
filters and paging, a call's detail, aggregates, users, and the OpenAPI document and
Swagger UI, all behind sign-in."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from admin.accounts import AccountRepository, UserView
from tests.admin.conftest import BASE_URL, PASSWORD
from tests.admin.test_console_pages import (
    CARD_TURN,
    FILTERS,
    broken_call,
    seed_calls,
    store,
)
from tests.analytics.calls import CallSpec, Said, order_call

ClientAs = Callable[[str], tuple[TestClient, UserView]]
ApiAs = Callable[[str], tuple[TestClient, UserView]]

DAY1 = datetime(2026, 3, 2, tzinfo=UTC)
API_PATHS = {"/api/me", "/api/calls", "/api/calls/{call_id}",
             "/api/calls/{call_id}/recording", "/api/aggregates", "/api/users",
             "/api/users/{user_id}"}


@pytest.fixture
def api_as(console_app: FastAPI, accounts: AccountRepository
           ) -> Iterator[Callable[[str], tuple[TestClient, UserView]]]:
    """``api_as("agent")``: a new user with that role and a client sending its API token
    (no cookie)."""
    clients: list[TestClient] = []

    def make(role: str) -> tuple[TestClient, UserView]:
        user = accounts.create_user(f"api-{role}{len(clients) + 1}", PASSWORD, role)
        token, _ = accounts.create_token(user.id, "tests")
        client = TestClient(console_app, base_url=BASE_URL,
                            headers={"Authorization": f"Bearer {token}"})
        clients.append(client)
        return client, user

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def anonymous(console_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(console_app, base_url=BASE_URL) as client:
        yield client


def _refused(response: Any) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"].startswith("sign in")


# --- authentication ---------------------------------------------------------------------

def test_a_token_signs_in(api_as: ApiAs) -> None:
    client, user = api_as("supervisor")
    me = client.get("/api/me")
    assert me.status_code == 200
    body = me.json()
    assert body["id"] == user.id and body["username"] == user.username
    assert body["role"] == "supervisor" and body["active"] is True
    assert set(body) == {"id", "username", "role", "active", "created_at", "last_login_at"}


def test_the_scheme_name_is_case_insensitive(console_app: FastAPI,
                                             accounts: AccountRepository) -> None:
    user = accounts.create_user("alice", PASSWORD, "agent")
    token, _ = accounts.create_token(user.id, "ci")
    with TestClient(console_app, base_url=BASE_URL) as client:
        for header in (f"bearer {token}", f"BEARER {token}", f"Bearer  {token} "):
            assert client.get("/api/me", headers={"Authorization": header}).status_code == 200


@pytest.mark.parametrize("header", [
    None, "Basic x", "Basic YWxpY2U6Y29ycmVjdCBob3JzZSBiYXR0ZXJ5", "Bearer", "Bearer ",
    "Bearer sbt_unknown", "Bearer not-a-token", "Token sbt_x", "sbt_x", "Bearer " + "x" * 500,
])
def test_requests_without_a_valid_token_are_refused(anonymous: TestClient,
                                                    accounts: AccountRepository,
                                                    header: str | None) -> None:
    accounts.create_user("alice", PASSWORD, "admin")
    headers = {"Authorization": header} if header is not None else {}
    for path in ("/api/me", "/api/calls", "/api/users", "/api/aggregates"):
        _refused(anonymous.get(path, headers=headers))


def test_a_revoked_token_is_refused(console_app: FastAPI, accounts: AccountRepository) -> None:
    user = accounts.create_user("alice", PASSWORD, "agent")
    token, view = accounts.create_token(user.id, "ci")
    with TestClient(console_app, base_url=BASE_URL,
                    headers={"Authorization": f"Bearer {token}"}) as client:
        assert client.get("/api/me").status_code == 200
        accounts.revoke_token(view.id)
        _refused(client.get("/api/me"))
        _refused(client.get("/api/calls"))


def test_a_bad_token_is_not_rescued_by_the_cookie(client_as: ClientAs) -> None:
    client, _ = client_as("admin")
    assert client.get("/api/me").status_code == 200
    _refused(client.get("/api/me", headers={"Authorization": "Bearer sbt_forged"}))


def test_a_browser_cookie_may_read_but_not_write(client_as: ClientAs,
                                                 accounts: AccountRepository) -> None:
    client, me = client_as("admin")
    assert client.get("/api/me").json()["username"] == me.username
    assert client.get("/api/users").status_code == 200
    assert client.get("/api/calls").status_code == 200

    created = client.post("/api/users", json={"username": "bob", "password": PASSWORD,
                                              "role": "admin"})
    _refused(created)
    _refused(client.patch(f"/api/users/{me.id}", json={"role": "agent", "active": True}))
    assert accounts.find_user("bob") is None
    user = accounts.get_user(me.id)
    assert user is not None and user.role == "admin"


# --- calls --------------------------------------------------------------------------------

@pytest.fixture
def seeded(console_db: sessionmaker[Session]) -> dict[str, str]:
    return seed_calls(console_db)


def test_calls_filter_like_the_console(api_as: ApiAs, seeded: dict[str, str]) -> None:
    client, _ = api_as("agent")
    for query, expected in FILTERS:
        response = client.get("/api/calls", params=query)
        assert response.status_code == 200, (query, response.text)
        body = response.json()
        assert [c["id"] for c in body["calls"]] == [seeded[name] for name in expected], query
        assert body["total"] == len(expected), query


def test_a_calls_page_has_its_summary_fields(api_as: ApiAs, seeded: dict[str, str]) -> None:
    client, _ = api_as("agent")
    body = client.get("/api/calls", params={"outcome": "handed_off"}).json()
    assert body["page"] == 1 and body["per_page"] == 25 and body["total"] == 1
    call = body["calls"][0]
    assert call["id"] == seeded["handoff"] and call["transport"] == "webrtc"
    assert call["caller"] == "+15550222" and call["status"] == "ended"
    assert call["outcome"] == "handed_off" and call["turns"] == 7
    assert call["sentiment_label"] == "positive"  # "Great, thanks a lot!" (VADER)
    assert call["summary"].startswith('Caller asked: "My parcel to Reykjavik is late')
    assert call["end_reason"] == "handoff"
    pending = client.get("/api/calls", params={"outcome": "pending"}).json()["calls"][0]
    assert pending["outcome"] is None and pending["summary"] is None


def test_calls_are_paged(api_as: ApiAs, console_db: sessionmaker[Session]) -> None:
    ids = [store(console_db, CallSpec(start=DAY1 + timedelta(minutes=i), length_s=10,
                                      reason="bot_hangup"), analysed=False)
           for i in range(7)][::-1]
    client, _ = api_as("agent")
    pages = [client.get("/api/calls", params={"per_page": "3", "page": str(n)}).json()
             for n in (1, 2, 3, 4)]
    assert [[c["id"] for c in page["calls"]] for page in pages] == [
        ids[0:3], ids[3:6], ids[6:7], []]
    assert all(page["total"] == 7 and page["per_page"] == 3 for page in pages)
    assert all(page["total_exact"] for page in pages)
    assert [page["page"] for page in pages] == [1, 2, 3, 4]
    # keyset: each page's next_before leads to the next, the last has none
    seen, position = [], {}
    for _ in range(4):
        page = client.get("/api/calls", params={"per_page": "3", **position}).json()
        seen.append([c["id"] for c in page["calls"]])
        if page["next_before"] is None:
            assert page["next_before_id"] is None
            break
        position = {"before": page["next_before"], "before_id": page["next_before_id"]}
    assert seen == [ids[0:3], ids[3:6], ids[6:7]]


API_BAD_LIST_INPUT: list[tuple[dict[str, str], str]] = [
    ({"since": "2026-13-45"}, "since: Input should be a valid date"),
    ({"until": "yesterday"}, "until: Value error, expected YYYY-MM-DD or an ISO 8601 time"),
    ({"page": "abc"}, "page: Input should be a valid integer"),
    ({"page": "0"}, "page: Input should be greater than or equal to 1"),
    ({"page": "9" * 40}, "page: Input should be less than or equal to 1000000"),
    ({"per_page": "100000"}, "per_page: Input should be less than or equal to 200"),
    ({"outcome": "exploded"}, "outcome: String should match pattern"),
    ({"transport": "fax"}, "transport: String should match pattern"),
    ({"caller": "5" * 500}, "caller: String should have at most 100 characters"),
    ({"before": "not a time"}, "before: Value error, expected YYYY-MM-DD or an ISO 8601"),
    ({"before": "2026-03-02T99:00Z"}, "before: Input should be a valid datetime"),
    ({"before": "2026-03-02T10:00:00Z", "before_id": "../x"}, "before_id: String should match"),
]


def test_call_filters_outside_the_schema_are_422_json(api_as: ApiAs) -> None:
    """The OpenAPI document states every limit the list enforces (schemathesis checks)."""
    client, _ = api_as("agent")
    for query, message in API_BAD_LIST_INPUT:
        response = client.get("/api/calls", params=query)
        assert response.status_code == 422, (query, response.status_code)
        assert message in response.json()["error"], (query, response.json())


def test_a_range_that_ends_before_it_starts_lists_nothing(api_as: ApiAs,
                                                          seeded: dict[str, str]) -> None:
    client, _ = api_as("agent")
    body = client.get("/api/calls", params={"since": "2026-03-05", "until": "2026-03-01"})
    assert body.status_code == 200
    assert body.json()["calls"] == [] and body.json()["total"] == 0


def test_a_call_in_detail(api_as: ApiAs, console_db: sessionmaker[Session]) -> None:
    spec = CallSpec(
        start=DAY1 + timedelta(hours=9), length_s=20, reason="bot_hangup", turns=[
            Said("bot", "Hello, how can I help?", 0.0, 2.0),
            Said("caller", CARD_TURN, 3.0, 4.0, intent="pay", stt_ms=210.0),
            Said("bot", "Thanks, your payment is booked. Goodbye!", 7.5, 3.0,
                 response_ms=640.0),
        ],
        events=[("dtmf", {"digits": "4111-1111-1111-1111", "count": 16})])
    call_id = store(console_db, spec, caller="+15550999")
    client, _ = api_as("agent")

    response = client.get(f"/api/calls/{call_id}")
    assert response.status_code == 200
    for secret in ("4111", "jane.doe", "example.com"):
        assert secret not in response.text, secret
    call = response.json()
    assert call["id"] == call_id and call["transport"] == "sip"
    assert call["caller"] == "+15550999" and call["status"] == "ended"
    assert call["duration_s"] == 20.0 and call["end_reason"] == "bot_hangup"
    assert call["has_recording"] is False
    assert datetime.fromisoformat(call["started_at"]) == DAY1 + timedelta(hours=9)

    turns = call["turns"]
    assert [t["seq"] for t in turns] == [1, 2, 3]
    assert [t["speaker"] for t in turns] == ["bot", "caller", "bot"]
    assert turns[1]["text"] == "My card is [card] and my email is [email], thanks."
    assert turns[1]["intent"] == "pay" and turns[1]["offset_s"] == 3.0
    assert turns[1]["latency_ms"]["stt_ms"] == 210.0
    assert turns[2]["latency_ms"] == {"response_ms": 640.0, "endpoint_ms": None,
                                      "stt_ms": None, "dialog_ms": None, "tts_ms": None}
    assert datetime.fromisoformat(turns[2]["started_at"]) == (
        DAY1 + timedelta(hours=9, seconds=7.5))
    assert turns[2]["offset_s"] == 7.5

    events = {e["kind"]: e for e in call["events"]}
    assert events["dtmf"]["data"] == {"digits": "[card]", "count": 16}
    assert set(events["dtmf"]) == {"at", "offset_s", "kind", "data"}

    analysis = call["analysis"]
    assert analysis["outcome"] == "resolved" and analysis["redactions"] == 2
    assert analysis["summary"].startswith('Caller asked: "My card is [card] and my email is '
                                          '[email]')
    assert analysis["turns"] == 3 and analysis["caller_turns"] == 1
    assert analysis["intents"] == ["pay"]
    assert analysis["sentiment_label"] == "positive"  # "..., thanks." (VADER)
    assert set(analysis["sentiment_by_turn"]) == {"2"}
    assert analysis["latency"]["response_ms"]["count"] == 1


def test_an_unknown_call_is_404_json(api_as: ApiAs) -> None:
    client, _ = api_as("agent")
    for call_id in ("0" * 32, "y" * 300):
        response = client.get(f"/api/calls/{call_id}")
        assert response.status_code == 404 and "no call with id" in response.json()["error"]
        assert client.get(f"/api/calls/{call_id}/recording").status_code in (403, 404)


def test_api_times_say_they_are_utc(api_as: ApiAs, seeded: dict[str, str]) -> None:
    """Every time the API returns is unambiguous: it carries its offset (a JavaScript
    client reads a bare "2026-03-02T09:15:00" as local time)."""
    client, _ = api_as("agent")
    listed = client.get("/api/calls", params={"outcome": "resolved",
                                              "until": "2026-03-02"}).json()["calls"][0]
    detail = client.get(f"/api/calls/{listed['id']}").json()
    assert datetime.fromisoformat(detail["started_at"]).tzinfo is not None
    for key in ("started_at", "ended_at"):
        assert datetime.fromisoformat(listed[key]).tzinfo is not None, (key, listed[key])
    assert datetime.fromisoformat(listed["started_at"]) == datetime.fromisoformat(
        detail["started_at"])
    me = client.get("/api/me").json()
    assert datetime.fromisoformat(me["created_at"]).tzinfo is not None, me["created_at"]


# --- aggregates ---------------------------------------------------------------------------

def test_aggregates_default_to_the_last_seven_days(api_as: ApiAs,
                                                   console_db: sessionmaker[Session]) -> None:
    now = datetime.now(UTC)
    store(console_db, order_call(now - timedelta(hours=2)))
    store(console_db, order_call(now - timedelta(days=3), reason="handoff"))
    store(console_db, order_call(now - timedelta(days=9)))  # too old for the default
    client, _ = api_as("agent")  # agents see figures
    response = client.get("/api/aggregates")
    assert response.status_code == 200
    figures = response.json()
    assert figures["calls"] == 2 and figures["analysed"] == 2
    assert figures["outcomes"] == {"resolved": 1, "handed_off": 1}
    since = datetime.fromisoformat(figures["since"])
    until = datetime.fromisoformat(figures["until"])
    assert abs((until - since) - timedelta(days=7)) < timedelta(seconds=1)
    assert abs(until - now) < timedelta(minutes=1)


def test_aggregates_over_a_range(api_as: ApiAs, console_db: sessionmaker[Session]) -> None:
    store(console_db, order_call(DAY1 + timedelta(hours=9)))
    store(console_db, order_call(DAY1 + timedelta(hours=23, minutes=59)))
    store(console_db, broken_call(DAY1 + timedelta(days=1, hours=1)))
    client, _ = api_as("supervisor")

    one_day = client.get("/api/aggregates", params={"since": "2026-03-02",
                                                    "until": "2026-03-02"}).json()
    assert one_day["calls"] == 2 and one_day["outcomes"] == {"resolved": 2}
    two_days = client.get("/api/aggregates", params={"since": "2026-03-02",
                                                     "until": "2026-03-03"}).json()
    assert two_days["calls"] == 3 and two_days["outcomes"]["failed"] == 1
    morning = client.get("/api/aggregates", params={
        "since": "2026-03-02T08:00:00+00:00", "until": "2026-03-02T12:00:00Z"}).json()
    assert morning["calls"] == 1


@pytest.mark.parametrize(("query", "message"), [
    ({"since": "2026-13-45"}, "since.date: Input should be a valid date"),
    ({"until": "tomorrow"}, "until: Value error, expected YYYY-MM-DD or an ISO 8601 time"),
    ({"until": "0"}, "until: Value error, expected YYYY-MM-DD"),
    ({"since": "2026-03-02T25:00"}, "since.datetime: Input should be a valid datetime"),
])
def test_aggregate_times_outside_the_schema_are_422_json(api_as: ApiAs, query: dict[str, str],
                                                         message: str) -> None:
    client, _ = api_as("agent")
    response = client.get("/api/aggregates", params=query)
    assert response.status_code == 422
    assert message in response.json()["error"]


def test_any_range_of_the_calendar_is_answered(api_as: ApiAs,
                                               console_db: sessionmaker[Session]) -> None:
    """Reversed, empty, years long, at the calendar's ends: figures, never an error."""
    store(console_db, order_call(DAY1 + timedelta(hours=9)))
    client, _ = api_as("agent")
    for since, until, calls in [("2026-03-05", "2026-03-01", 0),
                                ("2026-03-02T10:00Z", "2026-03-02T10:00Z", 0),
                                ("2020-01-01", "2030-01-01", 1),
                                ("0001-01-01", "9999-12-31", 1),
                                ("9999-12-31T23:59:59Z", None, 0)]:
        params = {"since": since, **({"until": until} if until else {})}
        response = client.get("/api/aggregates", params=params)
        assert response.status_code == 200, (params, response.text)
        assert response.json()["calls"] == calls, params
    assert client.get("/api/aggregates", params={"until": "0001-01-01"}).status_code == 200


# --- users --------------------------------------------------------------------------------

def test_admins_list_and_add_users(api_as: ApiAs, accounts: AccountRepository,
                                   console_app: FastAPI) -> None:
    client, admin = api_as("admin")
    listed = client.get("/api/users")
    assert listed.status_code == 200
    assert [u["username"] for u in listed.json()] == [admin.username]

    created = client.post("/api/users", json={"username": "carol", "password": PASSWORD,
                                              "role": "supervisor"})
    assert created.status_code == 201
    body = created.json()
    assert body["username"] == "carol" and body["role"] == "supervisor" and body["active"]
    assert "password" not in json.dumps(body) and "argon2" not in created.text
    assert accounts.find_user("carol") is not None
    assert [u["username"] for u in client.get("/api/users").json()] == [admin.username,
                                                                        "carol"]
    assert accounts.authenticate("carol", PASSWORD, ip=None).ok


BAD_BODIES: list[Any] = [
    {},
    {"username": "dave"},
    {"username": "dave", "password": PASSWORD},
    {"username": "dave", "password": "short", "role": "agent"},
    {"username": "dave", "password": PASSWORD, "role": "root"},
    {"username": "bad name!", "password": PASSWORD, "role": "agent"},
    {"username": "d" * 65, "password": PASSWORD, "role": "agent"},
    {"username": "dave", "password": "p" * 2000, "role": "agent"},
    {"username": "dave", "password": 1234567890123, "role": "agent"},
    {"username": ["dave"], "password": PASSWORD, "role": "agent"},
    {"username": "dave", "password": None, "role": "agent"},
    ["dave", PASSWORD, "agent"],
    "dave",
    None,
]


def test_bad_new_user_bodies_are_refused_with_json(api_as: ApiAs,
                                                   accounts: AccountRepository) -> None:
    client, admin = api_as("admin")
    for body in [*BAD_BODIES, {"username": admin.username, "password": PASSWORD,
                               "role": "agent"}]:
        response = client.post("/api/users", json=body)
        assert response.status_code in (409, 422), (body, response.status_code)
        assert response.headers["content-type"].startswith("application/json"), body
        assert response.json(), body
    for raw in (b"{not json", b"", b"\xff\xfe"):
        response = client.post("/api/users", content=raw,
                               headers={"Content-Type": "application/json"})
        assert response.status_code in (400, 422), (raw, response.status_code)
        assert response.json()
    assert [u.username for u in accounts.list_users()] == [admin.username]


def test_admin_errors_say_what_is_wrong(api_as: ApiAs) -> None:
    client, admin = api_as("admin")
    short = client.post("/api/users", json={"username": "dave", "password": "short",
                                            "role": "agent"})
    assert short.status_code == 422 and "at least 10 characters" in short.json()["error"]
    duplicate = client.post("/api/users", json={"username": admin.username.upper(),
                                                "password": PASSWORD, "role": "agent"})
    assert duplicate.status_code == 409 and "already exists" in duplicate.json()["error"]


def test_admins_change_roles_and_switch_users_off(console_app: FastAPI, api_as: ApiAs,
                                                  client_as: ClientAs,
                                                  accounts: AccountRepository) -> None:
    client, admin = api_as("admin")
    browser, agent = client_as("agent")

    changed = client.patch(f"/api/users/{agent.id}", json={"role": "supervisor",
                                                           "active": True})
    assert changed.status_code == 200
    assert changed.json()["role"] == "supervisor" and changed.json()["active"] is True
    assert browser.get("/account", follow_redirects=False).status_code == 303  # signed out

    off = client.patch(f"/api/users/{agent.id}", json={"role": "supervisor", "active": False})
    assert off.status_code == 200 and off.json()["active"] is False

    last = client.patch(f"/api/users/{admin.id}", json={"role": "agent", "active": True})
    assert last.status_code == 409 and "last active admin" in last.json()["error"]
    for body in ({"role": "agent"}, {"active": True}, {"role": "chief", "active": True}):
        assert client.patch(f"/api/users/{agent.id}", json=body).status_code in (400, 422)
    assert client.patch("/api/users/999", json={"role": "agent",
                                                "active": True}).status_code == 404
    assert client.patch("/api/users/abc", json={"role": "agent",
                                                "active": True}).status_code in (400, 404, 422)
    user = accounts.get_user(agent.id)
    assert user is not None and user.role == "supervisor" and not user.active


@pytest.mark.parametrize("role", ["agent", "supervisor"])
def test_only_admins_use_the_users_api(api_as: ApiAs, accounts: AccountRepository,
                                       role: str) -> None:
    client, user = api_as(role)
    assert client.get("/api/users").status_code == 403
    created = client.post("/api/users", json={"username": "eve", "password": PASSWORD,
                                              "role": "admin"})
    assert created.status_code == 403 and "user management" in created.json()["error"]
    assert client.patch(f"/api/users/{user.id}", json={"role": "admin",
                                                       "active": True}).status_code == 403
    assert accounts.find_user("eve") is None
    assert client.get("/api/calls").status_code == 200  # the rest of the API works


# --- the OpenAPI document and the Swagger UI --------------------------------------------

def test_the_openapi_document_needs_a_sign_in(anonymous: TestClient) -> None:
    _refused(anonymous.get("/api/openapi.json"))


def test_the_openapi_document_lists_the_api_only(api_as: ApiAs, client_as: ClientAs) -> None:
    client, _ = api_as("agent")
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.") and schema["info"]["title"] == "Switchboard API"
    assert set(schema["paths"]) == API_PATHS
    assert set(schema["paths"]["/api/users"]) == {"get", "post"}
    assert set(schema["paths"]["/api/users/{user_id}"]) == {"patch"}
    schemes = schema["components"]["securitySchemes"]
    assert any(s["type"] == "http" and s["scheme"] == "bearer" for s in schemes.values())
    text = response.text
    for page in ('"/login"', '"/logout"', '"/calls"', '"/users"', '"/account"', '"/"'):
        assert page not in text, page
    # a signed-in browser (the Swagger UI page) may read it too
    browser, _ = client_as("agent")
    assert browser.get("/api/openapi.json").json() == schema


def test_the_docs_page_needs_a_sign_in_and_uses_no_cdn(anonymous: TestClient, api_as: ApiAs,
                                                      client_as: ClientAs) -> None:
    _refused(anonymous.get("/api/docs"))
    client, _ = api_as("agent")
    page = client.get("/api/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "SwaggerUIBundle" in html and "'/api/openapi.json'" in html
    for cdn in ("cdn.jsdelivr", "unpkg", "cdnjs", "googleapis", "//"):
        if cdn == "//":
            assert not re.search(r'(src|href)="(https?:)?//', html), "an external URL"
        else:
            assert cdn not in html, cdn
    assets = re.findall(r'(?:src|href)="(/api/docs/assets/[^"]+)"', html)
    assert sorted(assets) == ["/api/docs/assets/favicon.png",
                              "/api/docs/assets/swagger-ui-bundle.js",
                              "/api/docs/assets/swagger-ui.css"]
    expected_types = {"js": "javascript", "css": "text/css", "png": "image/png"}
    browser, _ = client_as("agent")
    for asset in assets:
        _refused(anonymous.get(asset))
        for reader in (client, browser):  # a token or the browser's cookie
            response = reader.get(asset)
            assert response.status_code == 200, asset
            assert expected_types[asset.rsplit(".", 1)[1]] in response.headers["content-type"]
            assert len(response.content) > 1000
    for name in ("redoc.standalone.js", "nothing.js", "..%2F..%2Fapi.py", "%2e%2e"):
        response = client.get(f"/api/docs/assets/{name}")
        assert response.status_code == 404, name
