"""Chaos while a call is up. The caller (baresip) asks for an order's status, is asked for
the order number, a part of the node dies, the caller keys the number and hears the status.

- The dialog tier runs redundantly (two real Rasa servers sharing trackers and locks in
  Redis): killing the one the call talks to mid-form loses no turn and no call.
- The action server (order lookups) dies: Rasa answers the number with nothing, the bot
  asks the caller to try again; the action server back, the number is answered.
- The database (a PostgreSQL server of the test's own) crashes and Redis (the live call
  state) stops: the call goes on, what it writes waits in the worker's spool (and its state
  in memory) and lands once they are back; the call is analysed once."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from dialog.runtime import RasaServers, ensure_trained
from speech.stt import WhisperSTT
from speech.tts import PiperTTS
from switchboard.base.children import ChildProcess, log_probe
from switchboard.base.processes import free_port
from switchboard.base.settings import PROJECT_ROOT
from switchboard.bench.local_cluster import PostgresServer, RedisServer, free_udp_port
from switchboard.conversation.turn_detector import TurnTaking
from switchboard.node import rasa_config
from switchboard.storage.database import prepare_database
from switchboard.storage.live import LiveState
from switchboard.storage.models import Call
from switchboard.storage.repository import AnalysisRepository, CallRepository
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


@dataclass
class ChaosCall:
    heard: np.ndarray
    rate: int


def key_the_number(phone: Baresip) -> None:
    for digit in "48213#":
        phone.command("sndcode", digit)
        time.sleep(0.3)


def order_call_with_a_fault(tmp_path: Path, tts: PiperTTS, port: int, user: str,
                            calls: CallRepository, fault: Callable[[], None],
                            then: Callable[[Baresip], None] = key_the_number) -> ChaosCall:
    """baresip asks the worker on ``port`` for its order's status; once the stored call
    shows the bot asking for the order number, ``fault`` runs, then the caller keys
    48213# (or does ``then``) and hangs up at the end of its recording. What the caller
    heard."""
    wav = tmp_path / f"{user}.wav"
    write_wav(wav, audio([GREETING_MS, piper_speech(tts, "Hi, I'd like to check my order "
                                                         "status.", RATE), 24000]), RATE)
    phone = Baresip(tmp_path / user, wav, sip_port=free_udp_port(3), ctrl_port=free_port(),
                    user=user)
    phone.start()
    try:
        phone.command("dial", f"sip:bot@127.0.0.1:{port}")
        assert phone.wait_for_log("Call established", 10), phone.log()

        def asked_for_the_number() -> bool:
            found = [c for c in calls.list_calls(limit=20) if f"{user}@" in (c.caller or "")]
            call = calls.get_call(found[0].id) if found else None
            return call is not None and any("order number" in t.text.lower()
                                            for t in call.turns if t.speaker == "bot")

        wait_for(asked_for_the_number, 30, "the bot asking for the order number")
        fault()
        time.sleep(0.5)
        then(phone)
        assert phone.wait_for_log("terminated", 40), phone.log()
        heard, rate = phone.heard()
    finally:
        phone.stop()
    return ChaosCall(heard, rate)


def assert_answered_in_full(call: Call, stt: WhisperSTT, chaos: ChaosCall) -> None:
    """The call ended as the caller hung up (not with an apology), every turn is stored in
    order, the status (asked for after the fault) among them, and the caller heard it."""
    assert call.end_reason == "caller_hangup", call.end_reason  # not dialog_unavailable
    texts = [(t.speaker, t.text) for t in call.turns]
    assert [speaker for speaker, _ in texts[:3]] == ["bot", "caller", "bot"], texts
    assert [t.seq for t in call.turns] == list(range(1, len(call.turns) + 1))
    answers = [text for speaker, text in texts if speaker == "bot" and "shipped" in text]
    assert answers and "4 8 2 1 3" in answers[0], texts
    assert "shipped" in transcribe(stt, chaos.heard, chaos.rate)  # and the caller heard it


def test_killing_the_rasa_server_mid_call_loses_no_turn(
    two_rasa_servers: list[RasaServers], database_url: str, tts: PiperTTS, stt: WhisperSTT,
    calls: CallRepository, tmp_path: Path,
) -> None:
    first, second = two_rasa_servers

    def kill_the_first() -> None:  # the dialog server the call talks to crashes
        for child in first._children:
            child.kill()

    with worker_process(tmp_path / "worker", f"{first.url},{second.url}", database_url,
                        SWITCHBOARD_RASA_API_TOKEN=TEST_API_TOKEN) as worker:
        chaos = order_call_with_a_fault(tmp_path, tts, worker.port, "chaos", calls,
                                        kill_the_first)
        [call] = stored_call(calls, "chaos@127.0.0.1")
        assert worker.child.poll() is None
    assert_answered_in_full(call, stt, chaos)


def test_the_database_and_redis_failing_mid_call_lose_no_turn_and_analyse_once(
    rasa_server: RasaServers, redis_server: RedisServer, stt: WhisperSTT, tts: PiperTTS,
    tmp_path: Path,
) -> None:
    """The node's database (a PostgreSQL server of the test's own) crashes and Redis (the
    live call state) stops while the bot waits for the order number: the call goes on; its
    later turns and its end wait in the worker's spool and its state in memory; once both
    are back they are written, in order, and the call is analysed once."""
    broker = f"sqla+sqlite:///{tmp_path / 'broker.db'}"

    def outage() -> None:
        postgres.crash()
        redis_server.stop()

    with PostgresServer(tmp_path) as postgres:
        calls = CallRepository(prepare_database(postgres.url))
        with worker_process(tmp_path / "worker", rasa_server.url, postgres.url,
                            SWITCHBOARD_RASA_API_TOKEN=TEST_API_TOKEN,
                            SWITCHBOARD_REDIS_URL=redis_server.url,
                            SWITCHBOARD_CELERY_BROKER_URL=broker,
                            SWITCHBOARD_SPOOL_RETRY_S="1") as worker:
            chaos = order_call_with_a_fault(tmp_path, tts, worker.port, "outage", calls, outage)
            spool = tmp_path / "worker" / "spool"

            def spooled() -> list[Path]:  # (live files, and those a replay has claimed)
                return [*spool.glob("*.jsonl"), *spool.glob("*.claimed")]

            assert any(p.stat().st_size for p in spooled()), worker.log()
            postgres.start()
            redis_server.start()
            [call] = stored_call(calls, "outage@127.0.0.1", timeout=30)
            wait_for(lambda: not spooled(), 10, "the spool to be written")
            assert not list(spool.glob("*.rejected"))
            live = LiveState(redis_server.url, recovery_window_s=60)
            try:
                state = wait_for(lambda: live.call(call.id), 20, "the call's state in Redis")
            finally:
                live.close()
            assert worker.child.poll() is None
            log = worker.log()
        assert "spooled" in log and "wrote" in log, log
        assert "keeping call state in memory" in log and "is back" in log, log
        assert state.state == "ended" and state.end_reason == "caller_hangup", state
        assert_answered_in_full(call, stt, chaos)

        analyses = AnalysisRepository(prepare_database(postgres.url))
        env = {**os.environ, "SWITCHBOARD_DATA_DIR": str(tmp_path / "analytics"),
               "SWITCHBOARD_DATABASE_URL": postgres.url,
               "SWITCHBOARD_CELERY_BROKER_URL": broker, "SWITCHBOARD_DEMO_DATA": "false",
               "SWITCHBOARD_ANALYTICS_SWEEP_AFTER_S": "86400"}
        log_path = tmp_path / "analytics.log"
        with ChildProcess("analytics worker",
                          [sys.executable, "-m", "switchboard", "analytics", "worker"],
                          log_path=log_path, healthy=log_probe(log_path, " ready."),
                          base_env=env, cwd=tmp_path, start_timeout_s=60):
            wait_for(lambda: analyses.get(call.id) is not None, 60, "the call's analysis")
            time.sleep(2)  # (a second analysis would have landed by now)
        analysis = analyses.get(call.id)
        assert analysis is not None and analysis.runs == 1


def test_the_action_server_dying_mid_call_gets_a_spoken_retry_not_silence(
    rasa_server: RasaServers, database_url: str, stt: WhisperSTT, tts: PiperTTS,
    calls: CallRepository, tmp_path: Path,
) -> None:
    """The action server (order lookups) dies as the caller keys the order number: the bot
    says it could not do that and asks again (never silence), the call goes on; the action
    server is back (as `switchboard run` restarts it) and the number keyed again is
    answered. (The session's own Rasa server: its action server is started again.)"""
    [action_server, _] = rasa_server._children

    def key_twice(phone: Baresip) -> None:
        key_the_number(phone)
        wait_for(lambda: bot_turns(calls, "actions@") >= 3, 20, "the bot's answer")
        action_server.start()
        action_server.wait_healthy()
        key_the_number(phone)

    try:
        with worker_process(tmp_path / "worker", rasa_server.url, database_url,
                            SWITCHBOARD_RASA_API_TOKEN=TEST_API_TOKEN,
                            # (no "are you still there?" while the action server restarts)
                            SWITCHBOARD_NO_INPUT_TIMEOUT_S="30") as worker:
            chaos = order_call_with_a_fault(tmp_path, tts, worker.port, "actions", calls,
                                            action_server.kill, key_twice)
            [call] = stored_call(calls, "actions@127.0.0.1")
            assert worker.child.poll() is None
    finally:
        if action_server.poll() is not None:  # the session's Rasa needs it back
            action_server.stop(grace_s=0)
            action_server.start()
            action_server.wait_healthy()
    texts = [(t.speaker, t.text) for t in call.turns]
    retry = texts.index(("bot", TurnTaking().empty_reply_text))  # not silence
    assert texts[retry - 1] == ("caller", "[keypad] 48213"), texts
    assert texts[retry + 1] == ("caller", "[keypad] 48213"), texts
    assert "empty_reply" in [e.kind for e in call.events]
    assert_answered_in_full(call, stt, chaos)


def bot_turns(calls: CallRepository, caller_part: str) -> int:
    found = [c for c in calls.list_calls(limit=20) if caller_part in (c.caller or "")]
    call = calls.get_call(found[0].id) if found else None
    return 0 if call is None else sum(t.speaker == "bot" for t in call.turns)
