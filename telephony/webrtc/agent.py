"""Agents' browser legs, answered in the process that owns the call's audio.

The web app relays the agent page's offer here (through Redis) and the answer back; media
then flows between the agent's browser and this process directly, so the agent's voice
reaches the caller with one hop and no extra process in between: the call's media loop
takes 20 ms of the agent's voice (aiortc's decoded, resampled audio) with each frame it
sends the caller, and gives the agent 20 ms of the caller's with each frame it reads. If
this process dies, the call it held is lost anyway (and recovered by the nodes); the
agent's page sees its connection fail and says so.

The page's DataChannel ``desk`` carries the agent's requests: ``{"type": "hangup"}``,
``{"type": "bot"}`` (hand the caller back to the bot), ``{"type": "transfer", "target":
"sip:..."}``. A listen-in leg never carries the page's audio: the page offers receive-only
and any audio that comes anyway is never read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from typing import Any

import numpy as np
from aiortc import RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from switchboard.base.settings import Settings
from telephony.webrtc.ice import parse_addresses, restrict_host_candidates, rtc_configuration
from telephony.webrtc.media import PacedOutboundTrack, TrackSource, hold_received_audio

log = logging.getLogger(__name__)

MODES = ("talk", "listen", "barge")
REQUESTS = ("hangup", "bot", "transfer")
AGENT_HELD_FRAMES = 1
"""What the agent says is handed to the call after one later frame came (aiortc: four):
the desk's bridge adds ~60 ms less to the agent's voice (``bench desk``)."""


class AgentLegError(Exception):
    """An offer that cannot be answered; the message says why."""


class BrowserAgentLeg:
    """One agent's browser, as the call's bridge sees it (``AgentLeg``)."""

    def __init__(self, pc: RTCPeerConnection, agent: str, mode: str, rate: int,
                 media_timeout_s: float) -> None:
        self.pc = pc
        self.agent = agent
        self.mode = mode
        self.rate = rate
        self.outbound = PacedOutboundTrack(rate)
        self.source: TrackSource | None = None
        self._media_timeout_s = media_timeout_s
        self._silence = np.zeros(rate // 50, dtype=np.int16)
        self._requests: deque[str] = deque(maxlen=8)
        self._gone = False
        self._closing: asyncio.Task[None] | None = None

    def hear(self, frame: np.ndarray) -> None:
        self.outbound.put(frame)

    def take(self) -> np.ndarray | None:
        if self._gone:
            return None
        if self.source is None or self.mode == "listen":
            return self._silence
        frame = self.source.take()
        if frame is None:
            self._gone = True
        return frame

    def request(self) -> str | None:
        return self._requests.popleft() if self._requests else None

    def close(self) -> None:
        self._gone = True
        if self.source is not None:
            self.source.close()
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self.pc.close())

    # ------------------------------------------------------------------ from aiortc

    def on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self.source is None and self.mode != "listen":
            self.source = TrackSource(track, media_timeout_s=self._media_timeout_s,
                                      rate=self.rate)

    def on_message(self, channel: RTCDataChannel, message: str | bytes) -> None:
        try:
            data = json.loads(message)
            kind = data["type"]
        except (ValueError, TypeError, KeyError):
            channel.send(json.dumps({"type": "error", "message": "expected JSON with a 'type'"}))
            return
        if kind not in REQUESTS or self.mode != "talk":
            channel.send(json.dumps({"type": "error",
                                     "message": f"cannot ask {kind!r} of this call"}))
        elif kind == "transfer":
            target = str(data.get("target", "")).strip()
            if not target.startswith(("sip:", "sips:", "tel:")):
                channel.send(json.dumps({"type": "error", "message":
                                         "a transfer needs a sip:, sips: or tel: target"}))
                return
            self._requests.append(f"transfer {target}")
        else:
            self._requests.append(kind)

    def on_state(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            self._gone = True


class BrowserAgentLegs:
    """Answers agents' offers in this process (the ``AgentLegs`` of the node's desk)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        restrict_host_candidates(parse_addresses(settings.webrtc_ice_addresses))

    async def answer(self, agent: str, mode: str, sdp: str, kind: str,
                     rate: int) -> tuple[BrowserAgentLeg, dict[str, Any]]:
        """Answer the agent page's offer (ICE gathered): the leg and the answer."""
        if mode not in MODES:
            raise AgentLegError(f"unknown mode {mode!r}; one of {', '.join(MODES)}")
        if kind != "offer" or "m=audio" not in sdp:
            raise AgentLegError("expected an SDP offer with an audio m-line")
        pc = RTCPeerConnection(rtc_configuration(self.settings))
        leg = BrowserAgentLeg(pc, agent, mode, rate, self.settings.webrtc_media_timeout_s)
        pc.on("track", leg.on_track)
        pc.on("connectionstatechange", leg.on_state)

        @pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            if channel.label == "desk":
                channel.on("message", lambda message: leg.on_message(channel, message))

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            if not hold_received_audio(pc, AGENT_HELD_FRAMES):
                log.warning("aiortc's receiver changed: agents' audio keeps its 80 ms buffer")
            pc.addTrack(leg.outbound)
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:
            with contextlib.suppress(Exception):
                await pc.close()
            raise AgentLegError(f"cannot answer this offer: {exc}") from None
        local = pc.localDescription
        return leg, {"sdp": local.sdp, "type": local.type}
