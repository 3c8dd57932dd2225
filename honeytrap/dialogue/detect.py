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

_HTTP_METHODS = (b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT",
                 b"TRACE", b"PROPFIND")
_SIP_METHODS = (b"OPTIONS", b"REGISTER", b"INVITE", b"ACK", b"BYE", b"CANCEL", b"SUBSCRIBE",
                b"NOTIFY", b"MESSAGE", b"INFO")
_REDIS_COMMANDS = (b"PING", b"INFO", b"CONFIG", b"AUTH", b"SLAVEOF", b"REPLICAOF", b"MODULE",
                   b"FLUSHALL")  # inline commands, any case
_SMTP_COMMANDS = (b"EHLO", b"HELO")  # any case
_HTTP = re.compile(rb"(" + b"|".join(_HTTP_METHODS) + rb") \S")
_SIP = re.compile(rb"(" + b"|".join(_SIP_METHODS) + rb") sips?:")
_REDIS_INLINE = re.compile(rb"(?i)(" + b"|".join(_REDIS_COMMANDS) + rb")\b")
_SMTP = re.compile(rb"(?i)(" + b"|".join(_SMTP_COMMANDS) + rb") ")
_RESP = re.compile(rb"\*[0-9]")  # compiled once: re.match looked it up in re's cache each time
# PostgreSQL (frontend/backend protocol): SSLRequest, GSSENCRequest, StartupMessage 3.0.
_POSTGRES_CODES = (b"\x04\xd2\x16\x2f", b"\x04\xd2\x16\x30", b"\x00\x03\x00\x00")


def _first_bytes(words: tuple[bytes, ...], any_case: bool = False) -> frozenset[int]:
    """The bytes a match of one of `words` can start with (ASCII case folded, as re's (?i) does
    for bytes patterns)."""
    firsts = {word[0] for word in words}
    if any_case:
        firsts |= {ord(chr(b).lower()) for b in firsts} | {ord(chr(b).upper()) for b in firsts}
    return frozenset(firsts)


# A pattern is tried only on data starting with a byte a match of it can start with: most
# clients' first bytes start none of them, and the five matches were most of classify's cost
# (one per connection of every port without a template: ~1.9 -> ~0.5 us, timeit).
_SIP_FIRST = _first_bytes(_SIP_METHODS)
_HTTP_FIRST = _first_bytes(_HTTP_METHODS)
_REDIS_FIRST = _first_bytes(_REDIS_COMMANDS, any_case=True) | {ord("*")}
_SMTP_FIRST = _first_bytes(_SMTP_COMMANDS, any_case=True)


def classify(data: bytes) -> str | None:
    """The protocol of a client's first bytes, by its name in the catalog; None if unknown."""
    if not data:
        return None
    first = data[0]
    if len(data) >= 3 and first == 0x16 and data[1] == 0x03:
        return "tls"  # a TLS record of type handshake (RFC 8446 5.1): a ClientHello
    if data.startswith(b"SSH-"):
        return "ssh"  # RFC 4253 4.2 identification string
    if first in _SIP_FIRST and _SIP.match(data):
        return "sip"  # RFC 3261 7.1 Request-Line (checked before HTTP: OPTIONS is both)
    if first in _HTTP_FIRST and _HTTP.match(data):
        return "http"
    if len(data) >= 8 and first == 0 and data[4:8] in (b"\xffSMB", b"\xfeSMB"):
        return "smb"  # MS-SMB2 2.1 direct TCP header, SMB1 or SMB2 negotiate
    if first == 0x81:
        return "smb"  # RFC 1002 4.3.2 NetBIOS SESSION REQUEST
    if len(data) >= 6 and first == 3 and data[1] == 0 and data[5] & 0xF0 == 0xE0:
        return "rdp"  # RFC 1006 TPKT with an X.224 Connection Request (MS-RDPBCGR 2.2.1.1)
    if len(data) >= 8 and data[4:8] in _POSTGRES_CODES:
        return "postgres"
    if first in _REDIS_FIRST and (_RESP.match(data) or _REDIS_INLINE.match(data)):
        return "redis"  # RESP array of bulk strings, or an inline command
    if first in _SMTP_FIRST and _SMTP.match(data):
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
