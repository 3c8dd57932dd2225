"""Per-source connection budgets: one address (or one network) cannot hold a server process.

A server process hosts up to ports_per_process ports and has a bounded number of descriptors.
One source opening thousands of trickling connections over a few ports (each under
max_connections) used them all, and every other attacker was then refused on every port of
that process (issue 14, item 3). So each server process counts the TCP connections it holds
per source address and per network (the /24 of an IPv4 address, the /64 of an IPv6 one: what
one operator, or one host with many IPv6 addresses, usually has), and a connection over either
budget is closed at accept, counted (`refused_source`, `refused_network`) and logged at most
once per LOG_INTERVAL.

Sans-IO: addresses in, decisions out, the clock injected. server.py calls `admit` at accept and
`release` when the connection is recorded.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

# Connections one source address may hold in one server process by default (config key
# max_connections_per_source): far above what a scanner keeps open at once to one host (nmap's
# connect scan at -T5 about 300, a brute-forcer tens), far below a process's descriptors
# (ports_per_process x max_connections), so one address never takes them all.
DEFAULT_PER_SOURCE = 1024
# Connections one network (IPV4_PREFIX, IPV6_PREFIX) may hold by default
# (max_connections_per_network): a few busy sources behind one provider's network.
DEFAULT_PER_NETWORK = 4096
# The networks counted together: an IPv4 /24, an IPv6 /64 (the smallest usual assignments).
IPV4_PREFIX = 24
IPV6_PREFIX = 64
# Seconds between two log lines about refused connections (each line says how many).
LOG_INTERVAL = 10.0


@dataclass
class BudgetCounters:
    refused_source: int = 0
    refused_network: int = 0


class SourceBudget:
    def __init__(
        self,
        *,
        per_source: int = DEFAULT_PER_SOURCE,
        per_network: int = DEFAULT_PER_NETWORK,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_source = per_source
        self.per_network = per_network
        self.counters = BudgetCounters()
        self._clock = clock
        # Per source held: how many, its network (computed once while it holds any), and its
        # address as first admitted: every connection of the source shares that string
        # (`shared`), not one of its own each (~64 bytes per open connection; bench/idle.py).
        self._sources: dict[str, tuple[int, bytes, str]] = {}
        self._networks: dict[bytes, int] = {}
        self._logged = -LOG_INTERVAL
        self._logged_total = 0

    def admit(self, address: str) -> str | None:
        """Count a new connection from `address`; None if it may be served, else why not (it is
        then not counted as held, and must be closed)."""
        known = self._sources.get(address)
        held, network, address = known if known is not None else (0, network_of(address),
                                                                  address)
        if held >= self.per_source:
            self.counters.refused_source += 1
            return f"{held} connections from this address (max_connections_per_source)"
        in_network = self._networks.get(network, 0)
        if in_network >= self.per_network:
            self.counters.refused_network += 1
            return f"{in_network} connections from its network (max_connections_per_network)"
        self._sources[address] = (held + 1, network, address)
        self._networks[network] = in_network + 1
        return None

    def shared(self, address: str) -> str:
        """`address` as the string every held connection of that source shares (itself if
        it holds none)."""
        known = self._sources.get(address)
        return known[2] if known is not None else address

    def release(self, address: str) -> None:
        """A connection `admit` let in has ended."""
        known = self._sources.get(address)
        if known is None:
            return  # not held (admit refused it, or a release too many): nothing to give back
        held, network, shared = known
        if held <= 1:
            del self._sources[address]
        else:
            self._sources[address] = (held - 1, network, shared)
        in_network = self._networks.get(network, 0)
        if in_network <= 1:
            self._networks.pop(network, None)
        else:
            self._networks[network] = in_network - 1

    def held(self, address: str) -> int:
        known = self._sources.get(address)
        return known[0] if known is not None else 0

    def log_due(self) -> int:
        """Refusals since the last log line if one is due now (then counted as logged), else
        0: at most one line per LOG_INTERVAL."""
        now = self._clock()
        total = self.counters.refused_source + self.counters.refused_network
        if total == self._logged_total or now - self._logged < LOG_INTERVAL:
            return 0
        since, self._logged_total, self._logged = total - self._logged_total, total, now
        return since


def network_of(address: str) -> bytes:
    """The network `address` is counted in: its first IPV4_PREFIX or IPV6_PREFIX bits (an
    address that does not parse is a network of its own)."""
    try:
        if ":" in address:
            return socket.inet_pton(socket.AF_INET6, address.split("%", 1)[0])[: IPV6_PREFIX // 8]
        return socket.inet_pton(socket.AF_INET, address)[: IPV4_PREFIX // 8]
    except (OSError, ValueError):
        return address.encode("utf-8", "replace")
