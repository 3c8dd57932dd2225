"""What a file output could not write yet (a full disk): held in memory, in order, bounded.

SaveFile, logJSON and logAttacker write to local files. When a write fails (ENOSPC, EDQUOT,
EIO, EFBIG: whatever the kernel says, nothing of the record is left in the file: outfile.py
takes a short write back), the record is not lost and the attack hook does not raise (a
traceback per attack, and the other outputs' records in the log, is what the issue saw). It is
held here, and every later record of that output is held behind it, so the file receives them in
the order they came. Held records are written, oldest first, at the next record and by a retry
thread every RETRY_INTERVAL, until the queue is empty again.

The queue is in memory, not in spool.py's directory: the spool would be on a disk too, most
likely the same full one. So it is bounded (MAX_HELD_RECORDS, MAX_HELD_BYTES per output); a
record past a bound is refused: counted (`spool_refused`) and logged, never silently dropped.
Held records do not survive the recorder's end (a reload or stop while the disk is still full):
close() writes what it can and logs how many it could not.

The log says so once when an output stops writing, at most once per LOG_INTERVAL while it cannot,
and once when it writes again: one counted line per output, not one per attack. Counters for the
plugin's stats(): `spool_depth` (held now), `spool_refused`, `write_failures` (failed attempts).

The clock is injected, and nothing here touches a file: the writes are the callers' callables.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

# Bounds per output: a few minutes of a busy sensor's attacks with small payloads, and a memory
# budget the recorder can afford three times over (SaveFile, logJSON, logAttacker each hold
# their own; a logJSON line holds its payload hex-encoded, up to 2 * read_limit bytes).
MAX_HELD_RECORDS = 50_000
MAX_HELD_BYTES = 64 * 1024 * 1024
# Seconds between retries while records are held and no new record comes to retry them.
RETRY_INTERVAL = 1.0
# Seconds between two "still cannot write" lines of one output.
LOG_INTERVAL = 60.0
# Seconds close() waits for a write in progress (one that hangs: a stalled NFS mount, a FIFO
# nobody reads, which the pipeline's watchdog already gave up on) before it gives up too: the
# recorder's stop must not hang on it.
CLOSE_WAIT = 2.0

Write = Callable[[], None]


class SizedWrite(Protocol):
    """A write that knows what it weighs (its record's size)."""

    def __call__(self) -> None: ...

    def __len__(self) -> int: ...


@dataclass
class BacklogCounters:
    held: int = 0  # records waiting now (a gauge)
    refused: int = 0  # records past a bound: not written, logged
    write_failures: int = 0  # write attempts that failed (each held record counts once a try)
    written_late: int = 0  # held records written after all


class Backlog:
    def __init__(
        self,
        output: str,
        target: str,
        log: logging.Logger,
        *,
        max_records: int = MAX_HELD_RECORDS,
        max_bytes: int = MAX_HELD_BYTES,
        clock: Callable[[], float] = time.monotonic,
        retry_interval: float | None = RETRY_INTERVAL,
    ) -> None:
        self.output = output
        self.target = target
        self.log = log
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.counters = BacklogCounters()
        self._clock = clock
        self._retry_interval = retry_interval
        self._held: deque[tuple[int, Write]] = deque()
        self._bytes = 0
        self._lock = threading.Lock()
        self._failing_since: float | None = None
        self._last_logged = 0.0
        self._refusal_logged = False
        self._retrier: threading.Thread | None = None
        self._closed = threading.Event()

    def submit(self, size: int, write: Write) -> bool:
        """Write now if nothing is held and the write succeeds; else hold it behind the others
        (or refuse it past a bound). True if it was written now."""
        with self._lock:
            if self._held:
                self._drain_locked()  # the older records first, to keep the order
            if not self._held:
                try:
                    write()
                except OSError as exc:
                    self._failed(exc)
                else:
                    if self._failing_since is not None:
                        self._recovered()  # what failed last was refused, not held
                    return True
            self._hold(size, write)
        self._start_retrier()
        return False

    def submit_each(self, writes: Sequence[SizedWrite]) -> None:
        """submit(len(write), write) for each, in order, under one lock (SaveFile's attack
        files of a batch). Once one fails (OSError) it and every later one are held, not
        tried each in turn. Another exception costs that record only (as submit's, it is
        neither written nor held): the others are written, then the first such is raised."""
        error: Exception | None = None
        with self._lock:
            if self._held:
                self._drain_locked()
            start = 0
            if not self._held:
                for write in writes:
                    try:
                        write()
                    except OSError as exc:
                        self._failed(exc)
                        break
                    except Exception as exc:
                        error = error or exc
                    start += 1
                if start and self._failing_since is not None:
                    self._recovered()  # what failed last was refused, not held
            for write in writes[start:]:
                self._hold(len(write), write)
            holding = bool(self._held)
        if holding:
            self._start_retrier()
        if error is not None:
            raise error

    def drain(self) -> bool:
        """Write held records, oldest first, until one fails. True when none is left."""
        with self._lock:
            self._drain_locked()
            return not self._held

    def close(self) -> None:
        """Stop retrying; write what can be written; say how many records could not be. A
        write that hangs holds the lock: after CLOSE_WAIT the held records are given up."""
        self._closed.set()
        if not self._lock.acquire(timeout=CLOSE_WAIT):
            self.log.error(
                "%s: a write to %s still hangs at close: %d held records never written "
                "(what the hung write has is written if it ever returns)", self.output,
                self.target, len(self._held),
            )
            return
        try:
            self._drain_locked()
            if self._held:
                self.log.error(
                    "%s: %d records never written to %s (it could still not be written at "
                    "close); %d refused earlier", self.output, len(self._held), self.target,
                    self.counters.refused,
                )
                self._held.clear()
                self._bytes = 0
                self.counters.held = 0
        finally:
            self._lock.release()

    def holding(self) -> bool:
        """Whether records wait (a hint, read without the lock: SaveFile's batch then starts
        no file ahead of submit_each, which would hold it too)."""
        return bool(self._held)

    def stats(self) -> dict[str, int]:
        return {
            "spool_depth": self.counters.held,
            "spool_refused": self.counters.refused,
            "write_failures": self.counters.write_failures,
        }

    # -- under the lock ----------------------------------------------------------------------

    def _drain_locked(self) -> None:
        while self._held:
            size, write = self._held[0]
            try:
                write()
            except OSError as exc:
                self._failed(exc)
                return
            self._held.popleft()
            self._bytes -= size
            self.counters.held = len(self._held)
            self.counters.written_late += 1
        if self._failing_since is not None:
            self._recovered()

    def _recovered(self) -> None:
        assert self._failing_since is not None
        self.log.warning(
            "%s: writing %s again after %.0f s: %d held records written in order "
            "(%d failed writes, %d records refused)", self.output, self.target,
            self._clock() - self._failing_since, self.counters.written_late,
            self.counters.write_failures, self.counters.refused,
        )
        self._failing_since = None
        self._refusal_logged = False

    def _failed(self, exc: OSError) -> None:
        self.counters.write_failures += 1
        now = self._clock()
        if self._failing_since is None:
            self._failing_since = now
            self.counters.written_late = 0
            self.log.error(
                "%s: cannot write %s (%s): holding its records in memory, in order, until it "
                "can (at most %d records, %d bytes)", self.output, self.target,
                exc.strerror or exc, self.max_records, self.max_bytes,
            )
            self._last_logged = now
        elif now - self._last_logged >= LOG_INTERVAL:
            self._last_logged = now
            self.log.error(
                "%s: still cannot write %s (%s) after %.0f s: %d records held, %d refused, "
                "%d failed writes", self.output, self.target, exc.strerror or exc,
                now - self._failing_since, len(self._held), self.counters.refused,
                self.counters.write_failures,
            )

    def _hold(self, size: int, write: Write) -> None:
        if len(self._held) + 1 > self.max_records or self._bytes + size > self.max_bytes:
            self.counters.refused += 1
            if not self._refusal_logged:
                # The first refusal of an outage at once (records are being lost); the later
                # ones are counted in the periodic "still cannot write" line.
                self._refusal_logged = True
                self.log.error(
                    "%s: %d records held for %s (%d bytes; bounds %d, %d): record refused "
                    "(%d refused so far)", self.output, len(self._held), self.target,
                    self._bytes, self.max_records, self.max_bytes, self.counters.refused,
                )
            return
        self._held.append((size, write))
        self._bytes += size
        self.counters.held = len(self._held)

    # -- the retry thread --------------------------------------------------------------------

    def _start_retrier(self) -> None:
        if self._retry_interval is None:
            return  # the caller drains (tests with an injected clock)
        with self._lock:
            if self._retrier is not None or not self._held or self._closed.is_set():
                return
            self._retrier = threading.Thread(
                target=self._retry, name=f"backlog-{self.output}", daemon=True
            )
            self._retrier.start()

    def _retry(self) -> None:
        assert self._retry_interval is not None
        while not self._closed.wait(self._retry_interval):
            with self._lock:
                self._drain_locked()
                if not self._held:
                    # Under the lock: a record held after this starts a new thread.
                    self._retrier = None
                    return
