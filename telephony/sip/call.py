"""The PJSUA2 account and call objects. Their callbacks run on PJSIP threads; they only
hand events to the worker (``CallEvents``), never block, and never let an exception
escape into PJSIP."""

from __future__ import annotations

import ipaddress
import logging
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
    call_uuid: str = ""
    """The call's id: an inbound INVITE's ``X-Call-UUID`` (set by a proxy or trunk in front),
    else one made here; sent back on the 200 OK and on REFER."""
    metadata: dict[str, Any] = field(default_factory=dict)


class CallEvents(Protocol):
    """What the endpoint tells the worker; every method is called on a PJSIP thread."""

    def incoming(self, leg: CallLeg) -> None: ...
    def confirmed(self, leg: CallLeg) -> None: ...
    def disconnected(self, leg: CallLeg, status: int, reason: str) -> None: ...
    def dtmf(self, leg: CallLeg, digit: str) -> None: ...
    def transfer_status(self, leg: CallLeg, status: int, final: bool) -> None: ...
    def rtp_timeout(self, leg: CallLeg) -> None: ...


class SipCall(pj.Call):
    """One PJSUA2 call with its bridge port. ``on_gone`` drops the endpoint's reference
    on DISCONNECTED, inside the callback, so the object never outlives its call id."""

    def __init__(self, account: pj.Account, leg: CallLeg, events: CallEvents,
                 sample_rate: int, on_gone: Callable[[SipCall], None],
                 call_id: int = pj.PJSUA_INVALID_ID) -> None:
        super().__init__(account, call_id)
        self.leg = leg
        self.events = events
        self.sample_rate = sample_rate
        self.on_gone = on_gone
        self.port: CallAudioPort | None = None
        self.rx_packets = 0
        self.rx_changed_at = time.monotonic()
        self.media_index: int | None = None
        self.gone = False

    def onCallState(self, prm: pj.OnCallStateParam) -> None:
        try:
            info = self.getInfo()
            if info.state == pj.PJSIP_INV_STATE_CONFIRMED:
                self.events.confirmed(self.leg)
            elif info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
                status, reason = int(info.lastStatusCode), str(info.lastReason)
                self.release_media()
                self.gone = True
                self.events.disconnected(self.leg, status, reason)
                self.on_gone(self)
        except Exception:
            log.exception("call %s: state callback failed", self.leg.key)

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

    def release_media(self) -> None:
        """Stop the clock feeding this call's port and remove it from the bridge."""
        if self.port is not None:
            self.port.destroy()
            self.port = None
        self.leg.source.close_threadsafe()


def source_allowed(address: str, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]
                   ) -> bool:
    """Whether ``address`` ("ip:port", "[v6]:port" or a bare IP) lies in ``networks``;
    an empty list allows every source."""
    if not networks:
        return True
    host = address.strip()
    if host.startswith("["):
        host = host[1:host.find("]")]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def parse_networks(spec: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """``"10.0.0.0/8, 127.0.0.1"`` → networks; raises ValueError naming a bad entry."""
    networks = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(
                f"SWITCHBOARD_SIP_ALLOWED_NETWORKS: {item!r} is not an IP address or CIDR "
                "network (expected e.g. 10.0.0.0/8,192.168.1.5)"
            ) from None
    return networks
