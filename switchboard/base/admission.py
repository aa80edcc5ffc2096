"""Per-source admission of new calls: how many a source address may start in a moving
window, and how many it may hold at once. A flood from one address then takes a bounded
share of a worker and never the lines of other callers. Trusted networks (a trunk's
border controller, the node's own proxy) pass untouched. Thread-safe: the SIP endpoint
asks from PJSIP's thread, the web app from its event loop."""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import Counter
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class AdmissionSettingError(ValueError):
    """A limit or a network in the settings cannot be read; the message names the setting."""


@dataclass(frozen=True)
class Refusal:
    """Why a new call from a source was refused, and when it may try again."""

    reason: str
    retry_after_s: int


def parse_networks(spec: str, setting: str) -> list[Network]:
    """``"10.0.0.0/8, 127.0.0.1"`` → networks; raises naming ``setting`` and the bad entry."""
    networks = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise AdmissionSettingError(
                f"{setting}: {item!r} is not an IP address or CIDR network (expected e.g. "
                "10.0.0.0/8,192.168.1.5)"
            ) from None
    return networks


def source_host(address: str) -> str:
    """The IP of "ip:port", "[v6]:port" or a bare IP (as given when it is none of them)."""
    host = address.strip()
    if host.startswith("["):
        return host[1:host.find("]")]
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host


def parse_rate(spec: str, setting: str) -> RateLimitItem | None:
    """A rate as ``limits`` writes it ("10/minute", "2/second"); None for "" (no limit)."""
    try:
        return parse(spec) if spec.strip() else None
    except ValueError as exc:
        raise AdmissionSettingError(
            f"{setting}={spec!r}: expected a rate such as 10/minute or 2/second ({exc})"
        ) from None


def in_networks(address: str, networks: list[Network]) -> bool:
    """Whether the source ``address`` lies in one of ``networks``."""
    try:
        ip = ipaddress.ip_address(source_host(address))
    except ValueError:
        return False
    return any(ip in net for net in networks)


class SourceAdmission:
    """``admit(address)`` before a call from ``address`` starts (None: admitted, and one of
    its concurrent slots is taken until ``release(address)``), else the :class:`Refusal`.

    ``rate``: new calls per source in a moving window, as ``limits`` writes it ("10/minute",
    "2/second"; "" for no limit). ``concurrent``: calls at once per source (0: no limit)."""

    def __init__(self, *, rate: str, concurrent: int, trusted: list[Network],
                 rate_setting: str = "rate") -> None:
        self._rate = parse_rate(rate, rate_setting)
        self._concurrent = concurrent
        self._trusted = trusted
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._held: Counter[str] = Counter()
        self._lock = threading.Lock()

    def admit(self, address: str) -> Refusal | None:
        if in_networks(address, self._trusted):
            return None
        host = source_host(address)
        with self._lock:
            if self._concurrent and self._held[host] >= self._concurrent:
                return Refusal(f"{self._concurrent} calls from {host} already", 30)
            if self._rate is not None and not self._limiter.hit(self._rate, host):
                reset = self._limiter.get_window_stats(self._rate, host).reset_time
                return Refusal(f"more than {self._rate} new calls from {host}",
                               max(1, round(reset - time.time())))
            self._held[host] += 1
        return None

    def release(self, address: str) -> None:
        """A call admitted from ``address`` ended (a trusted source's never counted)."""
        if in_networks(address, self._trusted):
            return
        host = source_host(address)
        with self._lock:
            if self._held[host] > 1:
                self._held[host] -= 1
            else:
                self._held.pop(host, None)

    def held(self, address: str) -> int:
        """Calls held now by ``address``'s host."""
        with self._lock:
            return self._held.get(source_host(address), 0)
