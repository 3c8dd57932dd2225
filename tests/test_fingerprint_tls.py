"""The ClientHello parser, JA4 and JA3: published vectors, hand-built hellos, a real
openssl s_client hello, and fuzzing (only HelloError escapes)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tls_hello import (
    alpn_ext,
    capture_first_bytes,
    client_hello,
    ext,
    list16_ext,
    sni_ext,
)

from honeytrap.fingerprint import clienthello, ja3, ja4
from honeytrap.fingerprint.clienthello import HelloError, parse_client_hello

GREASE = 0x3A3A


def spec_example_hello(record_sizes: list[int] | None = None) -> bytes:
    """The hello of FoxIO's JA4.md example (its ciphers, extensions and signature algorithms in
    the order given there), with GREASE values added where Chrome puts them."""
    ciphers = [GREASE, 0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8,
               0xC013, 0xC014, 0x009C, 0x009D, 0x002F, 0x0035]
    sigs = [0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601]
    order = [0x001B, 0x0000, 0x0033, 0x0010, 0x4469, 0x0017, 0x002D, 0x000D, 0x0005, 0x0023,
             0x0012, 0x002B, 0xFF01, 0x000B, 0x000A, 0x0015]
    bodies = {
        0x0000: sni_ext(b"www.example.test"),
        0x0010: alpn_ext([b"h2", b"http/1.1"]),
        0x000D: list16_ext(0x000D, sigs),
        0x002B: list16_ext(0x002B, [GREASE, 0x0304, 0x0303], size=1),
        0x000A: list16_ext(0x000A, [GREASE, 0x001D, 0x0017, 0x0018]),
        0x000B: ext(0x000B, b"\x01\x00"),
    }
    exts = [ext(GREASE, b"")] + [bodies.get(t, ext(t, b"")) for t in order] + [
        ext(0x1A1A, b"\x00")]
    return client_hello(ciphers, exts, record_sizes=record_sizes)


def test_spec_hashes_of_the_published_lists() -> None:
    """JA4.md's cipher and extension strings hash to the values it publishes."""
    assert hashlib.sha256(
        b"002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,cca9"
    ).hexdigest()[:12] == "8daaf6152771"
    assert hashlib.sha256(
        b"0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01"
    ).hexdigest()[:12] == "6d807ffa2a79"


def test_ja4_of_the_spec_example() -> None:
    """FoxIO's JA4.md example: t13d1516h2_8daaf6152771_e5627efa2ab1 (GREASE ignored)."""
    hello = parse_client_hello(spec_example_hello())
    assert hello is not None
    assert ja4.ja4(hello) == "t13d1516h2_8daaf6152771_e5627efa2ab1"
    assert ja4.ja4_parts(hello) == (
        "t13d1516h2",
        "002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,cca9",
        "0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01_"
        "0403,0804,0401,0503,0805,0501,0806,0601",
    )
    assert hello.sni == "www.example.test"
    assert hello.alpn == [b"h2", b"http/1.1"]


def test_hello_split_over_records_and_chunks() -> None:
    """A hello fragmented into small records (RFC 8446 5.1), fed in any chunking: None until
    complete, then the same hello."""
    whole = parse_client_hello(spec_example_hello())
    split = spec_example_hello(record_sizes=[7, 100, 3])
    for cut in range(0, len(split)):
        assert parse_client_hello(split[:cut]) is None
    assert parse_client_hello(split) == whole


@pytest.mark.parametrize(("first", "want"), [
    (b"h2", "h2"), (b"http/1.1", "h1"), (b"h", "hh"),
    # JA4.md's examples for non-alphanumeric ends
    (b"\xab", "ab"), (b"\xab\xcd", "ad"), (b"\x30\xab", "3b"), (b"\x30\x31\xab\xcd", "3d"),
    (b"\x30\xab\xcd\x31", "01"), (b"\xaa", "aa"),
])
def test_ja4_alpn_characters(first: bytes, want: str) -> None:
    hello = parse_client_hello(client_hello([0x1301], [alpn_ext([first, b"x"])]))
    assert hello is not None
    assert ja4.ja4_parts(hello)[0][-2:] == want


def test_ja4_without_extensions_or_ciphers() -> None:
    """No SNI: "i"; no ALPN: "00"; the legacy version without supported_versions; empty lists
    give twelve zeros (JA4+ general rule)."""
    hello = parse_client_hello(client_hello([], None, version=0x0301))
    assert hello is not None
    assert ja4.ja4(hello) == "t10i000000_000000000000_000000000000"
    only_sni = parse_client_hello(client_hello([0x002F], [sni_ext(b"a")], version=0x0300))
    assert only_sni is not None
    assert ja4.ja4(only_sni).endswith("_000000000000")
    assert ja4.ja4(only_sni).startswith("ts3d010100_")


def test_ja3_published_vector() -> None:
    """salesforce/ja3 README: this JA3 string has MD5 ada70206e40642a3e4461f35503241d5."""
    text = "769,47-53-5-10-49161-49162-49171-49172-50-56-19-4,0-10-11,23-24-25,0"
    assert ja3.ja3_hash(text) == "ada70206e40642a3e4461f35503241d5"
    ciphers = [47, 53, 5, 10, 49161, 49162, 49171, 49172, 50, 56, 19, 4]
    exts = [sni_ext(b"a.test"), list16_ext(10, [GREASE, 23, 24, 25]), ext(11, b"\x01\x00")]
    hello = parse_client_hello(client_hello([GREASE, *ciphers], exts, version=769))
    assert hello is not None
    assert ja3.ja3(hello) == text


