"""Chaos while a call is up: the dialog tier runs redundantly (two real Rasa servers
sharing trackers and locks in Redis); killing the one the call talks to mid-form loses no
turn and no call. The caller (baresip) asks for an order's status, is asked for the order
number, the Rasa server dies, the caller keys the number and hears the status."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dialog.runtime import RasaServers, ensure_trained
from speech.stt import WhisperSTT
from speech.tts import PiperTTS
from switchboard.base.processes import free_port
from switchboard.base.settings import PROJECT_ROOT
from switchboard.bench.local_cluster import RedisServer, free_udp_port
from switchboard.node import rasa_config
from switchboard.storage.repository import CallRepository
from tests.analytics.test_worker import wait_for
from tests.support.audio_tools import piper_speech, write_wav
from tests.support.dialog_fixtures import (
    RASA_START_TIMEOUT_S,
    TEST_API_TOKEN,
    rasa_test_settings,
)
from tests.telephony.sip.peers import Baresip
from tests.telephony.sip.test_sip_calls import GREETING_MS, RATE, audio, stored_call, transcribe
from tests.telephony.sip.workers import worker_process

pytestmark = pytest.mark.integration


@pytest.fixture
def two_rasa_servers(redis_server: RedisServer, database_url: str,
                     tmp_path: Path) -> Iterator[list[RasaServers]]:
    model = ensure_trained(rasa_config(rasa_test_settings(PROJECT_ROOT / "var")))
    pair = []
    for name in ("a", "b"):
        settings = rasa_test_settings(tmp_path / f"rasa-{name}").model_copy(
            update={"redis_url": redis_server.url})
        pair.append(RasaServers(rasa_config(settings), model, rasa_port=free_port(),
                                action_port=free_port(), database_url=database_url))
    try:
        for servers in pair:
            servers.start()
        for servers in pair:
            servers.wait_healthy(RASA_START_TIMEOUT_S)
        yield pair
    finally:
        for servers in pair:
            servers.stop()


def test_killing_the_rasa_server_mid_call_loses_no_turn(
    two_rasa_servers: list[RasaServers], database_url: str, tts: PiperTTS, stt: WhisperSTT,
    calls: CallRepository, tmp_path: Path,
) -> None:
    first, second = two_rasa_servers
    wav = tmp_path / "caller.wav"
    write_wav(wav, audio([GREETING_MS, piper_speech(tts, "Hi, I'd like to check my order "
                                                         "status.", RATE), 24000]), RATE)
    with worker_process(tmp_path / "worker", f"{first.url},{second.url}", database_url,
                        SWITCHBOARD_RASA_API_TOKEN=TEST_API_TOKEN) as worker:
        phone = Baresip(tmp_path / "phone", wav, sip_port=free_udp_port(3),
                        ctrl_port=free_port(), user="chaos")
        phone.start()
        try:
            phone.command("dial", f"sip:bot@127.0.0.1:{worker.port}")
            assert phone.wait_for_log("Call established", 10), phone.log()

            def asked_for_the_number() -> bool:
                found = [c for c in calls.list_calls(limit=20) if "chaos@" in (c.caller or "")]
                call = calls.get_call(found[0].id) if found else None
                return call is not None and any("order number" in t.text.lower()
                                                for t in call.turns if t.speaker == "bot")

            wait_for(asked_for_the_number, 30, "the bot asking for the order number")
            for child in first._children:  # the dialog server the call talks to crashes
                child.kill()
            time.sleep(0.5)
            for digit in "48213#":
                phone.command("sndcode", digit)
                time.sleep(0.3)
            assert phone.wait_for_log("terminated", 40), phone.log()
            [call] = stored_call(calls, "chaos@127.0.0.1")
            heard, rate = phone.heard()
        finally:
            phone.stop()
        assert worker.child.poll() is None
    assert call.end_reason == "caller_hangup", call.end_reason  # not dialog_unavailable
    answers = [t.text for t in call.turns if t.speaker == "bot" and "shipped" in t.text]
    assert answers and "4 8 2 1 3" in answers[0], [t.text for t in call.turns]
    assert "shipped" in transcribe(stt, heard, rate)  # and the caller heard it
