"""The NFQUEUE monitor: new SYNs and UDP datagrams held in the kernel until we decide.

An iptables/nftables rule queues them (README, man page). For each packet the master starts a
dynamic server if the port needs one and only then gives the accept verdict, so the very first
SYN reaches the new listener. Every packet gets a verdict: what we cannot classify is accepted
at once, untouched (a honeypot must not become a firewall that drops traffic on a parse bug).
"""

from __future__ import annotations

import logging
import socket
import struct
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from honeytrap.errors import ConfigError
from honeytrap.monitor import Attempt

log = logging.getLogger("honeytrap.monitor.nfq")

# The master needs headers only (it never reads attacker bytes): the copy the kernel queues to us
# is cut to an IPv6 header (40), IPV6_EXTENSION_ROOM of extension headers and the ports and flags
# of the TCP/UDP header (the first 14 bytes), which also covers IPv4's largest header (60).
IPV6_HEADER = 40
IPV6_EXTENSION_ROOM = 64
TRANSPORT_NEEDED = 14  # TCP: ports (4), seq (4), ack (4), offset (1), flags (1); UDP: 8
COPY_RANGE = IPV6_HEADER + IPV6_EXTENSION_ROOM + TRANSPORT_NEEDED
# Packets the kernel holds for us before it starts dropping (or bypassing, with
# --queue-bypass): a sweep arrives in bursts.
QUEUE_MAXLEN = 8192
# Receive buffer for the netlink socket (bytes): bursts of queued packets wait here.
SOCKET_BUFFER = 8 * 1024 * 1024

TCP_SYN = 0x02
TCP_ACK = 0x10
PROTO_TCP = 6
PROTO_UDP = 17
# IPv6 extension headers walked to reach the transport header (RFC 8200 section 4): hop-by-hop,
# routing, destination options (length in 8-octet units after the first 8), fragment (8).
IPV6_EXTENSIONS = {0, 43, 60}
IPV6_FRAGMENT = 44
IPV6_MAX_EXTENSIONS = 8
# The batch verdict (nfnetlink_queue's NFQNL_MSG_VERDICT_BATCH: every packet up to an id, in one
# message) sent on the queue's own socket: a sweep's verdicts cost a sendto per round, not per
# packet. Netlink and nfnetlink_queue constants (linux/netlink.h, linux/netfilter/*.h).
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_VERDICT_BATCH = 3
NLM_F_REQUEST = 1
NFQA_VERDICT_HDR = 2
NF_ACCEPT = 1


def classify(packet: bytes) -> Attempt | None:
    """A queued IP packet's headers -> the attempt it is (a SYN without ACK, or a UDP datagram),
    or None. Only headers are read (COPY_RANGE). Never raises: anything unparsable is None (and
    gets accepted untouched)."""
    if len(packet) < 20:
        return None
    version = packet[0] >> 4
    if version == 4:
        header = (packet[0] & 0x0F) * 4
        if header < 20 or packet[6] & 0x1F or packet[7]:
            return None  # a bad header length, or a non-first fragment (no ports)
        family, proto = socket.AF_INET, packet[9]
        src, dst = packet[12:16], packet[16:20]
    elif version == 6 and len(packet) >= IPV6_HEADER:
        family, proto, header = socket.AF_INET6, packet[6], IPV6_HEADER
        src, dst = packet[8:24], packet[24:40]
        for _ in range(IPV6_MAX_EXTENSIONS):
            if proto in IPV6_EXTENSIONS and len(packet) >= header + 2:
                proto, header = packet[header], header + 8 + packet[header + 1] * 8
            elif proto == IPV6_FRAGMENT and len(packet) >= header + 8:
                if struct.unpack_from("!H", packet, header + 2)[0] & 0xFFF8:
                    return None  # a non-first fragment
                proto, header = packet[header], header + 8
            else:
                break
    else:
        return None
    if proto == PROTO_TCP and len(packet) >= header + TRANSPORT_NEEDED:
        flags = packet[header + 13]
        if not flags & TCP_SYN or flags & TCP_ACK:
            return None
        protocol = "tcp"
    elif proto == PROTO_UDP and len(packet) >= header + 8:
        protocol = "udp"
    else:
        return None
    sport, dport = struct.unpack_from("!HH", packet, header)
    return Attempt(protocol, family, socket.inet_ntop(family, dst), dport,
                   socket.inet_ntop(family, src), sport)


