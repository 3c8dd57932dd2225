"""SIP over UDP (RFC 3261): a response that carries the request's Via headers, From, To (with
a tag of ours, 8.2.6.2), Call-ID and CSeq, so scanners and clients match it to their request.
OPTIONS (the scanners' probe) gets 200 OK with Allow; REGISTER and INVITE get 401 with a
Digest challenge (RFC 3261 22.4, fresh nonce) so the next request carries the credentials;
other methods 405. Responses are never sent to responses."""

from __future__ import annotations

import random

from honeytrap.dialogue import sensor
from honeytrap.dialogue.base import Context, Dialogue
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


def reply(datagram: bytes, rng: random.Random, server: str, budget: int) -> bytes | None:
    """The response, at most `budget` bytes: the optional headers (Server, Allow, Accept) are
    left out when they would not fit."""
    parsed = parse(datagram)
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
    for name, value in headers:
        if name not in ECHOED:
            continue
        if name == "to" and ";tag=" not in value:
            value += f";tag={tag}"
        out.append(f"{ECHOED[name]}: {value}")
    optional = [f"Server: {server}"] + [e for e in extra if not e.startswith("WWW-")]
    required = [e for e in extra if e.startswith("WWW-")]
    full = ("\r\n".join([*out, *optional, *required, "Content-Length: 0"]) + "\r\n\r\n").encode()
    if len(full) <= budget:
        return full
    return ("\r\n".join([*out, *required, "Content-Length: 0"]) + "\r\n\r\n").encode()


def answer(datagram: bytes, ctx: Context, budget: int) -> bytes | None:
    return reply(datagram, ctx.rng, sensor.pick(SERVERS, ctx.hostname), budget)


def factory(ctx: Context) -> Dialogue:
    return DatagramDialogue("sip", answer, ctx)
