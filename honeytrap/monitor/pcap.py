"""The pcap connection monitor (the man page's default): sniff the sensor's own refusals.

A SYN to a closed port is answered by the kernel with an RST (sequence number 0), a datagram to a
closed UDP port with an ICMP/ICMPv6 port unreachable. We capture those outgoing answers on `-i`
(default: the first interface up that is not loopback), from the interface's addresses or the
`-a` address, ANDed with the command line's BPF expression, and report each as a `Seen` attempt.
The first attempt has already been refused; the attacker's retry (TCP retransmits the SYN after
about a second, UDP scanners resend) reaches the dynamic server the master starts.

Classification is `honeytrap.monitor.packet` (no I/O); this module only captures.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import pcapy

from honeytrap.errors import ConfigError, ProtocolError
from honeytrap.monitor import Attempt, Held, Seen
from honeytrap.monitor.interfaces import default_interface, interface_addresses
from honeytrap.monitor.packet import DLT_EN10MB, classify, supported_linktype

if TYPE_CHECKING:
    from honeytrap.config import Config

log = logging.getLogger(__name__)

# Enough for the link header, an IPv6 header, an ICMPv6 header and the quoted IPv6 header with
# a few extension headers and the UDP ports: nothing past the ports is ever read.
SNAPLEN = 256
# pcapy-ng exposes no pcap_set_immediate_mode(): a short read timeout (TPACKET_V3 block retire
# time) bounds how long a captured refusal waits in the kernel before the fd turns readable.
READ_TIMEOUT_MS = 10
# Packets handled per poll(): the master's loop stays responsive under a flood; the rest stay
# in the kernel buffer and keep the fd readable.
MAX_PACKETS_PER_POLL = 256
# One attempt can be refused several times in quick succession (a scanner's duplicate probes,
# UDP bursts). Report it once per window; shorter than TCP's first SYN retransmission (1 s,
# RFC 6298 2.1) so that a retry still refused (the server failed to start) is reported again.
DEDUP_SECONDS = 0.5
# Attempts remembered for deduplication: bounds memory under a port scan from many sources.
MAX_RECENT = 4096

# The kernel's refusals, by family. libpcap's tcp[] and icmp[] cover IPv4 only (and skip IP
# options and non-first fragments); for IPv6 the offsets assume no extension headers, which the
# kernel's own RSTs and ICMPv6 errors never carry. RST|ACK, no SYN, sequence number 0: see
# honeytrap.monitor.packet.
_REFUSED4 = (
    "((tcp[tcpflags] & (tcp-rst|tcp-ack|tcp-syn) = (tcp-rst|tcp-ack) and tcp[4:4] = 0)"
    " or (icmp[icmptype] = icmp-unreach and icmp[icmpcode] = 3))"
)
_REFUSED6 = (
    "((ip6[6] = 6 and ip6[53] & 0x16 = 0x14 and ip6[44:4] = 0)"
    " or (ip6[6] = 58 and ip6[40] = 1 and ip6[41] = 4))"
)

# No pcap_setdirection(OUT): libpcap drops the outgoing copy of loopback packets (each is seen
# twice there), so on `lo` or `any` the refusals would be lost; the source address filter already
# keeps to what the sensor's addresses sent.

DedupKey = tuple[str, int, int, str]


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        # A zone index ("fe80::1%eth0") means nothing to BPF: the capture is on one device.
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError as exc:
        raise ConfigError(f"not an IP address: {text!r}", key="address") from exc


def build_filter(addresses: Sequence[str], expression: str | None = None) -> str:
    """The BPF program text: refusals from `addresses`, ANDed with the user's expression."""
    parsed = [_address(a) for a in addresses]
    if not parsed:
        raise ConfigError(
            "no address to watch: the interface has none; give one with -a", key="address"
        )
    clauses = []
    for version, refused in ((4, _REFUSED4), (6, _REFUSED6)):
        hosts = sorted({str(a) for a in parsed if a.version == version})
        if hosts:
            sources = " or ".join(f"src host {h}" for h in hosts)
            clauses.append(f"({refused} and ({sources}))")
    program = " or ".join(clauses)
    if expression and expression.strip():
        program = f"({program}) and ({expression})"
    return program


