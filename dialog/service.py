"""Makes sure a Rasa server answers for one-off commands (simulate, bench)."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

from dialog.config import RasaConfig
from dialog.rasa_client import RasaClient
from dialog.runtime import RasaServers, ensure_trained
from switchboard.base.processes import free_port

log = logging.getLogger(__name__)


API_TOKEN_FILE = "rasa-api-token"


def with_api_token(config: RasaConfig) -> RasaConfig:
    """RasaConfig with a Rasa API token (a fresh random one unless configured)."""
    if config.api_token:
        return config
    return replace(config, api_token=secrets.token_urlsafe(24))


def publish_api_token(config: RasaConfig) -> None:
    """Leave the node's Rasa API token in data_dir (owner-only), so commands run beside
    the node (``switchboard simulate``) can read the intents of their turns too."""
    path = config.data_dir / API_TOKEN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(config.api_token)


def with_node_api_token(config: RasaConfig) -> RasaConfig:
    """RasaConfig carrying the running node's Rasa API token when none is configured."""
    if config.api_token:
        return config
    try:
        token = (config.data_dir / API_TOKEN_FILE).read_text().strip()
    except OSError:
        return config
    return replace(config, api_token=token) if token else config


@asynccontextmanager
async def dialog_available(config: RasaConfig) -> AsyncIterator[RasaConfig]:
    """Yield config naming a healthy Rasa server: the configured one if it answers,
    otherwise a managed one started for the duration (trained first if needed)."""
    client = RasaClient(config.url, timeout_s=2.0)
    try:
        healthy = await client.healthy()
    finally:
        await client.aclose()
    if healthy:
        yield with_node_api_token(config)
        return
    print(f"Rasa is not answering at {config.url}; starting one for this run "
          "(about 15-30 s)...", flush=True)
    model = await asyncio.to_thread(ensure_trained, config)
    config = with_api_token(config)
    servers = RasaServers(config, model, rasa_port=free_port(), action_port=free_port())
    await asyncio.to_thread(servers.__enter__)
    try:
        yield replace(config, url=servers.url)
    finally:
        await asyncio.to_thread(servers.stop)
