"""The dialog tier's own settings, built by the node from ``Settings`` (README table)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RasaConfig:
    """Where Rasa lives and runs, and how the node talks to it (``SWITCHBOARD_RASA_*``)."""

    venv: Path
    """Rasa 3.6's own virtualenv."""
    data_dir: Path
    """Trained models, caches, logs and the node's API token live below it."""
    url: str = "http://127.0.0.1:5005"
    rasa_port: int = 5005
    interface: str = "127.0.0.1"
    """Where a Rasa server started here listens (0.0.0.0: for other hosts too)."""
    action_port: int = 5055
    database_url: str = ""
    """The database the action server reads orders from."""
    redis_url: str = ""
    """Rasa keeps its trackers in this Redis when set."""
    api_token: str = ""
    """Rasa's HTTP API token (intents are read from its tracker API when set)."""
    timeout_s: float = 10.0
    """Longest wait for one reply of the REST channel."""
    start_timeout_s: float = 180.0