# What a queued packet that is no attempt (unparsable, a SYN-ACK) is held as until its verdict.
UNCLASSIFIED = Attempt("", 0, "", 0, "", 0)


@dataclass(eq=False)
class QueuedPacket:
    """A packet held in NFQUEUE; release() gives the accept verdict, once: at the monitor's
    next flush() (the master flushes after each round of attempts, and every VERDICT_ROUND)."""

    attempt: Attempt  # UNCLASSIFIED: not an attempt (accepted untouched)
    packet: Any
    released: bool = False
    monitor: NfqMonitor | None = None

    def release(self) -> None:
        if not self.released:
            self.released = True
            if self.monitor is not None:
                self.monitor.due.append(self)
            else:
                self.accept()

    def accept(self) -> None:
        try:
            self.packet.accept()
        except (OSError, RuntimeError) as exc:
            log.warning("verdict failed: %s", exc)


class NfqMonitor:
    def __init__(self, queue_num: int) -> None:
        from netfilterqueue import COPY_PACKET, NetfilterQueue

        self._seen: list[QueuedPacket] = []
        self.unclassified = 0
        self.queue_num = queue_num
        # Read and not yet given their verdict, in the kernel's order (its ids ascending):
        # flush() accepts the released ones at the front with one batch verdict.
        self._held: OrderedDict[int, QueuedPacket] = OrderedDict()
        self.due: list[QueuedPacket] = []  # released since the last flush()
        self.nfq = NetfilterQueue()
        try:
            with warnings.catch_warnings():
                # It warns when the kernel caps the buffer (net.core.rmem_max): the smaller
                # buffer still works, so that is not worth failing over.
                warnings.simplefilter("ignore", RuntimeWarning)
                self.nfq.bind(
                    queue_num, self._on_packet, max_len=QUEUE_MAXLEN, mode=COPY_PACKET,
                    range=COPY_RANGE, sock_len=SOCKET_BUFFER,
                )
        except OSError as exc:
            raise ConfigError(
                f"cannot bind NFQUEUE {queue_num}: {exc} "
                "(another program reading it? no CAP_NET_ADMIN?)",
                key="nfq_queue",
            ) from exc
        self._fd = self.nfq.get_fd()
        self._sock = socket.socket(fileno=self._fd)
        self._sock.setblocking(False)

    def fileno(self) -> int:
        return self._fd

    def _on_packet(self, packet: Any) -> None:
        attempt = None
        try:
            attempt = classify(packet.get_payload())
        except Exception:  # noqa: BLE001 - a packet must never be left without a verdict
            log.exception("classifying a queued packet failed")
        held = QueuedPacket(attempt or UNCLASSIFIED, packet, monitor=self)
        self._held[packet.id] = held
        if attempt is None:
            self.unclassified += 1
            held.release()
            return
        self._seen.append(held)

    def poll(self) -> list[QueuedPacket]:
        self.nfq.run_socket(self._sock)
        seen, self._seen = self._seen, []
        return seen

    def flush(self) -> None:
        """Give the released packets their verdict: those at the front (every packet read
        before them released too) with one batch verdict, the others (behind one still held:
        a port being released) one by one."""
        if not self.due:
            return
        due, self.due = self.due, []
        held, last = self._held, None
        while held:
            packet_id, packet = next(iter(held.items()))
            if not packet.released:
                break
            held.popitem(last=False)
            last = packet_id
        if last is not None:
            self._batch_verdict(last)
        for packet in due:
            if held.pop(packet.packet.id, None) is not None:
                packet.accept()

    def _batch_verdict(self, last: int) -> None:
        """Accept every packet the kernel holds for us up to id `last`."""
        attribute = struct.pack("=HH", 12, NFQA_VERDICT_HDR) + struct.pack("!II", NF_ACCEPT, last)
        body = bytes((socket.AF_UNSPEC, 0)) + struct.pack("!H", self.queue_num) + attribute
        header = struct.pack("=IHHII", 16 + len(body),
                             (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_VERDICT_BATCH, NLM_F_REQUEST,
                             0, 0)
        try:
            self._sock.sendto(header + body, (0, 0))
        except OSError as exc:
            log.warning("batch verdict failed: %s", exc)

    def close(self) -> None:
        for held in self._seen:
            held.release()
        self._seen = []
        self.flush()
        try:
            self.nfq.unbind()
        finally:
            self._sock.detach()
