"""Makes sure a Rasa server answers for one-off commands (simulate, bench)."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from dialog.rasa_client import RasaClient
from dialog.runtime import RasaServers, ensure_trained
from switchboard.processes import free_port
from switchboard.settings import Settings

log = logging.getLogger(__name__)


API_TOKEN_FILE = "rasa-api-token"


def with_api_token(settings: Settings) -> Settings:
    """Settings with a Rasa API token (a fresh random one unless configured)."""
    if settings.rasa_api_token:
        return settings
    return settings.model_copy(update={"rasa_api_token": secrets.token_urlsafe(24)})


def publish_api_token(settings: Settings) -> None:
    """Leave the node's Rasa API token in data_dir (owner-only), so commands run beside
    the node (``switchboard simulate``) can read the intents of their turns too."""
    path = settings.data_dir / API_TOKEN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(settings.rasa_api_token)


def with_node_api_token(settings: Settings) -> Settings:
    """Settings carrying the running node's Rasa API token when none is configured."""
    if settings.rasa_api_token:
        return settings
    try:
        token = (settings.data_dir / API_TOKEN_FILE).read_text().strip()
    except OSError:
        return settings
    return settings.model_copy(update={"rasa_api_token": token}) if token else settings


@asynccontextmanager
async def dialog_available(settings: Settings) -> AsyncIterator[Settings]:
    """Yield settings naming a healthy Rasa server: the configured one if it answers,
    otherwise a managed one started for the duration (trained first if needed)."""
    client = RasaClient(settings.rasa_url, timeout_s=2.0)
    try:
        healthy = await client.healthy()
    finally:
        await client.aclose()
    if healthy:
        yield with_node_api_token(settings)
        return
    print(f"Rasa is not answering at {settings.rasa_url}; starting one for this run "
          "(about 15-30 s)...", flush=True)
    model = await asyncio.to_thread(ensure_trained, settings)
    settings = with_api_token(settings)
    servers = RasaServers(settings, model, rasa_port=free_port(), action_port=free_port())
    await asyncio.to_thread(servers.__enter__)
    try:
        yield settings.model_copy(update={"rasa_url": servers.url})
    finally:
        await asyncio.to_thread(servers.stop)
