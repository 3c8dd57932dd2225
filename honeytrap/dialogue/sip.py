"""SIP (RFC 3261) over UDP and TCP: a response that carries the request's Via headers, From, To
(with a tag of ours, 8.2.6.2), Call-ID and CSeq, so scanners and clients match it to their
request. OPTIONS (the scanners' probe) gets 200 OK with Allow; REGISTER and INVITE get 401 with
a Digest challenge (RFC 3261 22.4, fresh nonce) so the next request carries the credentials;
other methods 405. Responses are never sent to responses.

Over UDP each datagram is one message (DatagramDialogue: at most twice the datagram, the
reflector bound). Over TCP the stream is framed as section 18.3 says (`Framer`: the headers end
at the blank line, the body is Content-Length bytes), so one connection carries any number of
requests, each answered in order; CRLFs before a start line are skipped (7.5) and a CRLFCRLF
keep-alive gets its CRLF (RFC 5626 3.5.1). `factory` serves the one or the other by the
connection's protocol.

On either transport the topmost Via of the response says where the request came from, as a
server must (RFC 3261 18.2.1; RFC 3581 4): `received=<source address>` when its sent-by host is
not that address or it asked for `rport`, and a bare `rport` gets the source port as its value
(a `received` the client wrote itself is replaced). The source is the context's remote
address; without one (unit tests) the Via is echoed as it came.
"""

from __future__ import annotations

import random
from typing import Any

from honeytrap.dialogue import sensor
from honeytrap.dialogue.base import Context, Dialogue, Reply
from honeytrap.dialogue.datagram import DatagramDialogue

SERVERS = "sip.servers"

METHODS_200 = {"OPTIONS"}
METHODS_401 = {"REGISTER", "INVITE", "SUBSCRIBE", "MESSAGE"}
ALLOW = "INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, SUBSCRIBE, NOTIFY, INFO, PUBLISH, MESSAGE"
# RFC 3261 7.3.3 compact header names
COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id"}
ECHOED = {"via": "Via", "from": "From", "to": "To", "call-id": "Call-ID", "cseq": "CSeq"}
MAX_LINE = 1024
MAX_HEADERS = 64
# TCP framing (RFC 3261 18.3). A request's start line and headers as parse() reads them at most
# (and the blank line); a longer head is not a SIP client we follow.
MAX_HEAD = (MAX_HEADERS + 1) * (MAX_LINE + 2) + 2
# A body (an INVITE's SDP) is a few hundred bytes to a few KiB; a Content-Length over this is
# refused (the stream cannot be framed past it).
MAX_BODY = 64 * 1024
# Over TCP the handshake proved the source address: no amplification bound on a reply, which
# is the request's echoed headers and a few of ours.
STREAM_BUDGET = MAX_HEAD + 1024
# Methods kept in a TCP connection's record (the raw bytes keep every request).
MAX_METHODS = 64
CRLF = b"\r\n"
KEEPALIVE = CRLF + CRLF  # RFC 5626 3.5.1 "ping"; the "pong" is one CRLF


def parse(datagram: bytes) -> tuple[str, list[tuple[str, str]]] | None:
    """(method, [(lower-case name, value)]) of a SIP request, None if not one."""
    head = datagram.split(b"\r\n\r\n", 1)[0]
    try:
        lines = head.decode("utf-8").split("\r\n")
    except UnicodeDecodeError:
        return None
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] != "SIP/2.0" or not parts[0].isalpha() or not parts[0].isupper():
        return None
    headers = []
    for line in lines[1 : MAX_HEADERS + 1]:
        name, sep, value = line.partition(":")
        if not sep or len(line) > MAX_LINE or any(ord(ch) < 0x20 for ch in line):
            return None
        key = name.strip().lower()
        headers.append((COMPACT.get(key, key), value.strip()))
    return parts[0], headers


