"""Whole SIP calls from real peers (baresip, SIPp, raw datagrams) to a real worker process
running the real pipeline (Whisper, Rasa, Piper). What the caller heard is transcribed."""

from __future__ import annotations

import difflib
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile

from speech.stt import WhisperSTT
from speech.tts import PiperTTS
from switchboard.base.processes import free_port
from switchboard.bench.local_cluster import free_udp_port
from switchboard.storage.models import Call
from switchboard.storage.repository import CallRepository
from tests.support.audio_tools import normalize_digits, piper_speech, silence, write_wav
from tests.support.speech_fixtures import speech_models_mapped
from tests.telephony.sip.conftest import TRANSFER_URI
from tests.telephony.sip.peers import (
    Baresip,
    header,
    invite,
    options,
    run_sipp,
    sip_request,
    sipp_command,
    stop_process,
    ulaw_wav,
)
from tests.telephony.sip.scenarios import write_scenario
from tests.telephony.sip.workers import Worker

pytestmark = pytest.mark.integration
RATE = 8000
GREETING_MS = 6000
"""Silence the caller keeps before speaking, while the greeting plays."""
CALL_END_TIMEOUT_S = 30.0
CALLS_UP_TIMEOUT_S = 15.0
"""How long SIPp's held calls may take to be answered and stored as active."""


def audio(parts: list[np.ndarray | int]) -> np.ndarray:
    """Utterances and silences (ints, in ms) at 8 kHz, one after another."""
    return np.concatenate([silence(p, RATE) if isinstance(p, int) else p for p in parts])


def transcribe(stt: WhisperSTT, pcm: np.ndarray, rate: int) -> str:
    return stt.transcribe_sync(pcm.astype(np.int16), rate).text.lower()


def stored_call(calls: CallRepository, caller_part: str, timeout: float = CALL_END_TIMEOUT_S,
                count: int = 1) -> list[Call]:
    """The ended SIP calls whose caller URI contains ``caller_part`` (waits for them)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [c for c in calls.list_calls(limit=200)
                 if c.transport == "sip" and caller_part in (c.caller or "")]
        ended = [calls.get_call(c.id) for c in found if c.ended_at is not None]
        if len(ended) >= count or time.monotonic() > deadline:
            return [c for c in ended if c is not None]
        time.sleep(0.3)


# ---------------------------------------------------------------------- baresip: one call


@dataclass
class OrderCall:
    phone: Baresip
    heard: np.ndarray
    heard_rate: int
    call: Call


@pytest.fixture(scope="module")
def order_call(
    sip_worker: Worker, tts: PiperTTS, calls: CallRepository,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OrderCall]:
    """A baresip caller asks for its order status, types 48213# on the keypad, listens,
    and hangs up (BYE) when its audio file ends."""
    workdir = tmp_path_factory.mktemp("baresip")
    wav = workdir / "caller.wav"
    write_wav(wav, audio([GREETING_MS, piper_speech(tts, "Hi, I'd like to check my order "
                                                           "status.", RATE), 16000]), RATE)
    phone = Baresip(workdir, wav, sip_port=free_udp_port(3), ctrl_port=free_port())
    phone.start()
    try:
        phone.command("dial", f"sip:bot@127.0.0.1:{sip_worker.port}")
        assert phone.wait_for_log("Call established", 10), phone.log()
        time.sleep(GREETING_MS / 1000 + 7)  # the question, then "what's your order number?"
        for digit in "48213#":
            phone.command("sndcode", digit)
            time.sleep(0.3)
        assert phone.wait_for_log("terminated", 40), phone.log()
        stored = stored_call(calls, "caller@127.0.0.1")
        assert stored, f"no stored call:\n{sip_worker.log()[-3000:]}"
        pcm, rate = phone.heard()
        yield OrderCall(phone, pcm, rate, stored[0])
    finally:
        phone.stop()


def test_the_worker_holds_no_speech_model(order_call: OrderCall, sip_worker: Worker) -> None:
    """After a whole call the media process has mapped neither Whisper nor Piper: the
    session's speech server did that work."""
    assert sip_worker.child.pid is not None
    assert speech_models_mapped(sip_worker.child.pid) == []


def test_caller_hears_the_greeting_and_is_asked_for_the_order_number(
    order_call: OrderCall, stt: WhisperSTT
) -> None:
    text = transcribe(stt, order_call.heard, order_call.heard_rate)
    assert "help" in text
    assert "order number" in text


