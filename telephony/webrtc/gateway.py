"""Answers browser offers and runs one conversation pipeline per peer connection.

Signalling is one HTTP exchange: the page posts its offer with every ICE candidate
gathered, the gateway answers with its own (no trickle). Media flows through
:mod:`telephony.webrtc.media`; the page's DataChannel "events" carries keypad digits and
a hangup to the gateway, and every stored turn back to the page.

A conversation outlives its calls: the offer endpoint hands the page a token, and an
offer that brings the token back within ``webrtc_reconnect_window_s`` of a dropped call
continues the same dialog (same conversation id, no new greeting). With several nodes
(``redis_url`` set) the token is the caller's key in the shared call state: a page whose
node was lost brings its token to another node, which resumes the conversation there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from aiortc.sdp import SessionDescription

from switchboard.base.admission import SourceAdmission, parse_networks
from switchboard.conversation.call import CallHandle, CallRequest
from switchboard.conversation.host import CallHost
from switchboard.conversation.timers import KEYPAD_KEYS
from switchboard.conversation.turns import TurnRecord
from telephony.webrtc.ice import parse_addresses, restrict_host_candidates, rtc_configuration
from telephony.webrtc.media import PacedOutboundTrack, TrackSource

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 20.0
"""An answered offer whose connection is not up by then is dropped."""

SHUTDOWN_GRACE_S = 5.0
"""How long closing the gateway waits for calls to store their end."""

ENDED_MESSAGE_GRACE_S = 0.3
"""Time for the final "ended" message to leave before the connection closes."""

FINAL_REASONS = frozenset({"bot_hangup", "handoff", "max_duration"})
"""Call ends after which the conversation cannot be resumed."""


class OfferError(Exception):
    """An offer the gateway refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after_s = retry_after_s


@dataclass(eq=False)
class Conversation:
    """What a reconnecting page resumes: the dialog's conversation id."""

    token: str
    conversation_id: str | None = None
    call: BrowserCall | None = None
    ended_at: float | None = None
    finished: str | None = None


@dataclass(eq=False)
class BrowserCall:
    """One peer connection and the call that answers it."""

    pc: RTCPeerConnection
    sink: PacedOutboundTrack
    conversation: Conversation
    caller: str | None
    source: TrackSource | None = None
    channel: RTCDataChannel | None = None
    handle: CallHandle | None = None
    task: asyncio.Task[None] | None = None
    hung_up: bool = False
    outbox: list[str] = field(default_factory=list)
    admitted: bool = False
    """Whether it holds one of its address's slots (SourceAdmission)."""

    def send(self, message: dict[str, Any]) -> None:
        """Send a JSON message to the page, or keep it until its channel opens."""
        text = json.dumps(message)
        if self.channel is not None and self.channel.readyState == "open":
            self.channel.send(text)
        else:
            self.outbox.append(text)

    def flush(self) -> None:
        assert self.channel is not None
        while self.outbox:
            self.channel.send(self.outbox.pop(0))

    def hang_up(self) -> None:
        """End the call from this side: the pipeline reads no more audio."""
        self.hung_up = True
        if self.source is not None:
            self.source.close()
        elif self.task is None:
            asyncio.get_running_loop().create_task(self.pc.close())


def turn_message(record: TurnRecord) -> dict[str, Any]:
    """A stored turn as the page's transcript shows it."""
    return {
        "type": "turn",
        "speaker": record.speaker,
        "text": record.text,
        "response_ms": record.response_ms,
        "barge_in": record.barge_in,
    }


