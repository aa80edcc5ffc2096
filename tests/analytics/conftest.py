"""Fixtures of the analytics tests: a database on SQLite and on the real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_storage import postgres_url  # noqa: F401  (the fixture, reused)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'calls.db'}"
    return str(request.getfixturevalue("postgres_url"))
