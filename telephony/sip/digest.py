"""Digest authentication of incoming INVITEs (RFC 2617 / RFC 3261 §22, MD5, qop=auth): a
trunk that cannot be told by its address proves it knows the shared password. Nonces are
a time stamp signed with a per-process secret and live NONCE_TTL_S seconds; each nonce
count is accepted once (no replay), for the request URI it was computed for. Not
thread-safe: the SIP endpoint checks on its one thread."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

NONCE_TTL_S = 60.0
_PARAM = re.compile(r'([A-Za-z-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


@dataclass(frozen=True)
class DigestCheck:
    """The outcome of checking an INVITE's credentials: ``ok``, or why not and whether the
    answer is a (new) challenge — stale or missing credentials — rather than a refusal."""

    ok: bool
    reason: str = ""
    stale: bool = False


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def _same(a: str, b: str) -> bool:
    """Constant-time comparison of two texts (any characters)."""
    return hmac.compare_digest(a.encode(errors="replace"), b.encode(errors="replace"))


def authorization_params(header: str) -> dict[str, str]:
    """The parameters of a ``Digest`` Authorization header (lower-case names), or {}."""
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "digest":
        return {}
    return {name.lower(): quoted or token for name, quoted, token in _PARAM.findall(rest)}


class DigestAuthenticator:
    """Challenges and checks the credentials (``username``, ``password``) of a realm."""

    def __init__(self, realm: str, username: str, password: str) -> None:
        self.realm = realm
        self.username = username
        self._ha1 = _md5(f"{username}:{realm}:{password}")
        self._secret = secrets.token_bytes(32)
        self._counts: dict[str, tuple[int, float]] = {}
        """nonce → (the highest nonce count accepted, when the nonce expires): a captured
        Authorization header cannot be sent again."""

    def _sign(self, stamp: str) -> str:
        return hmac.new(self._secret, stamp.encode(), hashlib.sha256).hexdigest()[:32]

    def _nonce(self) -> str:
        stamp = str(int(time.time() * 1000))  # ms, rounded down: never in the future
        return f"{stamp}-{self._sign(stamp)}"

    def challenge(self, *, stale: bool = False) -> str:
        """A ``WWW-Authenticate`` value with a fresh nonce."""
        return (f'Digest realm="{self.realm}", nonce="{self._nonce()}", algorithm=MD5, '
                f'qop="auth"' + (", stale=true" if stale else ""))

    def check(self, method: str, request_uri: str, authorization: str) -> DigestCheck:
        """Check an ``Authorization`` header value sent with ``method`` to
        ``request_uri``."""
        params = authorization_params(authorization)
        if not params:
            return DigestCheck(False, "no digest credentials", stale=True)
        nonce = params.get("nonce", "")
        stamp, _, signature = nonce.partition("-")
        if not _same(signature, self._sign(stamp)):
            return DigestCheck(False, "a nonce this worker did not give", stale=True)
        try:
            issued = int(stamp) / 1000
        except ValueError:
            return DigestCheck(False, "a malformed nonce", stale=True)
        if not 0 <= time.time() - issued <= NONCE_TTL_S:
            return DigestCheck(False, "an expired nonce", stale=True)
        if params.get("username") != self.username or params.get("realm") != self.realm:
            return DigestCheck(False, f"unknown user {params.get('username')!r}")
        if params.get("algorithm", "MD5").upper() != "MD5":
            return DigestCheck(False, f"unsupported algorithm {params.get('algorithm')!r}")
        if params.get("qop") != "auth":
            return DigestCheck(False, "credentials without qop=auth (it was asked for)")
        if params.get("uri") != request_uri:
            return DigestCheck(False, "credentials for another request URI")
        try:
            count = int(params.get("nc", ""), 16)
        except ValueError:
            return DigestCheck(False, "a malformed nonce count")
        ha2 = _md5(f"{method}:{request_uri}")
        expected = _md5(f"{self._ha1}:{nonce}:{params.get('nc', '')}:"
                        f"{params.get('cnonce', '')}:auth:{ha2}")
        if not _same(expected, params.get("response", "")):
            return DigestCheck(False, "wrong password")
        now = time.time()
        self._counts = {n: c for n, c in self._counts.items() if c[1] > now}
        if count <= self._counts.get(nonce, (0, 0.0))[0]:
            return DigestCheck(False, "credentials sent before (a replay)", stale=True)
        self._counts[nonce] = (count, issued + NONCE_TTL_S)
        return DigestCheck(True)
