"""The shipped response templates (templates/) are well-formed for their protocols.

A template is static bytes: sent once per turn on a TCP connection (after an idle read timeout)
and once per UDP datagram. Each test parses one template with the stdlib, or with a few lines of
the protocol's own framing rules, and checks the lengths and fields a client checks first.
"""

from __future__ import annotations

import http.client
import io
import json
import re
import struct
from email.message import Message
from pathlib import Path

import pytest

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates"
NAME = re.compile(r"^([1-9][0-9]{0,4})_(tcp|udp)$")
# Files in templates/ that are documentation, not templates.
NOT_TEMPLATES = {"README"}
# The brief: at least 20 commonly attacked ports are covered.
MIN_PORTS = 20
# A UDP reply goes to an address nobody verified (it may be spoofed): keep every UDP template
# small, so the sensor is no useful reflector. 512 bytes is the classic DNS-over-UDP payload cap,
# and each of our replies is within a few times the size of the request that triggers it.
MAX_UDP_TEMPLATE = 512
# RFC 4253 section 4.2: the identification string is at most 255 characters including CR LF.
SSH_IDENT_MAX = 255


def template(name: str) -> bytes:
    return (TEMPLATE_DIR / name).read_bytes()


def template_names() -> list[str]:
    # A name with a suffix (tls.subjects, ssh.versions, ...) is a dialogue's data file, checked
    # by that dialogue's tests; raw templates are <port>_<protocol>.
    return sorted(p.name for p in TEMPLATE_DIR.iterdir()
                  if p.name not in NOT_TEMPLATES and "." not in p.name)


def parse_http(data: bytes) -> tuple[http.client.HTTPResponse, bytes]:
    """Parse a complete HTTP/1.1 response with http.client, as a client would read it."""

    class Sock:
        def makefile(self, mode: str, *args: object, **kwargs: object) -> io.BufferedReader:
            return io.BufferedReader(io.BytesIO(data))

    response = http.client.HTTPResponse(Sock())  # type: ignore[arg-type]
    response.begin()
    return response, response.read()


def split_headers(data: bytes) -> tuple[str, Message, bytes]:
    """Status line, headers and the rest of a message in HTTP/SIP/SSDP text framing."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep, "the header block ends with an empty line"
    status, _, fields = head.partition(b"\r\n")
    headers = http.client.parse_headers(io.BytesIO(fields + b"\r\n\r\n"))
    return status.decode("ascii"), headers, rest


# ----------------------------------------------------------------------------- the directory


def test_every_file_is_named_port_and_protocol() -> None:
    for name in template_names():
        match = NAME.match(name)
        assert match, name
        assert 1 <= int(match.group(1)) <= 65535, name


def test_no_template_is_empty() -> None:
    for name in template_names():
        assert template(name), f"{name} is empty"


def test_at_least_twenty_ports_are_covered() -> None:
    assert len({name.split("_")[0] for name in template_names()}) >= MIN_PORTS


def test_readme_describes_every_template() -> None:
    readme = (TEMPLATE_DIR / "README").read_text(encoding="ascii")
    for name in template_names():
        assert re.search(rf"^{name}\b", readme, re.MULTILINE), f"{name} not in README"


def test_udp_templates_are_small() -> None:
    for name in template_names():
        if name.endswith("_udp"):
            assert len(template(name)) <= MAX_UDP_TEMPLATE, name


def test_no_dns_template() -> None:
    """A DNS reply must echo the query's ID and question: no static reply is sensible."""
    assert not (TEMPLATE_DIR / "53_udp").exists()


# ----------------------------------------------------------------------------- line protocols


def reply_lines(data: bytes) -> list[str]:
    assert data.endswith(b"\r\n")
    return data[:-2].decode("ascii").split("\r\n")


@pytest.mark.parametrize("name", ["21_tcp", "25_tcp", "587_tcp"])
def test_ftp_and_smtp_greeting_is_a_220_reply(name: str) -> None:
    """RFC 959 4.2 / RFC 5321 4.2: three digits, then a space (last line) or hyphen."""
    lines = reply_lines(template(name))
    for line in lines[:-1]:
        assert re.fullmatch(r"220-.*", line), line
    assert re.fullmatch(r"220 .*", lines[-1]), lines[-1]


