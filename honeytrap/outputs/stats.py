"""The statistics of the central-store plugins (plugin.py's `stats()` hook), for submitPostgres
(and SavePostgres, the same plugin) and hpfeeds.

`spool_depth` is a gauge: records waiting in the plugin's spool. Listing the spool costs one
directory read of up to spool_max_records names (measured: 0.15 s for 100 000; `Spool.depth()`
also stats every file, 0.6 s, holding the spool's lock), and the recorder reads the statistics
from its main loop every few seconds: so the directory is listed at most every
DEPTH_RESCAN_INTERVAL, and in between the figure is moved by what this process wrote to the
spool and delivered from it (`Spool.counters`, exact for this process). What other processes did
meanwhile (an old recorder finishing after a reload) and poison records set aside from the spool
show at the next listing.

The spool's own counters ride along: `spool_refused` (records a full spool refused: not stored
by this output; logged with their keys) and `spool_rejected` (records the store refused as bad
data, kept in rejected/).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from honeytrap.outputs.output import Output
from honeytrap.spool import Spool

# See the module docstring: the cost of a listing against how stale the gauge may get.
DEPTH_RESCAN_INTERVAL = 60.0


class OutputStats:
    """The `stats()` of a plugin built on an Output."""

    def __init__(self, output: Output, clock: Callable[[], float] = time.monotonic) -> None:
        self.output = output
        self._clock = clock
        self._base = 0  # the listing's count less what this process had moved by then
        self._next_listing = 0.0
        self._listed = False

    def stats(self) -> dict[str, int]:
        writer = self.output.writer
        if writer is None:  # before after_fork: no spool opened in this process
            return {}
        spool = writer.spool
        return {
            "spool_depth": self.depth(spool),
            "spool_refused": spool.counters.refused,
            "spool_rejected": spool.counters.rejected,
        }

    def depth(self, spool: Spool) -> int:
        moved = spool.counters.written - spool.counters.acked
        now = self._clock()
        if not self._listed or now >= self._next_listing:
            try:
                listed = len(spool.names())
            except OSError:
                listed = None  # the directory is away: keep the running figure
            if listed is not None:
                self._base = listed - moved
                self._listed = True
            self._next_listing = now + DEPTH_RESCAN_INTERVAL
        return max(0, self._base + moved)
