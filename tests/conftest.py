"""Shared fixtures: one migrated database, one set of loaded models and one Rasa server
per test session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from switchboard.storage.database import prepare_database
from switchboard.storage.repository import CallRepository

pytest_plugins = ["tests.speech_fixtures", "tests.dialog_fixtures"]

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


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
