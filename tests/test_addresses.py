"""Socket address normalization: the same answer as a full parse, for every address the kernel
can hand us (inet_ntop's text), IPv4, IPv6 and IPv4-mapped IPv6."""

from __future__ import annotations

import ipaddress
import socket

from hypothesis import given
from hypothesis import strategies as st

from honeytrap.addresses import bracket, normalize, split


def reference(text: str) -> str:
    ip = ipaddress.ip_address(text)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


@given(st.ip_addresses())
def test_normalize_agrees_with_a_full_parse(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    text = socket.inet_ntop(family, ip.packed)
    assert normalize(text) == reference(text)


@given(st.ip_addresses(v=4))
def test_mapped_ipv4_is_recorded_as_ipv4(ip: ipaddress.IPv4Address) -> None:
    mapped = socket.inet_ntop(socket.AF_INET6, ipaddress.IPv6Address(f"::ffff:{ip}").packed)
    assert split((mapped, 80, 0, 0)) == (str(ip), 80)


def test_ipv4_compatible_form_is_canonicalized() -> None:
    """glibc writes ::1.2.3.4 for the deprecated IPv4-compatible form; record the usual text."""
    assert normalize("::1.2.3.4") == "::102:304"


def test_zone_index_is_dropped_and_ipv6_bracketed() -> None:
    assert normalize("fe80::1%veth0") == "fe80::1"
    assert bracket("2001:db8::1") == "[2001:db8::1]" and bracket("192.0.2.1") == "192.0.2.1"
