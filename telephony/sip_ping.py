"""A SIP OPTIONS ping over UDP: is a SIP endpoint (worker, proxy) answering?"""

from __future__ import annotations

import secrets
import socket


def options_ping(host: str, port: int, *, timeout: float = 1.0) -> bool:
    """Send one OPTIONS request; True when any SIP response comes back in time."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.bind((host, 0))
        local_host, local_port = sock.getsockname()[:2]
        tag = secrets.token_hex(6)
        request = (
            f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {local_host}:{local_port};branch=z9hG4bK{tag};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:health@{local_host}:{local_port}>;tag={tag}\r\n"
            f"To: <sip:{host}:{port}>\r\n"
            f"Call-ID: {tag}@{local_host}\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Accept: application/sdp\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        try:
            sock.sendto(request.encode(), (host, port))
            data, _ = sock.recvfrom(65535)
        except OSError:
            return False
    return data.startswith(b"SIP/2.0 ")
