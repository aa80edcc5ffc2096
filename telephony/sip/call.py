"""The PJSUA2 account and call objects. Their callbacks run on PJSIP threads; they only
hand events to the worker (``CallEvents``), never block, and never let an exception
escape into PJSIP."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import pjsua2 as pj

from telephony.sip.media_port import CallAudioPort, SipAudioSink, SipAudioSource

log = logging.getLogger(__name__)


@dataclass
class CallLeg:
    """What the asyncio side knows of a call: no PJSUA2 object, only a key into the
    endpoint's table, the media queues and what the signalling said."""

    key: int
    direction: str
    source: SipAudioSource
    sink: SipAudioSink
    remote_uri: str = ""
    local_uri: str = ""
    sip_call_id: str = ""
    source_address: str = ""
    signalling: str = ""
    """The SIP transport the call came in on (udp, tcp, tls); "" for an outbound call."""
    srtp: bool = False
    """Whether the call's media is SRTP (its SDP answer or offer is RTP/SAVP)."""
    call_uuid: str = ""
    """The call's id: an inbound INVITE's ``X-Call-UUID`` (set by a proxy or trunk in front),
    else one made here; sent back on the 200 OK and on REFER."""
    metadata: dict[str, Any] = field(default_factory=dict)
    supports_replaces: bool = False
    """Whether the other party said ``Supported: replaces`` (RFC 3891)."""
    rejoin: dict[str, str] | None = None
    """How another node can take this call back from the other party once this process
    is gone (:func:`rejoin_target`): set when the call is answered, for a party that
    supports Replaces."""


_TAG = re.compile(r";\s*tag\s*=\s*([^;>\s,]+)", re.IGNORECASE)
_HEADER = re.compile(r"^([A-Za-z0-9.!%*_+`'~-]+)[ \t]*:[ \t]*(.*?)[ \t]*\r?$", re.MULTILINE)
_SHORT = {"f": "from", "t": "to", "i": "call-id", "k": "supported", "m": "contact"}


def sip_headers(message: str) -> dict[str, str]:
    """The headers of a SIP message (not its body): lower-case names, compact forms
    expanded, the first of each name."""
    found: dict[str, str] = {}
    for name, value in _HEADER.findall(message.split("\r\n\r\n", 1)[0]):
        found.setdefault(_SHORT.get(name.lower(), name.lower()), value)
    return found


def via_transport(message: str) -> str:
    """The transport of a SIP request's top Via (``udp``, ``tcp``, ``tls``), or ""."""
    via = sip_headers(message).get("via", "")
    match = re.match(r"\s*SIP\s*/\s*2\.0\s*/\s*([A-Za-z]+)", via)
    return match.group(1).lower() if match else ""


def supports_replaces(message: str) -> bool:
    """Whether a SIP message's ``Supported`` header lists ``replaces``."""
    supported = sip_headers(message).get("supported", "")
    return "replaces" in {item.strip().lower() for item in supported.split(",")}


def rejoin_target(message: str, *, inbound: bool, contact: str) -> dict[str, str] | None:
    """What an INVITE that takes this dialog over at the other party needs (RFC 3891):
    the Request-URI (the party's ``contact``) and the ``Replaces`` value, which names the
    dialog by the party's own tags (``to-tag``: the party's tag, ``from-tag``: ours).
    ``message`` is the 200 OK of the dialog's INVITE; None when it lacks a tag."""
    headers = sip_headers(message)
    from_tag = _TAG.search(headers.get("from", ""))
    to_tag = _TAG.search(headers.get("to", ""))
    call_id = headers.get("call-id", "")
    uri = contact.strip().lstrip("<").split(">", 1)[0]
    if not (from_tag and to_tag and call_id and uri):
        return None
    theirs, ours = (from_tag, to_tag) if inbound else (to_tag, from_tag)
    return {"uri": uri,
            "replaces": f"{call_id};to-tag={theirs.group(1)};from-tag={ours.group(1)}"}


