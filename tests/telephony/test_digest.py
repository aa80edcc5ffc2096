"""Checking INVITE credentials (RFC 2617 digest, MD5, qop=auth) without a network."""

from __future__ import annotations

import hashlib
import re

import pytest

from telephony.sip import digest
from telephony.sip.digest import DigestAuthenticator, authorization_params

URI = "sip:bot@127.0.0.1:5060"


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def answer(challenge: str, *, user: str = "trunk", password: str = "pw",
           realm: str | None = None, method: str = "INVITE", nc: str = "00000001") -> str:
    """The Authorization a client computes for ``challenge`` (RFC 2617, §3.2.2)."""
    nonce = re.search(r'nonce="([^"]+)"', challenge).group(1)  # type: ignore[union-attr]
    realm = realm or re.search(r'realm="([^"]+)"', challenge).group(1)  # type: ignore[union-attr]
    ha1, ha2 = md5(f"{user}:{realm}:{password}"), md5(f"{method}:{URI}")
    response = md5(f"{ha1}:{nonce}:{nc}:0a4f113b:auth:{ha2}")
    return (f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{URI}", '
            f'response="{response}", algorithm=MD5, cnonce="0a4f113b", qop=auth, nc={nc}')


@pytest.fixture
def auth() -> DigestAuthenticator:
    return DigestAuthenticator("switchboard", "trunk", "pw")


def test_the_right_answer_to_a_challenge_passes_once(auth: DigestAuthenticator) -> None:
    challenge = auth.challenge()
    first = answer(challenge)
    assert auth.check("INVITE", URI, first).ok
    replayed = auth.check("INVITE", URI, first)
    assert not replayed.ok and "replay" in replayed.reason
    assert auth.check("INVITE", URI, answer(challenge, nc="00000002")).ok  # the next count


def test_credentials_for_another_uri_or_without_qop_are_refused(
    auth: DigestAuthenticator,
) -> None:
    given = answer(auth.challenge())
    assert not auth.check("INVITE", "sip:bot@elsewhere", given).ok
    without_qop = re.sub(r", qop=auth, nc=\S+", "", given)
    check = auth.check("INVITE", URI, without_qop)
    assert not check.ok and "qop" in check.reason
    odd = auth.check("INVITE", URI, given.replace('nonce="', 'nonce="é'))
    assert not odd.ok and odd.stale  # any character: no TypeError


def test_a_wrong_password_or_user_is_refused_not_challenged_again(
    auth: DigestAuthenticator,
) -> None:
    for wrong in (answer(auth.challenge(), password="guess"),
                  answer(auth.challenge(), user="mallory"),
                  answer(auth.challenge(), method="BYE")):
        check = auth.check("INVITE", URI, wrong)
        assert not check.ok and not check.stale, check


def test_missing_forged_or_expired_nonces_get_a_new_challenge(
    auth: DigestAuthenticator, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert auth.check("INVITE", URI, "").stale
    assert auth.check("INVITE", URI, "Basic dHJ1bms6cHc=").stale
    other = DigestAuthenticator("switchboard", "trunk", "pw")  # another worker's nonce
    assert auth.check("INVITE", URI, answer(other.challenge())).reason.startswith("a nonce")
    old = auth.challenge()
    issued_ms = int(re.search(r'nonce="([0-9]+)-', old).group(1))  # type: ignore[union-attr]
    monkeypatch.setattr(digest.time, "time", lambda: issued_ms / 1000 + digest.NONCE_TTL_S + 1)
    check = auth.check("INVITE", URI, answer(old))
    assert check.stale and "expired" in check.reason
    assert "stale=true" in auth.challenge(stale=True)


def test_authorization_parameters_are_read_quoted_or_not() -> None:
    params = authorization_params('Digest username="a b", qop=auth, nc=00000001, uri="sip:x"')
    assert params == {"username": "a b", "qop": "auth", "nc": "00000001", "uri": "sip:x"}
    assert authorization_params("Bearer abc") == {}