class WebRTCGateway:
    """Every browser call of one web process, sharing the process's node."""

    def __init__(self, node: CallHost) -> None:
        self.node = node
        self.settings = node.settings
        restrict_host_candidates(parse_addresses(self.settings.webrtc_ice_addresses))
        self._conversations: dict[str, Conversation] = {}
        self._calls: set[BrowserCall] = set()
        self._closing = False
        self.draining = False
        self._idle = asyncio.Event()  # set while no browser call is up
        self._admission = SourceAdmission(
            rate=self.settings.softphone_offer_rate,
            concurrent=self.settings.softphone_calls_per_address,
            trusted=parse_networks(self.settings.softphone_trusted_networks,
                                   "SWITCHBOARD_SOFTPHONE_TRUSTED_NETWORKS"),
            rate_setting="SWITCHBOARD_SOFTPHONE_OFFER_RATE")
        self._idle.set()

    @property
    def active_calls(self) -> int:
        return len(self._calls)

    async def answer(
        self, sdp: str, kind: str, *, token: str | None = None, caller: str | None = None
    ) -> dict[str, Any]:
        """Answer the browser's offer (ICE gathered) and start its call once connected."""
        if self._closing or self.draining:
            raise OfferError(503, "this server is shutting down; call again in a moment")
        if kind != "offer":
            raise OfferError(400, f"expected an SDP offer (type 'offer'), got type {kind!r}")
        kinds = [media.kind for media in SessionDescription.parse(sdp).media]
        if not kinds:
            raise OfferError(400, "the body holds no SDP offer (no m= lines); send "
                                  "pc.localDescription.sdp after createOffer()")
        if "audio" not in kinds:
            raise OfferError(400, "the offer has no audio m-line; add the microphone track "
                                  "(getUserMedia, addTrack) before createOffer()")
        if len(self._calls) >= self.settings.webrtc_max_calls:
            raise OfferError(503, f"all {self.settings.webrtc_max_calls} browser lines are "
                                  "busy; try again later")
        holds = self._admit(token, caller)  # before any work for a refused caller
        try:
            conversation = await self._conversation_for(token)
            call = await self._answer_offer(sdp, conversation, caller)
        except BaseException:
            if holds:
                self._admission.release(caller or "")
            raise
        call.admitted = holds
        conversation.call = call
        self._conversations[conversation.token] = conversation
        self._calls.add(call)
        self._idle.clear()
        asyncio.get_running_loop().call_later(CONNECT_TIMEOUT_S, self._drop_unconnected, call)
        local = call.pc.localDescription
        return {"sdp": local.sdp, "type": local.type, "token": conversation.token,
                "resumed": conversation.conversation_id is not None}

    def _admit(self, token: str | None, caller: str | None) -> bool:
        """Whether the new call holds a slot of its address: a reconnect takes over its
        earlier call's; any other call asks for one (429 when the address has none)."""
        known = self._conversations.get(token) if token else None
        previous = None if known is None else known.call
        if previous is not None and previous.caller == caller:
            holds, previous.admitted = previous.admitted, False
            return holds
        refusal = self._admission.admit(caller or "")
        if refusal is not None:
            log.warning("refusing a browser call from %s: %s", caller, refusal.reason)
            raise OfferError(429, f"too many calls from your address ({refusal.reason}); "
                                  "try again later", retry_after_s=refusal.retry_after_s)
        return True

    async def _answer_offer(self, sdp: str, conversation: Conversation,
                            caller: str | None) -> BrowserCall:
        pc = RTCPeerConnection(rtc_configuration(self.settings))
        call = BrowserCall(pc, PacedOutboundTrack(), conversation, caller)
        self._wire(call)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            pc.addTrack(call.sink)
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:
            await pc.close()
            raise OfferError(400, f"cannot answer this offer: {exc}") from None
        if call.source is None:
            await pc.close()
            raise OfferError(400, "the offer carries no audio the server can receive; "
                                  "offer the microphone as sendrecv or sendonly")
        return call

    async def _conversation_for(self, token: str | None) -> Conversation:
        self._forget_expired()
        if not token:
            return Conversation(secrets.token_urlsafe(18))
        conversation = self._conversations.get(token)
        if conversation is None and self.settings.redis_url:
            # Another node's conversation, maybe: a call whose node was lost resumes here.
            return Conversation(token)
        if conversation is None:
            raise OfferError(410, "this conversation token is unknown or its reconnect "
                                  "window has passed; start a new call without a token")
        if conversation.finished is not None:
            raise OfferError(409, f"this conversation has ended ({conversation.finished}); "
                                  "start a new call without a token")
        previous = conversation.call
        if previous is not None:  # the page reconnects before the old call noticed the drop
            previous.hang_up()
            if previous.task is not None:
                await asyncio.wait({previous.task}, timeout=SHUTDOWN_GRACE_S)
            await previous.pc.close()
        return conversation

    def _forget_expired(self) -> None:
        now = time.monotonic()
        window = self.settings.webrtc_reconnect_window_s
        for token, conversation in list(self._conversations.items()):
            # A finished conversation is kept for the window too, so a late reconnect is
            # told it ended (409) rather than that its token is unknown (410).
            if (conversation.call is None and conversation.ended_at is not None
                    and now - conversation.ended_at > window):
                del self._conversations[token]

    def _wire(self, call: BrowserCall) -> None:
        pc = call.pc

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio" and call.source is None:
                call.source = TrackSource(
                    track, media_timeout_s=self.settings.webrtc_media_timeout_s
                )

        @pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            if channel.label != "events":
                return
            call.channel = channel
            channel.on("open", call.flush)
            channel.on("message", lambda message: self._on_message(call, message))
            if channel.readyState == "open":
                call.flush()

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            state = pc.connectionState
            log.debug("webrtc connection %s", state)
            if state == "connected" and call.task is None and not call.hung_up:
                call.handle = self._start_call(call)
                call.task = asyncio.create_task(self._run(call, call.handle), name="webrtc-call")
            elif state in ("failed", "closed"):
                call.hang_up()
                if call.task is None:
                    self._release(call)

    def _on_message(self, call: BrowserCall, message: str | bytes) -> None:
        try:
            data = json.loads(message)
            kind = data["type"]
        except (ValueError, TypeError, KeyError):
            call.send({"type": "error", "message": "expected JSON with a 'type'"})
            return
        if kind == "dtmf":
            digit = str(data.get("digit", ""))
            if len(digit) != 1 or digit not in KEYPAD_KEYS:
                call.send({"type": "error", "message": f"not a keypad digit: {digit!r}"})
            elif call.handle is None:
                call.send({"type": "error", "message": "the call is not connected yet"})
            else:
                call.handle.keypad(digit)
        elif kind == "hangup":
            call.conversation.finished = "caller_hangup"
            call.hang_up()
        else:
            call.send({"type": "error", "message": f"unknown message type {kind!r}"})

    def _start_call(self, call: BrowserCall) -> CallHandle:
        conversation = call.conversation
        assert call.source is not None
        resumed = conversation.conversation_id is not None
        handle = self.node.start_call(CallRequest(
            transport="webrtc", source=call.source, sink=call.sink, caller=call.caller,
            metadata={"resumed": resumed}, conversation_id=conversation.conversation_id,
            greet=not resumed, caller_key=conversation.token,
        ))
        handle.on_turn(lambda record: call.send(turn_message(record)))
        return handle

    async def _run(self, call: BrowserCall, handle: CallHandle) -> None:
        conversation = call.conversation
        resumed = conversation.conversation_id is not None
        assert call.source is not None
        reason = "failed"
        try:
            call_id = await handle.started()
            conversation.conversation_id = handle.conversation_id or call_id
            resumed = resumed or conversation.conversation_id != call_id  # another node's
            call.send({"type": "call", "call_id": call_id, "resumed": resumed})
            result = await handle.result()
            reason = "media_timeout" if call.source.timed_out else result.reason
        except Exception:
            log.exception("browser call failed")
        finally:
            if reason in FINAL_REASONS:
                conversation.finished = reason
            call.send({"type": "ended", "reason": reason,
                       "resumable": conversation.finished is None})
            await asyncio.sleep(ENDED_MESSAGE_GRACE_S)
            await call.pc.close()
            self._release(call)

    def _release(self, call: BrowserCall) -> None:
        if call in self._calls and call.admitted:
            call.admitted = False
            self._admission.release(call.caller or "")
        self._calls.discard(call)
        if not self._calls:
            self._idle.set()
        conversation = call.conversation
        if conversation.call is call:
            conversation.call = None
            conversation.ended_at = time.monotonic()
        if conversation.conversation_id is None:  # never connected: nothing to resume
            self._conversations.pop(conversation.token, None)

    def _drop_unconnected(self, call: BrowserCall) -> None:
        if call.task is None and call in self._calls:
            log.info("a browser call did not connect within %.0f s", CONNECT_TIMEOUT_S)
            call.hung_up = True
            asyncio.get_running_loop().create_task(call.pc.close())
            self._release(call)

    async def drain(self) -> None:
        """Refuse new browser calls (503) and return once the calls up have ended."""
        self.draining = True
        log.info("draining: no new browser calls; waiting for %d call(s) to end",
                 len(self._calls))
        await self._idle.wait()
        log.info("drained: no browser call left")

    async def close(self) -> None:
        """Hang up every call, let them store their end, close the connections."""
        self._closing = True
        calls = list(self._calls)
        for call in calls:
            call.hang_up()
        tasks = {call.task for call in calls if call.task is not None}
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE_S)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for call in calls:
            with contextlib.suppress(Exception):
                await call.pc.close()
            self._release(call)
