"""An extended corpus of what a trunk or an attacker may send, within one call and around
it: malformed and truncated SIP, a re-INVITE storm, codec changes mid-call, a DTMF flood,
RTP garbage, wrong payload types and runt packets. The worker stays up, the call stays
correct (the codec change is honoured, the keypad is heard, the call ends as the caller
hung up) and the next caller is served as usual."""

from __future__ import annotations

import random
import socket
import struct
import uuid
from collections import Counter
from pathlib import Path

import pytest

from switchboard.bench.local_cluster import free_udp_port
from switchboard.storage.repository import CallRepository
from tests.telephony.sip.peers import invite, options, run_sipp, ulaw_wav
from tests.telephony.sip.raw_caller import TELEPHONE_EVENT, RawCaller, header
from tests.telephony.sip.scenarios import write_scenario
from tests.telephony.sip.test_sip_calls import audio, stored_call
from tests.telephony.sip.workers import Worker

pytestmark = pytest.mark.integration

REINVITES = 20
DTMF_DIGITS = 150
GARBAGE_PACKETS = 300


def malformed(port: int) -> list[bytes]:
    """SIP that parsers trip on: truncations, folding, huge and contradictory headers."""
    good = invite(port, "0", "a=rtpmap:0 PCMU/8000\r\n").replace(b"<sip:raw@", b"<sip:corpus@")
    tag = uuid.uuid4().hex[:8]
    return [
        *(good[:cut] for cut in (10, 40, 120, len(good) // 2, len(good) - 5)),
        good.replace(b"Content-Length: ", b"Content-Length: 9"),  # says more than it sends
        good.replace(b"CSeq: 1 INVITE", b"CSeq: 1 BYE"),  # method and CSeq disagree
        good.replace(b"\r\n", b"\n"),  # bare LF line ends
        good.replace(b"Via: ", b"Via: \r\n "),  # header folding
        good.replace(b"m=audio 49170", b"m=audio 99999"),  # no such port
        good.replace(b"c=IN IP4 127.0.0.1", b"c=IN IP4 999.1.2.3"),  # no such address
        good.replace(b"v=0", b"v=\xff\xfe"),  # not UTF-8
        good.replace(b"Max-Forwards: 70", b"Max-Forwards: 0"),
        good.replace(b"From: ", b"From: " + b"A" * 8000),
        (f"BYE sip:bot@127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch="
         f"z9hG4bK{tag}\r\nCall-ID: nobody\r\nCSeq: 1 BYE\r\n\r\n").encode(),  # no dialog
        b"SIP/2.0 180 Ringing\r\nCSeq: 1 INVITE\r\n\r\n",  # a response nobody asked for
        b"REGISTER sip:bot SIP/2.0\r\n" + b"X: y\r\n" * 2000 + b"\r\n",
    ]


def send_malformed(port: int, datagram: bytes) -> str | None:
    """Send one datagram; the first final answer's status line (None: no answer). A call it
    set up after all is hung up at once (ACK, BYE), so it holds no line."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(1.0)
        sock.sendto(datagram, ("127.0.0.1", port))
        while True:
            try:
                answer = sock.recv(65535).decode(errors="replace")
            except TimeoutError:
                return None
            if answer.startswith("SIP/2.0 1") or not answer.startswith("SIP/2.0"):
                continue
            if answer.startswith("SIP/2.0 2"):
                _hang_up(sock, port, answer)
            return answer.split("\r\n", 1)[0]


def _hang_up(sock: socket.socket, port: int, ok: str) -> None:
    dialog = "".join(f"{name}: {header(ok, name)}\r\n" for name in ("From", "To", "Call-ID"))
    contact = (header(ok, "Contact") or f"<sip:bot@127.0.0.1:{port}>").strip("<>")
    for method, cseq in (("ACK", 1), ("BYE", 2)):
        sock.sendto((f"{method} {contact} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;rport;"
                     f"branch=z9hG4bK{uuid.uuid4().hex[:10]}\r\n{dialog}CSeq: {cseq} "
                     f"{method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode(),
                    ("127.0.0.1", port))


def dtmf_flood(caller: RawCaller) -> str:
    """DTMF_DIGITS RFC 4733 events back to back, each start, update and end; returns
    the digits sent."""
    digits = "".join(random.Random(4).choice("0123456789*") for _ in range(DTMF_DIGITS))
    for digit in digits:
        event = "0123456789*#".index(digit)
        for duration, end in ((160, False), (320, False), (400, True)):
            caller.send_rtp(TELEPHONE_EVENT, struct.pack("!BBH", event, 0x80 if end else 0,
                                                         duration), marker=duration == 160)
    return digits


def garbage(caller: RawCaller) -> None:
    rng = random.Random(7)
    for n in range(GARBAGE_PACKETS):
        kind = n % 4
        if kind == 0:  # runts and random bytes
            caller.rtp.sendto(rng.randbytes(rng.randint(0, 11)), ("127.0.0.1", caller.media_port))
        elif kind == 1:
            caller.rtp.sendto(rng.randbytes(rng.randint(12, 1400)),
                              ("127.0.0.1", caller.media_port))
        elif kind == 2:  # well-formed RTP with payload types nobody negotiated
            caller.send_rtp(rng.choice((3, 9, 13, 18, 96, 127)), rng.randbytes(160))
        else:  # telephone-event packets too short to read
            caller.send_rtp(TELEPHONE_EVENT, rng.randbytes(rng.randint(0, 3)))


def test_a_call_survives_storms_and_garbage_and_stays_correct(
    sip_worker: Worker, calls: CallRepository, tmp_path: Path
) -> None:
    port = sip_worker.port
    answers = [send_malformed(port, datagram) for datagram in malformed(port)]
    print("malformed SIP answered:", answers)
    assert options(port) == "SIP/2.0 200 OK"

    caller = RawCaller(port, user="storm")
    try:
        caller.invite("PCMU")
        caller.talk(3.0)  # the greeting starts
        answers = [caller.reinvite("PCMA" if n % 2 else "PCMU") for n in range(REINVITES)]
        assert all(a.startswith("SIP/2.0 200") for a in answers), [a[:40] for a in answers]
        changed = caller.reinvite("PCMA")  # the codec stays A-law from here on
        assert changed.startswith("SIP/2.0 200") and "RTP/AVP 8" in changed, changed
        dtmf_flood(caller)
        garbage(caller)
        caller.talk(0.3, codec_payload=8)  # (µ-law packets still in flight)
        caller.payload_types.clear()
        caller.talk(3.0, codec_payload=8)
        received = Counter(caller.payload_types)
        assert received[8] > 50, received  # the bot's media goes on, in the new codec
        assert received[0] == 0, received
        assert caller.bye().startswith("SIP/2.0 200")
    finally:
        caller.close()

    assert sip_worker.child.poll() is None
    [call] = stored_call(calls, "storm@")
    assert call.end_reason == "caller_hangup"
    keyed = [t.text for t in call.turns if t.text.startswith("[keypad]")]
    assert keyed, [t.text for t in call.turns]  # the flood reached the keypad, bounded
    wav = ulaw_wav(tmp_path / "quiet.wav", audio([3000]))
    scenario = write_scenario(tmp_path / "after.xml", "caller_hangs_up", wav=wav,
                              hold_ms=2000)
    after = run_sipp(scenario, port, tmp_path, local_port=free_udp_port())
    assert after.returncode == 0, (tmp_path / "after-errors.log").read_text()
