"""The speech service's wire format: one msgpack map per ZeroMQ message.

A client's DEALER socket talks to a server's ROUTER socket. Every request carries an
``id`` chosen by the client; every reply names it.

Requests (``op``):

- ``ping``: answered at once by the server's I/O loop with ``pong`` and its ``load``
  (jobs waiting per model), even while the models are busy: it says the server lives.
- ``stt``: ``pcm`` (int16 little-endian bytes), ``rate``, ``priority``, ``deadline_ms``
  (milliseconds from now after which it must not start; null for none). Replied with
  ``transcript`` (the :class:`Transcript` fields), or ``error``.
- ``tts``: ``text``, ``rate``, ``skip`` (sentences already delivered by another server, not
  sent again). Replied with one ``chunk`` per sentence (``pcm``, ``index``), then ``done``.
- ``cancel``: drops request ``id`` if queued, and stops a synthesis after its sentence.

Errors carry ``error`` (one of :data:`ERROR_KINDS`) and ``message``.

Security: loopback and ``ipc://`` need nothing. A server bound elsewhere needs a shared
secret, from which both sides derive CURVE key pairs (:func:`curve_keys`): the traffic is
encrypted and the server admits only clients that hold the secret.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import msgpack
import zmq
from zmq.utils import z85

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""A larger message is refused by ZeroMQ itself (30 s of 16 kHz audio is under 1 MB)."""

ERROR_KINDS = ("bad_request", "deadline", "closed", "failed")

READY_LINE = "speech server ready on"
"""A server logs it once its socket is bound and its models are warm (the probe of
whoever starts one)."""


class ProtocolError(ValueError):
    """A message that is not a speech-service message."""


def pack(message: dict[str, Any]) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def unpack(frame: bytes) -> dict[str, Any]:
    """The message in ``frame``; :class:`ProtocolError` for anything but a msgpack map with
    an integer ``id`` and a string ``op``."""
    try:
        message = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise ProtocolError(f"not msgpack: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"expected a map, got {type(message).__name__}")
    if not isinstance(message.get("id"), int) or not isinstance(message.get("op"), str):
        raise ProtocolError("a message needs an integer 'id' and a string 'op'")
    return message


class AddressError(ValueError):
    """An address the speech service cannot use; the message says which form to use."""


@dataclass(frozen=True)
class Address:
    """``ipc:///path/to/socket`` (one host) or ``tcp://host:port``."""

    url: str

    @classmethod
    def parse(cls, url: str) -> Address:
        url = url.strip()
        parts = urlsplit(url)
        if parts.scheme == "ipc" and url[len("ipc://"):]:
            return cls(url)
        if parts.scheme == "tcp":
            try:
                port = parts.port
            except ValueError:
                port = None
            if parts.hostname and port:
                return cls(url)
        raise AddressError(
            f"{url!r} is not a speech server address; use ipc:///path/to/speech.sock on one "
            "host or tcp://host:port (e.g. tcp://127.0.0.1:7100)"
        )

    @property
    def local(self) -> bool:
        """Reachable only from this machine: ``ipc://`` or a loopback address."""
        host = urlsplit(self.url).hostname
        if self.url.startswith("ipc://"):
            return True
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host or "").is_loopback
        except ValueError:
            return False

    def __str__(self) -> str:
        return self.url


def parse_addresses(text: str) -> list[Address]:
    """A comma-separated list of addresses (``SWITCHBOARD_SPEECH_SERVERS``)."""
    return [Address.parse(part) for part in text.split(",") if part.strip()]


@dataclass(frozen=True)
class KeyPair:
    public: bytes
    secret: bytes


def curve_keys(secret: str, role: str) -> KeyPair:
    """The CURVE key pair of ``role`` (``server`` or ``client``) derived from the shared
    ``secret``: whoever knows the secret can compute both, nobody else can."""
    seed = hashlib.sha256(f"switchboard speech {role}\0{secret}".encode()).digest()
    secret_key = z85.encode(seed)
    return KeyPair(zmq.curve_public(secret_key), secret_key)


def secure_client(socket: zmq.Socket[Any], secret: str) -> None:
    """Make ``socket`` (not yet connected) talk CURVE to a server sharing ``secret``."""
    mine = curve_keys(secret, "client")
    socket.curve_secretkey = mine.secret
    socket.curve_publickey = mine.public
    socket.curve_serverkey = curve_keys(secret, "server").public
