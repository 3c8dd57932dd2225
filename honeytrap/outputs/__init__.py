"""Outputs to central stores (PostgreSQL, hpfeeds): a sink per store behind one batching writer
(writer.py) that falls back on the durable spool (honeytrap/spool.py) when the store is away.

The base classes an output plugin builds on (docs/plugins.md, "Writing an output"):

- `Sink`: the store's side (a Protocol): connect, send a batch of `Record`s (return the ones the
  store refuses as bad data, raise `SinkDown` when it is away), idle, disconnect;
- `Record`: one thing to deliver (a key that is never attacker data, a time, bytes);
- `Output`: owns a sink's writer and spool, with the spool options every output takes
  (`spool_dir`, `spool_max_records`, `spool_max_bytes`, `retry_max`) and its statistics;
- `Writer`: the batching thread (used through `Output`).
"""

from honeytrap.outputs.output import Output
from honeytrap.outputs.writer import Record, Sink, SinkDown, Writer

__all__ = ["Output", "Record", "Sink", "SinkDown", "Writer"]
