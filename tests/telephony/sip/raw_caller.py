"""A SIP caller made of two UDP sockets (signalling, RTP), for the tests that need to say
what no well-behaved phone says: any address in Via/Contact/SDP, re-INVITE storms, codec
changes mid-call, RTP garbage. It speaks just enough SIP for one dialog."""

from __future__ import annotations

import re
import socket
import struct
import time
import uuid
from dataclasses import dataclass, field

import numpy as np

CODECS = {"PCMU": (0, "PCMU/8000"), "PCMA": (8, "PCMA/8000")}
TELEPHONE_EVENT = 101


def ulaw_to_linear(data: bytes) -> np.ndarray:
    """G.711 µ-law bytes → int16 (ITU-T G.711 expansion)."""
    u = ~np.frombuffer(data, dtype=np.uint8)
    sign, exponent, mantissa = u & 0x80, (u >> 4) & 0x07, u & 0x0F
    magnitude = ((mantissa.astype(np.int32) << 3) + 0x84) << exponent
    return np.where(sign, 0x84 - magnitude, magnitude - 0x84).astype(np.int16)


def header(message: str, name: str) -> str | None:
    found = re.search(rf"^{name}:\s*(.+?)\r?$", message, re.M | re.I)
    return found.group(1) if found else None


def record_route(message: str) -> list[str]:
    """Every Record-Route entry of a message, top first."""
    entries = []
    for value in re.findall(r"^Record-Route:\s*(.+?)\r?$", message, re.M | re.I):
        entries += [entry.strip() for entry in value.split(",") if entry.strip()]
    return entries


