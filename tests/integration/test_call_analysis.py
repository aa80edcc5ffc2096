"""After a call, its analysis is produced by a real Celery worker within seconds."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
import pytest

from dialog.rasa_client import RasaClient
from speech.stt import WhisperSTT
from speech.tts import PiperTTS
from switchboard.node import Node
from switchboard.simulate import simulate_call
from switchboard.storage.repository import AnalysisRepository
from tests.analytics.test_worker import Workers, redis_url, wait_for, workers_on
from tests.audio_tools import piper_speech, silence

pytestmark = pytest.mark.integration
__all__ = ["redis_url", "workers_on"]  # fixtures used below


async def test_a_simulated_call_is_analysed_by_the_worker(
    redis_url: str, workers_on: Callable[[str], Workers], stt: WhisperSTT, tts: PiperTTS,
    rasa_server: object,
) -> None:
    workers = workers_on(redis_url)
    workers.start("analytics")
    settings = workers.settings.model_copy(update={"rasa_url": rasa_server.url})  # type: ignore[attr-defined]
    dialog = RasaClient(settings.rasa_url)
    node = Node.create(settings, stt=stt, tts=tts, dialog=dialog)
    caller = np.concatenate([silence(7000), piper_speech(tts, "I want to talk to an agent."),
                             silence(500)])
    try:
        sim = await asyncio.wait_for(simulate_call(node, caller, 16000), 120)
    finally:
        await node.aclose()
        await dialog.aclose()

    analyses = AnalysisRepository(workers.sessions)
    stored = await asyncio.to_thread(
        wait_for, lambda: analyses.get(sim.result.call_id), 20, "the call's analysis")
    assert stored.outcome == "handed_off"
    assert stored.turns == len(sim.result.turns)
