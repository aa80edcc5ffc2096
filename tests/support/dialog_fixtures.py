"""Pytest plugin: the real Rasa bot and action server, shared by one test session.

Load it with ``pytest_plugins = ["tests.support.dialog_fixtures"]``. It needs a session fixture
``database_url`` (a migrated database holding the demo orders). The model is cached in
the project's ``var/rasa/models`` by bot hash, so only the first run trains (~1 min).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dialog.runtime import RasaNotInstalled, RasaServers, ensure_trained
from switchboard.base.processes import free_port
from switchboard.base.settings import PROJECT_ROOT, Settings
from switchboard.node import rasa_config

TEST_API_TOKEN = "switchboard-test-token"
RASA_START_TIMEOUT_S = 180.0


def rasa_test_settings(data_dir: Path) -> Settings:
    """Settings for the test bot: no Redis, its HTTP API on (turn intents); the Rasa venv
    and the rest from the environment."""
    return Settings(  # type: ignore[call-arg]
        _env_file=None, data_dir=data_dir, redis_url="", rasa_api_token=TEST_API_TOKEN
    )


def shared_dialog(servers: Any) -> dict[str, str]:
    """Settings of a node (``switchboard run``) that talks to the session's bot instead of
    starting a Rasa server and action server of its own (a dialog tier shared by nodes)."""
    return {"SWITCHBOARD_RASA_MANAGED": "false", "SWITCHBOARD_RASA_URL": servers.url,
            "SWITCHBOARD_RASA_API_TOKEN": TEST_API_TOKEN}


def say(
    url: str, sender: str, message: str, metadata: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """One caller turn over Rasa's REST channel; the bot's messages in order."""
    response = httpx.post(
        f"{url}/webhooks/rest/webhook",
        json={"sender": sender, "message": message, "metadata": metadata or {}},
        timeout=30.0,
        trust_env=False,
    )
    response.raise_for_status()
    messages: list[dict[str, Any]] = response.json()
    return messages


@pytest.fixture(scope="session")
def rasa_server(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RasaServers]:
    """The trained bot behind Rasa's REST channel (``.url``), with its action server.

    The model is cached in the project's ``var/``; logs and endpoints.yml go to a pytest
    temporary directory (``servers.rasa_log``, ``servers.action_log``).
    """
    try:
        model = ensure_trained(
            rasa_config(rasa_test_settings(PROJECT_ROOT / "var")), echo=sys.stderr
        )
    except RasaNotInstalled as error:
        pytest.fail(f"{error} (`make test` installs it)")
    servers = RasaServers(
        rasa_config(rasa_test_settings(tmp_path_factory.mktemp("rasa"))),
        model,
        rasa_port=free_port(),
        action_port=free_port(),
        database_url=database_url,
    )
    servers.start()
    try:
        servers.wait_healthy(RASA_START_TIMEOUT_S)
        yield servers
    finally:
        servers.stop()
