"""A node wired to the real engines and the session's Rasa server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from dialog.rasa_client import RasaClient
from speech.stt import WhisperSTT
from speech.tts import PiperTTS
from switchboard.base.settings import Settings
from switchboard.node import Node
from tests.support.dialog_fixtures import TEST_API_TOKEN


@pytest.fixture
async def node(
    database_url: str, stt: WhisperSTT, tts: PiperTTS, rasa_server: object
) -> AsyncIterator[Node]:
    url = rasa_server.url  # type: ignore[attr-defined]
    settings = Settings(database_url=database_url, rasa_url=url)
    dialog = RasaClient(url, timeout_s=settings.rasa_timeout_s, api_token=TEST_API_TOKEN)
    yield Node.create(settings, stt=stt, tts=tts, dialog=dialog, analytics=False)
    await dialog.aclose()
