"""A write batch: the records several attacks gave one output, written with one call.

The pipeline runs the hooks of the attacks queued together one after another on one worker (a
batch, pipeline.py) and acknowledges them only once the batch is written. A line log
(outfile.LineLog: logJSON, logAttacker) adds its lines to the worker's current batch instead of
appending each at once; at the end of the batch they go out joined, one write per log instead
of one per attack (a write to an O_APPEND file is a system call and an inode lock each; measured
with bench/recorder.py). SaveFile adds its attack files the same way: they are created one after
another at the batch's end, not between the hooks' Python of each attack (the kernel's file
creation and the interpreter then each run on caches warm from the file or attack before: 8-13%
of the recorder's CPU per attack, bench/recorder.py at a server's pace). Outside a batch (a hook
called directly, a test) nothing is held: the record is written at once.

A batch is bound to the thread running it (`running`). The pipeline's watchdog may `take` what a
batch holds from another thread (a slow hook: the attacks before it in the batch are written and
acknowledged without waiting for it); the batch goes on empty.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

# An output's write of its records, in the order they came, all at once: a line log's are
# bytes, joined into one append; another output's are its own (SaveFile's files to create).
# len() of a record is what it weighs (a stalled output's bound: stalls.py).
Write = Callable[[list[Any]], None]

_local = threading.local()


class WriteBatch:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Per output (its writer), its records in order.
        self._held: dict[Write, list[Any]] = {}

    def add(self, write: Write, record: Any) -> None:
        """Hold `record` for `write` (an output's "append these bytes whole" function)."""
        with self._lock:
            records = self._held.get(write)
            if records is None:
                self._held[write] = [record]
            else:
                records.append(record)

    def add_all(self, write: Write, records: list[Any]) -> None:
        """add() for each of `records`, in order, under one lock (a batch hook's records:
        hooks.PostProcBatch). The batch may keep the list itself: the caller lets it go."""
        with self._lock:
            held = self._held.get(write)
            if held is None:
                self._held[write] = records
            else:
                held += records

    def take(self) -> Held:
        """What is held now; the batch goes on empty."""
        with self._lock:
            held, self._held = self._held, {}
        return Held(held)


class Held:
    """Records taken from a batch, to be written."""

    def __init__(self, held: dict[Write, list[Any]]) -> None:
        self._held = held

    def __bool__(self) -> bool:
        return bool(self._held)

    def items(self) -> list[tuple[Write, list[Any]]]:
        """Each output's records, in the order the outputs came (the pipeline writes them one
        output at a time, so the watchdog can see which one hangs)."""
        return list(self._held.items())

    def write(self, on_error: Callable[[Write, BaseException], None]) -> None:
        """Each output's records, in one call per output, in the order they came. A writer
        that raises is reported to `on_error`; the others are still written."""
        for write, records in self._held.items():
            try:
                write(records)
            except Exception as exc:
                on_error(write, exc)
        self._held = {}


def name_of(write: Write) -> str:
    """The output a writer belongs to, for the log: its plugin's name (outfile.LineLog keeps
    it), else the writer itself."""
    owner = getattr(write, "__self__", None)
    name = getattr(owner, "name", None)
    return name if isinstance(name, str) else repr(write)


def current() -> WriteBatch | None:
    """The batch this thread is running, if any."""
    batch: WriteBatch | None = getattr(_local, "batch", None)
    return batch


@contextmanager
def running(batch: WriteBatch) -> Iterator[WriteBatch]:
    """Make `batch` this thread's current batch for the block."""
    previous = current()
    _local.batch = batch
    try:
        yield batch
    finally:
        _local.batch = previous
