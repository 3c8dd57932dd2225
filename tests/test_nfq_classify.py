"""The nfq monitor's header parser (monitor/nfq.classify): only the first COPY_RANGE bytes of a
queued packet reach the master; from them it finds the same attempt as a full parse (dpkt), and
no bytes make it raise."""

from __future__ import annotations

import socket

import dpkt
from hypothesis import given
from hypothesis import strategies as st

from honeytrap.monitor import Attempt
from honeytrap.monitor.nfq import COPY_RANGE, classify

V4 = st.tuples(*[st.integers(1, 254)] * 4).map(lambda t: bytes(t))
V6 = st.binary(min_size=16, max_size=16)
PORTS = st.integers(0, 65535)
# TCP flags that make a new connection attempt (SYN without ACK) and some that do not.
FLAGS = st.sampled_from([0x02, 0x02 | 0x40 | 0x80, 0x12, 0x10, 0x11, 0x04, 0x03])
OPTIONS = st.binary(max_size=40).map(lambda b: b[: len(b) // 4 * 4])
PAYLOAD = st.binary(max_size=600)


def transport(proto: str, sport: int, dport: int, flags: int, options: bytes,
              payload: bytes) -> dpkt.Packet:
    if proto == "tcp":
        return dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, opts=options, data=payload,
                            off=5 + len(options) // 4)
    return dpkt.udp.UDP(sport=sport, dport=dport, data=payload, ulen=8 + len(payload))


def expected(proto: str, family: int, src: bytes, dst: bytes, sport: int, dport: int,
             flags: int) -> Attempt | None:
    if proto == "tcp" and not (flags & 0x02 and not flags & 0x10):
        return None
    return Attempt(proto, family, socket.inet_ntop(family, dst), dport,
                   socket.inet_ntop(family, src), sport)


@given(st.sampled_from(["tcp", "udp"]), V4, V4, PORTS, PORTS, FLAGS, OPTIONS, PAYLOAD,
       st.binary(max_size=40).map(lambda b: b[: len(b) // 4 * 4]))
def test_ipv4_headers_alone_give_the_attempt(proto: str, src: bytes, dst: bytes, sport: int,
                                              dport: int, flags: int, options: bytes,
                                              payload: bytes, ip_options: bytes) -> None:
    seg = transport(proto, sport, dport, flags, options, payload)
    ip = dpkt.ip.IP(src=src, dst=dst, p=6 if proto == "tcp" else 17, data=seg, opts=ip_options)
    ip.hl = 5 + len(ip_options) // 4
    ip.len = len(bytes(ip))
    packet = bytes(ip)[:COPY_RANGE]
    assert classify(packet) == expected(proto, socket.AF_INET, src, dst, sport, dport, flags)


@given(st.sampled_from(["tcp", "udp"]), V6, V6, PORTS, PORTS, FLAGS, OPTIONS, PAYLOAD,
       st.lists(st.sampled_from([0, 60, 43]), max_size=3))
def test_ipv6_with_extension_headers_alone_give_the_attempt(
    proto: str, src: bytes, dst: bytes, sport: int, dport: int, flags: int, options: bytes,
    payload: bytes, extensions: list[int],
) -> None:
    seg = bytes(transport(proto, sport, dport, flags, options, payload))
    next_header = 6 if proto == "tcp" else 17
    chain = b""
    for ext in reversed(extensions):  # each 8 bytes: next header, length 0, 6 bytes of padding
        chain = bytes([next_header, 0]) + b"\x00" * 6 + chain
        next_header = ext
    header = (bytes([0x60, 0, 0, 0]) + (len(chain) + len(seg)).to_bytes(2, "big")
              + bytes([next_header, 64]) + src + dst)
    packet = (header + chain + seg)[:COPY_RANGE]
    assert classify(packet) == expected(proto, socket.AF_INET6, src, dst, sport, dport, flags)


def test_non_first_fragments_have_no_ports() -> None:
    ip = dpkt.ip.IP(src=b"\x01\x02\x03\x04", dst=b"\x05\x06\x07\x08", p=6, offset=8,
                    data=bytes(dpkt.tcp.TCP(flags=0x02)))
    ip.len = len(bytes(ip))
    assert classify(bytes(ip)) is None


def test_the_copy_range_is_headers_only() -> None:
    assert COPY_RANGE == 40 + 64 + 14


@given(st.binary(max_size=200))
def test_any_bytes_are_an_attempt_or_nothing(packet: bytes) -> None:
    result = classify(packet)
    assert result is None or result.protocol in ("tcp", "udp")
