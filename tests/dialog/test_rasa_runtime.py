"""dialog.runtime without Rasa: hashing, endpoints, and the errors a user acts on."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest
import yaml as yaml_module

from dialog.config import RasaConfig
from dialog.runtime import (
    BOT_DIR,
    RasaNotInstalled,
    RasaServers,
    RasaStartError,
    RasaTrainingError,
    bot_hash,
    endpoints_yaml,
    ensure_trained,
    models_dir,
)
from switchboard.base.settings import Settings
from switchboard.node import rasa_config


def make_settings(tmp_path: Path, **overrides: object) -> RasaConfig:
    """The Rasa config the node builds from these settings."""
    values: dict[str, object] = {"data_dir": tmp_path / "var", "rasa_venv": tmp_path / "venv"}
    values.update(overrides)
    return rasa_config(Settings(_env_file=None, **values))  # type: ignore[arg-type, call-arg]


def fake_venv(settings: RasaConfig, rasa_script: str, python_script: str = "exec sleep 30") -> None:
    """A virtualenv whose ``rasa`` and ``python`` are shell scripts."""
    bin_dir = settings.venv / "bin"
    bin_dir.mkdir(parents=True)
    for name, body in (("rasa", rasa_script), ("python", python_script)):
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\n{textwrap.dedent(body)}\n")
        path.chmod(0o755)


@pytest.fixture
def bot_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "bot"
    shutil.copytree(BOT_DIR, copy, ignore=shutil.ignore_patterns("__pycache__", ".rasa"))
    return copy


def test_bot_hash_is_stable(bot_copy: Path) -> None:
    assert bot_hash(bot_copy) == bot_hash(bot_copy) == bot_hash(BOT_DIR)


def test_bot_hash_changes_with_training_data(bot_copy: Path) -> None:
    before = bot_hash(bot_copy)
    with (bot_copy / "data" / "nlu.yml").open("a") as nlu:
        nlu.write("\n")
    assert bot_hash(bot_copy) != before


def test_bot_hash_ignores_actions_and_credentials(bot_copy: Path) -> None:
    before = bot_hash(bot_copy)
    (bot_copy / "actions" / "extra.py").write_text("X = 1\n")
    (bot_copy / "credentials.yml").write_text("rest:\nsocketio:\n")
    assert bot_hash(bot_copy) == before


def test_missing_rasa_venv_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(RasaNotInstalled, match=r"install-rasa-venv\.sh"):
        ensure_trained(make_settings(tmp_path))


def test_cached_model_is_used_without_rasa(tmp_path: Path, bot_copy: Path) -> None:
    settings = make_settings(tmp_path)
    model = models_dir(settings) / f"{bot_hash(bot_copy)}.tar.gz"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"model")
    assert ensure_trained(settings, bot_dir=bot_copy) == model


def test_training_runs_rasa_train_into_the_hashed_model(tmp_path: Path, bot_copy: Path) -> None:
    settings = make_settings(tmp_path)
    fake_venv(
        settings,
        """
        while [ "$1" ]; do
          case "$1" in --out) out=$2;; --fixed-model-name) name=$2;; esac; shift
        done
        echo "Epochs: 100%"; echo model > "$out/$name.tar.gz"
        """,
    )
    model = ensure_trained(settings, bot_dir=bot_copy, echo=open("/dev/null", "w"))
    assert model == models_dir(settings) / f"{bot_hash(bot_copy)}.tar.gz"
    assert model.read_text() == "model\n"


def test_training_failure_shows_the_log_tail(tmp_path: Path, bot_copy: Path) -> None:
    settings = make_settings(tmp_path)
    fake_venv(settings, 'echo "InvalidRule: contradicting rules"; exit 1')
    with pytest.raises(RasaTrainingError, match="InvalidRule: contradicting rules"):
        ensure_trained(settings, bot_dir=bot_copy, echo=open("/dev/null", "w"))


def test_child_that_exits_at_start_is_reported_with_its_log(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    fake_venv(settings, 'echo "OSError: address already in use"; exit 3')
    model = tmp_path / "model.tar.gz"
    model.write_bytes(b"")
    servers = RasaServers(settings, model, rasa_port=1, action_port=2)
    servers.start()
    try:
        with pytest.raises(RasaStartError, match="address already in use"):
            servers.wait_healthy(timeout=20)
        assert servers.exited() == {"Rasa server": 3}
        assert servers.poll() == 3
    finally:
        servers.stop()


def test_an_api_token_starting_with_a_dash_reaches_rasa_as_a_value(tmp_path: Path) -> None:
    """token_urlsafe() starts with '-' one time in 64: as a separate argument, Rasa's
    argparse took it for an option and the node failed to start."""
    settings = make_settings(tmp_path, rasa_api_token="-dashing-token")
    fake_venv(settings, 'echo "args: $*"; exit 4')
    model = tmp_path / "model.tar.gz"
    model.write_bytes(b"")
    servers = RasaServers(settings, model, rasa_port=1, action_port=2)
    servers.start()
    try:
        with pytest.raises(RasaStartError, match="--auth-token=-dashing-token"):
            servers.wait_healthy(timeout=20)
    finally:
        servers.stop()


def test_start_timeout_names_the_server_that_is_not_up(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    fake_venv(settings, "exec sleep 30")
    model = tmp_path / "model.tar.gz"
    model.write_bytes(b"")
    servers = RasaServers(settings, model, rasa_port=1, action_port=2)
    servers.start()
    try:
        with pytest.raises(RasaStartError, match="Rasa server"):
            servers.wait_healthy(timeout=1)
    finally:
        servers.stop(grace_s=1)
    assert servers.exited() == {} and servers.poll() is None


def test_endpoints_point_at_the_action_server_with_in_memory_trackers(tmp_path: Path) -> None:
    yaml = endpoints_yaml(make_settings(tmp_path), action_port=5077)
    assert yaml == 'action_endpoint:\n  url: "http://127.0.0.1:5077/webhook"\n'


def test_endpoints_use_redis_trackers_when_redis_is_configured(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, redis_url="redis://:s3cret@cache.local:6380/2")
    yaml = endpoints_yaml(settings, action_port=5055)
    parsed = yaml_module.safe_load(yaml)
    for store in ("tracker_store", "lock_store"):
        assert parsed[store]["type"] == "redis"
        assert (parsed[store]["url"], parsed[store]["port"], parsed[store]["db"],
                parsed[store]["password"]) == ("cache.local", 6380, 2, "s3cret")
