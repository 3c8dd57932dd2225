"""Outputs whose batch write hung, and the records that wait for each (pipeline.py).

Past `plugin_timeout` in one write the pipeline's watchdog marks the output stalled (`mark`) and
writes its worker off; from then on nobody calls that output's write: its later records are kept
here (`defer`, at most MAX_STALLED_BYTES an output; past it they are counted lost and logged
once). When the hung write returns, what was handed to it is in the file (a blocking write of
the whole record), and its thread writes what waited after it, in order (`unstall`). Records
still waiting when the pipeline closes are counted lost (`drop`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from honeytrap import writebatch
from honeytrap.pipelinejobs import Counters

log = logging.getLogger("honeytrap.pipeline")

# Bytes of records held per stalled output (its write hung past plugin_timeout) until the hung
# write returns: a few minutes of a busy sensor's lines, like backlog.MAX_HELD_BYTES.
MAX_STALLED_BYTES = 64 * 1024 * 1024


class Stall:
    """An output whose write hung: the records that wait for it to return."""

    __slots__ = ("name", "since", "waiting", "bytes", "lost_logged")

    def __init__(self, name: str, since: float) -> None:
        self.name = name
        self.since = since
        self.waiting: list[Any] = []
        self.bytes = 0
        self.lost_logged = False


class StalledOutputs:
    """The pipeline's stalled outputs. `counters` (write_lost) are updated under
    `counters_lock`; `write_failed` is told of a write that raised."""

    def __init__(self, counters: Counters, counters_lock: threading.Condition,
                 clock: Callable[[], float],
                 write_failed: Callable[[writebatch.Write, BaseException], None]) -> None:
        self._counters = counters
        self._counters_lock = counters_lock
        self._clock = clock
        self._write_failed = write_failed
        self._stalled: dict[writebatch.Write, Stall] = {}
        self._lock = threading.Lock()

    def mark(self, write: writebatch.Write, name: str, since: float) -> bool:
        """The write to this output hung since `since`: True if it was not stalled yet (the
        caller counts and logs it once)."""
        with self._lock:
            if write in self._stalled:
                return False  # another worker's write to it hung first: said already
            self._stalled[write] = Stall(name, since)
            return True

    def defer(self, write: writebatch.Write, records: list[Any]) -> bool:
        """Keep the records of a stalled output for when its hung write returns (or count
        them lost past MAX_STALLED_BYTES). False if the output is not stalled."""
        if not self._stalled:
            return False  # nearly always: no lock taken (a dict's truth is one atomic read)
        with self._lock:
            stall = self._stalled.get(write)
            if stall is None:
                return False
            size = sum(map(len, records))
            if stall.bytes + size <= MAX_STALLED_BYTES:
                stall.waiting.extend(records)
                stall.bytes += size
                return True
            first, stall.lost_logged = not stall.lost_logged, True
        with self._counters_lock:
            self._counters.write_lost += len(records)
        if first:
            log.error("output %s still hung: its records past %d bytes are lost (counted in "
                      "write_lost)", stall.name, MAX_STALLED_BYTES)
        return True

    def unstall(self, write: writebatch.Write) -> None:
        """A write the watchdog gave up on returned: write what waited for it, in order."""
        while True:
            with self._lock:
                stall = self._stalled.get(write)
                if stall is None:
                    return
                if not stall.waiting:
                    del self._stalled[write]
                    break
                waiting, stall.waiting, stall.bytes = stall.waiting, [], 0
            try:
                write(waiting)
            except Exception as exc:
                self._write_failed(write, exc)
        log.warning("output %s writes again after %.0f s", stall.name,
                    self._clock() - stall.since)

    def drop(self) -> None:
        """At close: what still waits for a hung write is lost (counted, logged)."""
        with self._lock:
            stalled, self._stalled = self._stalled, {}
        for stall in stalled.values():
            with self._counters_lock:
                self._counters.write_lost += len(stall.waiting)
            log.error("output %s still hung at close: %d records waiting for it are lost",
                      stall.name, len(stall.waiting))
