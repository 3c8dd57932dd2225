"""Classification of captured frames (honeytrap.monitor.packet), from frames crafted with dpkt."""

from __future__ import annotations

import socket
import struct

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from honeytrap.errors import ProtocolError
from honeytrap.monitor import Attempt
from honeytrap.monitor import packet as pk

SENSOR4, ATTACKER4 = "198.18.1.1", "198.18.1.2"
SENSOR6, ATTACKER6 = "2001:db8:1::1", "2001:db8:1::2"
RST_ACK = dpkt.tcp.TH_RST | dpkt.tcp.TH_ACK

TCP4 = Attempt("tcp", socket.AF_INET, SENSOR4, 8080, ATTACKER4, 40000)
TCP6 = Attempt("tcp", socket.AF_INET6, SENSOR6, 8080, ATTACKER6, 40000)
UDP4 = Attempt("udp", socket.AF_INET, SENSOR4, 161, ATTACKER4, 50000)
UDP6 = Attempt("udp", socket.AF_INET6, SENSOR6, 161, ATTACKER6, 50000)


def a4(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET, text)


def a6(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, text)


def rst(flags: int = RST_ACK, seq: int = 0, sport: int = 8080, dport: int = 40000) -> bytes:
    return bytes(dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, ack=12345, flags=flags))


def ip4(
    proto: int,
    payload: bytes,
    src: str = SENSOR4,
    dst: str = ATTACKER4,
    offset: int = 0,
    more: bool = False,
) -> bytes:
    """An IPv4 packet; `offset` is the fragment offset in bytes."""
    packet = dpkt.ip.IP(src=a4(src), dst=a4(dst), p=proto, data=payload)
    packet.offset, packet.mf = offset, int(more)
    return bytes(packet)


def ip6(nxt: int, payload: bytes, src: str = SENSOR6, dst: str = ATTACKER6) -> bytes:
    packet = dpkt.ip6.IP6(src=a6(src), dst=a6(dst), nxt=nxt, hlim=64, data=payload)
    packet.plen = len(payload)
    return bytes(packet)


def udp(sport: int = 50000, dport: int = 161) -> bytes:
    return bytes(dpkt.udp.UDP(sport=sport, dport=dport, data=b"probe"))


def icmp4_unreach(quote: bytes, code: int = 3) -> bytes:
    message = dpkt.icmp.ICMP(type=3, code=code, data=dpkt.icmp.ICMP.Unreach(data=quote))
    return ip4(pk.PROTO_ICMP, bytes(message))


def icmp6_unreach(quote: bytes, code: int = 4) -> bytes:
    message = dpkt.icmp6.ICMP6(type=1, code=code, data=dpkt.icmp6.ICMP6.Unreach(data=quote))
    return ip6(pk.PROTO_ICMPV6, bytes(message))


def quoted4() -> bytes:
    return ip4(pk.PROTO_UDP, udp(), src=ATTACKER4, dst=SENSOR4)


def quoted6() -> bytes:
    return ip6(pk.PROTO_UDP, udp(), src=ATTACKER6, dst=SENSOR6)


