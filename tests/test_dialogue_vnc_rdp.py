"""VncDialogue and RdpDialogue: the RFB handshake to VNC Authentication's response; the X.224
Connection Confirm, TLS for RDP clients that offer it; nmap's own VNC and RDP scripts against
the standard ports in a test namespace; fuzzing."""

from __future__ import annotations

import random
import socket
import ssl
import struct
from collections.abc import Iterator

import pytest
from dialogue_adapter import serve
from hypothesis import given, settings
from hypothesis import strategies as st
from netns import Lab, inside

from honeytrap.dialogue import rdp, sensor, vnc
from honeytrap.dialogue.base import Context


def ctx_for(port: int, hostname: str = "s1", seed: int | None = None) -> Context:
    rng = random.Random(seed) if seed is not None else random.SystemRandom()  # noqa: S311
    return Context("tcp", port, 1 << 20, rng=rng, hostname=hostname)


def vnc_host(version: str) -> str:
    for i in range(200):
        if vnc.Server.parse(sensor.pick(vnc.SERVERS, f"v{i}")).version == version:
            return f"v{i}"
    raise AssertionError(version)


def test_vnc_38_to_the_response() -> None:
    d = vnc.VncDialogue(ctx_for(5900, vnc_host("003.008")))
    assert d.start() == b"RFB 003.008\n"
    types = d.receive(b"RFB 003.008\n").send
    assert types[0] == len(types) - 1 and vnc.VNC_AUTH in types[1:]
    challenge = d.receive(b"\x02").send
    assert challenge == d.challenge and len(challenge) == 16
    reply = d.receive(b"\xaa" * 16)
    assert reply.close
    assert reply.send == struct.pack("!II", 1, 21) + b"Authentication failed"
    rec = d.record()["vnc"]
    assert (rec["client_version"], rec["security_type"], rec["response"]) == (
        "RFB 003.008", 2, b"\xaa" * 16)


def test_vnc_33_client() -> None:
    """A 3.3 client: the server names type 2 and sends its challenge at once; no reason
    string in the result."""
    d = vnc.VncDialogue(ctx_for(5900, vnc_host("003.008")))
    reply = d.receive(b"RFB 003.003\n")
    assert reply.send[:4] == b"\0\0\0\x02" and reply.send[4:] == d.challenge
    assert d.receive(b"\x01" * 16).send == b"\0\0\0\x01"


def test_vnc_challenge_fresh() -> None:
    a, b = vnc.VncDialogue(ctx_for(5900)), vnc.VncDialogue(ctx_for(5900))
    assert a.challenge != b.challenge


def test_vnc_shipped_servers_parse() -> None:
    for line in sensor.choices(vnc.SERVERS):
        vnc.Server.parse(line)


@pytest.mark.parametrize("data", [b"GET / HTTP/1.1\r\n", b"RFB 003.00x\n"])
def test_vnc_not_rfb(data: bytes) -> None:
    d = vnc.VncDialogue(ctx_for(5900))
    assert d.receive(data).close and d.record()["vnc"]["error"]


def connection_request(cookie: bytes | None, protocols: int | None) -> bytes:
    body = b"\xe0\0\0\0\0\0"
    if cookie is not None:
        body += b"Cookie: mstshash=" + cookie + b"\r\n"
    if protocols is not None:
        body += struct.pack("<BBHI", 1, 0, 8, protocols)
    tpdu = bytes([len(body)]) + body
    return struct.pack("!BBH", 3, 0, 4 + len(tpdu)) + tpdu


def test_rdp_standard_security() -> None:
    """No RDP_NEG_REQ (nmap's TerminalServer probe): a plain Connection Confirm."""
    d = rdp.RdpDialogue(ctx_for(3389))
    reply = d.receive(b"\x03\0\0\x0b\x06\xe0\0\0\0\0\0")
    assert reply.send == b"\x03\0\0\x0b\x06\xd0\0\0\x12\x34\0" and not reply.close
    assert d.record()["rdp"]["selected_protocol"] == rdp.PROTOCOL_RDP
    assert d.receive(b"\x03\0\0\x0c\x02\xf0\x80\x7f\x65\x82\x01\x00").close  # MCS: closed


