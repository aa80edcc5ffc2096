"""Which addresses and servers ICE uses: host candidates restricted by settings, STUN/TURN
only when configured (aiortc otherwise adds a public STUN server)."""

from __future__ import annotations

import ipaddress

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer

from switchboard.base.settings import Settings

_aioice_host_addresses = aioice.ice.get_host_addresses


def parse_addresses(value: str) -> list[str]:
    """The comma list of ``webrtc_ice_addresses`` as IP address strings."""
    addresses = [part.strip() for part in value.split(",") if part.strip()]
    for address in addresses:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ValueError(
                f"SWITCHBOARD_WEBRTC_ICE_ADDRESSES: {address!r} is not an IP address; "
                "expected a comma list such as '127.0.0.1' or '192.168.1.10,10.0.0.5'"
            ) from None
    return addresses


def restrict_host_candidates(addresses: list[str]) -> None:
    """Make aioice offer exactly ``addresses`` as host candidates (empty: its default,
    every address but loopback). aioice has no option for this, so its address lookup
    is replaced here, process-wide, and nowhere else."""
    if not addresses:
        aioice.ice.get_host_addresses = _aioice_host_addresses
        return

    def configured(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [
            address for address in addresses
            if (use_ipv4 if ipaddress.ip_address(address).version == 4 else use_ipv6)
        ]

    aioice.ice.get_host_addresses = configured


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def rtc_configuration(settings: Settings) -> RTCConfiguration:
    """ICE servers from the settings; none at all by default (no external traffic)."""
    servers = [RTCIceServer(urls=url) for url in _split(settings.webrtc_stun_servers)]
    servers += [
        RTCIceServer(
            urls=url,
            username=settings.webrtc_turn_username or None,
            credential=settings.webrtc_turn_password or None,
        )
        for url in _split(settings.webrtc_turn_servers)
    ]
    return RTCConfiguration(iceServers=servers)