def topmost_via(value: str, source: tuple[str, int]) -> str:
    """A Via header's value with its first via-parm marked with where the request came from
    (`source`: address, port): received and rport (RFC 3261 18.2.1, RFC 3581 4). Values after
    the first comma (more via-parms in one header) are kept as they are."""
    first, comma, rest = value.partition(",")
    sent, *params = [part.strip() for part in first.split(";")]
    host = sent.rsplit(None, 1)[-1] if sent else ""
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    address, port = source
    kept, rport = [], False
    for param in params:
        name, equals, _value = param.partition("=")
        name = name.strip().lower()
        if name == "received":
            continue  # ours replaces it
        if name == "rport" and not equals:
            rport = True
            param = f"rport={port}"
        kept.append(param)
    if rport or host.lower() != address.lower():
        kept.append(f"received={address}")
    return ";".join([sent, *kept]) + comma + rest


def reply(datagram: bytes, rng: random.Random, server: str, budget: int,
          source: tuple[str, int] | None = None) -> bytes | None:
    """The response, at most `budget` bytes: the optional headers (Server, Allow, Accept) are
    left out when they would not fit. `source` (address, port) marks the topmost Via."""
    return respond(parse(datagram), rng, server, budget, source)


def respond(parsed: tuple[str, list[tuple[str, str]]] | None, rng: random.Random, server: str,
            budget: int, source: tuple[str, int] | None = None) -> bytes | None:
    """reply() for a request already parsed (None: not a request, no response)."""
    if parsed is None:
        return None
    method, headers = parsed
    found = {name for name, _ in headers}
    if not set(ECHOED) <= found or method == "ACK":
        return None  # RFC 3261 8.1.1: a request lacks none of these; ACK gets no response
    if method in METHODS_200:
        status, extra = "200 OK", [f"Allow: {ALLOW}", "Accept: application/sdp"]
    elif method in METHODS_401:
        nonce = rng.randbytes(16).hex()
        status = "401 Unauthorized"
        extra = [f'WWW-Authenticate: Digest realm="asterisk",nonce="{nonce}",algorithm=MD5']
    else:
        status, extra = "405 Method Not Allowed", [f"Allow: {ALLOW}"]
    tag = rng.randbytes(4).hex()
    out = [f"SIP/2.0 {status}"]
    via_marked = source is None
    for name, value in headers:
        if name not in ECHOED:
            continue
        if name == "to" and ";tag=" not in value:
            value += f";tag={tag}"
        elif name == "via" and not via_marked and source is not None:
            value, via_marked = topmost_via(value, source), True
        out.append(f"{ECHOED[name]}: {value}")
    optional = [f"Server: {server}"] + [e for e in extra if not e.startswith("WWW-")]
    required = [e for e in extra if e.startswith("WWW-")]
    full = ("\r\n".join([*out, *optional, *required, "Content-Length: 0"]) + "\r\n\r\n").encode()
    if len(full) <= budget:
        return full
    return ("\r\n".join([*out, *required, "Content-Length: 0"]) + "\r\n\r\n").encode()


def source_of(ctx: Context) -> tuple[str, int] | None:
    """Where the request came from, for the Via: None when the context does not know."""
    return (ctx.remote_addr, ctx.remote_port) if ctx.remote_addr else None


def answer(datagram: bytes, ctx: Context, budget: int) -> bytes | None:
    return reply(datagram, ctx.rng, sensor.pick(SERVERS, ctx.hostname), budget, source_of(ctx))


class FramingError(ValueError):
    """The stream cannot be cut into SIP messages (RFC 3261 18.3): the connection is closed."""


