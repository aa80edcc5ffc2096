"""SIP over TLS with SRTP (SDES keys): a real peer (baresip) calls a real worker process over
TLS, with a certificate made for the test, and the conversation travels as SRTP. A worker
whose SRTP is mandatory refuses plain RTP with 488, over TLS or not. With several workers,
Kamailio in front ends TLS."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from speech.stt import WhisperSTT
from speech.tts import PiperTTS
from switchboard.base.processes import free_port
from switchboard.bench.local_cluster import free_udp_port, running_node
from switchboard.storage.repository import CallRepository
from tests.support.audio_tools import piper_speech, write_wav
from tests.support.certs import ServerCertificate, make_certificate
from tests.support.dialog_fixtures import shared_dialog
from tests.telephony.sip.peers import Baresip, invite, sip_request
from tests.telephony.sip.test_sip_calls import (
    GREETING_MS,
    RATE,
    audio,
    recording_of,
    stored_call,
    transcribe,
)
from tests.telephony.sip.workers import Worker, worker_process

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> ServerCertificate:
    return make_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_worker(
    rasa_server: object, database_url: str, certificate: ServerCertificate,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Worker, int]]:
    """A worker on UDP and TLS (its own port) whose calls must use SRTP; and its TLS port."""
    tls_port = free_port()
    with worker_process(
        tmp_path_factory.mktemp("tls-worker"), rasa_server.url,  # type: ignore[attr-defined]
        database_url, SWITCHBOARD_SIP_TRANSPORTS="udp,tls",
        SWITCHBOARD_SIP_TLS_PORT=str(tls_port), SWITCHBOARD_SIP_TLS_CERT=str(certificate.cert),
        SWITCHBOARD_SIP_TLS_KEY=str(certificate.key), SWITCHBOARD_SIP_SRTP="mandatory",
        SWITCHBOARD_SIP_RECORD="true",
    ) as worker:
        yield worker, tls_port


def phone(workdir: Path, wav: Path, certificate: ServerCertificate, **options: str) -> Baresip:
    return Baresip(workdir, wav, sip_port=free_udp_port(3), ctrl_port=free_port(),
                   ca_file=certificate.ca, **options)


def test_a_tls_caller_with_srtp_talks_to_the_bot(
    tls_worker: tuple[Worker, int], certificate: ServerCertificate, tts: PiperTTS,
    stt: WhisperSTT, calls: CallRepository, tmp_path: Path,
) -> None:
    _, tls_port = tls_worker
    wav = tmp_path / "caller.wav"
    write_wav(wav, audio([GREETING_MS, piper_speech(tts, "Hi, I'd like to check my order "
                                                         "status.", RATE), 16000]), RATE)
    caller = phone(tmp_path, wav, certificate, user="secure", mediaenc="srtp-mand")
    caller.start()
    try:
        caller.command("dial", f"sip:bot@127.0.0.1:{tls_port};transport=tls")
        assert caller.wait_for_log("Call established", 10), caller.log()
        assert caller.wait_for_log("terminated", 40), caller.log()
        [call] = stored_call(calls, "secure@127.0.0.1")
        heard, rate = caller.heard()
    finally:
        caller.stop()
    assert call.call_metadata["sip_transport"] == "tls"
    assert call.call_metadata["srtp"] is True
    assert any("order status" in t.text.lower() for t in call.turns if t.speaker == "caller")
    text = transcribe(stt, heard, rate)  # decrypted by the phone: the bot's voice
    assert "order number" in text, text
    path = recording_of(calls, call.id)
    assert path and Path(path).is_file()


def test_a_tls_caller_without_srtp_is_refused_when_srtp_is_mandatory(
    tls_worker: tuple[Worker, int], certificate: ServerCertificate, tmp_path: Path,
) -> None:
    worker, tls_port = tls_worker
    wav = tmp_path / "quiet.wav"
    write_wav(wav, audio([3000]), RATE)
    caller = phone(tmp_path, wav, certificate, user="plain")
    caller.start()
    try:
        caller.command("dial", f"sip:bot@127.0.0.1:{tls_port};transport=tls")
        assert caller.wait_for_log("488", 10), caller.log()
        assert "Call established" not in caller.log()
    finally:
        caller.stop()
    assert worker.child.poll() is None


def test_a_plain_rtp_offer_over_udp_gets_488(tls_worker: tuple[Worker, int]) -> None:
    worker, _ = tls_worker
    status = sip_request(worker.port, invite(worker.port, "0", "a=rtpmap:0 PCMU/8000\r\n"))
    assert status is not None and status.startswith("SIP/2.0 488"), status


def test_kamailio_ends_tls_and_the_workers_carry_srtp(
    database_url: str, rasa_server: object, certificate: ServerCertificate, tts: PiperTTS,
    stt: WhisperSTT, calls: CallRepository, tmp_path: Path,
) -> None:
    """`switchboard run --sip-workers 2`: callers reach Kamailio over TLS (the workers
    behind it over UDP on loopback), the SDP's SRTP keys go through to the worker, and
    SRTP is mandatory node-wide."""
    tls_port = free_port()
    wav = tmp_path / "caller.wav"
    write_wav(wav, audio([GREETING_MS, piper_speech(tts, "I'd like to check my order.", RATE),
                          12000]), RATE)
    with running_node(tmp_path / "node", database_url, "--sip-workers", "2",
                      **shared_dialog(rasa_server),
                      SWITCHBOARD_SIP_WORKER_BASE_PORT=str(free_udp_port(4)),
                      SWITCHBOARD_SIP_TRANSPORTS="udp,tls",
                      SWITCHBOARD_SIP_TLS_PORT=str(tls_port),
                      SWITCHBOARD_SIP_TLS_CERT=str(certificate.cert),
                      SWITCHBOARD_SIP_TLS_KEY=str(certificate.key),
                      SWITCHBOARD_SIP_SRTP="mandatory") as node:
        caller = phone(tmp_path / "secure", wav, certificate, user="nodetls",
                       mediaenc="srtp-mand")
        plain = phone(tmp_path / "plain", wav, certificate, user="nodeplain")
        caller.start()
        plain.start()
        try:
            plain.command("dial", f"sip:bot@127.0.0.1:{tls_port};transport=tls")
            caller.command("dial", f"sip:bot@127.0.0.1:{tls_port};transport=tls")
            assert caller.wait_for_log("Call established", 15), caller.log()
            assert caller.wait_for_log("SRTP is Enabled", 5), caller.log()
            assert plain.wait_for_log("488", 15), plain.log()
            assert caller.wait_for_log("terminated", 40), caller.log()
            [call] = stored_call(calls, "nodetls@127.0.0.1")
            heard, rate = caller.heard()
        finally:
            caller.stop()
            plain.stop()
        assert "Call established" not in plain.log()
        assert node.child.poll() is None
    assert call.call_metadata["srtp"] is True
    assert call.worker in ("sip-0", "sip-1")
    assert any("order" in t.text.lower() for t in call.turns if t.speaker == "caller")
    assert "help" in transcribe(stt, heard, rate)
