"""``switchboard users …``: the real command in a subprocess, on a database the console
then uses. There is no default password: it comes from a terminal or --password-stdin."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from admin.accounts import AccountRepository
from admin.console import install_console
from switchboard.base.settings import Settings
from switchboard.storage.database import prepare_database
from switchboard.storage.models import User
from tests.admin.conftest import BASE_URL, PASSWORD, can_sign_in, sign_in


class Cli:
    """Runs ``python -m switchboard users …`` against one data directory and database."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.url = f"sqlite:///{tmp_path / 'x.db'}"

    def __call__(self, *args: str, stdin: str | None = None
                 ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "SWITCHBOARD_DATA_DIR": str(self.tmp_path),
               "SWITCHBOARD_DATABASE_URL": self.url}
        return subprocess.run(
            [sys.executable, "-m", "switchboard", "users", *args], cwd=self.tmp_path, env=env,
            input=stdin, stdin=subprocess.DEVNULL if stdin is None else None,
            capture_output=True, text=True, timeout=60, check=False)

    def sessions(self) -> sessionmaker[Session]:
        return prepare_database(self.url, demo_data=False)

    def usernames(self) -> list[str]:
        with self.sessions()() as session:
            return list(session.scalars(select(User.username).order_by(User.username)))


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


@pytest.fixture
def app(cli: Cli) -> Iterator[FastAPI]:
    """The console on the CLI's database."""
    settings = Settings(data_dir=cli.tmp_path, database_url=cli.url)
    console = FastAPI()
    install_console(console, settings, cli.sessions())
    yield console


def test_create_an_admin_with_the_password_on_stdin(cli: Cli, app: FastAPI) -> None:
    done = cli("create", "alice", "--role", "admin", "--password-stdin", stdin=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr
    assert "created alice (admin)" in done.stdout
    assert PASSWORD not in done.stdout + done.stderr

    with TestClient(app, base_url=BASE_URL) as client:
        sign_in(client, "alice")
        assert client.get("/users").status_code == 200  # an admin
    with cli.sessions()() as session:
        stored = session.scalar(select(User.password_hash).where(User.username == "alice"))
    assert stored is not None and stored.startswith("$argon2id$")

    listed = cli("list")
    assert listed.returncode == 0 and listed.stdout.startswith("alice\tadmin\tactive\t")


def test_a_short_password_is_refused(cli: Cli) -> None:
    done = cli("create", "alice", "--role", "admin", "--password-stdin", stdin="short\n")
    assert done.returncode != 0
    assert "at least 10 characters" in done.stderr
    assert cli.usernames() == []


def test_there_is_no_default_password(cli: Cli) -> None:
    for stdin in (None, PASSWORD + "\n"):  # nothing, or a pipe but no --password-stdin
        done = cli("create", "alice", "--role", "admin", stdin=stdin)
        assert done.returncode != 0
        assert "--password-stdin" in done.stderr
        assert "no terminal" in done.stderr
    empty = cli("create", "alice", "--role", "admin", "--password-stdin", stdin="")
    assert empty.returncode != 0 and "no password" in empty.stderr
    assert cli.usernames() == []


@pytest.mark.parametrize(("args", "message"), [
    (("create", "alice", "--role", "root"), "role must be one of"),
    (("create", "bad name!", "--role", "agent"), "user names are"),
])
def test_bad_names_and_roles_are_refused(cli: Cli, args: tuple[str, ...],
                                         message: str) -> None:
    done = cli(*args, "--password-stdin", stdin=PASSWORD + "\n")
    assert done.returncode != 0 and message in done.stderr
    assert cli.usernames() == []


def test_a_duplicate_is_refused(cli: Cli) -> None:
    accounts = AccountRepository(cli.sessions(), session_lifetime=timedelta(hours=1))
    accounts.create_user("alice", PASSWORD, "agent")
    for name in ("alice", "ALICE"):
        done = cli("create", name, "--role", "admin", "--password-stdin",
                   stdin="another fine password\n")
        assert done.returncode != 0 and "already exists" in done.stderr
    assert cli.usernames() == ["alice"]
    user = accounts.find_user("alice")
    assert user is not None and user.role == "agent"
    assert accounts.authenticate("alice", PASSWORD, ip=None).ok


def test_a_token_from_the_cli_works_on_the_api(cli: Cli, app: FastAPI) -> None:
    created = cli("create", "alice", "--role", "supervisor", "--password-stdin",
                  stdin=PASSWORD + "\n")
    assert created.returncode == 0, created.stderr
    done = cli("token", "alice", "--name", "grafana")
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert token.startswith("sbt_") and "\n" not in token

    with TestClient(app, base_url=BASE_URL,
                    headers={"Authorization": f"Bearer {token}"}) as client:
        me = client.get("/api/me")
        assert me.status_code == 200
        assert me.json()["username"] == "alice" and me.json()["role"] == "supervisor"

    unknown = cli("token", "nobody")
    assert unknown.returncode != 0 and "no user named 'nobody'" in unknown.stderr


def test_the_cli_sets_a_password(cli: Cli, app: FastAPI) -> None:
    assert cli("create", "alice", "--password-stdin", stdin=PASSWORD + "\n").returncode == 0
    done = cli("password", "alice", "--password-stdin", stdin="another fine password\n")
    assert done.returncode == 0, done.stderr
    assert not can_sign_in(app, "alice")
    assert can_sign_in(app, "alice", "another fine password")
    listed = cli("list")
    assert listed.stdout.startswith("alice\tagent\tactive\t")  # agent: the default role
