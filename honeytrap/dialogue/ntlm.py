"""NTLMSSP (MS-NLMP) as far as a server needs to learn who logs in: the CHALLENGE message with a
fresh server challenge and the target information clients expect, and the fields of the
client's AUTHENTICATE message (user, domain, workstation, the NTLM responses: with the server
challenge, a NetNTLMv2 response is crackable offline, which is why it is recorded). Wrapped in
the SPNEGO (RFC 4178) tokens that SMB carries. No signature, no session key: nothing succeeds.
"""

from __future__ import annotations

import struct
from typing import Any

from honeytrap.dialogue.binary import Cursor, Truncated

SIGNATURE = b"NTLMSSP\0"
NEGOTIATE, CHALLENGE, AUTHENTICATE = 1, 2, 3
# MS-NLMP 2.2.2.5 flags of a Windows server's CHALLENGE: UNICODE, REQUEST_TARGET, SIGN, NTLM,
# ALWAYS_SIGN, TARGET_TYPE_DOMAIN, EXTENDED_SESSIONSECURITY, TARGET_INFO, VERSION, 128,
# KEY_EXCH, 56
CHALLENGE_FLAGS = 0xE28A8215
NEGOTIATE_UNICODE = 0x1
# MS-NLMP 2.2.2.1 AV_PAIR ids
AV_EOL, AV_NB_COMPUTER, AV_NB_DOMAIN, AV_DNS_COMPUTER, AV_DNS_DOMAIN = 0, 1, 2, 3, 4
AV_TIMESTAMP = 7
NTLM_REVISION = 15  # NTLMSSP_REVISION_W2K3
FILETIME_EPOCH = 116444736000000000  # 1601-01-01 to 1970-01-01 in 100 ns
MAX_FIELD = 1024
# DER for the SPNEGO OIDs: 1.3.6.1.5.5.2 (SPNEGO) and 1.3.6.1.4.1.311.2.2.10 (NTLMSSP)
OID_SPNEGO = b"\x06\x06\x2b\x06\x01\x05\x05\x02"
OID_NTLMSSP = b"\x06\x0a\x2b\x06\x01\x04\x01\x82\x37\x02\x02\x0a"


def der(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + body


def spnego_init() -> bytes:
    """The negTokenInit of an SMB2 NEGOTIATE response: NTLMSSP as the one mechanism."""
    mech_types = der(0xA0, der(0x30, OID_NTLMSSP))
    return der(0x60, OID_SPNEGO + der(0xA0, der(0x30, mech_types)))


def spnego_challenge(ntlm: bytes) -> bytes:
    """negTokenResp: accept-incomplete, NTLMSSP, the CHALLENGE as responseToken."""
    return der(0xA1, der(0x30, der(0xA0, b"\x0a\x01\x01") + der(0xA1, OID_NTLMSSP)
                         + der(0xA2, der(0x04, ntlm))))


def filetime(unix: float) -> int:
    return FILETIME_EPOCH + int(unix * 10_000_000)


def _av(av_id: int, value: bytes) -> bytes:
    return struct.pack("<HH", av_id, len(value)) + value


def challenge(server_challenge: bytes, domain: str, computer: str, dns_domain: str,
              version: tuple[int, int, int], unix_time: float) -> bytes:
    """MS-NLMP 2.2.1.2 CHALLENGE_MESSAGE."""
    target = domain.encode("utf-16-le")
    info = (_av(AV_NB_DOMAIN, target) + _av(AV_NB_COMPUTER, computer.encode("utf-16-le"))
            + _av(AV_DNS_DOMAIN, dns_domain.encode("utf-16-le"))
            + _av(AV_DNS_COMPUTER, computer.lower().encode("utf-16-le"))
            + _av(AV_TIMESTAMP, struct.pack("<Q", filetime(unix_time))) + _av(AV_EOL, b""))
    header = 56
    major, minor, build = version
    return (SIGNATURE + struct.pack("<I", CHALLENGE)
            + struct.pack("<HHI", len(target), len(target), header)
            + struct.pack("<I", CHALLENGE_FLAGS) + server_challenge + b"\0" * 8
            + struct.pack("<HHI", len(info), len(info), header + len(target))
            + struct.pack("<BBHxxxB", major, minor, build, NTLM_REVISION) + target + info)


def find_message(blob: bytes) -> tuple[int, bytes] | None:
    """The NTLMSSP message inside a security blob (raw, or in SPNEGO: the DER is not worth
    parsing to find it), as (type, bytes from the signature on)."""
    at = blob.find(SIGNATURE)
    if at < 0 or len(blob) - at < 12:
        return None
    return int.from_bytes(blob[at + 8 : at + 12], "little"), blob[at:]


def _field(msg: bytes, c: Cursor) -> bytes:
    length, _, offset = struct.unpack("<HHI", c.take(8))
    if length > MAX_FIELD or offset + length > len(msg):
        raise Truncated(f"field of {length} bytes at {offset}")
    return msg[offset : offset + length]


def parse_authenticate(msg: bytes) -> dict[str, Any]:
    """MS-NLMP 2.2.1.3 AUTHENTICATE_MESSAGE: names and responses; Truncated if it does not
    parse."""
    c = Cursor(msg, 12)
    lm, nt, domain, user, workstation, _key = (_field(msg, c) for _ in range(6))
    flags = c.le(4)
    enc = "utf-16-le" if flags & NEGOTIATE_UNICODE else "latin-1"
    return {"user": user.decode(enc, "replace"), "domain": domain.decode(enc, "replace"),
            "workstation": workstation.decode(enc, "replace"), "lm_response": lm,
            "nt_response": nt}
