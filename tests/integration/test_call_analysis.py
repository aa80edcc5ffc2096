"""After a call, its analysis is produced by a real Celery worker within seconds."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from admin.console import install_console
from dialog.rasa_client import RasaClient
from speech.stt import WhisperSTT
from speech.tts import PiperTTS
from switchboard.node import Node
from switchboard.simulate import Simulation, simulate_call
from switchboard.storage.database import prepare_database
from switchboard.storage.models import CallAnalysis
from switchboard.storage.repository import AnalysisRepository
from tests.analytics.test_worker import Workers, redis_url, wait_for, workers_on
from tests.support.audio_tools import piper_speech, silence

pytestmark = pytest.mark.integration
__all__ = ["redis_url", "workers_on"]  # fixtures used below


async def _handoff_call(workers: Workers, stt: WhisperSTT, tts: PiperTTS, rasa_url: str
                       ) -> tuple[Simulation, CallAnalysis]:
    """A caller asking for an agent, through the real pipeline on the workers' database;
    returns the call and its analysis once the worker has stored it."""
    settings = workers.settings.model_copy(update={
        "rasa_url": rasa_url, "database_url": workers.database_url})
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
    return sim, stored


async def test_a_simulated_call_is_analysed_by_the_worker(
    redis_url: str, workers_on: Callable[[str], Workers], stt: WhisperSTT, tts: PiperTTS,
    rasa_server: object,
) -> None:
    workers = workers_on(redis_url)
    workers.start("analytics")
    sim, stored = await _handoff_call(workers, stt, tts, rasa_server.url)  # type: ignore[attr-defined]
    assert stored.outcome == "handed_off"
    assert stored.turns == len(sim.result.turns)


async def test_on_postgresql_a_call_is_stored_analysed_and_served_by_the_api(
    redis_url: str, workers_on: Callable[[str], Workers], stt: WhisperSTT, tts: PiperTTS,
    rasa_server: object, postgres_url: str,
) -> None:
    """The production database end to end: the pipeline stores the call in PostgreSQL, a
    worker analyses it there, and the console's API serves it with its analysis."""
    workers = workers_on(redis_url)
    workers.database_url = postgres_url  # the worker reads this when it starts
    workers.sessions = prepare_database(postgres_url, demo_data=False)
    workers.start("analytics")
    sim, _ = await _handoff_call(workers, stt, tts, rasa_server.url)  # type: ignore[attr-defined]
    app = FastAPI()
    install_console(app, workers.settings, workers.sessions)
    accounts = app.state.console.accounts
    admin = accounts.create_user("pg-admin", "postgres admin password", "admin")
    token, _ = accounts.create_token(admin.id, "test")
    with TestClient(app, base_url="https://testserver",
                    headers={"Authorization": f"Bearer {token}"}) as client:
        detail = client.get(f"/api/calls/{sim.result.call_id}").json()
        listed = client.get("/api/calls", params={"outcome": "handed_off"}).json()
    assert detail["analysis"]["outcome"] == "handed_off"
    assert [t["speaker"] for t in detail["turns"]] == [t.speaker for t in sim.result.turns]
    assert detail["started_at"].endswith("Z") or detail["started_at"].endswith("+00:00")
    assert [c["id"] for c in listed["calls"]] == [sim.result.call_id]
