"""Bounds-checked reads for the binary-protocol dialogues (MySQL, PostgreSQL, SMB, RDP, VNC):
every length is checked before it is used, and a short or malformed message is a Truncated
error that the dialogue turns into a recorded refusal."""

from __future__ import annotations


class Truncated(ValueError):
    """The client's message is shorter than its own fields say."""


class Cursor:
    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        if n < 0 or n > self.left():
            raise Truncated(f"{n} bytes wanted, {self.left()} left")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def rest(self) -> bytes:
        return self.take(self.left())

    def le(self, size: int) -> int:
        return int.from_bytes(self.take(size), "little")

    def be(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def cstring(self, limit: int) -> bytes:
        """Bytes up to a NUL (consumed), at most `limit` of them."""
        end = self.data.find(b"\0", self.pos, self.pos + limit + 1)
        if end < 0:
            raise Truncated(f"no NUL within {limit} bytes")
        value = self.data[self.pos : end]
        self.pos = end + 1
        return value


def text(data: bytes, limit: int = 256) -> str:
    """Attacker bytes for the record: decoded tolerantly, bounded."""
    return data[:limit].decode("utf-8", "replace")