@pytest.mark.parametrize("name", ["25_tcp", "587_tcp"])
def test_smtp_greeting_names_a_domain(name: str) -> None:
    """RFC 5321 4.3.1: the greeting is "220 " Domain [ SP textstring ]."""
    line = reply_lines(template(name))[-1]
    assert re.fullmatch(r"220 [A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+( .*)?", line)


def test_ssh_identification_string() -> None:
    """RFC 4253 4.2: SSH-2.0-softwareversion SP comments CR LF, printable US-ASCII, <= 255."""
    data = template("22_tcp")
    assert len(data) <= SSH_IDENT_MAX
    assert re.fullmatch(rb"SSH-2\.0-[\x21-\x2c\x2e-\x7e]+( [\x20-\x7e]*)?\r\n", data)
    assert data.startswith(b"SSH-2.0-OpenSSH_") and b"Debian" in data


def test_telnet_negotiates_then_prompts_for_login() -> None:
    """RFC 854/855: IAC WILL|WONT|DO|DONT <option> triples first, then the login prompt."""
    data = template("23_tcp")
    i = 0
    while i < len(data) and data[i] == 255:
        assert data[i + 1] in (251, 252, 253, 254)  # WILL WONT DO DONT
        i += 3
    assert i >= 3, "at least one option is negotiated"
    text = data[i:]
    assert 255 not in text
    assert text.rstrip().endswith(b"login:")


def test_pop3_greeting_is_ok() -> None:
    """RFC 1939 4: the greeting is a positive response, "+OK" ... CRLF."""
    assert re.fullmatch(rb"\+OK [\x20-\x7e]*\r\n", template("110_tcp"))


def test_imap_greeting_is_untagged_ok_with_capabilities() -> None:
    """RFC 3501 7.1.1 / 7.2.1: "* OK [CAPABILITY IMAP4rev1 ...] text" CRLF."""
    data = template("143_tcp")
    match = re.fullmatch(rb"\* OK \[CAPABILITY ([^\]]+)\] [\x20-\x7e]*\r\n", data)
    assert match
    assert b"IMAP4rev1" in match.group(1).split()


def test_rfb_protocol_version() -> None:
    """RFC 6143 7.1.1: exactly "RFB xxx.yyy\\n", 12 bytes."""
    assert re.fullmatch(rb"RFB \d{3}\.\d{3}\n", template("5900_tcp"))


def test_redis_reply_is_a_resp_simple_string() -> None:
    """RESP: "+" text CRLF answers SET/CONFIG SET/SLAVEOF alike."""
    assert re.fullmatch(rb"\+[^\r\n]*\r\n", template("6379_tcp"))


def test_memcached_stats_reply() -> None:
    """memcached protocol.txt: "STAT <name> <value>" lines, then "END"."""
    lines = reply_lines(template("11211_tcp"))
    assert lines[-1] == "END"
    stats = dict(line.split(" ", 2)[1:] for line in lines[:-1] if line.startswith("STAT "))
    assert len(stats) == len(lines) - 1
    assert re.fullmatch(r"1\.\d+\.\d+", stats["version"])


# ----------------------------------------------------------------------------- HTTP


HTTP_TEMPLATES = ["80_tcp", "81_tcp", "8000_tcp", "8080_tcp", "8888_tcp", "9200_tcp"]


@pytest.mark.parametrize("name", HTTP_TEMPLATES)
def test_http_response_parses_and_content_length_matches_body(name: str) -> None:
    data = template(name)
    response, body = parse_http(data)
    assert response.version == 11
    length = response.getheader("Content-Length")
    assert length is not None and int(length) == len(body)
    assert data.endswith(b"\r\n\r\n" + body), "nothing after the body"
    assert response.getheader("Server") or response.getheader("X-elastic-product")
    assert response.getheader("Connection") == "close"