class Framer:
    """Cuts a TCP byte stream into SIP messages (RFC 3261 18.3), bytes in, messages out: a
    message is its head up to the blank line and then Content-Length bytes of body (absent: none;
    the compact form `l` counts, 7.3.3). Between messages CRLFs are skipped (7.5), except a
    CRLFCRLF, a keep-alive, returned as KEEPALIVE. FramingError for a head over MAX_HEAD, a
    Content-Length that is not a number, or one over MAX_BODY; after it, feed() keeps raising."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._scan = 0  # where the search for the blank line resumes (what is before has none)
        self._broken = ""

    def feed(self, data: bytes) -> list[bytes]:
        if self._broken:
            raise FramingError(self._broken)
        self._buf += data
        out: list[bytes] = []
        try:
            while (message := self._next()) is not None:
                out.append(message)
        except FramingError as exc:
            self._broken = str(exc)
            raise
        return out

    def _next(self) -> bytes | None:
        buf = self._buf
        while buf[:2] == CRLF:  # between messages: a head never starts with one
            if buf[:4] == KEEPALIVE:
                del buf[:4]
                return KEEPALIVE
            if len(buf) < 4 and KEEPALIVE.startswith(buf):
                return None  # a keep-alive or a skipped CRLF: the next bytes tell
            del buf[:2]
        end = buf.find(KEEPALIVE, self._scan)
        if end < 0:
            if len(buf) > MAX_HEAD:
                raise FramingError(f"message head over {MAX_HEAD} bytes")
            self._scan = max(len(buf) - 3, 0)
            return None
        if end > MAX_HEAD:
            raise FramingError(f"message head over {MAX_HEAD} bytes")
        self._scan = end  # the head is found: wait here for its body
        total = end + 4 + content_length(bytes(buf[:end]))
        if len(buf) < total:
            return None
        message = bytes(buf[:total])
        del buf[:total]
        self._scan = 0
        return message


def content_length(head: bytes) -> int:
    """The head's Content-Length (0 without one); FramingError when it is not a number, is over
    MAX_BODY, or two disagree."""
    found: set[bytes] = set()
    for line in head.split(CRLF)[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() in (b"content-length", b"l"):
            found.add(value.strip())
    if not found:
        return 0
    if len(found) > 1:
        raise FramingError("Content-Length headers disagree")
    value = found.pop()
    if not (value.isdigit() and len(value) <= 9) or int(value) > MAX_BODY:
        raise FramingError(f"Content-Length {value[:20]!r} is not 0..{MAX_BODY}")
    return int(value)


class SipStreamDialogue:
    """SIP over TCP: every request framed from the stream answered in order, on the one
    connection (RFC 3261 18.3; responses to a TCP request go back on its connection, 18.2.2)."""

    name = "sip"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.server = sensor.pick(SERVERS, ctx.hostname)
        self.framer = Framer()
        self.source = source_of(ctx)
        self.answered = 0
        self.ignored = 0  # messages that are no request we answer (responses, ACKs, garbage)
        self.keepalives = 0
        self.methods: list[str] = []
        self.error = ""

    def start(self) -> bytes:
        return b""

    def receive(self, data: bytes) -> Reply:
        if self.error:
            return Reply(close=True)
        try:
            messages = self.framer.feed(data)
        except FramingError as exc:
            self.error = str(exc)
            return Reply(close=True)
        out = bytearray()
        for message in messages:
            if message == KEEPALIVE:
                self.keepalives += 1
                out += CRLF
                continue
            parsed = parse(message)
            if parsed is not None and len(self.methods) < MAX_METHODS:
                self.methods.append(parsed[0])
            response = respond(parsed, self.ctx.rng, self.server, STREAM_BUDGET, self.source)
            if response is None:
                self.ignored += 1
                continue
            self.answered += 1
            out += response
        return Reply(bytes(out))

    def idle(self) -> Reply:
        return Reply()

    def record(self) -> dict[str, Any]:
        return {"sip": {"transport": "tcp", "answered": self.answered, "ignored": self.ignored,
                        "keepalives": self.keepalives, "methods": self.methods,
                        "error": self.error}}


def factory(ctx: Context) -> Dialogue:
    """The catalog's DialogueFactory: datagrams on UDP, the framed stream on TCP."""
    if ctx.protocol == "tcp":
        return SipStreamDialogue(ctx)
    return DatagramDialogue("sip", answer, ctx)
