"""SNMP v1/v2c over UDP (RFC 1157, RFC 3416, BER per X.690): a GetResponse with the request's
version, community and request-id echoed. sysDescr.0 and sysName.0 get the sensor's values
(templates/snmp.sysdescr, per sensor); other names get noSuchObject (v2c) or noSuchName (v1);
GetNext/GetBulk below sysDescr.0 (a walk's first step) get sysDescr.0, beyond it
endOfMibView. v3 gets nothing: its discovery reply is larger than the request."""

from __future__ import annotations

from honeytrap.dialogue import sensor
from honeytrap.dialogue.base import Context, Dialogue
from honeytrap.dialogue.binary import Cursor, Truncated
from honeytrap.dialogue.datagram import DatagramDialogue

DESCRIPTIONS = "snmp.sysdescr"

SEQUENCE, INTEGER, OCTET_STRING, NULL, OID = 0x30, 0x02, 0x04, 0x05, 0x06
GET, GET_NEXT, RESPONSE, GET_BULK = 0xA0, 0xA1, 0xA2, 0xA5
NO_SUCH_OBJECT, END_OF_MIB_VIEW = 0x80, 0x82
NO_SUCH_NAME = 2
SYS_DESCR: tuple[int, ...] = (1, 3, 6, 1, 2, 1, 1, 1, 0)
SYS_NAME: tuple[int, ...] = (1, 3, 6, 1, 2, 1, 1, 5, 0)
MAX_VARBINDS = 16
MAX_COMMUNITY = 64


def tlv(c: Cursor) -> tuple[int, bytes]:
    tag = c.le(1)
    length = c.le(1)
    if length & 0x80:
        size = length & 0x7F
        if not 1 <= size <= 3:
            raise Truncated(f"BER length of {size} bytes")
        length = c.be(size)
    return tag, c.take(length)


def expect(c: Cursor, tag: int) -> bytes:
    got, value = tlv(c)
    if got != tag:
        raise Truncated(f"BER tag 0x{got:02x}, want 0x{tag:02x}")
    return value


def enc(tag: int, value: bytes) -> bytes:
    n = len(value)
    if n < 0x80:
        return bytes([tag, n]) + value
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(raw)]) + raw + value


def integer(value: bytes | int) -> bytes:
    if isinstance(value, int):
        value = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big", signed=True)
    return enc(INTEGER, value)


def oid_of(raw: bytes) -> tuple[int, ...]:
    if not raw:
        raise Truncated("empty OID")
    parts = [raw[0] // 40, raw[0] % 40]
    value = 0
    for b in raw[1:]:
        value = value << 7 | (b & 0x7F)
        if not b & 0x80:
            parts.append(value)
            value = 0
    return tuple(parts)


def oid_bytes(oid: tuple[int, ...]) -> bytes:
    out = bytearray([oid[0] * 40 + oid[1]])
    for part in oid[2:]:
        chunk = [part & 0x7F]
        part >>= 7
        while part:
            chunk.append(0x80 | (part & 0x7F))
            part >>= 7
        out += bytes(reversed(chunk))
    return bytes(out)


def _binding(oid: tuple[int, ...], value: bytes) -> bytes:
    return enc(SEQUENCE, enc(OID, oid_bytes(oid)) + value)


def reply(datagram: bytes, descr: str, name: str) -> bytes | None:
    try:
        return _reply(datagram, descr, name)
    except Truncated:
        return None


def _reply(datagram: bytes, descr: str, name: str) -> bytes | None:
    message = Cursor(expect(Cursor(datagram), SEQUENCE))
    version_raw = expect(message, INTEGER)
    version = int.from_bytes(version_raw, "big")
    if version not in (0, 1) or len(version_raw) != 1:
        return None
    community = expect(message, OCTET_STRING)
    if len(community) > MAX_COMMUNITY:
        return None
    pdu_tag, pdu = tlv(message)
    if pdu_tag not in (GET, GET_NEXT, GET_BULK) or (pdu_tag == GET_BULK and version == 0):
        return None
    p = Cursor(pdu)
    request_id = expect(p, INTEGER)
    expect(p, INTEGER)
    expect(p, INTEGER)  # error-status, error-index (non-repeaters, max-repetitions in bulk)
    varbinds = Cursor(expect(p, SEQUENCE))
    oids: list[tuple[int, ...]] = []
    while varbinds.left() and len(oids) < MAX_VARBINDS:
        vb = Cursor(expect(varbinds, SEQUENCE))
        oids.append(oid_of(expect(vb, OID)))
    values = {SYS_DESCR: enc(OCTET_STRING, descr.encode()),
              SYS_NAME: enc(OCTET_STRING, name.encode())}
    bindings, error, index = b"", 0, 0
    for i, oid in enumerate(oids, 1):
        if pdu_tag == GET:
            found = values.get(oid)
            answer_oid = oid
        else:  # the next name after `oid` (strictly greater), none after sysName.0
            following = [known for known in (SYS_DESCR, SYS_NAME) if oid < known]
            answer_oid = following[0] if following else oid
            found = values.get(answer_oid) if following else None
        if found is None:
            if version == 0:
                error, index = error or NO_SUCH_NAME, index or i
                found = enc(NULL, b"")
            else:
                found = enc(NO_SUCH_OBJECT if pdu_tag == GET else END_OF_MIB_VIEW, b"")
        bindings += _binding(answer_oid, found)
    body = (enc(INTEGER, request_id) + integer(error) + integer(index)
            + enc(SEQUENCE, bindings))
    return enc(SEQUENCE, enc(INTEGER, version_raw) + enc(OCTET_STRING, community)
               + enc(RESPONSE, body))


def answer(datagram: bytes, ctx: Context, budget: int) -> bytes | None:
    """The reply with this sensor's sysDescr.0, cut where the reply would exceed `budget`."""
    name = ctx.hostname.split(".")[0][:64]
    descr = sensor.pick(DESCRIPTIONS, ctx.hostname).replace("{host}", name)
    out = reply(datagram, descr, name)
    if out is not None and len(out) > budget:
        out = reply(datagram, descr[: max(0, len(descr) - (len(out) - budget) - 2)], name)
    return out


def factory(ctx: Context) -> Dialogue:
    return DatagramDialogue("snmp", answer, ctx)
