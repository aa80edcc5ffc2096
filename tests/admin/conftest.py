"""The console without a node: a FastAPI app with ``install_console`` on a fresh SQLite
database, and HTTPS test clients signed in with a given role (the session cookie is Secure,
so the clients talk to https://testserver)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from html import unescape
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from admin.accounts import AccountRepository, UserView
from admin.console import install_console
from switchboard.base.processes import free_port
from switchboard.base.settings import Settings
from switchboard.bench.local_cluster import RedisServer
from switchboard.storage.database import prepare_database

if TYPE_CHECKING:  # the test client's responses
    from httpx2 import Response

PASSWORD = "correct horse battery"
BASE_URL = "https://testserver"


@pytest.fixture
def console_settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'console.db'}",
                    console_login_max_failures=3)


@pytest.fixture
def console_db(console_settings: Settings) -> sessionmaker[Session]:
    return prepare_database(console_settings.effective_database_url, demo_data=False)


@pytest.fixture
def console_app(console_settings: Settings, console_db: sessionmaker[Session]) -> FastAPI:
    app = FastAPI()
    install_console(app, console_settings, console_db)
    return app


@pytest.fixture
def accounts(console_app: FastAPI) -> AccountRepository:
    repository: AccountRepository = console_app.state.console.accounts
    return repository


def csrf_of(html: str) -> str:
    """The CSRF token of the first form on a page."""
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token on the page"
    return match.group(1)


def login(client: TestClient, username: str, password: str = PASSWORD,
          next_path: str = "/") -> Response:
    """Send the login form (with the CSRF token of a fresh login page); the response, its
    redirect not followed: 303 signed in, 401 wrong name or password, 429 locked."""
    page = client.get("/login")
    return client.post("/login", data={"username": username, "password": password,
                                       "csrf_token": csrf_of(page.text), "next": next_path},
                       follow_redirects=False)


def sign_in(client: TestClient, username: str, password: str = PASSWORD) -> None:
    response = login(client, username, password)
    assert response.status_code == 303, response.text


def can_sign_in(app: FastAPI, username: str, password: str = PASSWORD) -> bool:
    """Whether the name and password sign in, tried on a client of its own."""
    with TestClient(app, base_url=BASE_URL) as client:
        response = login(client, username, password)
        assert response.status_code in (303, 401), response.text
        return response.status_code == 303


def signed_in(client: TestClient) -> bool:
    response = client.get("/account", follow_redirects=False)
    assert response.status_code in (200, 303), response.text
    return response.status_code == 200


def page_text(response: Response) -> str:
    """The response's text with HTML entities decoded."""
    return unescape(response.text)


@pytest.fixture
def client_as(console_app: FastAPI, accounts: AccountRepository
              ) -> Iterator[Callable[[str], tuple[TestClient, UserView]]]:
    """``client_as("agent")``: a new user with that role, signed in on its own client."""
    clients: list[TestClient] = []

    def make(role: str) -> tuple[TestClient, UserView]:
        user = accounts.create_user(f"{role}{len(clients) + 1}", PASSWORD, role)
        client = TestClient(console_app, base_url=BASE_URL)
        clients.append(client)
        sign_in(client, user.username)
        return client, user

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def board_server(tmp_path: Path, redis_server: RedisServer) -> Iterator[tuple[str, FastAPI]]:
    """The console, with the board on ``redis_server``, served on a free loopback port."""
    settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'c.db'}",
                        redis_url=redis_server.url,
                        console_secure_cookies=False)  # type: ignore[call-arg]  # plain http
    app = FastAPI()
    install_console(app, settings, prepare_database(settings.effective_database_url))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(10)


def http_client_as(url: str, app: FastAPI, role: str, name: str = "") -> httpx.Client:
    """An HTTP client of the served console, signed in as a new user of ``role``."""
    user: UserView = app.state.console.accounts.create_user(name or f"{role}-x", PASSWORD,
                                                            role)
    client = httpx.Client(base_url=url, timeout=10)
    page = client.get("/login")
    response = client.post("/login", data={"username": user.username, "password": PASSWORD,
                                           "csrf_token": csrf_of(page.text), "next": "/live"})
    assert response.status_code in (200, 303), response.text
    return client