def check_expression(expression: str) -> None:
    """ConfigError unless `expression` compiles as a BPF filter (for checking at start)."""
    try:
        pcapy.compile(DLT_EN10MB, SNAPLEN, expression, 1, 0)
    except pcapy.PcapError as exc:
        raise ConfigError(f"bad BPF expression {expression!r}: {exc}", key="expression") from exc


class RecentAttempts:
    """Which attempts were reported in the last `window` seconds (same protocol/port/attacker)."""

    def __init__(
        self,
        window: float = DEDUP_SECONDS,
        limit: int = MAX_RECENT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self.limit = limit
        self.clock = clock
        self._reported: dict[DedupKey, float] = {}  # in report order, so oldest first

    def first(self, attempt: Attempt) -> bool:
        """True (and remembered) if `attempt` was not reported within the window."""
        now = self.clock()
        while self._reported:
            key, when = next(iter(self._reported.items()))
            if now - when < self.window and len(self._reported) < self.limit:
                break
            del self._reported[key]
        key = (attempt.protocol, attempt.family, attempt.local_port, attempt.remote_addr)
        if key in self._reported:
            return False
        self._reported[key] = now
        return True


class PcapMonitor:
    """The Monitor protocol over a live capture; see the module docstring."""

    def __init__(
        self,
        interface: str | None = None,
        addresses: Sequence[str] = (),
        expression: str | None = None,
        promisc: bool = False,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if expression and expression.strip():
            check_expression(expression)
        self.interface = interface or default_interface()
        self.addresses = list(addresses) or interface_addresses(self.interface)
        self.filter = build_filter(self.addresses, expression)
        self.recent = RecentAttempts(clock=clock)
        self.bad_packets = 0
        self.capture_errors = 0
        self._closed = False
        self._capture = self._open(promisc)
        self.linktype = int(self._capture.datalink())

    def _open(self, promisc: bool) -> Any:  # a pcapy Reader (untyped)
        try:
            capture = pcapy.create(self.interface)
            capture.set_snaplen(SNAPLEN)
            capture.set_promisc(int(promisc))
            capture.set_timeout(READ_TIMEOUT_MS)
            capture.activate()
        except pcapy.PcapError as exc:
            raise ConfigError(
                f"cannot capture on {self.interface!r}: {exc}", key="interface"
            ) from exc
        try:
            linktype = capture.datalink()
            if not supported_linktype(linktype):
                raise ConfigError(
                    f"link type {linktype} of {self.interface!r} is not supported", key="interface"
                )
            try:
                capture.setfilter(self.filter)
            except pcapy.PcapError as exc:
                raise ConfigError(
                    f"the BPF filter {self.filter!r} does not compile: {exc}", key="expression"
                ) from exc
            capture.setnonblock(1)
        except BaseException:
            capture.close()
            raise
        return capture

    def fileno(self) -> int:
        return int(self._capture.getfd())

    def poll(self) -> list[Held]:
        frames: list[bytes] = []
        try:
            self._capture.dispatch(MAX_PACKETS_PER_POLL, lambda _hdr, data: frames.append(data))
        except pcapy.PcapError as exc:
            # The interface went down or away: the master's loop goes on; logged, counted.
            self.capture_errors += 1
            log.warning("pcap capture on %s failed: %s", self.interface, exc)
        held: list[Held] = []
        for frame in frames:
            try:
                attempt = classify(self.linktype, bytes(frame))
            except ProtocolError as exc:
                self.bad_packets += 1
                log.debug("ignoring a malformed captured packet: %s", exc)
                continue
            if attempt is not None and self.recent.first(attempt):
                held.append(Seen(attempt))
        return held

    def flush(self) -> None:
        return None  # its attempts were answered by the kernel already: no verdicts

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._capture.close()


def open_pcap_monitor(config: Config) -> PcapMonitor:
    """The pcap monitor the configuration asks for: `-i`, `-a`, `-p` and the BPF expression."""
    monitor = PcapMonitor(
        config.interface or None,
        [config.address] if config.address else [],
        config.bpf_expression or None,
        config.promisc,
    )
    log.info(
        "pcap monitor on %s watching %s (filter: %s)",
        monitor.interface,
        ", ".join(monitor.addresses),
        monitor.filter,
    )
    return monitor
