"""The batching writer shared by the central-store outputs: hooks enqueue, one thread delivers.

The plugin hooks only call `Writer.submit` (a non-blocking put on a bounded in-memory queue; if
that is full, the record goes straight to the spool). One thread per process takes batches off
the queue and hands them to the sink. While the sink is away, batches go to the spool and the
thread retries the sink with exponential back-off; once it is back, the spool is replayed oldest
first before anything newer is sent, so the store sees records in order.

Delivery is at least once; the sinks make it exactly once where the store allows (PostgreSQL:
idempotent keys). A sink raises `SinkDown` when the store is unreachable (the batch is spooled
and retried) and returns the records it refuses as bad data (they are set aside in the spool's
rejected/ directory, never retried forever and never dropped).

`close` lets the thread finish within a bounded time, then spools what is left, including a
batch the thread was still sending (a duplicate of it is harmless with idempotent keys).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from honeytrap.spool import Spool

# Records per batch: one transaction (PostgreSQL) or one burst of publishes (hpfeeds).
DEFAULT_BATCH = 200
# Records held in memory before the hooks write straight to the spool (memory bound).
DEFAULT_QUEUE_MAX = 2000
# How long a batch waits to fill before it is sent anyway (latency of a quiet sensor).
FLUSH_INTERVAL = 0.2
# Reconnect back-off: first wait, and the cap (a store away for hours is retried once a minute).
BACKOFF_INITIAL = 0.5
DEFAULT_BACKOFF_MAX = 60.0
# Even with nothing new, look at the spool this often: other processes may have left records.
REPLAY_INTERVAL = 5.0
# close(): how long the thread may go on delivering before the rest is spooled.
DEFAULT_CLOSE_TIMEOUT = 5.0


class SinkDown(Exception):
    """The store cannot be reached (or stopped answering): spool and retry later."""


@dataclass(frozen=True)
class Record:
    key: str  # spool key: an attack id or a sample hash, never attacker data
    when: float  # orders the replay
    data: bytes


class Sink(Protocol):
    name: str

    def connect(self) -> None: ...

    def send(self, records: Sequence[Record]) -> list[tuple[Record, str]]:
        """Deliver all; return the refused ones with a reason. Raise SinkDown if away."""
        ...

    def idle(self) -> None:
        """Called between batches while connected (e.g. to read and drop what the peer sent)."""
        ...

    def disconnect(self) -> None: ...


@dataclass
class WriterCounters:
    submitted: int = 0
    delivered: int = 0
    spooled: int = 0
    replayed: int = 0
    rejected: int = 0
    lost: int = 0  # refused by a full spool (logged by the spool with the key)
    reconnects: int = 0


class Writer:
    def __init__(
        self,
        sink: Sink,
        spool: Spool,
        *,
        log: logging.Logger,
        batch: int = DEFAULT_BATCH,
        queue_max: int = DEFAULT_QUEUE_MAX,
        backoff_max: float = DEFAULT_BACKOFF_MAX,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sink = sink
        self.spool = spool
        self.log = log
        self.batch = batch
        self.backoff_max = backoff_max
        self.counters = WriterCounters()
        self._clock = clock
        self._queue: queue.Queue[Record] = queue.Queue(maxsize=queue_max)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._start_lock = threading.Lock()
        self._progress = threading.Condition()
        self._inflight: list[Record] = []
        self._up = False
        self._backoff = BACKOFF_INITIAL
        self._next_try = 0.0
        self._next_replay = 0.0

    # -- the hook side ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread (idempotent): in after_fork, or on the first record."""
        with self._start_lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(
                    target=self._run, name=f"writer-{self.sink.name}", daemon=True
                )
                self._thread.start()

    def submit(self, record: Record) -> None:
        """Never blocks on the store: queue it, or spool it if the queue is full."""
        self.counters.submitted += 1
        if self._stop.is_set():
            self._spool([record])
            return
        self.start()
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._spool([record])

    def wait_delivered(self, count: int, timeout: float) -> bool:
        """Block until `count` records in all were delivered."""
        return self.wait_until(lambda c: c.delivered >= count, timeout)

    def wait_until(self, predicate: Callable[[WriterCounters], bool], timeout: float) -> bool:
        """Block until the counters satisfy `predicate` (checked at each delivery or spooling:
        an explicit signal for tests and monitoring, no polling)."""
        deadline = time.monotonic() + timeout
        with self._progress:
            while not predicate(self.counters):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._progress.wait(left)
        return True

    def close(self, timeout: float = DEFAULT_CLOSE_TIMEOUT) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                self.log.warning("%s: writer still busy after %.1f s: spooling the rest",
                                 self.sink.name, timeout)
                self._spool(list(self._inflight))
        self._spool(self._take_nowait(None))
        if thread is None or not thread.is_alive():
            self.sink.disconnect()

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            stopping = self._stop.is_set()
            batch = self._take_nowait(self.batch) if stopping else self._take()
            try:
                self._step(batch)
            except Exception:
                # A bug in a sink must not kill the thread (and with it the output).
                self.log.exception("%s: writer failed; batch spooled", self.sink.name)
                self._spool(batch)
                self._down()
            self._inflight = []
            if stopping and self._queue.empty():
                break

    def _step(self, batch: list[Record]) -> None:
        self._inflight = batch
        now = self._clock()
        if not self._up and now >= self._next_try and (batch or self._spool_due(now)):
            self._connect()
        if not self._up:
            self._spool(batch)
            return
        if batch or self._spool_due(now):
            self._replay()
            if self._up:
                self._deliver(batch)
            else:
                self._spool(batch)
        else:
            try:
                self.sink.idle()
            except SinkDown as exc:
                self.log.warning("%s: connection lost: %s", self.sink.name, exc)
                self._down()

    def _spool_due(self, now: float) -> bool:
        if now < self._next_replay:
            return False
        self._next_replay = now + REPLAY_INTERVAL
        return bool(self.spool.names())

    def _take(self) -> list[Record]:
        try:
            first = self._queue.get(timeout=FLUSH_INTERVAL)
        except queue.Empty:
            return []
        return [first, *self._take_nowait(self.batch - 1)]

    def _take_nowait(self, limit: int | None) -> list[Record]:
        records: list[Record] = []
        while limit is None or len(records) < limit:
            try:
                records.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return records

    def _connect(self) -> None:
        try:
            self.sink.connect()
        except SinkDown as exc:
            self._down()
            self.log.warning("%s: unreachable (%s); next try in %.1f s",
                             self.sink.name, exc, self._next_try - self._clock())
            return
        if self.counters.reconnects:
            self.log.info("%s: connected again", self.sink.name)
        self.counters.reconnects += 1
        self._up = True
        self._backoff = BACKOFF_INITIAL
        self._next_replay = 0.0

    def _down(self) -> None:
        self._up = False
        try:
            self.sink.disconnect()
        except Exception:
            self.log.exception("%s: disconnect failed", self.sink.name)
        self._next_try = self._clock() + self._backoff
        self._backoff = min(self._backoff * 2, self.backoff_max)

    def _replay(self) -> None:
        """Send the spool, oldest first, until it is empty or the sink goes away."""
        while self._up and not self._stop.is_set():
            claims = self.spool.claim(self.batch)
            if not claims:
                return
            records = [Record(c.key, c.when_ns / 1e9, c.data) for c in claims]
            by_key = {id(r): c for r, c in zip(records, claims, strict=True)}
            try:
                refused = self.sink.send(records)
            except SinkDown as exc:
                for claim in claims:
                    claim.release()
                self.log.warning("%s: lost during replay: %s", self.sink.name, exc)
                self._down()
                return
            refused_ids = {id(r): reason for r, reason in refused}
            for record in records:
                claim = by_key[id(record)]
                if id(record) in refused_ids:
                    self.counters.rejected += 1
                    claim.reject(refused_ids[id(record)])
                else:
                    claim.ack()
            self.counters.replayed += len(records) - len(refused)
            self._delivered(len(records) - len(refused))

    def _deliver(self, batch: list[Record]) -> None:
        if not batch:
            return
        try:
            refused = self.sink.send(batch)
        except SinkDown as exc:
            self.log.warning("%s: lost while sending: %s", self.sink.name, exc)
            self._spool(batch)
            self._down()
            return
        for record, reason in refused:
            self.counters.rejected += 1
            self._reject(record, reason)
        self._delivered(len(batch) - len(refused))

    def _reject(self, record: Record, reason: str) -> None:
        self.spool.put_rejected(record.key, record.data, reason, record.when)

    def _delivered(self, count: int) -> None:
        with self._progress:
            self.counters.delivered += count
            self._progress.notify_all()

    def _spool(self, records: list[Record]) -> None:
        for record in records:
            stored = self.spool.put(record.key, record.data, record.when)
            with self._progress:
                if stored:
                    self.counters.spooled += 1
                else:
                    self.counters.lost += 1
                self._progress.notify_all()
