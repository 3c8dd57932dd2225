"""The sensor-wide bound on attacks not yet acknowledged by the recorder (`unacknowledged_limit`).

Every server process keeps each finished attack (its encoded frame) until the recorder has run it
through the plugins (recorder.py); a recorder slower than the load, stopped or restarting leaves
them piling up in the server processes. One bound per process let each of them hold that much
(256 MiB each, once: a 600 s soak with a recorder ~18% slower than the load grew one server
process from 93 to 477 MiB of PSS), so the bound is the sensor's: the bytes unacknowledged in all
its server processes together. Past it every server process holds back new connections (the
kernel's listen backlog and socket buffers hold the load meanwhile, bounded); once the total is
down to half of it, they accept again.

The total lives in an anonymous shared mapping (mmap(-1): MAP_SHARED|MAP_ANONYMOUS) that the
master makes before it forks any server process, with a slot per process (its own share, so the
master can take back a dead process's share when it reaps it) and a process-shared lock
(multiprocessing's fork-context Lock, as in sensorbudget.py). A process publishes its change
(frames added less frames acknowledged) once it reaches PUBLISH_BYTES either way, else within
RECHECK_INTERVAL: a lock round every 64 KiB or ten times a second, not per attack. The event
loop never waits long for the lock: a process that cannot take it within LOCK_WAIT keeps its
change for the next publish. A process killed holding it is found by the master when reaped (its
pid is in the mapping): the lock is released and the total summed again from the slots. Nothing
here reads attacker bytes.
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import multiprocessing
import os
import struct
from collections.abc import Callable
from typing import Any

from honeytrap import log as logs

log = logging.getLogger("honeytrap.server")

# The mapping: the limit (bytes; written by the master only), the total (bytes), the pid holding
# the lock (0: none), each a signed 64-bit word at its own offset; then one share per slot.
WORD = struct.Struct("=q")
LIMIT, TOTAL, HOLDER = 0, 8, 16
SLOTS_AT = 24
# The longest wait for the lock (seconds): it is held for a few arithmetic steps, so this is only
# reached when its holder was descheduled meanwhile; the change is then published next time.
LOCK_WAIT = 0.002
# The master's wait for it when it takes back a reaped process's share; if that is not enough,
# the share is taken back at its next try (release, total).
RELEASE_WAIT = 0.05
# A process publishes what it added at least every this many bytes of frames, even while its
# link to the recorder cannot take more (a stopped recorder: no send, no acknowledgement): what
# it holds unpublished stays below this.
PUBLISH_BYTES = 64 * 1024
# Accepting again once the total is down to this fraction of the limit: a recorder catching up
# frees room in batches, and holding back again at the next attack would flap.
LOW_MARK = 0.5
# While it holds back, a process looks at the total this often: the room freed by the other
# processes' acknowledgements (its own trigger a look at once); and a change it holds
# unpublished (under PUBLISH_BYTES, or the lock was busy) is published at most this late.
# (A lock round, Share.add, costs ~1 us of CPU; one per batch of acknowledgements and per send
# came to about one per connection at moderate rates, where acknowledgements come a few at a
# time; this way one connection pays ~0.15 us.)
RECHECK_INTERVAL = 0.1


class UnackedBudget:
    """The master's: the shared mapping and the slots of the server processes forked after it."""

    def __init__(self, limit: int, slots: int) -> None:
        self.slots = slots
        self._map = mmap.mmap(-1, SLOTS_AT + slots * WORD.size)
        self._lock = multiprocessing.get_context("fork").Lock()
        self._used = 0  # slots handed out so far (the lowest first: fewer pages touched)
        self._free: list[int] = []  # and given back
        self._unreleased: list[Share] = []  # reaped, their shares not yet taken back
        WORD.pack_into(self._map, LIMIT, limit)

    @property
    def limit(self) -> int:
        return int(WORD.unpack_from(self._map, LIMIT)[0])

    def set_limit(self, limit: int) -> None:
        """SIGHUP: every process, old and new, follows the new limit from its next publish."""
        WORD.pack_into(self._map, LIMIT, limit)

    def total(self) -> int:
        """Bytes unacknowledged in all server processes, as last published."""
        self._retry()
        return int(WORD.unpack_from(self._map, TOTAL)[0])

    def share(self) -> Share | None:
        """A slot for a server process about to be forked (None: all taken; it then bounds
        itself alone by the limit, PrivateShare)."""
        if self._free:
            return Share(self._map, self._lock, self._free.pop())
        if self._used == self.slots:
            return None
        self._used += 1
        return Share(self._map, self._lock, self._used - 1)

    def release(self, share: Share, pid: int) -> None:
        """The process with this slot is gone (reaped; pid 0: it was never forked): its share
        is taken back from the total and the slot is free again. If it died holding the lock,
        the lock is released and the total summed again from the slots (it may have died
        between its two writes)."""
        if pid and WORD.unpack_from(self._map, HOLDER)[0] == pid:
            WORD.pack_into(self._map, share.offset, 0)
            shares = struct.unpack_from(f"={self._used}q", self._map, SLOTS_AT)
            WORD.pack_into(self._map, TOTAL, sum(shares))
            WORD.pack_into(self._map, HOLDER, 0)
            self._lock.release()
            self._free.append(share.slot)
        else:
            self._unreleased.append(share)
        self._retry(RELEASE_WAIT)

    def _retry(self, wait: float = 0.0) -> None:
        if not self._unreleased or not self._lock.acquire(timeout=wait):
            return
        try:
            for share in self._unreleased:
                (held,) = WORD.unpack_from(self._map, share.offset)
                WORD.pack_into(self._map, share.offset, 0)
                WORD.pack_into(self._map, TOTAL, WORD.unpack_from(self._map, TOTAL)[0] - held)
                self._free.append(share.slot)
            self._unreleased.clear()
        finally:
            self._lock.release()

    def close(self) -> None:
        self._map.close()


