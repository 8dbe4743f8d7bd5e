"""Request signing between a car's agent and the platform (no Django: the car imports this too).

Why Ed25519 signatures rather than an HMAC: with an HMAC the server must keep the shared secret, so a database dump
would yield working credentials. Here the car holds a private key, shown to its owner once at registration, and the
platform stores only the public key: nothing in the database can sign a request.

Each request carries four headers:

    X-Idlefleet-Key        the credential's key id (public, names which public key to use)
    X-Idlefleet-Timestamp  Unix seconds when the car signed the request
    X-Idlefleet-Nonce      32 random hex characters, never reused
    X-Idlefleet-Signature  base64url Ed25519 signature of the canonical string below

    IDLEFLEET-ED25519-V1 \n METHOD \n /path?query \n timestamp \n nonce \n sha256-hex(body)

The server refuses a timestamp outside its window (stale or from the future), a nonce it has already seen for that key
within the window (a replay), and any change to method, path, query or body (the signature no longer verifies).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SCHEME = "IDLEFLEET-ED25519-V1"
HEADER_KEY = "X-Idlefleet-Key"
HEADER_TIMESTAMP = "X-Idlefleet-Timestamp"
HEADER_NONCE = "X-Idlefleet-Nonce"
HEADER_SIGNATURE = "X-Idlefleet-Signature"
CREDENTIAL_PREFIX = "ifv1"


def b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def canonical_string(*, method: str, path: str, timestamp: int, nonce: str, body: bytes) -> bytes:
    body_hash = hashlib.sha256(body).hexdigest()
    return "\n".join([SCHEME, method.upper(), path, str(timestamp), nonce, body_hash]).encode("utf-8")


@dataclass(frozen=True)
class Credential:
    """What a car needs to sign requests: its key id and private key (32-byte Ed25519 seed)."""

    key_id: str
    private_key: bytes

    @classmethod
    def generate(cls, key_id: str) -> Credential:
        from cryptography.hazmat.primitives import serialization

        raw = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        return cls(key_id=key_id, private_key=raw)

    @property
    def public_key(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return (
            Ed25519PrivateKey.from_private_bytes(self.private_key)
            .public_key()
            .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )

    def to_token(self) -> str:
        """One copy-pasteable string: `ifv1.<key id>.<base64url private key>`."""
        return f"{CREDENTIAL_PREFIX}.{self.key_id}.{b64encode(self.private_key)}"

    @classmethod
    def from_token(cls, token: str) -> Credential:
        try:
            prefix, key_id, key = token.strip().split(".")
            raw = b64decode(key)
        except ValueError as error:
            raise ValueError("not an Idlefleet vehicle credential (expected ifv1.<key id>.<key>)") from error
        if prefix != CREDENTIAL_PREFIX or len(raw) != 32 or not key_id:
            raise ValueError("not an Idlefleet vehicle credential (expected ifv1.<key id>.<key>)")
        return cls(key_id=key_id, private_key=raw)

    def to_file_text(self, server: str = "") -> str:
        return json.dumps({"server": server, "credential": self.to_token()}, indent=2) + "\n"

    @classmethod
    def from_file(cls, path: str | Path) -> tuple[Credential, str]:
        """Read a credential file (JSON with `credential` and optional `server`, or the bare token)."""
        text = Path(path).read_text().strip()
        if text.startswith("{"):
            data = json.loads(text)
            return cls.from_token(data["credential"]), data.get("server", "")
        return cls.from_token(text), ""

    def sign(self, *, method: str, path: str, body: bytes, timestamp: int, nonce: str | None = None) -> dict[str, str]:
        """The headers that authenticate one request."""
        nonce = nonce or secrets.token_hex(16)
        message = canonical_string(method=method, path=path, timestamp=timestamp, nonce=nonce, body=body)
        signature = Ed25519PrivateKey.from_private_bytes(self.private_key).sign(message)
        return {
            HEADER_KEY: self.key_id,
            HEADER_TIMESTAMP: str(timestamp),
            HEADER_NONCE: nonce,
            HEADER_SIGNATURE: b64encode(signature),
        }


def verify(
    *, public_key: bytes, signature: str, method: str, path: str, timestamp: int, nonce: str, body: bytes
) -> bool:
    try:
        key = Ed25519PublicKey.from_public_bytes(public_key)
    except ValueError:
        return False
    return verify_with(
        public_key=key, signature=signature, method=method, path=path, timestamp=timestamp, nonce=nonce, body=body
    )


def verify_with(
    *, public_key: Ed25519PublicKey, signature: str, method: str, path: str, timestamp: int, nonce: str, body: bytes
) -> bool:
    """verify, with the public key already loaded (the server keeps loaded keys of the cars it hears from)."""
    try:
        public_key.verify(
            b64decode(signature),
            canonical_string(method=method, path=path, timestamp=timestamp, nonce=nonce, body=body),
        )
    except (InvalidSignature, ValueError):
        return False
    return True
