"""Which destinations the download policy refuses, and which it lets through."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from honeytrap.download.addresses import (
    embedded_ipv4,
    local_addresses,
    parse_ip,
    parse_networks,
    refusal,
)

ALLOW_LAB = parse_networks(["198.18.0.0/15", "2001:db8::/32"])


def _refused(text: str, **kwargs: object) -> str | None:
    addr = parse_ip(text)
    assert addr is not None
    return refusal(addr, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "0.0.0.0",
    "224.0.0.1", "255.255.255.255", "100.64.0.1", "240.0.0.1", "198.18.0.1",
    "::1", "::", "fe80::1", "fc00::1", "ff02::1", "2001:db8::1", "203.0.113.9",
    "::ffff:127.0.0.1", "[::ffff:127.0.0.1]", "::ffff:10.0.0.1", "::127.0.0.1",
    "64:ff9b::127.0.0.1", "64:ff9b::a00:1", "64:ff9b:1:7f00:0:100::", "2002:7f00:1::1",
    "2002:a00:1::", "2001:0:4136:e378:8000:63bf:80ff:fffe",
])
def test_non_global_addresses_are_refused(text: str) -> None:
    assert _refused(text) is not None


@pytest.mark.parametrize("text", ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8",
                                  "64:ff9b::808:808"])
def test_global_addresses_are_allowed(text: str) -> None:
    assert _refused(text) is None


def test_allow_list_permits_a_private_range() -> None:
    assert _refused("198.18.0.5", allow=ALLOW_LAB) is None
    assert _refused("2001:db8::5", allow=ALLOW_LAB) is None


def test_allow_list_never_permits_loopback() -> None:
    assert _refused("127.0.0.1", allow=parse_networks(["0.0.0.0/0"])) is not None
    assert _refused("::ffff:127.0.0.1", allow=parse_networks(["::/0", "0.0.0.0/0"])) is not None


def test_the_sensors_own_address_is_refused_even_when_allowed() -> None:
    own = [ipaddress.ip_address("198.18.0.1")]
    reason = _refused("::ffff:198.18.0.1", own=own, allow=ALLOW_LAB)
    assert reason == "198.18.0.1 is a sensor address"


def test_nat64_local_prefix_embeds_ipv4() -> None:
    addr = ipaddress.IPv6Address("64:ff9b:1:7f00:0:100::")
    assert ipaddress.IPv4Address("127.0.0.1") in embedded_ipv4(addr)


def test_local_addresses_include_loopback() -> None:
    found = local_addresses()
    assert ipaddress.ip_address("127.0.0.1") in found


def test_bad_allow_entry_names_it() -> None:
    with pytest.raises(ValueError, match="nonsense"):
        parse_networks(["nonsense"])


@given(st.ip_addresses())
def test_refusal_never_raises(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    assert isinstance(refusal(addr, allow=ALLOW_LAB), str | None)
