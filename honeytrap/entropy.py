"""Random bytes for attack ids and the dialogues' randomness, from os.urandom in blocks.

Every connection of a server process draws twice: its raw template's quiet period (raw.py,
SENSOR_RNG.uniform) and, when it ends, its attack's id (attack.new_id). random.SystemRandom
makes a getrandom() system call for each draw (~0.7 us each, measured); here one call fills a
block of BLOCK bytes, taken piece by piece. The bytes are os.urandom's, so the quality is the
same. Each piece is taken with list.pop, atomic under the interpreter lock, so threads (the
recorder's plugins derive attacks) never share one; and a forked child empties the blocks it
inherited (os.register_at_fork), so no two processes draw the same bytes.
"""

from __future__ import annotations

import os
import random
import struct

# Bytes drawn from the kernel at once: 128 draws of 8 bytes, or 64 ids; small, because each
# process keeps up to two blocks as Python objects (~5 KiB for both).
BLOCK = 1024
# Bits of a 64-bit word random() keeps: a double's 53-bit mantissa, as SystemRandom's.
_MANTISSA = 53
_WORDS = struct.Struct(f"<{BLOCK // 8}Q")


class _Pools:
    """The blocks not yet used: 64-bit words, 16-byte pieces."""

    def __init__(self) -> None:
        self.words: list[int] = []
        self.pieces: list[bytes] = []

    def clear(self) -> None:
        self.words.clear()
        self.pieces.clear()


_POOLS = _Pools()
os.register_at_fork(after_in_child=_POOLS.clear)


def word() -> int:
    """A random unsigned 64-bit integer."""
    words = _POOLS.words
    try:
        return words.pop()
    except IndexError:
        words.extend(_WORDS.unpack(os.urandom(BLOCK)))
        return words.pop()


def bytes16() -> bytes:
    """16 random bytes."""
    pieces = _POOLS.pieces
    try:
        return pieces.pop()
    except IndexError:
        block = os.urandom(BLOCK)
        pieces.extend(block[i:i + 16] for i in range(0, BLOCK, 16))
        return pieces.pop()


class BlockRandom(random.SystemRandom):
    """random.SystemRandom drawing from the blocks above: the same methods and quality
    (every other method is built on random() and getrandbits()), one system call per BLOCK
    bytes instead of one per draw. Stateless like SystemRandom (seed, getstate: its errors)."""

    def random(self) -> float:
        return (word() >> (64 - _MANTISSA)) * (1.0 / (1 << _MANTISSA))

    def getrandbits(self, k: int) -> int:
        if 0 < k <= 64:
            return word() >> (64 - k)
        return super().getrandbits(k)