def test_http_redirect_has_location() -> None:
    response, _ = parse_http(template("8888_tcp"))
    assert response.status == 302 and response.getheader("Location")


def test_http_auth_challenge_is_basic() -> None:
    """RFC 7617: a 401 carries WWW-Authenticate: Basic realm=..."""
    response, _ = parse_http(template("81_tcp"))
    assert response.status == 401
    assert (response.getheader("WWW-Authenticate") or "").startswith('Basic realm="')


def test_elasticsearch_cluster_info_is_json() -> None:
    response, body = parse_http(template("9200_tcp"))
    assert response.status == 200
    assert (response.getheader("Content-Type") or "").startswith("application/json")
    info = json.loads(body)
    assert {"name", "cluster_name", "cluster_uuid", "version", "tagline"} <= info.keys()
    assert re.fullmatch(r"\d+\.\d+\.\d+", info["version"]["number"])


# ----------------------------------------------------------------------------- binary TCP


def test_rpc_portmapper_dump_reply() -> None:
    """RFC 5531 11 record marking and reply, RFC 1833 PMAPPROC_DUMP result list."""
    data = template("111_tcp")
    (mark,) = struct.unpack_from(">I", data)
    assert mark & 0x80000000, "last fragment"
    assert mark & 0x7FFFFFFF == len(data) - 4
    _xid, mtype, stat, flavor, vlen, accept = struct.unpack_from(">IIIIII", data, 4)
    assert (mtype, stat, flavor, vlen, accept) == (1, 0, 0, 0, 0)  # REPLY ACCEPTED NONE SUCCESS
    offset, entries = 28, []
    while struct.unpack_from(">I", data, offset)[0] == 1:
        entries.append(struct.unpack_from(">IIII", data, offset + 4))
        offset += 20
    assert offset + 4 == len(data)
    assert (100000, 2, 6, 111) in entries


def test_msrpc_bind_ack() -> None:
    """DCE 1.1 RPC (C706) 12.6.4.4: a bind_ack PDU whose frag_length is its size."""
    data = template("135_tcp")
    vers, minor, ptype, flags = data[:4]
    assert (vers, minor, ptype) == (5, 0, 12)
    assert flags & 0x03 == 0x03  # first and last fragment
    assert data[4] == 0x10  # little-endian data representation
    frag_length, auth_length, call_id = struct.unpack_from("<HHI", data, 8)
    assert frag_length == len(data) and auth_length == 0 and call_id == 1
    (sec_len,) = struct.unpack_from("<H", data, 24)
    assert data[26 + sec_len - 1] == 0, "secondary address is NUL-terminated"
    results = 26 + sec_len + (-(26 + sec_len)) % 4
    assert data[results] == 1
    result, _reason = struct.unpack_from("<HH", data, results + 4)
    assert result == 0  # acceptance
    assert results + 4 + 24 == len(data)


def test_netbios_positive_session_response() -> None:
    """RFC 1002 4.3.3: type 0x82, flags 0, length 0."""
    assert template("139_tcp") == b"\x82\x00\x00\x00"


