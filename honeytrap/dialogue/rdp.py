"""RDP up to the client's settings (MS-RDPBCGR 1.3.1.1, connection initiation): the client's
X.224 Connection Request in a TPKT (RFC 1006, ITU-T X.224) is answered with a Connection
Confirm carrying an RDP_NEG_RSP. A client that offers TLS (PROTOCOL_SSL) gets it, through the
TLS dialogue with the sensor's certificate, and its MCS Connect Initial (client name, screen,
keyboard) is recorded decrypted; a client that offers nothing gets standard RDP security and
sends the same in clear. Recorded: the cookie (mstshash carries a user name) or routing token,
the requested protocols, the one selected. Then the connection closes: we have no MCS Connect
Response to give.
"""

from __future__ import annotations

import struct
from typing import Any

from honeytrap.dialogue import tls
from honeytrap.dialogue.base import Context, Dialogue, Reply
from honeytrap.dialogue.binary import text

TPKT_VERSION = 3
X224_CR, X224_CC = 0xE0, 0xD0  # TPDU codes, high nibble (ITU-T X.224 13.3)
NEG_REQ, NEG_RSP = 0x01, 0x02  # MS-RDPBCGR 2.2.1.1.1, 2.2.1.2.1
PROTOCOL_RDP, PROTOCOL_SSL = 0x0, 0x1
# RDP_NEG_RSP flags of a Windows server: EXTENDED_CLIENT_DATA_SUPPORTED, DYNVC_GFX_PROTOCOL_
# SUPPORTED, NEGRSP_FLAG_RESERVED, RESTRICTED_ADMIN_MODE_SUPPORTED, REDIRECTED_AUTHENTICATION_
# MODE_SUPPORTED (2.2.1.2.1)
NEG_RSP_FLAGS = 0x1F
SOURCE_REF = 0x1234  # the src-ref Windows puts in its Connection Confirm
# A Connection Request is under 100 bytes (cookie up to ~60); RFC 1006 caps TPKT at 65535.
MAX_REQUEST = 4096


class AfterConfirm:
    """The inner dialogue behind RDP's TLS: the MCS Connect Initial is recorded (decrypted by
    the TLS layer) and the connection closed, as a server that refuses the client's settings
    does (we have no MCS Connect Response to give)."""

    name = "rdp"

    def start(self) -> bytes:
        return b""

    def receive(self, data: bytes) -> Reply:
        return Reply(close=True)

    def idle(self) -> Reply:
        return Reply()

    def record(self) -> dict[str, Any]:
        return {}


def parse_request(tpdu: bytes) -> dict[str, Any]:
    """The X.224 Connection Request after the TPKT header: cookie and RDP_NEG_REQ, if any."""
    if len(tpdu) < 7 or tpdu[1] & 0xF0 != X224_CR or tpdu[0] != len(tpdu) - 1:
        raise ValueError("not an X.224 Connection Request")
    rest = tpdu[7:]
    fields: dict[str, Any] = {"cookie": "", "requested_protocols": None}
    if rest.startswith(b"Cookie: "):  # mstshash=<user> or msts=<routing token> (2.2.1.1)
        end = rest.find(b"\r\n")
        if end < 0:
            raise ValueError("cookie without CR LF")
        fields["cookie"] = text(rest[8:end])
        rest = rest[end + 2 :]
    if len(rest) >= 8 and rest[0] == NEG_REQ:
        _, _, length, protocols = struct.unpack("<BBHI", rest[:8])
        if length != 8:
            raise ValueError(f"RDP_NEG_REQ length {length}")
        fields["requested_protocols"] = protocols
    return fields


def confirm(requested: int | None, selected: int) -> bytes:
    neg = b"" if requested is None else struct.pack("<BBHI", NEG_RSP, NEG_RSP_FLAGS, 8, selected)
    x224 = bytes([6 + len(neg), X224_CC]) + struct.pack("!HHB", 0, SOURCE_REF, 0) + neg
    return struct.pack("!BBH", TPKT_VERSION, 0, 4 + len(x224)) + x224


class RdpDialogue:
    name = "rdp"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._buf = bytearray()
        self._tls: tls.TlsDialogue | None = None
        self._confirmed = False
        self._done = False
        self._rec: dict[str, Any] = {"cookie": "", "requested_protocols": None,
                                     "selected_protocol": None, "error": ""}

    def start(self) -> bytes:
        return b""  # the client speaks first

    def receive(self, data: bytes) -> Reply:
        if self._done:
            return Reply(close=True)
        if self._tls is not None:
            return self._tls.receive(data)
        if self._confirmed:  # standard RDP security: the MCS Connect Initial, recorded raw
            return AfterConfirm().receive(data)
        self._buf += data
        if len(self._buf) < 4:
            return Reply()
        version, _, length = struct.unpack_from("!BBH", self._buf)
        if version != TPKT_VERSION or not 11 <= length <= MAX_REQUEST:
            return self._fail(f"not a TPKT (version {version}, length {length})")
        if len(self._buf) < length:
            return Reply()
        try:
            fields = parse_request(bytes(self._buf[4:length]))
        except ValueError as exc:
            return self._fail(str(exc))
        self._rec.update(fields)
        rest = bytes(self._buf[length:])
        requested = fields["requested_protocols"]
        selected = PROTOCOL_SSL if requested and requested & PROTOCOL_SSL else PROTOCOL_RDP
        self._rec["selected_protocol"] = selected
        self._confirmed = True
        send = confirm(requested, selected)
        if selected == PROTOCOL_SSL:
            self._tls = tls.TlsDialogue(self.ctx, lambda first: AfterConfirm())
            if rest:  # a client that did not wait for the confirm
                reply = self._tls.receive(rest)
                return Reply(send + reply.send, reply.close)
        return Reply(send)

    def idle(self) -> Reply:
        return self._tls.idle() if self._tls is not None else Reply()

    def record(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"rdp": dict(self._rec)}
        if self._tls is not None:
            fields.update(self._tls.record())
        return fields

    def _fail(self, why: str) -> Reply:
        self._rec["error"] = why
        self._done = True
        return Reply(close=True)


def factory(ctx: Context) -> Dialogue:
    """The catalog's DialogueFactory for this protocol."""
    return RdpDialogue(ctx)
