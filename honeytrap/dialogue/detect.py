"""Protocol detection from a client's first bytes, for ports without a template of their own.

`classify` names the protocol a client speaks from its first bytes (None: not known yet or not
at all); `Detector` is the dialogue of such a port: silent until the client speaks, then the
dialogue of what it spoke (looked up by name in the catalog, catalog.py), fed what it sent.
A client that never speaks gets silence; one that speaks an unknown protocol gets the default
answer (templates.DEFAULT_TEMPLATE) once per turn, as the original answered every port.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from honeytrap.dialogue.base import Context, Dialogue, Reply

# Bytes buffered before deciding: every signature below is decided within this many.
SNIFF_BYTES = 16

_HTTP = re.compile(rb"(GET|POST|HEAD|PUT|DELETE|OPTIONS|PATCH|CONNECT|TRACE|PROPFIND) \S")
_SIP = re.compile(rb"(OPTIONS|REGISTER|INVITE|ACK|BYE|CANCEL|SUBSCRIBE|NOTIFY|MESSAGE|INFO) sips?:")
_REDIS_INLINE = re.compile(rb"(?i)(PING|INFO|CONFIG|AUTH|SLAVEOF|REPLICAOF|MODULE|FLUSHALL)\b")
_SMTP = re.compile(rb"(?i)(EHLO|HELO) ")
_RESP = re.compile(rb"\*[0-9]")  # compiled once: re.match looked it up in re's cache each time
# PostgreSQL (frontend/backend protocol): SSLRequest, GSSENCRequest, StartupMessage 3.0.
_POSTGRES_CODES = (b"\x04\xd2\x16\x2f", b"\x04\xd2\x16\x30", b"\x00\x03\x00\x00")


def classify(data: bytes) -> str | None:
    """The protocol of a client's first bytes, by its name in the catalog; None if unknown."""
    if len(data) >= 3 and data[0] == 0x16 and data[1] == 0x03:
        return "tls"  # a TLS record of type handshake (RFC 8446 5.1): a ClientHello
    if data.startswith(b"SSH-"):
        return "ssh"  # RFC 4253 4.2 identification string
    if _SIP.match(data):
        return "sip"  # RFC 3261 7.1 Request-Line (checked before HTTP: OPTIONS is both)
    if _HTTP.match(data):
        return "http"
    if len(data) >= 8 and data[0] == 0 and data[4:8] in (b"\xffSMB", b"\xfeSMB"):
        return "smb"  # MS-SMB2 2.1 direct TCP header, SMB1 or SMB2 negotiate
    if data[:1] == b"\x81":
        return "smb"  # RFC 1002 4.3.2 NetBIOS SESSION REQUEST
    if len(data) >= 6 and data[0] == 3 and data[1] == 0 and data[5] & 0xF0 == 0xE0:
        return "rdp"  # RFC 1006 TPKT with an X.224 Connection Request (MS-RDPBCGR 2.2.1.1)
    if len(data) >= 8 and data[4:8] in _POSTGRES_CODES:
        return "postgres"
    if _RESP.match(data) or _REDIS_INLINE.match(data):
        return "redis"  # RESP array of bulk strings, or an inline command
    if _SMTP.match(data):
        return "smtp"
    return None


def decided(data: bytes) -> bool:
    """Enough bytes to tell (or a line already ended): classify's answer stands."""
    return len(data) >= SNIFF_BYTES or b"\n" in data


class Detector:
    """Silence until the client speaks; then the dialogue of what it speaks."""

    def __init__(
        self, ctx: Context, lookup: Callable[[str, Context], Dialogue | None],
        unknown: Callable[[Context], Dialogue],
    ) -> None:
        self.ctx = ctx
        self.lookup = lookup  # a protocol name to a fresh dialogue, None if not served
        self.unknown = unknown  # the dialogue for a protocol we do not know
        self.buffer = b""
        self.inner: Dialogue | None = None
        self.detected = ""
        self.name = "none"  # the inner dialogue's, once chosen

    @property
    def quiet(self) -> float | None:
        return getattr(self.inner, "quiet", None)

    def start(self) -> bytes:
        return b""

    def receive(self, data: bytes) -> Reply:
        if self.inner is not None:
            return self.inner.receive(data)
        self.buffer += data
        name = classify(self.buffer)
        if name is None and not decided(self.buffer):
            return Reply()
        return self._choose(name)

    def idle(self) -> Reply:
        if self.inner is not None:
            return self.inner.idle()
        if not self.buffer:
            return Reply()  # a silent client: silence, never a newline on every port
        return self._choose(classify(self.buffer))

    def _choose(self, name: str | None) -> Reply:
        inner = self.lookup(name, self.ctx) if name is not None else None
        self.detected = name or ""
        if inner is None:
            inner = self.unknown(self.ctx)
        self.inner = inner
        self.name = inner.name
        first = inner.start()
        reply = inner.receive(self.buffer)
        self.buffer = b""
        if first:
            reply.send = first + reply.send
        return reply

    def record(self) -> dict[str, Any]:
        fields = dict(self.inner.record()) if self.inner is not None else {}
        fields["detected"] = self.detected
        return fields