def test_keypad_order_number_is_answered_with_its_status(
    order_call: OrderCall, stt: WhisperSTT
) -> None:
    assert any(t.text == "[keypad] 48213" for t in order_call.call.turns)
    [answer] = [t.text for t in order_call.call.turns if "shipped" in t.text]
    assert "4 8 2 1 3" in answer  # what the bot said, exactly
    # What the caller heard, through G.711 and Whisper tiny.en: the status, and the number
    # with at most one digit misheard (tiny.en drops a spoken digit now and then).
    text = transcribe(stt, order_call.heard, order_call.heard_rate)
    assert "shipped" in text
    heard = normalize_digits(text.split("shipped")[0])
    assert any(difflib.SequenceMatcher(None, heard[i:i + 5], "48213").ratio() >= 0.8
               for i in range(max(1, len(heard) - 3))), text


def test_caller_bye_ends_the_call_as_caller_hangup(order_call: OrderCall) -> None:
    assert order_call.call.end_reason == "caller_hangup"
    assert order_call.call.transport == "sip"
    assert order_call.call.call_metadata.get("sip_call_id")


def recording_of(calls: CallRepository, call_id: str, timeout: float = 15.0) -> str | None:
    """The call's recording path, stored once the worker has closed the file."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        call = calls.get_call(call_id)
        if call is not None and call.recording_path:
            return call.recording_path
        time.sleep(0.2)
    return None


def test_recording_holds_both_legs(
    order_call: OrderCall, stt: WhisperSTT, calls: CallRepository
) -> None:
    path = recording_of(calls, order_call.call.id)
    assert path and Path(path).is_file()
    pcm, rate = soundfile.read(path, dtype="int16")
    assert pcm.ndim == 2 and pcm.shape[1] == 2
    caller, bot = pcm[:, 0], pcm[:, 1]
    assert "order status" in transcribe(stt, caller, rate)
    assert "order number" in transcribe(stt, bot, rate)
    # The caller was silent while the greeting played (one channel each, not mixed).
    greeting = slice(rate // 2, 3 * rate)
    assert np.abs(bot[greeting].astype(np.int32)).mean() > 200
    assert np.abs(caller[greeting].astype(np.int32)).mean() < 50


# ---------------------------------------------------------------------- SIPp callers


def active_calls(calls: CallRepository, caller_part: str) -> int:
    """How many SIP calls whose caller URI contains ``caller_part`` are in progress."""
    return sum(1 for c in calls.list_calls(limit=200)
               if c.transport == "sip" and caller_part in (c.caller or "")
               and c.status == "active")


def sipp_caller_wav(tts: PiperTTS, workdir: Path, name: str, text: str | None,
                    tail_ms: int) -> Path:
    parts: list[np.ndarray | int] = [GREETING_MS]
    if text:
        parts.append(piper_speech(tts, text, RATE))
    parts.append(tail_ms)
    return ulaw_wav(workdir / f"{name}.wav", audio(parts))


def test_bot_hangs_up_with_bye_after_goodbye(
    sip_worker: Worker, tts: PiperTTS, calls: CallRepository, tmp_path: Path
) -> None:
    wav = sipp_caller_wav(tts, tmp_path, "goodbye", "That's all, thank you. Goodbye.", 12000)
    scenario = write_scenario(tmp_path / "goodbye.xml", "bot_hangs_up", wav=wav,
                              wait_ms=25000)
    local_port = free_udp_port()
    result = run_sipp(scenario, sip_worker.port, tmp_path, local_port=local_port)
    assert result.returncode == 0, (tmp_path / "goodbye-errors.log").read_text()
    [call] = stored_call(calls, f"sipp{local_port}@")
    assert call.end_reason == "bot_hangup"
    messages = (tmp_path / "goodbye-messages.log").read_text()
    assert header(messages, "SIP/2.0 200", "X-Call-UUID") == call.id  # the node named it


def test_handoff_is_a_refer_to_the_transfer_uri(
    sip_worker: Worker, tts: PiperTTS, calls: CallRepository, tmp_path: Path
) -> None:
    wav = sipp_caller_wav(tts, tmp_path, "agent", "I want to talk to a human agent.", 12000)
    trunk_uuid = uuid.uuid4()  # a trunk (or the front) that names its calls
    scenario = write_scenario(tmp_path / "handoff.xml", "transferred", wav=wav,
                              wait_ms=25000, invite_headers=(f"X-Call-UUID: {trunk_uuid}",))
    local_port = free_udp_port()
    result = run_sipp(scenario, sip_worker.port, tmp_path, local_port=local_port)
    assert result.returncode == 0, (tmp_path / "handoff-errors.log").read_text()
    messages = (tmp_path / "handoff-messages.log").read_text()
    refer_to = header(messages, "REFER", "Refer-To")
    assert refer_to is not None and TRANSFER_URI in refer_to
    [call] = stored_call(calls, f"sipp{local_port}@")
    assert call.end_reason == "handoff"
    assert call.id == trunk_uuid.hex  # one id from the trunk to the database, the
    assert header(messages, "SIP/2.0 200", "X-Call-UUID") == call.id  # answer
    assert header(messages, "REFER", "X-Call-UUID") == call.id  # and the transfer
    transfer = [e for e in call.events if e.kind == "transfer"]
    assert transfer and transfer[0].data["status"] == 200


def test_four_concurrent_calls_are_greeted_and_a_fifth_is_busy(
    sip_worker: Worker, calls: CallRepository, stt: WhisperSTT, tmp_path: Path
) -> None:
    wav = ulaw_wav(tmp_path / "quiet.wav", audio([9000]))
    holding = write_scenario(tmp_path / "hold.xml", "caller_hangs_up", wav=wav, hold_ms=7000)
    busy = write_scenario(tmp_path / "busy.xml", "busy")
    local_port = free_udp_port()
    four = subprocess.Popen(
        sipp_command(holding, sip_worker.port, tmp_path, local_port=local_port, calls=4),
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + CALLS_UP_TIMEOUT_S
        while active_calls(calls, f"sipp{local_port}@") < 4:
            assert four.poll() is None, (tmp_path / "hold-errors.log").read_text()
            assert time.monotonic() < deadline, f"4 calls not up:\n{sip_worker.log()[-3000:]}"
            time.sleep(0.2)
        fifth = run_sipp(busy, sip_worker.port, tmp_path, local_port=free_udp_port(),
                         timeout_s=10)
        assert fifth.returncode == 0, (tmp_path / "busy-errors.log").read_text()
        assert four.wait(30) == 0, (tmp_path / "hold-errors.log").read_text()
    finally:
        stop_process(four)
    greeted = stored_call(calls, f"sipp{local_port}@", count=4)
    assert len(greeted) == 4
    for call in greeted:
        path = recording_of(calls, call.id)
        assert path
        pcm, rate = soundfile.read(path, dtype="int16")
        assert "help" in transcribe(stt, pcm[:, 1], rate), call.id


def test_worker_survives_garbage_and_rejects_unknown_codecs(
    sip_worker: Worker, tts: PiperTTS, calls: CallRepository, tmp_path: Path
) -> None:
    port = sip_worker.port
    rng = np.random.default_rng(7)
    junk = [
        rng.integers(0, 256, 1200, dtype=np.uint8).tobytes(),
        b"",
        b"\x00" * 64,
        b"INVITE sip:bot@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;bra",
        b"SIP/2.0 200 OK\r\n\r\n",
        b"OPTIONS sip:x SIP/2.0\r\nCSeq: banana\r\nCall-ID:\r\nFrom: <<<>\r\n"
        b"Content-Length: 99999\r\n\r\n",
        b"INVITE " + b"A" * 60000 + b" SIP/2.0\r\n\r\n",
        invite(port, "0", "a=rtpmap:0 PCMU/8000\r\n")[:-40],
    ]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for datagram in junk:
            sock.sendto(datagram, ("127.0.0.1", port))
        for rtp_port in range(sip_worker.rtp_port, sip_worker.rtp_port + 8):
            sock.sendto(rng.integers(0, 256, 172, dtype=np.uint8).tobytes(),
                        ("127.0.0.1", rtp_port))
    status = sip_request(port, invite(port, "3", "a=rtpmap:3 GSM/8000\r\n"))
    assert status is not None and status.startswith("SIP/2.0 488"), status
    assert sip_worker.child.poll() is None
    assert options(port) == "SIP/2.0 200 OK"

    wav = ulaw_wav(tmp_path / "quiet.wav", audio([5000]))
    scenario = write_scenario(tmp_path / "normal.xml", "caller_hangs_up", wav=wav,
                              hold_ms=4000)
    local_port = free_udp_port()
    result = run_sipp(scenario, port, tmp_path, local_port=local_port)
    assert result.returncode == 0, (tmp_path / "normal-errors.log").read_text()
    [call] = stored_call(calls, f"sipp{local_port}@")
    assert call.end_reason == "caller_hangup"
    assert len(call.turns) >= 1 and call.turns[0].speaker == "bot"




