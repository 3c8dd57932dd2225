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


@dataclass
class QueuedPacket:
    """A packet held in NFQUEUE; release() gives the accept verdict, once."""

    attempt: Attempt
    packet: Any
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            try:
                self.packet.accept()
            except (OSError, RuntimeError) as exc:
                log.warning("verdict failed: %s", exc)


class NfqMonitor:
    def __init__(self, queue_num: int) -> None:
        from netfilterqueue import COPY_PACKET, NetfilterQueue

        self._seen: list[QueuedPacket] = []
        self.unclassified = 0
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
        if attempt is None:
            self.unclassified += 1
            packet.accept()
            return
        self._seen.append(QueuedPacket(attempt, packet))

    def poll(self) -> list[QueuedPacket]:
        self.nfq.run_socket(self._sock)
        seen, self._seen = self._seen, []
        return seen

    def close(self) -> None:
        for held in self._seen:
            held.release()
        self._seen = []
        try:
            self.nfq.unbind()
        finally:
            self._sock.detach()
