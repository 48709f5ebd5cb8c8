"""Ed25519 signing keys for executors and verifiers (the ``cryptography`` package).

Example:
    >>> key = SigningKey.generate()
    >>> sig = key.sign(b"hello")
    >>> verify_signature(key.public_bytes, b"hello", sig), verify_signature(key.public_bytes, b"bye", sig)
    (True, False)
"""

from __future__ import annotations

import functools
import struct

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = ["SigningKey", "encode_fields", "verify_signature"]


class SigningKey:
    """An Ed25519 private key with its raw 32-byte public key."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public_bytes: bytes = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)

    def __reduce__(self):
        raise TypeError("signing keys never leave their process")


@functools.lru_cache(maxsize=4096)
def _public_key(raw: bytes) -> Ed25519PublicKey:
    # Parsing a key costs about as much as a verification; the same few keys sign everything.
    return Ed25519PublicKey.from_public_bytes(raw)


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is a valid Ed25519 signature of ``message`` under ``public_key``."""
    try:
        _public_key(bytes(public_key)).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def encode_fields(domain: bytes, *fields: bytes | str | int) -> bytes:
    """Unambiguous byte encoding of a signed record: a domain tag then length-prefixed fields."""
    out = [struct.pack("<Q", len(domain)), domain]
    for f in fields:
        if isinstance(f, int):
            b = struct.pack("<q", f)
        elif isinstance(f, str):
            b = f.encode()
        else:
            b = bytes(f)
        out.append(struct.pack("<Q", len(b)))
        out.append(b)
    return b"".join(out)