def test_real_openssl_client_hello() -> None:
    """openssl s_client's own hello, with its ciphers, signature algorithms and groups pinned
    on the command line: the JA4 worked out by hand from JA4.md for OpenSSL 3.0's extension
    set (server_name, ec_point_formats, supported_groups, session_ticket, ALPN,
    encrypt_then_mac, extended_master_secret, signature_algorithms, supported_versions,
    psk_key_exchange_modes, key_share), and the JA3 from the same fields (cross-checked once
    with PyPI's ja4plus 1.4.0, which gives the same JA4)."""
    data = capture_first_bytes([
        "openssl", "s_client", "-connect", "127.0.0.1:{port}", "-servername", "www.example.test",
        "-alpn", "http/1.1", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256",
        "-ciphersuites", "TLS_AES_128_GCM_SHA256", "-sigalgs", "ECDSA+SHA256:RSA-PSS+SHA256",
        "-groups", "X25519"])
    hello = parse_client_hello(data)
    assert hello is not None
    assert (hello.sni, hello.alpn) == ("www.example.test", [b"http/1.1"])
    # TLS_AES_128_GCM_SHA256, ECDHE-RSA-AES128-GCM-SHA256, and the renegotiation SCSV
    assert hello.ciphers == [0x1301, 0xC02F, 0x00FF]
    a, b, c = ja4.ja4_parts(hello)
    assert (a, b) == ("t13d0311h1", "00ff,1301,c02f")
    assert c == "000a,000b,000d,0016,0017,0023,002b,002d,0033_0403,0804"
    assert ja4.ja4(hello) == (
        f"t13d0311h1_{hashlib.sha256(b.encode()).hexdigest()[:12]}"
        f"_{hashlib.sha256(c.encode()).hexdigest()[:12]}")
    assert ja4.ja4(hello) == "t13d0311h1_938715873a05_37c09640425f"
    assert ja3.ja3(hello) == "771,4865-49199-255,0-11-10-35-16-22-23-13-43-45-51,29,0-1-2"


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\n\r\n",
    b"\x16\x03\x01\x00\x00",  # empty record
    b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00",  # ServerHello, not a client hello
    b"\x16\x03\x01\x00\x06\x01\x00\x00\x02\x03\x03",  # body shorter than the version+random
    b"\x15\x03\x01\x00\x02\x02\x28",  # an alert
])
def test_not_a_client_hello(data: bytes) -> None:
    with pytest.raises(HelloError):
        parse_client_hello(data)


def test_endless_hello_is_refused_at_its_bound() -> None:
    """A hello announcing 16 MiB is refused at once; one that never completes, at
    MAX_HELLO_STREAM bytes."""
    with pytest.raises(HelloError):
        parse_client_hello(b"\x16\x03\x01\x00\x04\x01\xff\xff\xff")
    head = b"\x16\x03\x01\x40\x00\x01\x00\xff\xff"
    records = head + b"\x00" * (0x4000 - 4)
    while len(records) < clienthello.MAX_HELLO_STREAM:
        records += b"\x16\x03\x01\x40\x00" + b"\x00" * 0x4000
    with pytest.raises(HelloError):
        parse_client_hello(records)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_raw_bytes(data: bytes) -> None:
    """Any bytes: a hello, None, or HelloError; fingerprints of a parsed one never fail."""
    for stream in (data, b"\x16\x03\x01" + data, spec_example_hello()[:9] + data):
        try:
            hello = parse_client_hello(stream)
        except HelloError:
            continue
        if hello is not None:
            ja3.ja3_hash(ja3.ja3(hello))
            ja4.ja4(hello)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=400), st.integers(0, 399), st.integers(0, 255))
def test_fuzz_mutated_hello(noise: bytes, where: int, value: int) -> None:
    """The spec example with one byte changed or bytes spliced in: never anything but a
    hello, None or HelloError."""
    base = bytearray(spec_example_hello())
    base[where % len(base)] = value
    for stream in (bytes(base), bytes(base[:where]) + noise):
        try:
            hello = parse_client_hello(stream)
        except HelloError:
            continue
        if hello is not None:
            ja4.ja4(hello)
            ja3.ja3(hello)


@given(st.lists(st.integers(0, 0xFFFF), max_size=40),
       st.lists(st.integers(0, 0xFFFF), max_size=20, unique=True))
def test_round_trip_lists(ciphers: list[int], ext_types: list[int]) -> None:
    """Built with any ciphers and (empty) extensions, the hello parses back to them."""
    exts = [ext(t, b"") for t in ext_types]
    hello = parse_client_hello(client_hello(ciphers, exts))
    assert hello is not None
    assert (hello.ciphers, hello.extensions) == (ciphers, ext_types)
    count = len([c for c in ciphers if not clienthello.is_grease(c)])
    assert ja4.ja4(hello)[4:6] == f"{min(count, 99):02d}"