class CallEvents(Protocol):
    """What the endpoint tells the worker; every method is called on a PJSIP thread."""

    def incoming(self, leg: CallLeg) -> None: ...
    def confirmed(self, leg: CallLeg) -> None: ...
    def disconnected(self, leg: CallLeg, status: int, reason: str) -> None: ...
    def dtmf(self, leg: CallLeg, digit: str) -> None: ...
    def transfer_status(self, leg: CallLeg, status: int, final: bool) -> None: ...
    def rtp_timeout(self, leg: CallLeg) -> None: ...
    def replaced(self, leg: CallLeg) -> None:
        """The other party replaced the call's dialog with a new one (an INVITE with
        ``Replaces``, RFC 3891); the leg and its media go on in the new dialog."""


class SipCall(pj.Call):
    """One PJSUA2 call with its bridge port. ``on_gone`` drops the endpoint's reference
    on DISCONNECTED, inside the callback, so the object never outlives its call id.

    An inbound call is announced (``events.incoming``) once its 200 OK is sent, when the
    dialog's tags are known. When the other party replaces the dialog (RFC 3891), a new
    :class:`SipCall` takes over the same leg (``on_replaced`` gives it to the endpoint)
    and this one ends quietly."""

    def __init__(self, account: pj.Account, leg: CallLeg, events: CallEvents,
                 sample_rate: int, on_gone: Callable[[SipCall], None],
                 call_id: int = pj.PJSUA_INVALID_ID, *,
                 on_replaced: Callable[[SipCall, SipCall], None] | None = None,
                 may_replace: Callable[[str, str], bool] | None = None) -> None:
        super().__init__(account, call_id)
        self.account = account
        self.leg = leg
        self.events = events
        self.sample_rate = sample_rate
        self.on_gone = on_gone
        self.port: CallAudioPort | None = None
        self.rx_packets = 0
        self.rx_changed_at = time.monotonic()
        self.media_index: int | None = None
        self.gone = False
        self.on_replaced = on_replaced
        self.may_replace = may_replace
        """Whether an INVITE with Replaces (its source address, its text) may take this
        call over: the same check as any incoming call (RFC 3891 §6)."""
        self.replaced = False
        self.announce = False
        """Set by the endpoint on an answered inbound call: tell ``events.incoming``
        once the 200 OK is out."""

    def onCallState(self, prm: pj.OnCallStateParam) -> None:
        try:
            info = self.getInfo()
            if info.state == pj.PJSIP_INV_STATE_CONNECTING:
                self._connecting(prm.e, str(info.remoteContact))
            elif info.state == pj.PJSIP_INV_STATE_CONFIRMED and not self.replaced:
                self.events.confirmed(self.leg)
            elif info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
                status, reason = int(info.lastStatusCode), str(info.lastReason)
                self.gone = True
                if self.replaced:  # the leg lives on in the replacing call
                    self.release_media(close_source=False)
                else:
                    self.release_media()
                    self.events.disconnected(self.leg, status, reason)
                self.on_gone(self)
        except Exception:
            log.exception("call %s: state callback failed", self.leg.key)

    def _connecting(self, event: pj.SipEvent, contact: str) -> None:
        """The 200 OK went out (inbound) or came in (outbound): note how the dialog can be
        taken back, then announce an inbound call."""
        inbound = self.leg.direction == "inbound"
        message = _event_message(event)
        if not inbound and message and supports_replaces(message):
            self.leg.supports_replaces = True
        if message and self.leg.supports_replaces:
            self.leg.rejoin = rejoin_target(message, inbound=inbound, contact=contact)
        if self.announce:
            self.announce = False
            self.events.incoming(self.leg)

    def onCallReplaceRequest(self, prm: pj.OnCallReplaceRequestParam) -> None:
        """An INVITE with Replaces for this call: refused (403) unless its sender may call
        in (an allowed network, or digest credentials sent with it)."""
        try:
            if self.may_replace is not None and not self.may_replace(
                    str(prm.rdata.srcAddress), str(prm.rdata.wholeMsg)):
                log.warning("call %s: refusing a Replaces from %s", self.leg.key,
                            prm.rdata.srcAddress)
                prm.statusCode, prm.reason = 403, "Forbidden"
        except Exception:
            log.exception("call %s: Replaces check failed", self.leg.key)
            prm.statusCode, prm.reason = 500, "Server Internal Error"

    def onCallReplaced(self, prm: pj.OnCallReplacedParam) -> None:
        """An INVITE with Replaces for this call arrived and PJSUA answered it: the new
        call carries on with this call's leg (its media queues, its key)."""
        try:
            successor = SipCall(self.account, self.leg, self.events, self.sample_rate,
                                self.on_gone, prm.newCallId, on_replaced=self.on_replaced,
                                may_replace=self.may_replace)
            prm.newCall = successor
            self.replaced = True
            self.release_media(close_source=False)
            if self.on_replaced is not None:
                self.on_replaced(self, successor)
            log.info("call %s: replaced by a new dialog (RFC 3891)", self.leg.key)
            self.events.replaced(self.leg)
        except Exception:
            log.exception("call %s: replacing the call failed", self.leg.key)

    def onCallSdpCreated(self, prm: pj.OnCallSdpCreatedParam) -> None:
        """Our SDP (offer or answer) is made: note whether its audio is SRTP (RTP/SAVP, or
        RTP/AVP with SDES keys: optional SRTP)."""
        try:
            sdp = str(prm.sdp.wholeSdp)
            self.leg.srtp = "RTP/SAVP" in sdp or "a=crypto:" in sdp
        except Exception:
            log.exception("call %s: SDP callback failed", self.leg.key)

    def onCallMediaState(self, prm: pj.OnCallMediaStateParam) -> None:
        try:
            info = self.getInfo()
            for media in info.media:
                if (media.type == pj.PJMEDIA_TYPE_AUDIO
                        and media.status == pj.PJSUA_CALL_MEDIA_ACTIVE):
                    self._connect(self.getAudioMedia(media.index), int(media.index))
                    return
        except Exception:
            log.exception("call %s: media callback failed", self.leg.key)

    def _connect(self, audio: pj.AudioMedia, index: int) -> None:
        if self.port is None:
            self.port = CallAudioPort(f"call{self.leg.key}", self.sample_rate,
                                      self.leg.source, self.leg.sink)
        audio.startTransmit(self.port)
        self.port.startTransmit(audio)
        if self.media_index is None:
            self.rx_changed_at = time.monotonic()
        self.media_index = index

    def onDtmfDigit(self, prm: pj.OnDtmfDigitParam) -> None:
        try:
            self.events.dtmf(self.leg, str(prm.digit))
        except Exception:
            log.exception("call %s: DTMF callback failed", self.leg.key)

    def onCallTransferStatus(self, prm: pj.OnCallTransferStatusParam) -> None:
        try:
            final = bool(prm.finalNotify)
            self.events.transfer_status(self.leg, int(prm.statusCode), final)
            prm.cont = not final
        except Exception:
            log.exception("call %s: transfer callback failed", self.leg.key)

    def check_rtp(self, timeout_s: float) -> bool:
        """True once no RTP packet arrived for ``timeout_s`` (polled on the PJSIP thread)."""
        if self.media_index is None or self.gone:
            return False
        try:
            packets = int(self.getStreamStat(self.media_index).rtcp.rxStat.pkt)
        except pj.Error:
            return False
        now = time.monotonic()
        if packets != self.rx_packets:
            self.rx_packets, self.rx_changed_at = packets, now
            return False
        return now - self.rx_changed_at >= timeout_s

    def release_media(self, *, close_source: bool = True) -> None:
        """Stop the clock feeding this call's port and remove it from the bridge (and,
        unless the leg lives on in another call, end the caller's audio)."""
        if self.port is not None:
            self.port.destroy()
            self.port = None
        if close_source:
            self.leg.source.close_threadsafe()


def _event_message(event: pj.SipEvent) -> str:
    """The SIP message behind a call state change (sent or received), or ""."""
    try:
        if event.type == pj.PJSIP_EVENT_TSX_STATE:
            tsx = event.body.tsxState
            if tsx.type == pj.PJSIP_EVENT_TX_MSG:
                return str(tsx.src.tdata.wholeMsg)
            if tsx.type == pj.PJSIP_EVENT_RX_MSG:
                return str(tsx.src.rdata.wholeMsg)
        elif event.type == pj.PJSIP_EVENT_RX_MSG:
            return str(event.body.rxMsg.rdata.wholeMsg)
        elif event.type == pj.PJSIP_EVENT_TX_MSG:
            return str(event.body.txMsg.tdata.wholeMsg)
    except (AttributeError, pj.Error):
        pass
    return ""
