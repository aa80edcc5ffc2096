"""Shared fixtures: one migrated database, one set of loaded models and one Rasa server
per test session."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Playwright, sync_playwright
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from switchboard.storage.database import prepare_database
from switchboard.storage.repository import CallRepository

pytest_plugins = ["tests.support.speech_fixtures", "tests.support.dialog_fixtures",
                  "tests.support.redis_server"]

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
POSTGRES_ADMIN_URL = os.environ.get(
    "SWITCHBOARD_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture(scope="module")
def playwright_driver() -> Iterator[Playwright]:
    """Playwright (sync API) for one test module's browsers."""
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated SQLite database with the demo orders, shared by the session."""
    url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'switchboard.db'}"
    prepare_database(url)
    return url


@pytest.fixture(scope="session")
def sessions(database_url: str) -> sessionmaker[Session]:
    return prepare_database(database_url)


@pytest.fixture(scope="session")
def calls(sessions: sessionmaker[Session]) -> CallRepository:
    return CallRepository(sessions)


@pytest.fixture(scope="session")
def artifacts() -> Iterator[Path]:
    """Where tests leave files worth looking at (audio, turn logs)."""
    ARTIFACTS.mkdir(exist_ok=True)
    yield ARTIFACTS


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh database on the local PostgreSQL server, dropped afterwards."""
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"switchboard_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # the server is part of the test environment
        pytest.fail(f"PostgreSQL at {POSTGRES_ADMIN_URL} is needed for this test: {exc}")
    try:
        yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: a SQLite file, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'calls.db'}"
    return str(request.getfixturevalue("postgres_url"))
