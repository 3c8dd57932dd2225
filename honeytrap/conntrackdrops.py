"""Attempts the kernel dropped before anyone saw them: its connection tracking table was full.

The nfq monitor's rules (`-m conntrack --ctstate NEW`, README) make the kernel track every
connection the sensor takes, in a table of at most net.netfilter.nf_conntrack_max entries; a
closed connection stays there nf_conntrack_tcp_timeout_time_wait (120 s by default). Once it is
full the kernel drops new SYNs before any listening socket or the monitor sees them: the sensor
looks closed, and neither its port table nor its servers can tell (issue 13: a benchmark sweep
lost 360 connections that way, unanswered, unrecorded). The kernel counts those packets per
network namespace (/proc/net/stat/nf_conntrack: one row per CPU, the "drop" column, hexadecimal);
the master reads the count every CHECK_INTERVAL, counts what is new (conntrack_drops) and logs
it, with the keys an operator raises. No connection tracking in the namespace (no such file):
nothing to count, nothing logged.
"""

from __future__ import annotations

import logging

log = logging.getLogger("honeytrap")

STAT_PATH = "/proc/net/stat/nf_conntrack"
# How often the master reads the kernel's count (and logs at most once, with what is new): one
# small file read; an operator hears of a full table within this long.
CHECK_INTERVAL = 10.0


def dropped(text: str) -> int | None:
    """The "drop" column of /proc/net/stat/nf_conntrack summed over its rows, or None if the
    text is not that table (no such column, a field that is not hexadecimal)."""
    lines = text.splitlines()
    if not lines:
        return None
    names = lines[0].split()
    if "drop" not in names:
        return None
    column = names.index("drop")
    total = 0
    for line in lines[1:]:
        fields = line.split()
        if not fields:
            continue
        if len(fields) <= column:
            return None
        try:
            total += int(fields[column], 16)
        except ValueError:
            return None
    return total


class ConntrackDrops:
    """The packets the kernel's table dropped since the master started (`total`)."""

    def __init__(self, path: str = STAT_PATH) -> None:
        self.path = path
        self.total = 0
        self._last = self._read()  # what was dropped before honeytrap ran is not counted
        self._due = 0.0  # the next check (time.monotonic())

    def _read(self) -> int | None:
        try:
            with open(self.path) as stat:
                return dropped(stat.read())
        except OSError:
            return None

    def tick(self, now: float) -> None:
        """From the master's loop: check once CHECK_INTERVAL has passed since the last."""
        if now >= self._due:
            self._due = now + CHECK_INTERVAL
            self.check()

    def check(self) -> int:
        """Count and log the drops since the last check; how many there were."""
        now = self._read()
        if now is None or self._last is None:
            self._last = now
            return 0
        new = max(0, now - self._last)  # a counter the kernel never lowers; 0 if it was reset
        self._last = now
        if new:
            self.total += new
            log.warning(
                "the kernel's connection tracking table is full: %d packets dropped before any "
                "socket or honeytrap saw them (%d since the start); raise "
                "net.netfilter.nf_conntrack_max or lower "
                "net.netfilter.nf_conntrack_tcp_timeout_time_wait", new, self.total)
        return new
