"""The hpfeeds wire protocol, as bytes in and messages out (no sockets here).

A frame is a 4-byte big-endian length (of the whole frame, header included), a 1-byte opcode,
then the body. Strings inside bodies carry a 1-byte length. The broker opens with INFO (its
name and a 4-byte nonce); the client answers AUTH (ident, SHA-1 of nonce + secret), then
PUBLISHes (ident, channel, payload) and SUBSCRIBEs (ident, channel). The broker sends ERROR
(text) before it closes a connection it refuses, and PUBLISH for channels one subscribed to.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from honeytrap.errors import ProtocolError

OP_ERROR = 0
OP_INFO = 1
OP_AUTH = 2
OP_PUBLISH = 3
OP_SUBSCRIBE = 4
OP_UNSUBSCRIBE = 5

_HEADER = struct.Struct("!IB")
# The reference broker refuses frames over 1 MiB of body (hpfeeds.protocol.MAXBUF); we refuse
# to buffer more than that from a broker, and never build a frame it would refuse.
MAX_BODY = 1024 * 1024
MAX_FRAME = _HEADER.size + MAX_BODY


@dataclass(frozen=True)
class Message:
    opcode: int
    body: bytes


@dataclass(frozen=True)
class Info:
    name: str
    nonce: bytes


@dataclass(frozen=True)
class Publish:
    ident: str
    channel: str
    payload: bytes


def _str8(value: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > 255:
        raise ValueError(f"hpfeeds string over 255 bytes: {value[:40]!r}...")
    return bytes([len(raw)]) + raw


def _frame(opcode: int, body: bytes) -> bytes:
    if len(body) > MAX_BODY:
        raise ValueError(f"hpfeeds message of {len(body)} bytes exceeds {MAX_BODY}")
    return _HEADER.pack(_HEADER.size + len(body), opcode) + body


def auth(nonce: bytes, ident: str, secret: str) -> bytes:
    digest = hashlib.sha1(nonce + secret.encode("utf-8"), usedforsecurity=False).digest()
    return _frame(OP_AUTH, _str8(ident) + digest)


def publish(ident: str, channel: str, payload: bytes) -> bytes:
    return _frame(OP_PUBLISH, _str8(ident) + _str8(channel) + payload)


def publish_overhead(ident: str, channel: str) -> int:
    """Body bytes a publish spends before its payload (to fit payloads under MAX_BODY)."""
    return 2 + len(ident.encode("utf-8")) + len(channel.encode("utf-8"))


def subscribe(ident: str, channel: str) -> bytes:
    return _frame(OP_SUBSCRIBE, _str8(ident) + channel.encode("utf-8"))


def _take_str8(body: bytes, offset: int) -> tuple[str, int]:
    if offset >= len(body):
        raise ProtocolError("hpfeeds: string length missing")
    end = offset + 1 + body[offset]
    if end > len(body):
        raise ProtocolError("hpfeeds: string runs past the message")
    return body[offset + 1:end].decode("utf-8", errors="replace"), end


def read_info(body: bytes) -> Info:
    name, offset = _take_str8(body, 0)
    return Info(name, body[offset:])


def read_publish(body: bytes) -> Publish:
    ident, offset = _take_str8(body, 0)
    channel, offset = _take_str8(body, offset)
    return Publish(ident, channel, body[offset:])


def read_error(body: bytes) -> str:
    return body.decode("utf-8", errors="replace")


class Decoder:
    """Feed bytes as they come; get whole messages. ProtocolError on a malformed frame."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Message]:
        self._buf += data
        messages: list[Message] = []
        while len(self._buf) >= _HEADER.size:
            length, opcode = _HEADER.unpack_from(self._buf)
            if opcode > OP_UNSUBSCRIBE:
                raise ProtocolError(f"hpfeeds: unknown opcode {opcode}")
            if length < _HEADER.size or length > MAX_FRAME:
                raise ProtocolError(f"hpfeeds: bad frame length {length}")
            if len(self._buf) < length:
                break
            messages.append(Message(opcode, bytes(self._buf[_HEADER.size:length])))
            del self._buf[:length]
        return messages