def test_smb2_negotiate_response() -> None:
    """MS-SMB2 2.1 / 2.2.1.2 / 2.2.4 in the Direct TCP transport header.

    Why SMB2 dialect 0x0202: an SMB1 negotiate reply must echo the index of the chosen dialect
    in the client's own list, which static bytes cannot; an SMB2 NEGOTIATE response with
    DialectRevision 0x0202 is a valid answer both to an SMB2 NEGOTIATE (every SMB2 client offers
    2.0.2, the first request has MessageId 0) and to an SMB1 multi-protocol negotiate that offers
    "SMB 2.002" (MS-SMB2 3.3.5.3.1). Scanners then record an SMB2 server.
    """
    data = template("445_tcp")
    assert data[0] == 0 and int.from_bytes(data[1:4], "big") == len(data) - 4
    smb = data[4:]
    assert smb[:4] == b"\xfeSMB"
    size, _charge, status, command = struct.unpack_from("<HHIH", smb, 4)
    (flags,) = struct.unpack_from("<I", smb, 16)
    (message_id,) = struct.unpack_from("<Q", smb, 24)
    assert (size, status, command, message_id) == (64, 0, 0, 0)
    assert flags & 0x1, "SMB2_FLAGS_SERVER_TO_REDIR"
    neg_size, _security_mode, dialect = struct.unpack_from("<HHH", smb, 64)
    assert neg_size == 65 and dialect == 0x0202
    sec_offset, sec_length = struct.unpack_from("<HH", smb, 64 + 56)
    assert sec_offset == 128 and sec_offset + sec_length == len(smb)
    token = smb[sec_offset:]
    assert token[0] == 0x60 and token[1] == len(token) - 2  # GSS-API InitialContextToken
    assert bytes.fromhex("2b0601050502") in token  # SPNEGO
    assert bytes.fromhex("2b06010401823702020a") in token  # NTLMSSP


def test_tds_prelogin_response() -> None:
    """MS-TDS 2.2.3.1 packet header, 2.2.6.5 PRELOGIN option table inside the payload."""
    data = template("1433_tcp")
    ptype, status, length = struct.unpack_from(">BBH", data)
    assert (ptype, status, length) == (0x04, 0x01, len(data))  # tabular result, EOM
    payload = data[8:]
    options, offset = {}, 0
    while payload[offset] != 0xFF:
        token, at, size = struct.unpack_from(">BHH", payload, offset)
        assert at + size <= len(payload)
        options[token] = payload[at : at + size]
        offset += 5
    assert len(options[0x00]) == 6  # VERSION
    assert options[0x01] in (b"\x00", b"\x01", b"\x02", b"\x03")  # ENCRYPTION


def test_tns_refuse() -> None:
    """Oracle TNS: 8-byte header (length, checksum, type 4 REFUSE), then the reason text."""
    data = template("1521_tcp")
    length, _checksum, ptype = struct.unpack_from(">HHB", data)
    assert length == len(data) and ptype == 4
    (text_length,) = struct.unpack_from(">H", data, 10)
    text = data[12:]
    assert text_length == len(text)
    assert text.startswith(b"(DESCRIPTION=") and text.count(b"(") == text.count(b")")


def test_mysql_handshake_v10() -> None:
    """MySQL Protocol::HandshakeV10, with a 3-byte length and sequence id 0."""
    data = template("3306_tcp")
    assert int.from_bytes(data[:3], "little") == len(data) - 4 and data[3] == 0
    payload = data[4:]
    assert payload[0] == 10
    version, _, rest = payload[1:].partition(b"\x00")
    assert re.fullmatch(rb"\d+\.\d+\.\d+.*", version)
    salt1, rest = rest[4:12], rest[13:]
    caps_low, _charset, _status, caps_high, salt_len = struct.unpack_from("<HBHHB", rest)
    caps = caps_low | caps_high << 16
    assert caps & 0x200 and caps & 0x8000 and caps & 0x80000  # PROTOCOL_41, SECURE, PLUGIN_AUTH
    rest = rest[8 + 10 :]
    salt2_len = max(13, salt_len - 8)
    salt2, plugin = rest[:salt2_len], rest[salt2_len:]
    assert len(salt1 + salt2[:-1]) == salt_len - 1 == 20 and salt2[-1] == 0
    assert b"\x00" not in salt1 + salt2[:-1]
    assert plugin.endswith(b"\x00") and plugin[:-1] in (
        b"mysql_native_password",
        b"caching_sha2_password",
    )


def test_rdp_connection_confirm() -> None:
    """RFC 1006 TPKT, X.224 Connection Confirm (ISO 8073), MS-RDPBCGR 2.2.1.2.1 RDP_NEG_RSP."""
    data = template("3389_tcp")
    version, _reserved, length = struct.unpack_from(">BBH", data)
    assert version == 3 and length == len(data)
    li, code = data[4], data[5]
    assert code & 0xF0 == 0xD0 and li == len(data) - 5
    neg_type, _flags, neg_length, protocol = struct.unpack_from("<BBHI", data, 11)
    assert (neg_type, neg_length, protocol) == (0x02, 8, 0)  # TYPE_RDP_NEG_RSP, PROTOCOL_RDP


