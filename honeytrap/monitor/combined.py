"""The `auto` monitor's pair: the NFQUEUE reader and the pcap sniffer at once, as one Monitor.

Whichever way an attempt comes, it reaches the same master: a SYN the firewall queues is held
and served first time (nfq); one that reaches a closed port unqueued is refused by the kernel,
and the sniffer sees the refusal (pcap). An attempt for a port already served or pending is
just accepted by the master, so seeing one attempt twice is harmless; still, a queued attempt
the master refused (no room, a port it may not bind) is answered by the kernel's RST right
after its verdict, and the sniffer would report it again: such echoes are dropped here.

One descriptor for the master's selector: an epoll set over the two monitors' descriptors (an
epoll descriptor is itself pollable, so the master's loop needs no change).
"""

from __future__ import annotations

import select
import time
from collections.abc import Callable

from honeytrap.monitor import Attempt, Held, Monitor

# How long a queued attempt's RST counts as its echo: the verdict and the kernel's answer are
# microseconds apart; TCP's first retransmission (1 s, RFC 6298 2.1) is queued again anyway.
ECHO_SECONDS = 1.0
# Queued attempts remembered for that: bounds memory under a sweep.
MAX_ECHOES = 4096

EchoKey = tuple[str, int, int, str, int]


def _echo_key(attempt: Attempt) -> EchoKey:
    return (attempt.protocol, attempt.family, attempt.local_port, attempt.remote_addr,
            attempt.remote_port)


class CombinedMonitor:
    """`queue` (nfq) and `sniffer` (pcap) as one Monitor; see the module docstring."""

    def __init__(
        self, queue: Monitor, sniffer: Monitor, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.queue = queue
        self.sniffer = sniffer
        self.clock = clock
        self.echoes = 0  # the sniffer's sightings of queued attempts, dropped
        self._queued: dict[EchoKey, float] = {}  # oldest first
        self._epoll = select.epoll()
        self._epoll.register(queue.fileno(), select.EPOLLIN)
        self._epoll.register(sniffer.fileno(), select.EPOLLIN)

    def fileno(self) -> int:
        return self._epoll.fileno()

    def descriptors(self) -> list[int]:
        """Every descriptor this monitor holds: none may stay open in a child process (a
        child holding the queue's socket would keep the queue bound after the master exits)."""
        return [self._epoll.fileno(), self.queue.fileno(), self.sniffer.fileno()]

    def poll(self) -> list[Held]:
        ready = {fd for fd, _ in self._epoll.poll(0)}
        held: list[Held] = []
        now = self.clock()
        self._forget(now)
        if self.queue.fileno() in ready:
            for item in self.queue.poll():
                self._remember(_echo_key(item.attempt), now)
                held.append(item)
        if self.sniffer.fileno() in ready:
            for item in self.sniffer.poll():
                if _echo_key(item.attempt) in self._queued:
                    self.echoes += 1
                    item.release()
                else:
                    held.append(item)
        return held

    def flush(self) -> None:
        self.queue.flush()
        self.sniffer.flush()

    def _remember(self, key: EchoKey, now: float) -> None:
        self._queued.pop(key, None)
        self._queued[key] = now
        while len(self._queued) > MAX_ECHOES:
            del self._queued[next(iter(self._queued))]

    def _forget(self, now: float) -> None:
        while self._queued:
            key, when = next(iter(self._queued.items()))
            if now - when < ECHO_SECONDS:
                break
            del self._queued[key]

    def close(self) -> None:
        try:
            self.queue.close()
        finally:
            try:
                self.sniffer.close()
            finally:
                self._epoll.close()
