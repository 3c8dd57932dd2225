"""Classify a captured frame as a connection attempt (sans-IO: bytes in, `Attempt | None` out).

The pcap monitor sees the sensor's own answers to attempts on unserved ports (the man page's
pcap monitor, honeytrap(8), CONNECTION MONITORS):

- TCP: the kernel's RST to a SYN on a closed port. RFC 793 (3.4, "reset generation"): a segment
  without ACK is answered with `seq = 0`, `ack = seg.seq + seg.len` and the ACK flag set. So an
  RST|ACK with sequence number 0 (and no SYN) is the refusal of a new connection. The attacker is
  the RST's destination, the port to serve the RST's source port. (The C original only checked the
  upper 16 bits of the sequence number, and not ACK.)
- UDP: the kernel's ICMP destination unreachable / port unreachable (type 3 code 3, RFC 792) or
  ICMPv6 destination unreachable / port unreachable (type 1 code 4, RFC 4443). The quoted
  datagram (RFC 792: its IP header and at least 64 bits of data) gives the port to serve (the
  quoted destination port) and the attacker (the quoted source).

Errors: `classify` returns None for a well-formed packet that is not an attempt we can serve
(other protocols, other flags, non-first fragments, ESP, a sensor port 0, an unknown EtherType)
and raises `ProtocolError` -- and nothing else -- for a frame that is malformed or too short to
decide (truncated headers, impossible lengths, an unsupported link type, too many extension
headers).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable

from honeytrap.errors import ProtocolError
from honeytrap.monitor import Attempt

# Link-layer header types, as pcap_datalink() returns them on Linux (DLT_*) and as pcap files
# store them (LINKTYPE_*, https://www.tcpdump.org/linktypes.html).
DLT_NULL = 0  # BSD loopback: 4-byte address family in the capturing host's byte order
DLT_EN10MB = 1  # Ethernet (also Linux loopback devices)
DLT_RAW = 12  # raw IP, no link header (Linux value of DLT_RAW)
DLT_RAW_BSD = 14  # raw IP on OpenBSD
LINKTYPE_RAW = 101  # raw IP as stored in capture files
DLT_LOOP = 108  # OpenBSD loopback: 4-byte address family in network byte order
DLT_LINUX_SLL = 113  # Linux "cooked" capture (the "any" device)
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
DLT_LINUX_SLL2 = 276  # Linux cooked capture v2

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
ETHERTYPE_VLANS = (0x8100, 0x88A8, 0x9100)  # 802.1Q, 802.1ad, old QinQ
ETHER_HEADER = 14
VLAN_TAG = 4
# Two tags is QinQ; more is not something a sensor's own outgoing frames carry.
MAX_VLAN_TAGS = 2
SLL_HEADER = 16
SLL_PROTOCOL_AT = 14
SLL2_HEADER = 20
LOOPBACK_HEADER = 4

IPV4_MIN_HEADER = 20
IPV6_HEADER = 40
TCP_MIN_HEADER = 20
ICMP_HEADER = 8  # type, code, checksum, 4 unused/MTU bytes; the quote follows (RFC 792, 4443)
PORTS = 4  # source and destination port: the first 4 bytes of a TCP or UDP header

PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMP = 1
PROTO_ICMPV6 = 58

ICMP_UNREACH, ICMP_PORT_UNREACH = 3, 3
ICMP6_UNREACH, ICMP6_PORT_UNREACH = 1, 4

TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10

IPV6_HOP_BY_HOP, IPV6_ROUTING, IPV6_FRAGMENT, IPV6_DSTOPTS = 0, 43, 44, 60
IPV6_ESP, IPV6_AH, IPV6_NO_NEXT = 50, 51, 59
IPV6_SKIPPABLE = (IPV6_HOP_BY_HOP, IPV6_ROUTING, IPV6_DSTOPTS)
# RFC 8200 4.1 recommends each extension header at most once (destination options twice); a
# longer chain is not what the kernel sends or quotes, and walking it is wasted work.
MAX_EXT_HEADERS = 8

IPV4_OFFSET_MASK = 0x1FFF


def _need(data: bytes, end: int, what: str) -> None:
    if end > len(data):
        raise ProtocolError(f"truncated {what}: need {end} bytes, have {len(data)}")


def classify(linktype: int, frame: bytes) -> Attempt | None:
    """The attempt a captured frame answers, or None (see the module docstring for errors)."""
    decode = _LINK_DECODERS.get(linktype)
    if decode is None:
        raise ProtocolError(f"unsupported link type {linktype}")
    return decode(frame)


def supported_linktype(linktype: int) -> bool:
    return linktype in _LINK_DECODERS


def classify_ip(packet: bytes) -> Attempt | None:
    """Classify a bare IPv4 or IPv6 packet (no link header)."""
    _need(packet, 1, "IP header")
    version = packet[0] >> 4
    if version == 4:
        return _ipv4(packet)
    if version == 6:
        return _ipv6(packet)
    return None


def _by_ethertype(ethertype: int, packet: bytes) -> Attempt | None:
    if ethertype == ETHERTYPE_IPV4:
        return _ipv4(packet)
    if ethertype == ETHERTYPE_IPV6:
        return _ipv6(packet)
    return None


def _ethernet(frame: bytes) -> Attempt | None:
    _need(frame, ETHER_HEADER, "Ethernet header")
    at = ETHER_HEADER - 2
    (ethertype,) = struct.unpack_from("!H", frame, at)
    for _ in range(MAX_VLAN_TAGS):
        if ethertype not in ETHERTYPE_VLANS:
            break
        at += VLAN_TAG
        _need(frame, at + 2, "VLAN tag")
        (ethertype,) = struct.unpack_from("!H", frame, at)
    return _by_ethertype(ethertype, frame[at + 2 :])


def _sll(frame: bytes) -> Attempt | None:
    _need(frame, SLL_HEADER, "Linux cooked header")
    (ethertype,) = struct.unpack_from("!H", frame, SLL_PROTOCOL_AT)
    return _by_ethertype(ethertype, frame[SLL_HEADER:])


def _sll2(frame: bytes) -> Attempt | None:
    _need(frame, SLL2_HEADER, "Linux cooked v2 header")
    (ethertype,) = struct.unpack_from("!H", frame, 0)
    return _by_ethertype(ethertype, frame[SLL2_HEADER:])


def _loopback(frame: bytes) -> Attempt | None:
    # The address family's value differs between systems (AF_INET6 is 10, 24, 28 or 30) and its
    # byte order with DLT_NULL is the capturing host's: the IP version nibble decides instead.
    _need(frame, LOOPBACK_HEADER, "loopback header")
    return classify_ip(frame[LOOPBACK_HEADER:])


def _ipv4_header(packet: bytes, what: str) -> tuple[int, int, str, str, bool]:
    """(protocol, header length, source, destination, first fragment) of an IPv4 header."""
    _need(packet, IPV4_MIN_HEADER, what)
    if packet[0] >> 4 != 4:
        raise ProtocolError(f"{what}: not IPv4")
    ihl = (packet[0] & 0x0F) * 4
    if ihl < IPV4_MIN_HEADER:
        raise ProtocolError(f"{what}: header length {ihl} below {IPV4_MIN_HEADER}")
    _need(packet, ihl, what)
    (frag,) = struct.unpack_from("!H", packet, 6)
    first = frag & IPV4_OFFSET_MASK == 0
    src = socket.inet_ntop(socket.AF_INET, packet[12:16])
    dst = socket.inet_ntop(socket.AF_INET, packet[16:20])
    return packet[9], ihl, src, dst, first


def _ipv4(packet: bytes) -> Attempt | None:
    proto, ihl, src, dst, first = _ipv4_header(packet, "IPv4 header")
    (total,) = struct.unpack_from("!H", packet, 2)
    if total < ihl:
        raise ProtocolError(f"IPv4 total length {total} below header length {ihl}")
    if not first:
        return None
    # Beyond the total length is link padding; short of it is the snap length (fine).
    body = packet[ihl:total]
    if proto == PROTO_TCP:
        return _tcp_reset(socket.AF_INET, src, dst, body)
    if proto == PROTO_ICMP:
        return _icmp4(body)
    return None


def _ipv6_upper(packet: bytes, what: str) -> tuple[int | None, int]:
    """Walk the extension headers: (upper-layer protocol or None, its offset).

    None means there is no upper-layer header to read here: a non-first fragment, ESP (encrypted)
    or "no next header".
    """
    _need(packet, IPV6_HEADER, what)
    nxt, at = packet[6], IPV6_HEADER
    for _ in range(MAX_EXT_HEADERS):
        if nxt in IPV6_SKIPPABLE:
            _need(packet, at + 2, f"{what} extension header")
            nxt, size = packet[at], (packet[at + 1] + 1) * 8
        elif nxt == IPV6_AH:
            _need(packet, at + 2, f"{what} authentication header")
            nxt, size = packet[at], (packet[at + 1] + 2) * 4  # RFC 4302 2.2: 32-bit words
        elif nxt == IPV6_FRAGMENT:
            _need(packet, at + 8, f"{what} fragment header")
            (offset,) = struct.unpack_from("!H", packet, at + 2)
            if offset >> 3:
                return None, at
            nxt, size = packet[at], 8
        elif nxt in (IPV6_ESP, IPV6_NO_NEXT):
            return None, at
        else:
            return nxt, at
        at += size
    raise ProtocolError(f"{what}: more than {MAX_EXT_HEADERS} extension headers")


def _ipv6(packet: bytes) -> Attempt | None:
    _need(packet, IPV6_HEADER, "IPv6 header")
    if packet[0] >> 4 != 6:
        raise ProtocolError("IPv6 header: not IPv6")
    (payload,) = struct.unpack_from("!H", packet, 4)
    if payload:  # 0 is a jumbogram (RFC 2675): the length is in hop-by-hop options
        packet = packet[: IPV6_HEADER + payload]
    proto, at = _ipv6_upper(packet, "IPv6 header")
    src = socket.inet_ntop(socket.AF_INET6, packet[8:24])
    dst = socket.inet_ntop(socket.AF_INET6, packet[24:40])
    if proto == PROTO_TCP:
        return _tcp_reset(socket.AF_INET6, src, dst, packet[at:])
    if proto == PROTO_ICMPV6:
        return _icmp6(packet[at:])
    return None


def _tcp_reset(family: int, src: str, dst: str, segment: bytes) -> Attempt | None:
    _need(segment, TCP_MIN_HEADER, "TCP header")
    sport, dport, seq = struct.unpack_from("!HHI", segment, 0)
    flags = segment[13]
    if flags & (TCP_RST | TCP_ACK | TCP_SYN) != TCP_RST | TCP_ACK or seq != 0:
        return None
    if sport == 0:  # the sensor's port 0 cannot be bound to serve
        return None
    return Attempt("tcp", family, src, sport, dst, dport)


def _icmp4(message: bytes) -> Attempt | None:
    _need(message, 2, "ICMP header")
    if (message[0], message[1]) != (ICMP_UNREACH, ICMP_PORT_UNREACH):
        return None
    _need(message, ICMP_HEADER, "ICMP header")
    quote = message[ICMP_HEADER:]
    proto, ihl, src, dst, first = _ipv4_header(quote, "quoted IPv4 header")
    if proto != PROTO_UDP or not first:
        return None
    return _quoted_udp(socket.AF_INET, src, dst, quote[ihl:])


def _icmp6(message: bytes) -> Attempt | None:
    _need(message, 2, "ICMPv6 header")
    if (message[0], message[1]) != (ICMP6_UNREACH, ICMP6_PORT_UNREACH):
        return None
    _need(message, ICMP_HEADER, "ICMPv6 header")
    quote = message[ICMP_HEADER:]
    if quote[:1] and quote[0] >> 4 != 6:
        raise ProtocolError("quoted IPv6 header: not IPv6")
    # The quote's payload length describes the original datagram, not the truncated quote.
    proto, at = _ipv6_upper(quote, "quoted IPv6 header")
    if proto != PROTO_UDP:
        return None
    src = socket.inet_ntop(socket.AF_INET6, quote[8:24])
    dst = socket.inet_ntop(socket.AF_INET6, quote[24:40])
    return _quoted_udp(socket.AF_INET6, src, dst, quote[at:])


def _quoted_udp(family: int, src: str, dst: str, header: bytes) -> Attempt | None:
    """The attempt of a quoted UDP header: the sensor was `dst`, the attacker `src`."""
    _need(header, PORTS, "quoted UDP header")
    sport, dport = struct.unpack_from("!HH", header, 0)
    if dport == 0:  # the sensor's port 0 cannot be bound to serve
        return None
    return Attempt("udp", family, dst, dport, src, sport)


_LINK_DECODERS: dict[int, Callable[[bytes], Attempt | None]] = {
    DLT_NULL: _loopback,
    DLT_LOOP: _loopback,
    DLT_EN10MB: _ethernet,
    DLT_RAW: classify_ip,
    DLT_RAW_BSD: classify_ip,
    LINKTYPE_RAW: classify_ip,
    LINKTYPE_IPV4: classify_ip,
    LINKTYPE_IPV6: classify_ip,
    DLT_LINUX_SLL: _sll,
    DLT_LINUX_SLL2: _sll2,
}
LINK_TYPES = tuple(sorted(_LINK_DECODERS))
