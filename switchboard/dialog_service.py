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


def with_api_token(settings: Settings) -> Settings:
    """Settings with a Rasa API token (a fresh random one unless configured)."""
    if settings.rasa_api_token:
        return settings
    return settings.model_copy(update={"rasa_api_token": secrets.token_urlsafe(24)})


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
        yield settings
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
