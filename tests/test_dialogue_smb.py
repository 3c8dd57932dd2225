"""SmbDialogue: NetBIOS session, SMB1 and SMB2 negotiates to an SMB2 NEGOTIATE response, the
NTLMSSP challenge and the client's AUTHENTICATE recorded; smbclient -L over loopback; nmap's
smb-protocols on 445 in a test namespace; fuzzing."""

from __future__ import annotations

import random
import socket
import struct
import subprocess

import pytest
from dialogue_adapter import serve
from hypothesis import given, settings
from hypothesis import strategies as st
from netns import Lab, inside

from honeytrap.dialogue import ntlm, sensor, smb
from honeytrap.dialogue.base import Context
from honeytrap.dialogue.binary import Truncated

HOST = "fileserver.example.test"


def make(seed: int | None = None, hostname: str = HOST) -> smb.SmbDialogue:
    rng = random.Random(seed) if seed is not None else random.SystemRandom()  # noqa: S311
    return smb.SmbDialogue(Context("tcp", 445, 1 << 20, rng=rng, hostname=hostname,
                                   extra={smb.CLOCK_KEY: lambda: 1_700_000_000.0}))


def frame(msg: bytes) -> bytes:
    return b"\0" + len(msg).to_bytes(3, "big") + msg


def smb1_negotiate(*dialects: bytes) -> bytes:
    names = b"".join(b"\x02" + d + b"\0" for d in dialects)
    header = b"\xffSMB\x72" + b"\0" * 27
    return frame(header + b"\0" + struct.pack("<H", len(names)) + names)


def smb2_negotiate(*dialects: int) -> bytes:
    header = b"\xfeSMB" + struct.pack("<HHIHHIIQIIQ", 64, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0) + \
        b"\0" * 16
    body = struct.pack("<HHHHI", 36, len(dialects), 1, 0, 0) + b"\x42" * 16 + b"\0" * 8
    return frame(header + body + b"".join(struct.pack("<H", d) for d in dialects))


def negotiate_response(data: bytes) -> tuple[int, int, bytes]:
    """(status, dialect, server GUID) of a framed SMB2 NEGOTIATE response."""
    assert data[0] == 0 and int.from_bytes(data[1:4], "big") == len(data) - 4
    msg = data[4:]
    assert msg[:4] == b"\xfeSMB"
    status, command = struct.unpack_from("<IH", msg, 8)
    assert command == 0
    if status:
        return status, 0, b""
    size, _mode, dialect = struct.unpack_from("<HHH", msg, 64)
    assert size == 65
    offset, length = struct.unpack_from("<HH", msg, 64 + 56)
    assert msg[offset : offset + length] == ntlm.spnego_init()
    return status, dialect, msg[72:88]


def test_netbios_session_then_smb1_wildcard() -> None:
    """Port 139: the session request is granted; an SMB1 negotiate offering "SMB 2.???" gets
    the SMB2 response with the wildcard dialect (MS-SMB2 3.3.5.3.1)."""
    d = make()
    assert d.receive(b"\x81\0\0\x44" + b"\x20" * 68).send == b"\x82\0\0\0"
    reply = d.receive(smb1_negotiate(b"NT LM 0.12", b"SMB 2.002", b"SMB 2.???"))
    assert negotiate_response(reply.send)[:2] == (0, smb.WILDCARD)
    assert d.record()["smb"]["smb1_dialects"] == ["NT LM 0.12", "SMB 2.002", "SMB 2.???"]


def test_smb1_only_closes() -> None:
    d = make()
    reply = d.receive(smb1_negotiate(b"PC NETWORK PROGRAM 1.0", b"NT LM 0.12"))
    assert reply.close and reply.send == b""