def ext(nxt: int, body: bytes = b"\x00" * 6) -> bytes:
    """An IPv6 extension header of the hop-by-hop/routing/destination-options shape."""
    return bytes([nxt, (len(body) + 2) // 8 - 1]) + body


def frag6(nxt: int, offset: int, more: bool = False) -> bytes:
    return struct.pack("!BBHI", nxt, 0, offset << 3 | int(more), 0x1234)


def ether(packet: bytes, ethertype: int) -> bytes:
    return bytes(dpkt.ethernet.Ethernet(dst=b"\x02" * 6, src=b"\x04" * 6, type=ethertype)) + packet


def ethertype_of(packet: bytes) -> int:
    return pk.ETHERTYPE_IPV4 if packet[0] >> 4 == 4 else pk.ETHERTYPE_IPV6


# Each supported link type, wrapping an IP packet.
LINKS = {
    "ethernet": lambda p: (pk.DLT_EN10MB, ether(p, ethertype_of(p))),
    "vlan": lambda p: (
        pk.DLT_EN10MB,
        ether(struct.pack("!HH", 42, ethertype_of(p)) + p, 0x8100),
    ),
    "sll": lambda p: (
        pk.DLT_LINUX_SLL,
        bytes(dpkt.sll.SLL(type=4, ethtype=ethertype_of(p), hdr=b"\x02" * 6 + b"\x00\x00")) + p,
    ),
    "sll2": lambda p: (
        pk.DLT_LINUX_SLL2,
        bytes(dpkt.sll2.SLL2(ethtype=ethertype_of(p), intindex=2, type=4, hdr=b"\x02" * 8)) + p,
    ),
    "raw": lambda p: (pk.DLT_RAW, p),
    "linktype_raw": lambda p: (pk.LINKTYPE_RAW, p),
    "null": lambda p: (pk.DLT_NULL, struct.pack("=I", 2 if p[0] >> 4 == 4 else 10) + p),
    "loop": lambda p: (pk.DLT_LOOP, struct.pack("!I", 2 if p[0] >> 4 == 4 else 24) + p),
}


@pytest.mark.parametrize("link", sorted(LINKS))
@pytest.mark.parametrize(
    ("packet", "expected"),
    [
        (lambda: ip4(pk.PROTO_TCP, rst()), TCP4),
        (lambda: ip6(pk.PROTO_TCP, rst()), TCP6),
        (lambda: icmp4_unreach(quoted4()), UDP4),
        (lambda: icmp6_unreach(quoted6()), UDP6),
    ],
    ids=["rst4", "rst6", "icmp4", "icmp6"],
)
def test_attempt_is_recognised_on_every_link_type(link, packet, expected) -> None:
    """The kernel's refusals (RST|ACK seq 0; port unreachable) give the attempt on each link."""
    linktype, frame = LINKS[link](packet())
    assert pk.classify(linktype, frame) == expected


def test_rst_attacker_is_the_destination_and_the_port_the_source() -> None:
    attempt = pk.classify_ip(ip4(pk.PROTO_TCP, rst(sport=22, dport=61000)))
    assert attempt == Attempt("tcp", socket.AF_INET, SENSOR4, 22, ATTACKER4, 61000)


@pytest.mark.parametrize(
    ("flags", "seq"),
    [
        (dpkt.tcp.TH_RST, 0),  # RST without ACK: answers a segment that carried an ACK
        (RST_ACK, 1),  # RST|ACK with a sequence number: an established connection reset
        (dpkt.tcp.TH_ACK, 0),
        (dpkt.tcp.TH_SYN | RST_ACK, 0),
        (dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK, 0),
        (RST_ACK, 0x10000),  # the C original's check (upper 16 bits zero) took this one
    ],
)
def test_other_tcp_segments_are_not_attempts(flags: int, seq: int) -> None:
    assert pk.classify_ip(ip4(pk.PROTO_TCP, rst(flags=flags, seq=seq))) is None
    assert pk.classify_ip(ip6(pk.PROTO_TCP, rst(flags=flags, seq=seq))) is None


def test_rst_from_port_zero_is_not_an_attempt() -> None:
    """Port 0 cannot be bound to serve."""
    assert pk.classify_ip(ip4(pk.PROTO_TCP, rst(sport=0))) is None


@pytest.mark.parametrize("code", [0, 1, 2, 4, 13])
def test_other_icmp_unreachables_are_not_attempts(code: int) -> None:
    assert pk.classify_ip(icmp4_unreach(quoted4(), code=code)) is None


@pytest.mark.parametrize("code", [0, 1, 3, 5])
def test_other_icmp6_unreachables_are_not_attempts(code: int) -> None:
    assert pk.classify_ip(icmp6_unreach(quoted6(), code=code)) is None


def test_icmp_echo_is_not_an_attempt() -> None:
    echo = bytes(dpkt.icmp.ICMP(type=8, code=0, data=dpkt.icmp.ICMP.Echo(id=1, seq=1)))
    assert pk.classify_ip(ip4(pk.PROTO_ICMP, echo)) is None


def test_icmp_quoting_tcp_is_not_an_attempt() -> None:
    quote = ip4(pk.PROTO_TCP, rst(), src=ATTACKER4, dst=SENSOR4)
    assert pk.classify_ip(icmp4_unreach(quote)) is None


def test_icmp_quote_of_eight_bytes_is_enough() -> None:
    """RFC 792 quotes the IP header and 64 bits of data: exactly what is needed."""
    assert pk.classify_ip(icmp4_unreach(quoted4()[:28])) == UDP4


def test_icmp6_quote_with_only_the_ports_is_enough() -> None:
    assert pk.classify_ip(icmp6_unreach(quoted6()[:44])) == UDP6


@pytest.mark.parametrize("keep", [0, 10, 19, 20, 23])
def test_truncated_icmp_quote_is_a_protocol_error(keep: int) -> None:
    with pytest.raises(ProtocolError):
        pk.classify_ip(icmp4_unreach(quoted4()[:keep]))


@pytest.mark.parametrize("keep", [0, 1, 39, 40, 43])
def test_truncated_icmp6_quote_is_a_protocol_error(keep: int) -> None:
    with pytest.raises(ProtocolError):
        pk.classify_ip(icmp6_unreach(quoted6()[:keep]))


def test_icmp_quote_with_ip_options_is_read_past_them() -> None:
    quoted = bytearray(quoted4())
    options = b"\x01\x01\x01\x00"  # NOP NOP NOP EOL
    quoted[0] = 0x46
    quoted[20:20] = options
    assert pk.classify_ip(icmp4_unreach(bytes(quoted))) == UDP4


def test_quoted_non_first_fragment_is_not_an_attempt() -> None:
    quote = ip4(pk.PROTO_UDP, udp(), src=ATTACKER4, dst=SENSOR4, offset=800)
    assert pk.classify_ip(icmp4_unreach(quote)) is None


def test_ipv4_non_first_fragment_is_ignored() -> None:
    assert pk.classify_ip(ip4(pk.PROTO_TCP, rst(), offset=1480)) is None


def test_ipv4_first_fragment_is_classified() -> None:
    assert pk.classify_ip(ip4(pk.PROTO_TCP, rst(), more=True)) == TCP4


def test_ipv6_extension_headers_are_walked() -> None:
    chain = ext(pk.IPV6_DSTOPTS) + ext(pk.IPV6_ROUTING) + ext(pk.PROTO_TCP) + rst()
    assert pk.classify_ip(ip6(pk.IPV6_HOP_BY_HOP, chain)) == TCP6


def test_ipv6_first_fragment_is_classified() -> None:
    packet = ip6(pk.IPV6_FRAGMENT, frag6(pk.PROTO_TCP, 0, more=True) + rst())
    assert pk.classify_ip(packet) == TCP6


def test_ipv6_non_first_fragment_is_ignored() -> None:
    assert pk.classify_ip(ip6(pk.IPV6_FRAGMENT, frag6(pk.PROTO_TCP, 8) + rst())) is None


def test_ipv6_authentication_header_is_walked() -> None:
    ah = bytes([pk.PROTO_TCP, 4]) + b"\x00" * 22  # (4 + 2) * 4 = 24 bytes
    assert pk.classify_ip(ip6(pk.IPV6_AH, ah + rst())) == TCP6


def test_ipv6_esp_is_not_an_attempt() -> None:
    assert pk.classify_ip(ip6(pk.IPV6_ESP, b"\x00" * 40)) is None


def test_quoted_ipv6_extension_headers_are_walked() -> None:
    quote = ip6(
        pk.IPV6_DSTOPTS,
        ext(pk.IPV6_FRAGMENT) + frag6(pk.PROTO_UDP, 0, True) + udp(),
        src=ATTACKER6,
        dst=SENSOR6,
    )
    assert pk.classify_ip(icmp6_unreach(quote)) == UDP6


def test_too_many_extension_headers_is_a_protocol_error() -> None:
    chain = b"".join(ext(pk.IPV6_DSTOPTS) for _ in range(pk.MAX_EXT_HEADERS)) + rst()
    with pytest.raises(ProtocolError):
        pk.classify_ip(ip6(pk.IPV6_DSTOPTS, chain))


def test_ipv4_header_length_below_minimum_is_a_protocol_error() -> None:
    packet = bytearray(ip4(pk.PROTO_TCP, rst()))
    packet[0] = 0x44
    with pytest.raises(ProtocolError):
        pk.classify_ip(bytes(packet))


def test_ipv4_total_length_below_header_is_a_protocol_error() -> None:
    packet = bytearray(ip4(pk.PROTO_TCP, rst()))
    packet[2:4] = struct.pack("!H", 12)
    with pytest.raises(ProtocolError):
        pk.classify_ip(bytes(packet))


def test_ethernet_padding_beyond_total_length_is_ignored() -> None:
    linktype, frame = LINKS["ethernet"](ip4(pk.PROTO_TCP, rst()))
    assert pk.classify(linktype, frame + b"\xff" * 6) == TCP4


@pytest.mark.parametrize("keep", [0, 13, 14 + 19, 14 + 20 + 19])
def test_truncated_ethernet_frame_is_a_protocol_error(keep: int) -> None:
    linktype, frame = LINKS["ethernet"](ip4(pk.PROTO_TCP, rst()))
    with pytest.raises(ProtocolError):
        pk.classify(linktype, frame[:keep])


def test_non_ip_ethertype_is_not_an_attempt() -> None:
    assert pk.classify(pk.DLT_EN10MB, ether(b"\x00" * 28, 0x0806)) is None


def test_unsupported_link_type_is_a_protocol_error() -> None:
    assert not pk.supported_linktype(105)
    with pytest.raises(ProtocolError):
        pk.classify(105, ip4(pk.PROTO_TCP, rst()))


@settings(max_examples=300)
@given(linktype=st.sampled_from(pk.LINK_TYPES), frame=st.binary(max_size=200))
def test_arbitrary_bytes_give_an_attempt_none_or_protocol_error(
    linktype: int, frame: bytes
) -> None:
    try:
        result = pk.classify(linktype, frame)
    except ProtocolError:
        return
    assert result is None or isinstance(result, Attempt)


VALID = [
    ip4(pk.PROTO_TCP, rst()),
    ip6(pk.PROTO_TCP, rst()),
    icmp4_unreach(quoted4()),
    icmp6_unreach(quoted6()),
    ip6(pk.IPV6_HOP_BY_HOP, ext(pk.IPV6_FRAGMENT) + frag6(pk.PROTO_TCP, 0) + rst()),
]


@settings(max_examples=500)
@given(
    link=st.sampled_from(sorted(LINKS)),
    index=st.integers(0, len(VALID) - 1),
    position=st.integers(0, 200),
    value=st.integers(0, 255),
    cut=st.integers(0, 200),
)
def test_mutated_valid_frames_give_an_attempt_none_or_protocol_error(
    link: str, index: int, position: int, value: int, cut: int
) -> None:
    """Valid frames with one byte changed and truncated anywhere: only documented outcomes."""
    linktype, frame = LINKS[link](VALID[index])
    mutated = bytearray(frame[: max(cut, 1)])
    mutated[position % len(mutated)] = value
    try:
        result = pk.classify(linktype, bytes(mutated))
    except ProtocolError:
        return
    assert result is None or isinstance(result, Attempt)
