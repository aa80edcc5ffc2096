"""The real action server when the database is down: it answers, it never crashes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from dialog.runtime import BOT_DIR, RasaNotInstalled, child_environment, rasa_executable
from switchboard.base.children import ChildProcess, http_probe
from switchboard.base.processes import free_port
from switchboard.node import rasa_config
from tests.support.dialog_fixtures import rasa_test_settings

START_TIMEOUT_S = 60.0
DOMAIN = {
    "responses": {},
    "forms": {"order_status_form": {"required_slots": ["order_number"]}},
    "slots": {"order_number": {"type": "text", "mappings": [{"type": "custom"}]}},
}


@pytest.fixture(scope="module")
def dead_db_action_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An action server whose database URL points at a file that cannot exist."""
    tmp = tmp_path_factory.mktemp("actions")
    settings = rasa_config(rasa_test_settings(tmp))
    try:
        python = rasa_executable(settings, "python")
    except RasaNotInstalled as error:
        pytest.fail(f"{error} (`make test` installs it)")
    port = free_port()
    env = child_environment(
        settings, SANIC_HOST="127.0.0.1", SWITCHBOARD_DATABASE_URL=f"sqlite:///{tmp}/no/such/dir.db"
    )
    url = f"http://127.0.0.1:{port}"
    with ChildProcess(
        "action server",
        [str(python), "-m", "rasa_sdk", "--actions", "actions", "-p", str(port)],
        log_path=tmp / "actions.log", healthy=http_probe(f"{url}/health"), base_env=env,
        cwd=BOT_DIR, start_timeout_s=START_TIMEOUT_S,
    ):
        yield url


def run_action(url: str, action: str, slots: dict[str, Any]) -> dict[str, Any]:
    tracker = {
        "sender_id": "test", "slots": slots, "latest_message": {"text": "48213"},
        "events": [], "paused": False, "followup_action": None,
        "active_loop": {"name": "order_status_form"}, "latest_action_name": "action_listen",
    }  # fmt: skip
    payload = {"next_action": action, "sender_id": "test", "tracker": tracker,
               "domain": DOMAIN, "version": "3.6.21"}  # fmt: skip
    response = httpx.post(f"{url}/webhook", json=payload, timeout=30, trust_env=False)
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def test_order_status_with_a_dead_database_apologises_and_offers_an_agent(
    dead_db_action_server: str,
) -> None:
    result = run_action(dead_db_action_server, "action_order_status", {"order_number": "48213"})
    assert [r.get("response") for r in result["responses"]] == ["utter_order_lookup_unavailable"]
    assert {"event": "followup", "name": "utter_offer_agent"} in [
        {k: e.get(k) for k in ("event", "name")} for e in result["events"]
    ]


def test_form_validation_with_a_dead_database_keeps_the_number(
    dead_db_action_server: str,
) -> None:
    result = run_action(
        dead_db_action_server, "validate_order_status_form",
        {"order_number": "48213", "requested_slot": "order_number"},
    )  # fmt: skip
    assert result["responses"] == []
    assert {"event": "slot", "name": "order_number", "value": "48213"} in [
        {k: e.get(k) for k in ("event", "name", "value")} for e in result["events"]
    ]
    # the server is still up after both failures
    assert httpx.get(f"{dead_db_action_server}/health", trust_env=False).status_code == 200
