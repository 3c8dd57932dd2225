"""The NFQUEUE monitor: new SYNs and UDP datagrams held in the kernel until we decide.

An iptables/nftables rule queues them (README, man page). For each packet the master starts a
dynamic server if the port needs one and only then gives the accept verdict, so the very first
SYN reaches the new listener. Every packet gets a verdict: what we cannot classify is accepted
at once, untouched (a honeypot must not become a firewall that drops traffic on a parse bug).
"""

from __future__ import annotations

import logging
import socket
import warnings
from dataclasses import dataclass
from typing import Any

import dpkt

from honeytrap.errors import ConfigError
from honeytrap.monitor import Attempt

log = logging.getLogger("honeytrap.monitor.nfq")

# Only headers are needed: IPv6 with a few extension headers + TCP/UDP header fit in this.
COPY_RANGE = 256
# Packets the kernel holds for us before it starts dropping (or bypassing, with
# --queue-bypass): a sweep arrives in bursts.
QUEUE_MAXLEN = 8192
# Receive buffer for the netlink socket (bytes): bursts of queued packets wait here.
SOCKET_BUFFER = 8 * 1024 * 1024

TCP_SYN = 0x02
TCP_ACK = 0x10


def classify(packet: bytes) -> Attempt | None:
    """A queued IP packet -> the attempt it is (a SYN without ACK, or a UDP datagram), or None.
    Never raises: anything unparsable is None (and gets accepted untouched)."""
    if not packet:
        return None
    version = packet[0] >> 4
    try:
        ip: Any
        if version == 4:
            ip = dpkt.ip.IP(packet)
            family = socket.AF_INET
            src = socket.inet_ntop(family, ip.src)
            dst = socket.inet_ntop(family, ip.dst)
            if ip.offset:
                return None  # a non-first fragment has no ports
        elif version == 6:
            ip = dpkt.ip6.IP6(packet)
            family = socket.AF_INET6
            src = socket.inet_ntop(family, ip.src)
            dst = socket.inet_ntop(family, ip.dst)
        else:
            return None
        transport = ip.data
    except (dpkt.UnpackError, ValueError, IndexError, KeyError, TypeError, AttributeError):
        return None
    if isinstance(transport, dpkt.tcp.TCP):
        if transport.flags & TCP_SYN and not transport.flags & TCP_ACK:
            return Attempt("tcp", family, dst, transport.dport, src, transport.sport)
        return None
    if isinstance(transport, dpkt.udp.UDP):
        return Attempt("udp", family, dst, transport.dport, src, transport.sport)
    return None


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