def test_rdp_tls_then_recorded_decrypted() -> None:
    """mstsc-like request (SSL|HYBRID): PROTOCOL_SSL selected, then a TLS handshake and the
    client's first PDU recorded decrypted, with the cookie's user name."""
    ctx = ctx_for(3389)
    d = rdp.RdpDialogue(ctx)
    reply = d.receive(connection_request(b"administr", 0x3))
    assert reply.send[-8:] == struct.pack("<BBHI", 2, rdp.NEG_RSP_FLAGS, 8, 1)
    assert struct.unpack("!H", reply.send[2:4])[0] == len(reply.send) == 19
    cctx = ssl.create_default_context()
    cctx.check_hostname, cctx.verify_mode = False, ssl.CERT_NONE
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = cctx.wrap_bio(inc, out)
    for _ in range(6):
        try:
            client.do_handshake()
            break
        except ssl.SSLWantReadError:
            inc.write(d.receive(out.read()).send)
    client.write(b"\x03\x00\x01\x00MCS connect initial")
    d.receive(out.read())
    rec = d.record()
    assert rec["rdp"]["cookie"] == "mstshash=administr"
    assert rec["rdp"]["requested_protocols"] == 3
    assert rec["decrypted"] == b"\x03\x00\x01\x00MCS connect initial"
    assert rec["tls"]["version"] == "TLSv1.3"


@pytest.mark.parametrize("data", [b"\x16\x03\x01\x00\x30", b"\x03\0\xff\xff", b"GET / HTTP/1.0\r\n"
                                  b"\r\n", b"\x03\0\0\x0b\x06\xf0\0\0\0\0\0"])
def test_rdp_refused(data: bytes) -> None:
    d = rdp.RdpDialogue(ctx_for(3389))
    assert d.receive(data).close and d.record()["rdp"]["error"]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(["vnc", "rdp"]), st.booleans())
def test_fuzz(data: bytes, which: str, prefixed: bool) -> None:
    ctx = ctx_for(1, seed=5)
    if which == "vnc":
        d: vnc.VncDialogue | rdp.RdpDialogue = vnc.VncDialogue(ctx)
        prefix = b"RFB 003.008\n\x02" if prefixed else b""
    else:
        d = rdp.RdpDialogue(ctx)
        prefix = connection_request(b"x", 1) if prefixed else b""
    d.start()
    d.receive(prefix + data)
    d.receive(data)
    d.idle()
    d.record()


@pytest.fixture
def lab_socket(lab: Lab) -> Iterator[tuple[Lab, list[socket.socket]]]:
    """Listening sockets made inside the lab's sensor namespace (closed afterwards)."""
    made: list[socket.socket] = []
    yield lab, made
    for s in made:
        s.close()


def listen_in(lab: Lab, made: list[socket.socket], port: int) -> socket.socket:
    with inside(lab.sensor):
        s = socket.create_server((lab.sensor.ip4, port))
    made.append(s)
    return s


def test_nmap_vnc_info(lab_socket: tuple[Lab, list[socket.socket]]) -> None:
    """nmap -sV names VNC on 5900 and its vnc-info script lists VNC Authentication."""
    lab, made = lab_socket
    sock = listen_in(lab, made, 5900)
    ctx = ctx_for(5900, vnc_host("003.008"))
    with serve(lambda: vnc.VncDialogue(ctx), read_timeout=0.5, max_idle=30, sock=sock):
        out = lab.attacker.cmd("nmap", "-Pn", "-n", "-sT", "-sV", "-p", "5900",
                               "--script", "vnc-info", lab.sensor.ip4)
    assert "5900/tcp open  vnc" in out and "VNC (protocol 3.8)" in out
    assert "Protocol version: 3.8" in out and "VNC Authentication (2)" in out


def test_nmap_rdp(lab_socket: tuple[Lab, list[socket.socket]]) -> None:
    """nmap -sV names ms-wbt-server on 3389; rdp-enum-encryption finds the SSL layer."""
    lab, made = lab_socket
    sock = listen_in(lab, made, 3389)
    ctx = ctx_for(3389)
    with serve(lambda: rdp.RdpDialogue(ctx), read_timeout=0.5, max_idle=30, sock=sock) as (
            _, records, _ended):
        out = lab.attacker.cmd("nmap", "-Pn", "-n", "-sT", "-p", "3389",
                               "--script", "rdp-enum-encryption", lab.sensor.ip4)
    assert "3389/tcp open  ms-wbt-server" in out
    assert "SSL: SUCCESS" in out and "Native RDP: SUCCESS" in out
    assert any(r["rdp"]["cookie"] == "mstshash=nmap" for r in records)
