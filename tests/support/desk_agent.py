"""An agent's (or supervisor's) desk page in aiortc, for tests: signs nothing itself (give
it a client signed in to the served console), offers a WebRTC leg through
``/desk/calls/{id}/connect``, plays tones into the call and keeps all it hears."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable
from typing import TypeVar

import httpx
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame

from switchboard.bench.desk import holds
from switchboard.bench.desk import tone as bench_tone
from switchboard.bench.webrtc import CallerTrack
from telephony.webrtc.media import to_mono_int16

T = TypeVar("T")
LEG_RATE = 48000
"""What an aiortc leg hears (Opus, 48 kHz)."""


def tone(ms: int, hz: float, rate: int = 16000) -> np.ndarray:
    return bench_tone(ms, hz, rate)


def hears(pcm: np.ndarray, rate: int, hz: float) -> bool:
    """Whether some 100 ms of ``pcm`` is loud and mostly ``hz`` (a mix of two voices
    holds each as a good share)."""
    step = rate // 10
    return any(holds(pcm[i : i + step], rate, hz) for i in range(0, len(pcm) - step, step))


def csrf(client: httpx.Client) -> str:
    """The desk page's CSRF token for ``client``'s session."""
    page = client.get("/desk")
    assert page.status_code == 200, page.text
    match = re.search(r'data-csrf="([^"]+)"', page.text)
    assert match, "no CSRF token on the desk page"
    return match.group(1)


async def until(check: Callable[[], T | None], timeout_s: float, what: str) -> T:
    """Poll ``check`` (in a thread) until it gives something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        value = await asyncio.to_thread(check)
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


class AgentPage:
    """What the desk page does, in aiortc: a microphone (a tone it can be told to play)
    unless it only listens, the ``desk`` channel, and everything it hears."""

    def __init__(self, mode: str = "talk") -> None:
        self.mode = mode
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # loopback only
        self.mic: CallerTrack | None = None
        if mode == "listen":
            self.pc.addTransceiver("audio", direction="recvonly")
        else:
            self.mic = CallerTrack()
            self.pc.addTrack(self.mic)
        self.channel = self.pc.createDataChannel("desk")
        self.heard: list[np.ndarray] = []
        self.readers: list[asyncio.Future[None]] = []
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        async def read() -> None:
            with contextlib.suppress(MediaStreamError):
                while True:
                    frame = await track.recv()
                    assert isinstance(frame, AudioFrame)
                    self.heard.append(to_mono_int16(frame))
        self.readers.append(asyncio.ensure_future(read()))

    async def connect(self, client: httpx.Client, call_id: str, token: str) -> None:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        answer = await asyncio.to_thread(
            client.post, f"/desk/calls/{call_id}/connect",
            json={"sdp": self.pc.localDescription.sdp, "type": "offer", "mode": self.mode},
            headers={"X-CSRF-Token": token})
        assert answer.status_code == 200, answer.text
        await self.pc.setRemoteDescription(RTCSessionDescription(**answer.json()))
        await until(lambda: self.pc.connectionState == "connected", 15, f"the {self.mode} leg")

    async def packets_sent(self) -> int:
        stats = await self.pc.getStats()
        return sum(s.packetsSent for s in stats.values() if s.type == "outbound-rtp")

    def heard_since(self, count: int) -> np.ndarray:
        return np.concatenate(self.heard[count:]) if len(self.heard) > count else np.zeros(1)

    async def close(self) -> None:
        await self.pc.close()