def test_smb2_highest_common_dialect_fresh_guid() -> None:
    server = smb.Server.parse(sensor.pick(smb.SERVERS, HOST))
    a, b = make(), make()
    ra = negotiate_response(a.receive(smb2_negotiate(0x0202, 0x0210, 0x0300, 0x0302,
                                                     0x0311)).send)
    rb = negotiate_response(b.receive(smb2_negotiate(0x0202, 0x0210)).send)
    assert ra[1] == server.dialect and rb[1] == 0x0210
    assert ra[2] != rb[2]


def test_no_common_dialect() -> None:
    d = make()
    reply = d.receive(smb2_negotiate(0x0311))
    assert negotiate_response(reply.send)[0] == smb.STATUS_NOT_SUPPORTED and not reply.close


def test_shipped_servers_parse() -> None:
    for line in sensor.choices(smb.SERVERS):
        smb.Server.parse(line)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["raw", "framed", "smb2", "smb1"]))
def test_fuzz(data: bytes, how: str) -> None:
    d = make(seed=7)
    prefix = {"raw": b"", "framed": b"", "smb2": b"\xfeSMB", "smb1": b"\xffSMB\x72"}[how]
    d.receive(data if how == "raw" else frame(prefix + data))
    d.receive(data)
    d.record()


@given(st.binary(max_size=200))
def test_fuzz_ntlm(data: bytes) -> None:
    found = ntlm.find_message(b"xx" + ntlm.SIGNATURE + data)
    if found is None:
        assert len(data) < 4  # no room for the message type
        return
    try:
        ntlm.parse_authenticate(found[1])
    except Truncated:
        pass


def test_smbclient_sends_its_credentials() -> None:
    """smbclient -L negotiates, gets the NTLMSSP challenge, sends user and NTLMv2 response;
    it reports the logon failure."""
    ctx = Context("tcp", 445, 1 << 20, hostname=HOST)
    with serve(lambda: smb.SmbDialogue(ctx)) as (port, records, ended):
        out = subprocess.run(["smbclient", "-L", "//127.0.0.1", "-p", str(port),
                              "-U", "bob%pw123", "-W", "OFFICE"],
                             capture_output=True, text=True, timeout=60)
        assert ended.wait(10)
    assert "NT_STATUS_LOGON_FAILURE" in out.stdout + out.stderr
    rec = records[0]["smb"]
    assert (rec["user"], rec["domain"], rec["commands"]) == ("bob", "OFFICE", [0, 1, 1])
    assert rec["dialect"] in smb.DIALECTS
    assert len(rec["nt_response"]) > 24  # NTLMv2: proof, blob with our target info
    assert ntlm.SIGNATURE not in rec["nt_response"]


def test_nmap_smb_protocols(lab: Lab) -> None:
    """nmap's smb-protocols on 445 lists the SMB2 dialects up to the sensor's highest."""
    with inside(lab.sensor):
        sock = socket.create_server((lab.sensor.ip4, 445))
    try:
        ctx = Context("tcp", 445, 1 << 20, hostname=HOST)
        with serve(lambda: smb.SmbDialogue(ctx), read_timeout=0.5, max_idle=20, sock=sock):
            out = lab.attacker.cmd("nmap", "-Pn", "-n", "-sT", "-p", "445",
                                   "--script", "smb-protocols", lab.sensor.ip4)
    finally:
        sock.close()
    assert "445/tcp open  microsoft-ds" in out
    server = smb.Server.parse(sensor.pick(smb.SERVERS, HOST))
    listed = [line.strip("|_ ") for line in out.splitlines() if line.startswith(("|  ", "|_"))]
    assert [d for d in listed if d.isalnum()] == [
        f"{d:x}" for d in smb.DIALECTS if d <= server.dialect]
    assert "NT LM 0.12 (SMBv1)" not in out


@pytest.mark.parametrize("data", [b"GET / HTTP/1.1\r\n\r\n", b"\x00\xff\xff\xff"])
def test_not_smb(data: bytes) -> None:
    d = make()
    assert d.receive(data).close and d.record()["smb"]["error"]