def test_postgres_refuses_tls_then_asks_for_cleartext_password() -> None:
    """Protocol 3.0: 'N' answers SSLRequest; then AuthenticationCleartextPassword ('R', 8, 3).

    A client that asked for TLS reads one byte, sends its StartupMessage (user, database) and
    finds the password request already waiting: it answers with the password.
    """
    data = template("5432_tcp")
    assert data[:1] == b"N"
    kind, length, code = struct.unpack(">cII", data[1:])
    assert (kind, length, code) == (b"R", 8, 3)


# ----------------------------------------------------------------------------- UDP


def test_sip_response() -> None:
    """RFC 3261 7.2 / 8.2.6.2: status line and the mandatory headers of a response."""
    status, headers, body = split_headers(template("5060_udp"))
    assert re.fullmatch(r"SIP/2\.0 [1-6]\d\d .+", status)
    for field in ("Via", "From", "To", "Call-ID", "CSeq"):
        assert headers[field], field
    assert re.fullmatch(r"\d+ [A-Z]+", headers["CSeq"])
    assert int(headers["Content-Length"]) == len(body) == 0


def test_ntp_reply_is_an_unsynchronised_server() -> None:
    """RFC 5905 7.3: 48 bytes, mode 4 (server); LI 3 / stratum 0 / "INIT": no time is claimed,
    since static bytes can neither carry the current time nor echo the origin timestamp."""
    data = template("123_udp")
    assert len(data) == 48
    li, version, mode = data[0] >> 6, data[0] >> 3 & 7, data[0] & 7
    assert (li, version, mode) == (3, 4, 4)
    assert data[1] == 0 and data[12:16] == b"INIT"


def ber(data: bytes, offset: int) -> tuple[int, bytes, int]:
    """One BER TLV (definite length) at offset: tag, contents, offset after it."""
    tag, length = data[offset], data[offset + 1]
    offset += 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[offset : offset + count], "big")
        offset += count
    return tag, data[offset : offset + length], offset + length


def test_snmp_get_response() -> None:
    """RFC 3416 / RFC 1901: Message{version 1 (v2c), community, GetResponse-PDU{...}}."""
    data = template("161_udp")
    tag, message, end = ber(data, 0)
    assert tag == 0x30 and end == len(data)
    tag, version, at = ber(message, 0)
    assert tag == 0x02 and version == b"\x01"
    tag, community, at = ber(message, at)
    assert tag == 0x04 and community
    tag, pdu, at = ber(message, at)
    assert tag == 0xA2 and at == len(message)  # GetResponse-PDU
    fields, at = [], 0
    while at < len(pdu):
        tag, value, at = ber(pdu, at)
        fields.append((tag, value))
    assert [tag for tag, _ in fields] == [0x02, 0x02, 0x02, 0x30]
    assert fields[1][1] == b"\x00"  # error-status noError
    _, binding, _ = ber(fields[3][1], 0)
    tag, oid, at = ber(binding, 0)
    assert tag == 0x06 and oid == bytes([0x2B, 6, 1, 2, 1, 1, 1, 0])  # sysDescr.0
    tag, _descr, _ = ber(binding, at)
    assert tag == 0x04


def test_ssdp_search_response() -> None:
    """UPnP Device Architecture 1.1, 1.3.3: HTTPU 200 with ST, USN, LOCATION, CACHE-CONTROL."""
    status, headers, body = split_headers(template("1900_udp"))
    assert status == "HTTP/1.1 200 OK" and body == b""
    for field in ("CACHE-CONTROL", "EXT", "LOCATION", "SERVER", "ST", "USN"):
        assert headers[field] is not None, field
    assert re.fullmatch(r"max-age=\d+", headers["CACHE-CONTROL"])
    assert headers["USN"].startswith("uuid:")
