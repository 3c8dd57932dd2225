"""The sensor-wide UDP reply budget: one token bucket shared by every server process.

The reflector guard (reflector.py) allows `udp_replies_per_sensor` replies a second in all; a
sensor's UDP ports are served by many processes (up to ports_per_process ports each), so the
bucket lives in an anonymous shared mapping (mmap(-1): MAP_SHARED|MAP_ANONYMOUS) which the master
creates before it forks them, spares included, and each inherits. Its lock is a process-shared
semaphore (multiprocessing's fork-context Lock: sem_open, unlinked at once, so no file and no
resource tracker), created with the mapping.

The event loop never waits long for it: the lock is held for a few arithmetic steps, and a
process that cannot take it within LOCK_WAIT sends nothing (counted as refused, like an empty
bucket: refusing is always safe for a reflector). A process killed while holding it would leave
every reply refused; the holder's pid is in the mapping, and the master, reaping a server
process, releases a lock that one still held (forget()). Nothing here reads attacker bytes.
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
import struct

from honeytrap.reflector import refill

# The mapping: tokens (float), when last refilled (float, time.monotonic: CLOCK_MONOTONIC is
# the same clock in every process), the pid holding the lock (0: none).
LAYOUT = struct.Struct("=ddq")
# Longest wait for the lock (seconds): the holder does a few arithmetic steps, so this is only
# reached when it was descheduled meanwhile; a reply is then refused rather than the loop held.
LOCK_WAIT = 0.002


class SharedBucket:
    """A SensorBudget shared by the processes forked after it was made."""

    def __init__(self, rate: int, now: float) -> None:
        self.rate = rate
        self.contended = 0  # takes refused because the lock was not free within LOCK_WAIT
        self._map = mmap.mmap(-1, LAYOUT.size)
        self._lock = multiprocessing.get_context("fork").Lock()
        LAYOUT.pack_into(self._map, 0, float(rate), now, 0)

    def take(self, now: float) -> bool:
        if not self._lock.acquire(timeout=LOCK_WAIT):
            self.contended += 1
            return False
        try:
            tokens, refilled, _holder = LAYOUT.unpack_from(self._map, 0)
            LAYOUT.pack_into(self._map, 0, tokens, refilled, os.getpid())
            tokens = refill(tokens, refilled, now, self.rate)
            taken = tokens >= 1
            LAYOUT.pack_into(self._map, 0, tokens - 1 if taken else tokens,
                             max(now, refilled), 0)
            return taken
        finally:
            self._lock.release()

    def tokens(self) -> float:
        """Tokens held at the last take (the tests')."""
        return float(LAYOUT.unpack_from(self._map, 0)[0])

    def forget(self, pid: int) -> bool:
        """`pid` is gone (reaped): if it died holding the lock, release it. True if it did."""
        tokens, refilled, holder = LAYOUT.unpack_from(self._map, 0)
        if holder != pid or pid == 0:
            return False
        LAYOUT.pack_into(self._map, 0, tokens, refilled, 0)
        self._lock.release()
        return True

    def close(self) -> None:
        """The master's reference (re-created on reload): processes forked with it keep theirs."""
        self._map.close()
