"""What the central-store plugins share: spool options, and the life cycle of their writer.

`load` (master, root): validate options, create the spool directory and hand it to the user the
dynamic servers run as. No thread, no connection: the master forks.
`after_fork` (the recorder, unprivileged): start the writer thread; it connects when it has
something to deliver (new records, or a spool left by another process or an earlier run).
Hooks only enqueue. `close`: deliver what can be within CLOSE_TIMEOUT, spool the rest.
`stats` (plugin.py's hook): `spool_depth`, a gauge of the records waiting in the spool;
`spool_refused` (records a full spool refused, logged with their keys) and `spool_rejected`
(records the store refused as bad data, kept in rejected/).
"""

from __future__ import annotations

import os

from honeytrap import privileges
from honeytrap.errors import ConfigError, PluginError
from honeytrap.outputs.writer import (
    DEFAULT_BACKOFF_MAX,
    DEFAULT_CLOSE_TIMEOUT,
    Record,
    Sink,
    Writer,
)
from honeytrap.plugin import PluginContext
from honeytrap.spool import DEFAULT_MAX_BYTES, DEFAULT_MAX_RECORDS, Spool

# Spools live beside the other spools of the system, one directory per plugin.
SPOOL_ROOT = "/var/spool/honeytrap"
# spool_depth is the spool's running tally, counted afresh at most this often: a count stats
# every record file under the spool's lock (0.6 s for 100,000 records), and the recorder reads
# the statistics from its main loop.
DEPTH_RECOUNT_INTERVAL = 60.0


class Output:
    """Owns one sink's writer and spool; plugins wrap it with their hooks."""

    def __init__(self, ctx: PluginContext, sink: Sink) -> None:
        self.ctx = ctx
        self.sink = sink
        self.spool_dir = ctx.option("spool_dir", os.path.join(SPOOL_ROOT, ctx.name))
        self.max_records = _positive(ctx, "spool_max_records", DEFAULT_MAX_RECORDS)
        self.max_bytes = _positive(ctx, "spool_max_bytes", DEFAULT_MAX_BYTES)
        self.backoff_max = float(_positive(ctx, "retry_max", int(DEFAULT_BACKOFF_MAX)))
        try:
            ident = privileges.resolve(ctx.config.user, ctx.config.group)
        except ConfigError as exc:
            raise PluginError(f"plugin {ctx.name}: {exc}") from exc
        try:
            Spool.prepare(self.spool_dir, _id(ident.uid), _id(ident.gid))
        except OSError as exc:
            raise PluginError(f"plugin {ctx.name}: spool_dir {self.spool_dir}: {exc}") from exc
        closed = privileges.closed_to(self.spool_dir, ident)
        if closed is not None:
            # The recorder opens the spool by path after dropping privileges: it would fail on
            # every attack, and this output would keep none of them.
            raise PluginError(
                f"plugin {ctx.name}: spool_dir {self.spool_dir}: user {ctx.config.user!r} "
                f"cannot enter {closed}: make it traversable, or put the spool elsewhere"
            )
        self.writer: Writer | None = None

    def _writer(self) -> Writer:
        if self.writer is None:
            spool = Spool(self.spool_dir, max_records=self.max_records, max_bytes=self.max_bytes)
            self.writer = Writer(
                self.sink, spool, log=self.ctx.log, backoff_max=self.backoff_max
            )
        return self.writer

    def after_fork(self) -> None:
        self._writer().start()

    def stats(self) -> dict[str, int]:
        if self.writer is None:  # before after_fork: no spool opened in this process
            return {}
        spool = self.writer.spool
        return {
            "spool_depth": spool.records(DEPTH_RECOUNT_INTERVAL),
            "spool_refused": spool.counters.refused,
            "spool_rejected": spool.counters.rejected,
        }

    def submit(self, record: Record) -> None:
        self._writer().submit(record)

    def close(self, timeout: float = DEFAULT_CLOSE_TIMEOUT) -> None:
        if self.writer is not None:
            self.writer.close(timeout)


def _id(value: int | None) -> int:
    return -1 if value is None else value


def _positive(ctx: PluginContext, key: str, default: int) -> int:
    value = ctx.option_int(key, default)
    if value <= 0:
        raise PluginError(f"plugin {ctx.name}: option {key!r} must be positive")
    return value
