"""An attack's bytes (what the attacker sent, what we sent, a download's sample) with their size
and hashes, computed once, on first use.

Split from attack.py (by concept): every output hashes payloads, and the recorder makes one per
attack it decodes (made_payload, wire.py).
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

# The hashes of no bytes, made once (hashlib's set-up cost 1.4 us for MD5, 2.9 for SHA-512, of
# nothing).
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
# Payloads whose MD5 and SHA-512 (the two the line logs print for every attack) are remembered,
# by their bytes: attackers send the same bytes again and again (a scanner's probe, a worm's
# exploit, no bytes at all), and the two digests of 200 bytes cost ~18,000 instructions (3-4 us)
# where looking them up costs ~1,000. Only payloads up to DIGESTS_MAX_BYTES, so that what is
# kept is bounded (256 KiB of payloads at most, and their digests' text); a larger payload's
# digests are made when asked for, each on its own, as before.
DIGESTS_REMEMBERED = 256
DIGESTS_MAX_BYTES = 1024


@functools.lru_cache(maxsize=DIGESTS_REMEMBERED)
def _small_digests(data: bytes) -> tuple[str, str]:
    """MD5 and SHA-512 of a small payload, in hex."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest(), hashlib.sha512(data).hexdigest()


class Payload:
    """Bytes with their size and hashes (computed once, on first use)."""

    __slots__ = ("data", "__dict__")

    def __init__(self, data: bytes = b"") -> None:
        self.data = bytes(data)

    @property
    def size(self) -> int:
        return len(self.data)

    # Hashes computed once, on first use, kept in the instance dict (functools.cached_property
    # takes a lock shared by every instance on 3.11: threads hashing big payloads waited).
    # Each written out, not through a shared helper taking a constructor: two outputs read
    # both hashes of every attack, and the helper's calls cost as much as hashing 200 bytes.
    @property
    def md5(self) -> str:
        value: str | None = self.__dict__.get("md5")
        if value is None:
            data = self.data
            if len(data) <= DIGESTS_MAX_BYTES and type(data) is bytes:  # (and b"")
                value, self.__dict__["sha512"] = _small_digests(data)
            else:
                value = hashlib.md5(data, usedforsecurity=False).hexdigest()
            self.__dict__["md5"] = value
        return value

    @property
    def sha256(self) -> str:
        value: str | None = self.__dict__.get("sha256")
        if value is None:
            data = self.data
            value = self.__dict__["sha256"] = (hashlib.sha256(data).hexdigest() if data
                                               else _EMPTY_SHA256)
        return value

    @property
    def sha512(self) -> str:
        value: str | None = self.__dict__.get("sha512")
        if value is None:
            data = self.data
            if len(data) <= DIGESTS_MAX_BYTES and type(data) is bytes:
                self.__dict__["md5"], value = _small_digests(data)
            else:
                value = hashlib.sha512(data).hexdigest()
            self.__dict__["sha512"] = value
        return value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Payload) and other.data == self.data

    def __hash__(self) -> int:
        return hash(self.data)

    def __repr__(self) -> str:
        return f"Payload({self.size} bytes, md5={self.md5})"

    def to_json(self) -> dict[str, Any]:
        return {
            "md5_hash": self.md5,
            "sha512_hash": self.sha512,
            "length": self.size,
            "data_hex": self.data.hex(),
        }



_new = object.__new__


def made_payload(data: bytes) -> Payload:
    """Payload(data) for `data` already bytes, without __init__ (for the recorder's decoder,
    wire.py: attack.py's made_attack says why)."""
    payload: Payload = _new(Payload)
    payload.data = data
    return payload
