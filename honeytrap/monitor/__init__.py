"""Connection monitors: how the master learns that someone tried an unserved port.

A monitor has a file descriptor for the master's selector and, when it is readable, yields
`Held` attempts. The master decides by the port's mode, starts a dynamic server if needed, and
then calls `release()` on each held attempt, and `flush()` after a round of them:
- nfq: the packet was held in NFQUEUE; release() gives the accept verdict, so the very first SYN
  or datagram reaches the server just bound (or the kernel's RST, if nothing was bound).
- pcap: the attempt was already refused by the kernel (we saw its RST or ICMP port
  unreachable); release() does nothing, the attacker's retry reaches the new server.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from honeytrap.errors import ConfigError


@dataclass(frozen=True)
class Attempt:
    """A connection attempt to the sensor: `local_*` is the sensor's side (the port to serve)."""

    protocol: str  # "tcp" or "udp"
    family: int  # socket.AF_INET or socket.AF_INET6
    local_addr: str
    local_port: int
    remote_addr: str
    remote_port: int


class Held(Protocol):
    attempt: Attempt

    def release(self) -> None:
        """Let the attempt go on (nfq: accept verdict). Idempotent."""


class Monitor(Protocol):
    def fileno(self) -> int: ...

    def poll(self) -> Sequence[Held]:
        """Read what is pending without blocking; return the attempts seen."""
        ...

    def flush(self) -> None:
        """Carry out the verdicts of the attempts released since the last flush (nfq sends
        them in one batch; the master flushes after each round of attempts)."""
        ...

    def close(self) -> None: ...


@dataclass
class Seen:
    """A held attempt with nothing to release (pcap: the kernel already answered)."""

    attempt: Attempt

    def release(self) -> None:
        return None


_USE = 'use monitor = "auto", "nfq" or "pcap"'
REMOVED_MONITORS = {
    "ipq": f"the ip_queue monitor was removed from Linux in 3.5; {_USE}",
    "ipfw": f"the ipfw divert monitor was never implemented; {_USE}",
}
# auto: nfq and pcap at once, whichever can open (honeytrap.monitor.choice).
MONITORS = ("auto", "pcap", "nfq")


def check_monitor_name(name: str) -> None:
    if name in REMOVED_MONITORS:
        raise ConfigError(REMOVED_MONITORS[name], key="monitor")
    if name not in MONITORS:
        raise ConfigError(f"unknown monitor {name!r}; {_USE}", key="monitor")
