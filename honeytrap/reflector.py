"""The UDP reflector guard: a sensor on the Internet must not amplify spoofed traffic.

A UDP source address can be forged, so every reply may land on a victim who never sent us
anything (the issue measured 335x: 1-byte datagrams from 300 sources got 392-byte SIP replies).
Three rules, checked before each datagram we send to a source address (sans-IO: sizes in,
decisions out, the clock injected):

- **Bytes**: what we send to an address never exceeds REPLY_RATIO times what it sent us, counted
  since we first saw it. A reply that would is cut to what is left, or not sent when nothing is.
  A forged source thus gets at most twice the bytes the forger spent: no amplification.
- **Per source**: at most `udp_replies_per_source` replies per second to one address (a token
  bucket of that size, refilled at that rate), so a reflected flood is no faster than its cause.
- **Per sensor**: at most `udp_replies_per_sensor` replies per second in all, so many forged
  sources together stay bounded too. The sensor's bucket is a SensorBudget the guard is given:
  in the daemon one shared by every server process (sensorbudget.py: the master creates it
  before it forks them), here LocalBucket, one process's own (the unit tests', and a server
  process made without the master's). The per-source rule and the bytes rule stay per server
  process: a source flooding ports of k processes may get k times its rate, within the sensor's.

Refusals and cuts are counted (`udp_replies_refused`, `udp_replies_cut`, in the server
process's statistics). The table of sources is bounded (MAX_SOURCES, least recently seen
evicted): an evicted source starts again from nothing received, so eviction never grants it
more than the ratio allows. (The third rule of the issue, no reply on a UDP port without a
template, is the UDP server's: normal.py.)
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

# Bytes sent to a source never exceed this many times the bytes it sent (the bound).
REPLY_RATIO = 2
# Replies per second to one source address by default (the bound; config key
# udp_replies_per_source): a client that retries after a lost reply needs one or two.
DEFAULT_REPLIES_PER_SOURCE = 10
# Replies per second by the whole sensor by default (udp_replies_per_sensor): a busy
# sensor sees a few hundred UDP probes a second; with REPLY_RATIO this bounds what a forger can
# make us send to about 1,000 datagrams of at most twice his own size a second.
DEFAULT_REPLIES_PER_SENSOR = 1000
# Source addresses remembered (each ~150 bytes: 2.5 MiB per server process at most): past it
# the least recently seen is forgotten.
MAX_SOURCES = 16384


class SensorBudget(Protocol):
    """The sensor-wide reply rate: a token bucket of `rate` tokens refilled at `rate` a
    second, however many processes share it."""

    rate: int

    def take(self, now: float) -> bool:
        """One token at `now` (time.monotonic's clock): True if there was one (spent)."""
        ...


class LocalBucket:
    """A SensorBudget of one process (no sharing): the in-process implementation."""

    def __init__(self, rate: int, now: float) -> None:
        self.rate = rate
        self._tokens = float(rate)
        self._refilled = now

    def take(self, now: float) -> bool:
        self._tokens = refill(self._tokens, self._refilled, now, self.rate)
        self._refilled = max(now, self._refilled)
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


def refill(tokens: float, refilled: float, now: float, rate: int) -> float:
    """A bucket of `rate` tokens holding `tokens` at `refilled`, at `now` (a clock read a
    little before another process's may come later: never less than it holds)."""
    return min(float(rate), tokens + max(0.0, now - refilled) * rate)


@dataclass
class ReflectorCounters:
    udp_replies_refused: int = 0  # not sent at all (ratio, source or sensor rate)
    udp_replies_cut: int = 0  # sent shorter than the reply, to keep the ratio


@dataclass
class _Source:
    received: int = 0
    sent: int = 0
    tokens: float = 0.0
    refilled: float = 0.0


class ReflectorGuard:
    def __init__(
        self,
        *,
        per_source: int = DEFAULT_REPLIES_PER_SOURCE,
        per_sensor: int = DEFAULT_REPLIES_PER_SENSOR,
        ratio: int = REPLY_RATIO,
        max_sources: int = MAX_SOURCES,
        clock: Callable[[], float] = time.monotonic,
        sensor: SensorBudget | None = None,
    ) -> None:
        self.per_source = per_source
        self.per_sensor = per_sensor
        self.ratio = ratio
        self.max_sources = max_sources
        self.counters = ReflectorCounters()
        self._clock = clock
        self._sources: OrderedDict[str, _Source] = OrderedDict()
        # The sensor's bucket: the shared one when given (its own rate), else this process's.
        self.sensor = LocalBucket(per_sensor, clock()) if sensor is None else sensor

    def received(self, source: str, size: int) -> None:
        """A datagram of `size` bytes came from `source` (an address, without port)."""
        entry = self._sources.get(source)
        if entry is None:
            entry = _Source(tokens=float(self.per_source), refilled=self._clock())
            self._sources[source] = entry
            if len(self._sources) > self.max_sources:
                self._sources.popitem(last=False)
        else:
            self._sources.move_to_end(source)
        entry.received += size

    def allow(self, source: str, size: int) -> int | None:
        """How many bytes of a `size`-byte reply to `source` may be sent: `size`, fewer (cut
        the reply to that), or None (send nothing). Counted; a reply that may go is charged."""
        entry = self._sources.get(source)
        room = 0 if entry is None else entry.received * self.ratio - entry.sent
        if entry is None or (room <= 0 and size > 0):
            self.counters.udp_replies_refused += 1
            return None
        now = self._clock()
        entry.tokens = refill(entry.tokens, entry.refilled, now, self.per_source)
        entry.refilled = now
        # The source's token first: a source over its own rate spends none of the sensor's.
        if entry.tokens < 1 or not self.sensor.take(now):
            self.counters.udp_replies_refused += 1
            return None
        entry.tokens -= 1
        allowed = min(size, room)
        if allowed < size:
            self.counters.udp_replies_cut += 1
        entry.sent += allowed
        return allowed
