"""Mirror mode's target policy: whom we may connect back to, and how often.

Mirror mode (honeytrap(8), MODES) connects back to the attacking connection's own peer on the
attacked port. Connecting back is an outbound connection the attacker chose the address of, so
it is refused (and the connection served in normal mode, with a note) when the address is:

- not an address we may route to at all: unspecified, multicast, loopback, link-local, reserved
  (the C original refused only 127.0.0.1: a mirror to ::1 or 127.0.0.2 was a loop to itself);
- one of our own: the attacked local address and every address of this host (the kernel's own
  answer, see `is_own_address`), so that a spoofed source never makes us attack ourselves;
- a peer mirrored too often: two honeypots mirroring each other connect back and forth for ever,
  each new connection mirrored again. At most `MIRRORS_PER_PEER` mirror connections per peer in
  `MIRROR_WINDOW` seconds break such a loop within a minute.

No I/O here except `is_own_address` (one bind() on a throw-away socket); the clock is injected.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import time
from collections import deque
from collections.abc import Callable

from honeytrap.download.addresses import embedded_ipv4, normalise, parse_ip

# Mirror loop guard: at most this many mirror connections to one peer per window. A real
# attacker reconnecting a few times a minute is still mirrored; a ping-pong between two
# mirroring honeypots (one new connection per round trip) is cut to this many per minute.
MIRRORS_PER_PEER = 10
MIRROR_WINDOW = 60.0
# Peers remembered by the loop guard at once (one deque of at most MIRRORS_PER_PEER timestamps
# each). A sweep from more sources than this gets normal mode beyond it instead of unbounded
# memory: refusing to mirror is the safe side.
MAX_TRACKED_PEERS = 4096


def address_refusal(address: str) -> str | None:
    """Why `address` (text, as the server records it) may never be mirrored to; None if it may.
    Anything that is not an IP address is refused. IPv4 carried inside IPv6 (mapped, NAT64,
    6to4, Teredo: download/addresses.py finds it) is judged as well: ::ffff:127.0.0.1 and
    2002:7f00:1:: reach loopback."""
    ip = parse_ip(address)
    if ip is None or address.strip().startswith("["):
        return "not an IP address"
    for candidate in (normalise(ip), *embedded_ipv4(ip)):
        checks = (
            (candidate.is_unspecified, "unspecified address"),
            (candidate.is_loopback, "loopback address"),
            (candidate.is_link_local, "link-local address"),
            (candidate.is_multicast, "multicast address"),
            (candidate.is_reserved, "reserved address"),  # 240.0.0.0/4, 255.255.255.255
        )
        for hit, reason in checks:
            if hit:
                return reason if candidate == normalise(ip) else f"{ip} carries a {reason}"
    return None


def is_own_address(address: str) -> bool:
    """Is `address` one of this host's addresses? Binding a socket to an address succeeds only
    for the host's own (EADDRNOTAVAIL otherwise): the kernel's current view, no interface list
    to keep fresh. Errors other than EADDRNOTAVAIL count as "ours" (refusing is the safe side)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return True
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((str(ip), 0))
    except OSError as exc:
        return exc.errno != errno.EADDRNOTAVAIL
    return True


class PeerRateLimit:
    """At most `limit` events per peer in any `window` seconds (a sliding window)."""

    def __init__(
        self,
        limit: int = MIRRORS_PER_PEER,
        window: float = MIRROR_WINDOW,
        max_peers: int = MAX_TRACKED_PEERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self.max_peers = max_peers
        self.clock = clock
        self.events: dict[str, deque[float]] = {}

    def take(self, peer: str) -> bool:
        """Count one event for `peer` if it is within the limit; False (not counted) if not."""
        now = self.clock()
        stamps = self.events.get(peer)
        if stamps is None:
            if len(self.events) >= self.max_peers:
                self._forget_expired(now)
            if len(self.events) >= self.max_peers:
                return False
            stamps = self.events[peer] = deque(maxlen=self.limit)
        while stamps and now - stamps[0] >= self.window:
            stamps.popleft()
        if len(stamps) >= self.limit:
            return False
        stamps.append(now)
        return True

    def _forget_expired(self, now: float) -> None:
        for peer in [p for p, s in self.events.items() if not s or now - s[-1] >= self.window]:
            del self.events[peer]


class MirrorPolicy:
    """The whole decision for one connection: may we mirror `peer`, attacked on `local`?"""

    def __init__(
        self,
        rate: PeerRateLimit | None = None,
        own: Callable[[str], bool] = is_own_address,
    ) -> None:
        self.rate = rate if rate is not None else PeerRateLimit()
        self.own = own

    def refusal(self, peer: str, local: str) -> str | None:
        """None if mirroring `peer` is allowed (and counted), else the reason it is not."""
        reason = address_refusal(peer)
        if reason is not None:
            return reason
        if peer == local or self.own(peer):
            return "one of our own addresses"
        if not self.rate.take(peer):
            return (f"more than {self.rate.limit} mirror connections to this peer in "
                    f"{self.rate.window:g} s (mirror loop guard)")
        return None