class Share:
    """A server process's slot in the sensor's budget (made by the master, inherited)."""

    __slots__ = ("_lock", "_map", "offset", "slot")

    def __init__(self, shared: mmap.mmap, lock: Any, slot: int) -> None:
        self._map = shared
        self._lock = lock
        self.slot = slot
        self.offset = SLOTS_AT + slot * WORD.size

    def add(self, delta: int) -> tuple[int, int] | None:
        """Add `delta` bytes to this process's share and the total: (the total, the limit),
        or None if the lock was not free within LOCK_WAIT (nothing added: add it next time)."""
        if not self._lock.acquire(timeout=LOCK_WAIT):
            return None
        shared = self._map
        try:
            WORD.pack_into(shared, HOLDER, os.getpid())
            (mine,) = WORD.unpack_from(shared, self.offset)
            WORD.pack_into(shared, self.offset, mine + delta)  # the slot first: see release
            total = WORD.unpack_from(shared, TOTAL)[0] + delta
            WORD.pack_into(shared, TOTAL, total)
            WORD.pack_into(shared, HOLDER, 0)
            return total, WORD.unpack_from(shared, LIMIT)[0]
        finally:
            self._lock.release()


class PrivateShare:
    """The budget of a server process alone (one made without a master, or forked when every
    slot was taken): the limit bounds its own unacknowledged bytes."""

    __slots__ = ("limit", "total")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0

    def add(self, delta: int) -> tuple[int, int] | None:
        self.total += delta
        return self.total, self.limit


class Holdback:
    """A server process's side of the bound: publishes what its recorder link added and freed,
    and calls `on_full(True)` when the sensor's total passes the limit (the process stops
    taking connections), `on_full(False)` once it is down to LOW_MARK of it."""

    def __init__(self, share: Share | PrivateShare, on_full: Callable[[bool], None]) -> None:
        self.share = share
        self.on_full = on_full
        self.loop: asyncio.AbstractEventLoop | None = None  # for the look while full
        self.full = False
        self.holds = 0  # times this process held back (counted: held_back)
        self._unpublished = 0  # bytes added (+) or acknowledged (-) since the last publish
        self._recheck: asyncio.TimerHandle | None = None

    def added(self, size: int) -> None:
        """A frame of `size` bytes kept until acknowledged."""
        self._unpublished += size
        if self._unpublished >= PUBLISH_BYTES:
            self.publish()
        elif self._recheck is None:
            self._look_soon()

    def acked(self, size: int) -> None:
        """Frames of `size` bytes acknowledged: published at once while holding back (room
        may be free again), else with the next PUBLISH_BYTES or RECHECK_INTERVAL."""
        self._unpublished -= size
        if self.full or self._unpublished <= -PUBLISH_BYTES:
            self.publish()
        elif self._recheck is None:
            self._look_soon()

    def publish(self) -> None:
        """Add what changed to the sensor's total; hold back past its limit, accept again at
        its low mark."""
        if self._unpublished or self.full:
            published = self.share.add(self._unpublished)
            if published is not None:
                self._unpublished = 0
                self._decide(*published)
        # While held back, a look now and then (the others' acknowledgements free room too);
        # a change not published (the lock was busy), published a moment later.
        if (self.full or self._unpublished) and self._recheck is None:
            self._look_soon()

    def _look_soon(self) -> None:
        if self.loop is not None:
            self._recheck = self.loop.call_later(RECHECK_INTERVAL, self._look_again)

    def _decide(self, total: int, limit: int) -> None:
        if not self.full and total > limit:
            self.full = True
            self.holds += 1
            log.warning("the recorder is behind: %d bytes of attacks not yet acknowledged in "
                        "the sensor (unacknowledged_limit %d): not accepting new connections "
                        "until it catches up", total, limit)
            self.on_full(True)
        elif self.full and total <= limit * LOW_MARK:
            self.full = False
            log.log(logs.NOTICE, "the recorder caught up (%d bytes not yet acknowledged in the "
                    "sensor): accepting again", total)
            self.on_full(False)

    def _look_again(self) -> None:
        self._recheck = None
        self.publish()
