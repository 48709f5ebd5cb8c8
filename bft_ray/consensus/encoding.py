"""Canonical byte encoding helpers.

Every consensus object has exactly one byte encoding: fixed-width big-endian integers,
length-prefixed byte strings and a one-byte type tag per structure. Signatures and ids cover
these bytes, never a pickle, so objects can cross process boundaries in any transport.

Example:
    >>> r = Reader(u64(7) + blob(b"ab"))
    >>> (r.u64(), r.blob())
    (7, b'ab')
"""

from __future__ import annotations

from .errors import DecodeError

__all__ = ["ID_LEN", "Reader", "blob", "u32", "u64"]

#: Length of every id (a blake3 digest).
ID_LEN = 32

_U32_MAX = 2**32 - 1
_U64_MAX = 2**64 - 1


def u64(x: int) -> bytes:
    """Encode a non-negative integer in 8 big-endian bytes."""
    return x.to_bytes(8, "big")


def u32(x: int) -> bytes:
    """Encode a non-negative integer in 4 big-endian bytes."""
    return x.to_bytes(4, "big")


def blob(b: bytes) -> bytes:
    """Encode a byte string with a 4-byte length prefix."""
    return len(b).to_bytes(4, "big") + b


class Reader:
    """Strict reader over canonical bytes; every read checks the remaining length.

    Args:
        data: The bytes to decode.
    """

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise DecodeError(f"expected bytes, got {type(data).__name__}")
        self.data = bytes(data)
        self.pos = 0

    def _take(self, k: int) -> bytes:
        end = self.pos + k
        if end > len(self.data):
            raise DecodeError(f"truncated input: need {k} bytes at offset {self.pos}")
        out = self.data[self.pos : end]
        self.pos = end
        return out

    def u8(self) -> int:
        """Read one byte."""
        return self._take(1)[0]

    def u32(self) -> int:
        """Read a 4-byte unsigned integer."""
        return int.from_bytes(self._take(4), "big")

    def u64(self) -> int:
        """Read an 8-byte unsigned integer."""
        return int.from_bytes(self._take(8), "big")

    def blob(self) -> bytes:
        """Read a length-prefixed byte string."""
        return self._take(self.u32())

    def fixed(self, k: int) -> bytes:
        """Read exactly ``k`` bytes (ids)."""
        return self._take(k)

    def count(self, min_item_size: int) -> int:
        """Read an element count and reject counts the remaining bytes cannot hold."""
        k = self.u32()
        if k * min_item_size > len(self.data) - self.pos:
            raise DecodeError(f"count {k} exceeds the remaining input")
        return k

    def expect_tag(self, tag: int, name: str) -> None:
        """Read a type tag and check it."""
        got = self.u8()
        if got != tag:
            raise DecodeError(f"expected {name} (tag {tag}), got tag {got}")

    def finish(self) -> None:
        """Fail if bytes are left over (encodings are canonical, so there must be none)."""
        if self.pos != len(self.data):
            raise DecodeError(f"{len(self.data) - self.pos} trailing bytes")
