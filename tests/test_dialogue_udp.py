"""UDP replies: DNS, SNMP, SIP, ONC RPC and NTP answers echo what clients check, never more
than twice the request, nothing for what they do not recognise; dig and snmpget over
loopback; fuzzing."""

from __future__ import annotations

import random
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from honeytrap.dialogue import dns, ntp, rpc, sensor, sip, snmp, udp
from honeytrap.dialogue.base import Context

NOW = 1_760_000_000.25


def ctx(port: int, hostname: str = "nas01.example.test") -> Context:
    return Context("udp", port, 1 << 16, rng=random.Random(9), hostname=hostname,  # noqa: S311
                   extra={udp.CLOCK_KEY: lambda: NOW})


@contextmanager
def udp_server(port: int) -> Iterator[tuple[int, list[bytes]]]:
    """A loopback UDP socket answered by udp.reply as if it were `port`; yields (real port,
    datagrams received)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    got: list[bytes] = []
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                data, addr = sock.recvfrom(65536)
            except TimeoutError:
                continue
            got.append(data)
            out = udp.reply(port, data, ctx(port))
            if out is not None:
                sock.sendto(out, addr)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1], got
    finally:
        stop.set()
        thread.join(5)
        sock.close()


def dns_query(name: bytes, ident: int = 0x1234, edns: bool = True) -> bytes:
    q = b"".join(bytes([len(p)]) + p for p in name.split(b".")) + b"\0" + b"\0\x01\0\x01"
    opt = b"\0\0\x29\x04\xd0\0\0\0\0\0\0" if edns else b""
    return struct.pack("!6H", ident, 0x0100, 1, 0, 0, 1 if edns else 0) + q + opt


def test_dns_refused_echoes_id_and_question() -> None:
    query = dns_query(b"www.example.test")
    out = udp.reply(53, query, ctx(53))
    assert out is not None and len(out) <= len(query)
    ident, flags, qd, an, ns, ar = struct.unpack("!6H", out[:12])
    assert (ident, flags & 0x8000, flags & 0xF, flags & 0x0100) == (0x1234, 0x8000, 5, 0x0100)
    assert (qd, an, ns, ar) == (1, 0, 0, 1)
    assert out[12 : 12 + len(query) - 23] == query[12:-11]


def test_dig() -> None:
    """dig accepts the reply (its id, its question) and reports REFUSED."""
    with udp_server(53) as (port, got):
        out = subprocess.run(["dig", "@127.0.0.1", "-p", str(port), "+tries=1", "+time=5",
                              "www.example.test", "A"], capture_output=True, text=True,
                             timeout=30).stdout
    assert "status: REFUSED" in out and "QUESTION SECTION:\n;www.example.test." in out


def test_snmpget_sysdescr() -> None:
    """snmpget (v2c, community public) gets sysDescr.0 and sysName.0 for its request-id."""
    with udp_server(161) as (port, got):
        out = subprocess.run(["snmpget", "-On", "-v2c", "-c", "public", "-r", "0", "-t", "5",
                              f"udp:127.0.0.1:{port}", "1.3.6.1.2.1.1.1.0", "1.3.6.1.2.1.1.5.0",
                              "1.3.6.1.2.1.1.3.0"], capture_output=True, text=True, timeout=30)
    assert '.1.3.6.1.2.1.1.1.0 = STRING: "Linux nas01 ' in out.stdout
    assert '.1.3.6.1.2.1.1.5.0 = STRING: "nas01"' in out.stdout
    assert "No Such Object" in out.stdout
    assert all(len(udp.reply(161, d, ctx(161)) or b"") <= 2 * len(d) for d in got)


def test_snmpwalk_v1_and_community_echoed() -> None:
    with udp_server(161) as (port, _):
        out = subprocess.run(["snmpwalk", "-On", "-v1", "-c", "s3cr3t", "-r", "0", "-t", "5",
                              f"udp:127.0.0.1:{port}", "1.3.6.1.2.1.1"],
                             capture_output=True, text=True, timeout=30)
    assert '.1.3.6.1.2.1.1.1.0 = STRING: "Linux' in out.stdout
    assert '.1.3.6.1.2.1.1.5.0 = STRING: "nas01"' in out.stdout
    assert out.stdout.count("STRING") == 2 and "not increasing" not in out.stderr


def test_snmp_reply_fits_twice_the_request() -> None:
    """A short request: the description is cut so the reply stays within 2x."""
    get = snmp.enc(snmp.SEQUENCE, snmp.enc(snmp.INTEGER, b"\x01") + snmp.enc(
        snmp.OCTET_STRING, b"p") + snmp.enc(snmp.GET, snmp.integer(7) + snmp.integer(0)
        + snmp.integer(0) + snmp.enc(snmp.SEQUENCE, snmp._binding(snmp.SYS_DESCR, b"\x05\x00"))))
    out = udp.reply(161, get, ctx(161))
    assert out is not None and len(out) <= 2 * len(get)
    assert b"Linux" in out


SIP_OPTIONS = (
    b"OPTIONS sip:100@198.18.0.2 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 198.18.0.1:5061;branch=z9hG4bK-524287-1---7a8f;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"Contact: <sip:100@198.18.0.1:5061>\r\n"
    b"To: <sip:100@198.18.0.2>\r\n"
    b"From: <sip:100@198.18.0.2>;tag=6134313534396236\r\n"
    b"User-Agent: friendly-scanner\r\n"
    b"Call-ID: 818137451227693126393014\r\n"
    b"CSeq: 1 OPTIONS\r\n"
    b"Accept: application/sdp\r\n"
    b"Content-Length: 0\r\n\r\n")


def test_sip_options_echoes_dialog_headers() -> None:
    out = udp.reply(5060, SIP_OPTIONS, ctx(5060))
    assert out is not None and len(out) <= 2 * len(SIP_OPTIONS)
    lines = out.decode().split("\r\n")
    assert lines[0] == "SIP/2.0 200 OK"
    assert "Via: SIP/2.0/UDP 198.18.0.1:5061;branch=z9hG4bK-524287-1---7a8f;rport" in lines
    assert "Call-ID: 818137451227693126393014" in lines and "CSeq: 1 OPTIONS" in lines
    assert "From: <sip:100@198.18.0.2>;tag=6134313534396236" in lines
    assert any(line.startswith("To: <sip:100@198.18.0.2>;tag=") for line in lines)
    assert any(line.startswith("Server: ") for line in lines)


def test_sip_register_challenged_compact_headers() -> None:
    register = (b"REGISTER sip:198.18.0.2 SIP/2.0\r\nv: SIP/2.0/UDP 198.18.0.1;branch=z9hG4bKx\r\n"
                b"f: <sip:1001@198.18.0.2>;tag=a\r\nt: <sip:1001@198.18.0.2>\r\n"
                b"i: abc@198.18.0.1\r\nCSeq: 2 REGISTER\r\nl: 0\r\n\r\n")
    out = udp.reply(5060, register, ctx(5060))
    assert out is not None
    assert out.startswith(b"SIP/2.0 401 Unauthorized\r\n")
    assert b'WWW-Authenticate: Digest realm="asterisk",nonce="' in out
    assert b"Call-ID: abc@198.18.0.1\r\n" in out


@pytest.mark.parametrize("data", [SIP_OPTIONS.replace(b"CSeq: 1 OPTIONS\r\n", b""),
                                  b"SIP/2.0 200 OK\r\n\r\n", b"ACK sip:x SIP/2.0\r\n\r\n"])
def test_sip_nothing(data: bytes) -> None:
    assert udp.reply(5060, data, ctx(5060)) is None


def rpc_call(xid: int, prog: int, vers: int, proc: int, args: bytes = b"") -> bytes:
    return struct.pack("!6I", xid, 0, 2, prog, vers, proc) + b"\0" * 16 + args


def test_rpc_xid_echoed() -> None:
    getport = rpc_call(0xDEADBEEF, 100000, 2, 3, struct.pack("!4I", 100003, 3, 6, 0))
    out = udp.reply(111, getport, ctx(111))
    assert out == struct.pack("!7I", 0xDEADBEEF, 1, 0, 0, 0, 0, 2049)
    dump = udp.reply(111, rpc_call(7, 100000, 2, 4), ctx(111))
    assert dump is not None and dump[:4] == b"\0\0\0\x07" and dump.endswith(b"\0\0\0\0")
    assert len(dump) <= 2 * len(rpc_call(7, 100000, 2, 4))
    assert udp.reply(111, rpc_call(1, 100005, 3, 0), ctx(111)) == struct.pack(
        "!6I", 1, 1, 0, 0, 0, rpc.PROG_UNAVAIL)


def test_ntp_origin_is_client_transmit() -> None:
    request = bytes([0x23]) + b"\0" * 39 + b"\xe9\x8f\x12\x34\x56\x78\x9a\xbc"
    out = udp.reply(123, request, ctx(123))
    assert out is not None and len(out) == 48
    assert out[0] == 0x24 and out[1] == ntp.STRATUM  # version 4, mode 4
    assert out[24:32] == request[40:48]
    assert struct.unpack("!I", out[40:44])[0] == int(NOW) + ntp.NTP_EPOCH
    assert udp.reply(123, bytes([0x17]) + b"\0" * 47, ctx(123)) is None  # mode 7 (monlist)


def test_sensor_lists_parse() -> None:
    assert sensor.choices(udp.SIP_SERVERS) and sensor.choices(udp.SNMP_DESCRIPTIONS)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(sorted(udp.PORTS) + [9999]), st.binary(max_size=300),
       st.sampled_from([b"", dns_query(b"a.b")[:14], SIP_OPTIONS[:60], b"0\x26\x02\x01\x01",
                        rpc_call(1, 100000, 2, 4)[:40], bytes([0x23]) + b"\0" * 47]))
def test_fuzz(port: int, data: bytes, prefix: bytes) -> None:
    """Any datagram: bytes within twice its size, or None; never an exception."""
    datagram = prefix + data
    out = udp.reply(port, datagram, ctx(port))
    assert out is None or len(out) <= 2 * len(datagram)


@given(st.binary(max_size=200))
def test_fuzz_parsers_directly(data: bytes) -> None:
    dns.reply(data)
    snmp.reply(data, "d", "n")
    sip.parse(data)
    sip.reply(data, random.Random(0), "s", 100)  # noqa: S311
    rpc.reply(data, 1000)
    ntp.reply(data, NOW, "h")
