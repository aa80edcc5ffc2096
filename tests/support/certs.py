"""TLS certificates made for a test: a throwaway CA (trustme) and a server certificate it
signed for 127.0.0.1, written as PEM files the servers and peers under test read."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


@dataclass(frozen=True)
class ServerCertificate:
    ca: Path
    """The CA's certificate: what a client trusts."""
    cert: Path
    """The server's certificate chain."""
    key: Path
    """The server's private key."""

    def spki_sha256(self) -> str:
        """Base64 SHA-256 of the server key's SubjectPublicKeyInfo, as Chromium's
        ``--ignore-certificate-errors-spki-list`` takes it (trusts this certificate only)."""
        leaf = x509.load_pem_x509_certificate(self.cert.read_bytes())
        spki = leaf.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def make_certificate(directory: Path, *names: str) -> ServerCertificate:
    """A CA and a certificate for ``names`` (default 127.0.0.1 and localhost) in
    ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert(*(names or ("127.0.0.1", "localhost")))
    found = ServerCertificate(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    ca.cert_pem.write_to_path(str(found.ca))
    server.private_key_pem.write_to_path(str(found.key))
    found.cert.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    return found