@dataclass
class RawCaller:
    """One dialog with the worker at 127.0.0.1:``port``; ``claims`` is the address the
    caller writes in Via, Contact and its SDP (reachable or not)."""

    port: int
    user: str = "raw"
    claims: str = "127.0.0.1"
    request_host: str = "127.0.0.1"
    sip: socket.socket = field(init=False)
    rtp: socket.socket = field(init=False)
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    call_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    cseq: int = 1
    sdp_version: int = 1
    remote_tag_header: str = ""
    contact: str = ""
    route: list[str] = field(default_factory=list)
    """The dialog's route set (the 200 OK's Record-Route, reversed): a proxy in front."""
    media_port: int = 0
    heard: bytearray = field(default_factory=bytearray)
    payload_types: list[int] = field(default_factory=list)
    """The payload type of every RTP packet received, in order."""
    rtp_seq: int = 0

    def __post_init__(self) -> None:
        self.sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sip.bind(("127.0.0.1", 0))
        self.rtp.bind(("127.0.0.1", 0))
        self.sip.settimeout(5)

    def close(self) -> None:
        self.sip.close()
        self.rtp.close()

    def sdp(self, codec: str = "PCMU") -> str:
        number, rtpmap = CODECS[codec]
        self.sdp_version += 1
        return (f"v=0\r\no=- 1 {self.sdp_version} IN IP4 {self.claims}\r\ns=-\r\n"
                f"c=IN IP4 {self.claims}\r\nt=0 0\r\n"
                f"m=audio {self.rtp.getsockname()[1]} RTP/AVP {number} {TELEPHONE_EVENT}\r\n"
                f"a=rtpmap:{number} {rtpmap}\r\na=rtpmap:{TELEPHONE_EVENT} "
                "telephone-event/8000\r\na=fmtp:101 0-15\r\na=sendrecv\r\n")

    def _request(self, method: str, body: str = "", *, cseq: int | None = None) -> None:
        uri = self.contact or f"sip:bot@{self.request_host}:{self.port}"
        to = self.remote_tag_header or f"<sip:bot@{self.request_host}>"
        number = self.cseq if cseq is None else cseq
        self.sip.sendto((
            f"{method} {uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {self.claims}:5060;rport;branch=z9hG4bK{uuid.uuid4().hex[:12]}\r\n"
            f"From: <sip:{self.user}@{self.claims}>;tag={self.tag}\r\nTo: {to}\r\n"
            f"Call-ID: {self.call_id}\r\nCSeq: {number} {method}\r\nMax-Forwards: 70\r\n"
            f"Contact: <sip:{self.user}@{self.claims}:5060>\r\n"
            + (f"Route: {', '.join(self.route)}\r\n" if self.route and self.contact else "")
            + ("Content-Type: application/sdp\r\n" if body else "")
            + f"Content-Length: {len(body)}\r\n\r\n{body}").encode(),
            ("127.0.0.1", self.port))

    def final_answer(self, method: str, timeout: float = 10.0) -> str:
        """The next final response to ``method`` (requests from the worker are answered
        200 on the way, retransmissions ignored)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                message = self.sip.recv(65535).decode(errors="replace")
            except TimeoutError:
                break
            if not message.startswith("SIP/2.0"):
                self._answer(message)
                continue
            cseq = header(message, "CSeq") or ""
            if cseq.endswith(method) and not message.startswith("SIP/2.0 1"):
                return message
        raise AssertionError(f"no final answer to {method} within {timeout} s")

    def _answer(self, request: str) -> None:
        """200 OK to a request from the worker (a BYE, an OPTIONS)."""
        lines = [line for line in request.split("\r\n\r\n", 1)[0].split("\r\n")[1:]
                 if line.split(":", 1)[0].lower() in ("via", "from", "to", "call-id", "cseq")]
        self.sip.sendto(("SIP/2.0 200 OK\r\n" + "\r\n".join(lines)
                         + "\r\nContent-Length: 0\r\n\r\n").encode(), ("127.0.0.1", self.port))

    def invite(self, codec: str = "PCMU") -> str:
        self._request("INVITE", self.sdp(codec))
        ok = self.final_answer("INVITE")
        assert ok.startswith("SIP/2.0 200"), ok
        self.remote_tag_header = header(ok, "To") or ""
        self.contact = (header(ok, "Contact") or "").strip("<>")
        self.route = record_route(ok)[::-1]
        self.media_port = int(re.search(r"^m=audio (\d+)", ok, re.M).group(1))  # type: ignore[union-attr]
        self._request("ACK", cseq=self.cseq)
        return ok

    def reinvite(self, codec: str) -> str:
        """A re-INVITE with a new SDP; returns the final answer (ACKed when 2xx)."""
        self.cseq += 1
        self._request("INVITE", self.sdp(codec))
        answer = self.final_answer("INVITE")
        self._request("ACK", cseq=self.cseq)
        return answer

    def bye(self) -> str:
        self.cseq += 1
        self._request("BYE")
        return self.final_answer("BYE")

    def send_rtp(self, payload_type: int, payload: bytes, *, marker: bool = False) -> None:
        self.rtp_seq += 1
        packet = struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | payload_type,
                             self.rtp_seq & 0xFFFF, self.rtp_seq * 160, 0x5EED) + payload
        self.rtp.sendto(packet, ("127.0.0.1", self.media_port))

    def talk(self, seconds: float, codec_payload: int = 0) -> None:
        """Silence for ``seconds`` at the pace of 20 ms packets, keeping what comes back."""
        silence = b"\xff" if codec_payload == 0 else b"\xd5"
        self.rtp.settimeout(0.02)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.send_rtp(codec_payload, silence * 160)
            self.listen(0.0)

    def listen(self, seconds: float) -> None:
        """Keep the G.711 audio that arrives (µ-law or A-law payloads as they come)."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                packet, _ = self.rtp.recvfrom(2048)
                if len(packet) > 12:
                    self.payload_types.append(packet[1] & 0x7F)
                    if packet[1] & 0x7F in (0, 8):
                        self.heard += packet[12:]
            except (TimeoutError, BlockingIOError):
                if time.monotonic() >= deadline:
                    return
