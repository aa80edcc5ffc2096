"""Real SIP peers for the tests, on 127.0.0.1 only: baresip (a softphone driven over its
ctrl_tcp socket), SIPp (scenario files written at test time) and raw UDP datagrams."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

from switchboard.base.children import ChildProcess
from switchboard.bench.local_cluster import free_udp_port

BARESIP_MODULES = Path("/usr/lib/baresip/modules")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    """SIGTERM, wait, SIGKILL if needed; the exit code (negative: killed by a signal)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def sip_request(port: int, message: bytes, timeout: float = 3.0) -> str | None:
    """Send one datagram to the worker and return the first final response line (or None)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(timeout)
        sock.sendto(message, ("127.0.0.1", port))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data, _ = sock.recvfrom(65535)
            except TimeoutError:
                return None
            line = data.split(b"\r\n", 1)[0].decode(errors="replace")
            if not line.startswith("SIP/2.0 1"):
                return line
    return None


def options(port: int, timeout: float = 2.0) -> str | None:
    """An OPTIONS ping; the status line of the answer."""
    tag = uuid.uuid4().hex[:8]
    msg = (
        f"OPTIONS sip:probe@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:9;rport;branch=z9hG4bK{tag}\r\n"
        f"From: <sip:probe@127.0.0.1>;tag={tag}\r\nTo: <sip:bot@127.0.0.1:{port}>\r\n"
        f"Call-ID: {tag}@127.0.0.1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    return sip_request(port, msg, timeout)


def invite(port: int, sdp_codecs: str, rtpmaps: str) -> bytes:
    """A raw INVITE (the responses go to the socket that sends it)."""
    tag = uuid.uuid4().hex[:8]
    sdp = (
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio 49170 RTP/AVP {sdp_codecs}\r\n{rtpmaps}"
    )
    return (
        f"INVITE sip:bot@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:9;rport;branch=z9hG4bK{tag}\r\n"
        f"From: <sip:raw@127.0.0.1>;tag={tag}\r\nTo: <sip:bot@127.0.0.1:{port}>\r\n"
        f"Call-ID: {tag}@127.0.0.1\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
        f"Contact: <sip:raw@127.0.0.1:9>\r\nContent-Type: application/sdp\r\n"
        f"Content-Length: {len(sdp)}\r\n\r\n{sdp}"
    ).encode()


@dataclass
class Baresip:
    """One baresip softphone: plays ``caller_wav`` (8 kHz, PCMU) into the call and records
    what it hears; commands go over ctrl_tcp (netstring JSON). With ``answermode="auto"``
    it answers incoming calls at once (as ``user``). ``ca_file`` (PEM) is what it trusts for
    SIP over TLS (``;transport=tls`` in the dialled URI); ``mediaenc`` (``srtp``,
    ``srtp-mand``) offers SRTP with SDES keys."""

    workdir: Path
    caller_wav: Path
    sip_port: int
    ctrl_port: int
    child: ChildProcess | None = None
    user: str = "caller"
    answermode: str = "manual"
    ca_file: Path | None = None
    mediaenc: str = ""
    auth_pass: str = ""
    """The digest password it answers a challenge with (as ``auth_user``, else ``user``)."""
    auth_user: str = ""
    address: str = "127.0.0.1"
    """The loopback address it binds (127.0.0.3: a caller that is not the node itself)."""

    def start(self) -> None:
        (self.workdir / "rec").mkdir(parents=True, exist_ok=True)
        (self.workdir / "config").write_text("\n".join([
            "poll_method epoll",
            f"sip_listen {self.address}:{self.sip_port}",
            f"net_interface {self.address}",
            "audio_player aubridge,nil",
            "audio_alert aubridge,nil",
            f"audio_source aufile,{self.caller_wav}",
            "audio_srate 8000",
            "audio_channels 1",
            f"module_path {BARESIP_MODULES}",
            *(f"module {m}.so" for m in ("g711", "aufile", "aubridge", "sndfile", "srtp",
                                         "account", "menu", "ctrl_tcp")),
            *([f"sip_cafile {self.ca_file}"] if self.ca_file else []),
            f"ctrl_tcp_listen 127.0.0.1:{self.ctrl_port}",
            f"snd_path {self.workdir / 'rec'}",
            "",
        ]))
        (self.workdir / "accounts").write_text(
            f"<sip:{self.user}@{self.address}>;regint=0;answermode={self.answermode};"
            f"audio_codecs=PCMU{f';mediaenc={self.mediaenc}' if self.mediaenc else ''}"
            f"{f';auth_pass={self.auth_pass}' if self.auth_pass else ''}"
            f"{f';auth_user={self.auth_user}' if self.auth_user else ''}\n")
        def ctrl_answers() -> str | None:
            try:
                socket.create_connection(("127.0.0.1", self.ctrl_port), 0.5).close()
            except OSError:
                return f"ctrl_tcp not listening on {self.ctrl_port} yet"
            return None

        self.child = ChildProcess(
            "baresip", ["baresip", "-f", str(self.workdir)],
            log_path=self.workdir / "baresip.log", healthy=ctrl_answers, start_timeout_s=10.0,
            stop_grace_s=5.0,
        )
        self.child.start()
        self.child.wait_healthy()

    def command(self, command: str, params: str = "") -> None:
        body = json.dumps({"command": command, "params": params, "token": "t"}).encode()
        with socket.create_connection(("127.0.0.1", self.ctrl_port), 5) as sock:
            sock.sendall(str(len(body)).encode() + b":" + body + b",")
            sock.settimeout(5)
            reply = b""
            while b'"response"' not in reply:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk

    def log(self) -> str:
        return (self.workdir / "baresip.log").read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return True
            time.sleep(0.2)
        return False

    def heard(self) -> tuple[np.ndarray, int]:
        """What the phone received (the sndfile module's decoder dump)."""
        dumps = sorted((self.workdir / "rec").glob("*-dec.wav"))
        if not dumps:
            raise AssertionError(f"baresip recorded nothing; see {self.workdir / 'baresip.log'}")
        pcm, rate = soundfile.read(str(dumps[-1]), dtype="int16")
        return pcm, int(rate)

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()


def sipp_command(scenario: Path, port: int, workdir: Path, *, local_port: int,
                 calls: int = 1, timeout_s: float = 60.0) -> list[str]:
    """SIPp running ``scenario`` against the worker; its message trace and errors land in
    ``workdir`` as ``<scenario>-messages.log`` and ``<scenario>-errors.log``."""
    return [
        "sipp", f"127.0.0.1:{port}", "-sf", str(scenario), "-i", "127.0.0.1",
        "-p", str(local_port), "-mp", str(free_udp_port(4 * calls)), "-m", str(calls),
        "-l", str(calls), "-r", "20", "-nostdin", "-trace_msg", "-message_file",
        str(workdir / f"{scenario.stem}-messages.log"), "-trace_err", "-error_file",
        str(workdir / f"{scenario.stem}-errors.log"), "-timeout", f"{int(timeout_s)}s",
        "-timeout_error",
    ]


def run_sipp(scenario: Path, port: int, workdir: Path, *, local_port: int, calls: int = 1,
             timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run SIPp to the end; exit code 0 means every call followed the scenario."""
    cmd = sipp_command(scenario, port, workdir, local_port=local_port, calls=calls,
                       timeout_s=timeout_s)
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True,
                          timeout=timeout_s + 15)


def ulaw_wav(path: Path, pcm: np.ndarray) -> Path:
    """8 kHz µ-law WAV, the format SIPp's rtp_stream plays as PCMU."""
    soundfile.write(str(path), pcm, 8000, subtype="ULAW", format="WAV")
    return path


def header(messages: str, method: str, name: str) -> str | None:
    """A header of the first ``method`` request in a SIPp message trace."""
    match = re.search(rf"^{method} .*?^{name}:\s*(.+?)\r?$", messages, re.M | re.S)
    return match.group(1).strip() if match else None
