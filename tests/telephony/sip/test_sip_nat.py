"""Behind NAT: a worker configured with a public address (as in a container or a cloud VM)
writes it in Contact and the SDP it answers with; a caller whose own SDP names a private
address it cannot be reached at (a phone behind its own NAT) still hears the bot, because
the worker sends media back to where the caller's RTP comes from (symmetric RTP) and
answers to the port its requests come from (rport)."""

from __future__ import annotations

import re
import socket
import struct
import time
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
import soundfile

from switchboard.storage.repository import CallRepository
from tests.telephony.sip.test_sip_calls import stored_call
from tests.telephony.sip.workers import Worker, worker_process

pytestmark = pytest.mark.integration

PUBLIC = "203.0.113.7"
"""The node's public address (TEST-NET-3: never routed)."""
CALLER_PRIVATE = "10.255.255.1"
"""What the caller's SDP claims: an address nobody here can reach."""
LISTEN_S = 8.0


@pytest.fixture(scope="module")
def natted_worker(rasa_server: object, database_url: str,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    with worker_process(
        tmp_path_factory.mktemp("nat"), rasa_server.url,  # type: ignore[attr-defined]
        database_url, SWITCHBOARD_SIP_PUBLIC_ADDRESS=PUBLIC,
    ) as worker:
        yield worker


def _ulaw_to_linear(data: bytes) -> np.ndarray:
    """G.711 µ-law bytes → int16 (ITU-T G.711 expansion)."""
    u = ~np.frombuffer(data, dtype=np.uint8)
    sign, exponent, mantissa = u & 0x80, (u >> 4) & 0x07, u & 0x0F
    magnitude = ((mantissa.astype(np.int32) << 3) + 0x84) << exponent
    return np.where(sign, 0x84 - magnitude, magnitude - 0x84).astype(np.int16)


def test_a_caller_behind_nat_hears_the_bot_and_sees_the_public_address(
    natted_worker: Worker, calls: CallRepository, tmp_path: object,
) -> None:
    port = natted_worker.port
    sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sip, rtp:
        sip.bind(("127.0.0.1", 0))
        rtp.bind(("127.0.0.1", 0))
        sip.settimeout(5)
        tag, call_id = uuid.uuid4().hex[:8], f"{uuid.uuid4().hex}@{CALLER_PRIVATE}"
        sdp = (f"v=0\r\no=- 1 1 IN IP4 {CALLER_PRIVATE}\r\ns=-\r\n"
               f"c=IN IP4 {CALLER_PRIVATE}\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
               "a=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n")
        dialog = (f"From: <sip:natted@{CALLER_PRIVATE}>;tag={tag}\r\n"
                  f"Call-ID: {call_id}\r\nMax-Forwards: 70\r\n")
        # Via and Contact name the private address too; only rport gets answers back.
        sip.sendto((
            f"INVITE sip:bot@{PUBLIC}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {CALLER_PRIVATE}:5060;rport;branch=z9hG4bK{tag}\r\n"
            f"{dialog}To: <sip:bot@{PUBLIC}>\r\nCSeq: 1 INVITE\r\n"
            f"Contact: <sip:natted@{CALLER_PRIVATE}:5060>\r\n"
            f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}"
        ).encode(), ("127.0.0.1", port))
        ok = ""
        while not ok.startswith("SIP/2.0 200"):
            ok = sip.recv(65535).decode(errors="replace")
        contact = re.search(r"^Contact:\s*(.+?)\r$", ok, re.M | re.I)
        assert contact and f"@{PUBLIC}:{port}" in contact.group(1), ok
        assert f"c=IN IP4 {PUBLIC}" in ok, ok
        media_port = int(re.search(r"^m=audio (\d+)", ok, re.M).group(1))  # type: ignore[union-attr]
        to = re.search(r"^To:\s*(.+?)\r$", ok, re.M | re.I).group(1)  # type: ignore[union-attr]
        sip.sendto((f"ACK {contact.group(1).strip('<>')} SIP/2.0\r\n"
                    f"Via: SIP/2.0/UDP {CALLER_PRIVATE}:5060;rport;branch=z9hG4bK{tag}a\r\n"
                    f"{dialog}To: {to}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n").encode(),
                   ("127.0.0.1", port))

        # Talk (silence) from the caller's real socket: the bot's audio must come back to it.
        rtp.settimeout(0.02)
        received = bytearray()
        deadline, seq, clock = time.monotonic() + LISTEN_S, 0, 0
        ssrc = 0x5EED
        while time.monotonic() < deadline:
            header = struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, clock, ssrc)
            rtp.sendto(header + b"\xff" * 160, ("127.0.0.1", media_port))
            seq, clock = seq + 1, clock + 160
            try:
                while True:
                    packet, _ = rtp.recvfrom(2048)
                    if len(packet) > 12 and packet[1] & 0x7F == 0:
                        received += packet[12:]
            except TimeoutError:
                pass
        sip.sendto((f"BYE {contact.group(1).strip('<>')} SIP/2.0\r\n"
                    f"Via: SIP/2.0/UDP {CALLER_PRIVATE}:5060;rport;branch=z9hG4bK{tag}b\r\n"
                    f"{dialog}To: {to}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n").encode(),
                   ("127.0.0.1", port))
    heard = _ulaw_to_linear(bytes(received))
    soundfile.write(str(tmp_path) + "/heard.wav", heard, 8000)  # for a listen when it fails
    assert len(heard) > 8000 * 3, f"only {len(heard) / 8000:.1f} s of audio came back"
    assert np.abs(heard.astype(np.int32)).mean() > 200  # the greeting, not silence
    [call] = stored_call(calls, "natted@")
    assert call.turns and call.turns[0].speaker == "bot"
