"""A small TLS ClientHello parser of our own (RFC 8446 4.1.2, RFC 5246 7.4.1.2), for
fingerprints only: it reads the fields JA3 and JA4 need and checks every length before using it.

`parse_client_hello(stream)` takes the first bytes the client sent (one or more TLS records,
any TCP chunking) and returns the ClientHello, None while it is incomplete, or raises
HelloError when the bytes are not one. Nothing is decrypted or answered here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from honeytrap.errors import ProtocolError

RECORD_HANDSHAKE = 0x16  # RFC 8446 5.1 ContentType handshake
HANDSHAKE_CLIENT_HELLO = 1  # RFC 8446 4 HandshakeType client_hello
RECORD_HEADER = 5  # type, legacy_record_version, length
# RFC 8446 5.1: a record carries at most 2^14 bytes of plaintext; 2^14 + 256 leaves room for
# the slack RFC 5246 6.2.3 allows, and a longer "record" is not TLS.
MAX_RECORD = 2**14 + 256
# A ClientHello with a post-quantum key share is about 1.8 KiB and browsers' hellos stay under
# 3 KiB; 64 KiB spans four full records and bounds what we buffer for a hello that never ends.
MAX_HELLO = 64 * 1024
# The stream bytes a hello may take: twice MAX_HELLO leaves room for record headers even when a
# client splits its hello into many small records (RFC 8446 5.1 allows fragmentation).
MAX_HELLO_STREAM = 2 * MAX_HELLO

EXT_SERVER_NAME = 0x0000  # RFC 6066 3
EXT_SUPPORTED_GROUPS = 0x000A  # RFC 8422 5.1.1 (formerly elliptic_curves)
EXT_EC_POINT_FORMATS = 0x000B  # RFC 8422 5.1.2
EXT_SIGNATURE_ALGORITHMS = 0x000D  # RFC 8446 4.2.3
EXT_ALPN = 0x0010  # RFC 7301 3.1
EXT_SUPPORTED_VERSIONS = 0x002B  # RFC 8446 4.2.1


class HelloError(ProtocolError):
    """The client's first bytes are not a well-formed TLS ClientHello."""


def is_grease(value: int) -> bool:
    """RFC 8701 GREASE values 0x0a0a, 0x1a1a, ... 0xfafa (both bytes equal, low nibble 0xa)."""
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


@dataclass
class ClientHello:
    legacy_version: int  # ClientHello.legacy_version (the "client_version" of TLS 1.2)
    ciphers: list[int]  # in the client's order, GREASE included
    extensions: list[int]  # extension types in the client's order, GREASE included
    sni: str = ""  # the first host_name of server_name, decoded tolerantly
    alpn: list[bytes] = field(default_factory=list)  # protocol names, the client's order
    supported_versions: list[int] = field(default_factory=list)
    signature_algorithms: list[int] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)
    point_formats: list[int] = field(default_factory=list)


class _Reader:
    """Bounds-checked big-endian reads over one buffer; every overrun is a HelloError."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        if n > self.left():
            raise HelloError(f"{self.what}: {n} bytes announced, {self.left()} left")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def rest(self) -> bytes:
        return self.take(self.left())

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vector(self, length_size: int) -> _Reader:
        return _Reader(self.take(self.uint(length_size)), self.what)

    def uint16s(self) -> list[int]:
        if self.left() % 2:
            raise HelloError(f"{self.what}: odd length for a list of 16-bit values")
        return [self.uint(2) for _ in range(self.left() // 2)]


def handshake_bytes(stream: bytes) -> bytes | None:
    """The handshake-layer bytes of the leading handshake records of `stream`; None while the
    first record is incomplete. Raises HelloError when a record is not a TLS handshake record."""
    out = bytearray()
    pos = 0
    while len(stream) - pos >= RECORD_HEADER:
        ctype, major, length = stream[pos], stream[pos + 1], int.from_bytes(
            stream[pos + 3 : pos + 5], "big")
        if ctype != RECORD_HANDSHAKE or major != 3:
            if out:  # a later record of another type ends the hello's records
                break
            raise HelloError("not a TLS handshake record")
        if length == 0 or length > MAX_RECORD:
            raise HelloError(f"TLS record length {length} out of range")
        if len(stream) - pos - RECORD_HEADER < length:
            break
        out += stream[pos + RECORD_HEADER : pos + RECORD_HEADER + length]
        pos += RECORD_HEADER + length
    if not out:
        if stream and (stream[0] != RECORD_HANDSHAKE or (len(stream) > 1 and stream[1] != 3)):
            raise HelloError("not a TLS handshake record")
        return None
    return bytes(out)


def parse_client_hello(stream: bytes) -> ClientHello | None:
    """The ClientHello at the start of `stream`, None while incomplete, HelloError if not one."""
    hs = handshake_bytes(stream[:MAX_HELLO_STREAM])
    if hs is None:
        _too_long(stream)
        return None
    if hs[0] != HANDSHAKE_CLIENT_HELLO:
        raise HelloError(f"handshake type {hs[0]}, not client_hello")
    if len(hs) < 4:
        _too_long(stream)
        return None
    length = int.from_bytes(hs[1:4], "big")
    if length > MAX_HELLO:
        raise HelloError(f"ClientHello length {length} over {MAX_HELLO}")
    if len(hs) < 4 + length:
        _too_long(stream)
        return None
    return _body(_Reader(hs[4 : 4 + length], "ClientHello"))


def _too_long(stream: bytes) -> None:
    """An incomplete hello may take MAX_HELLO_STREAM bytes, not more."""
    if len(stream) >= MAX_HELLO_STREAM:
        raise HelloError(f"no complete ClientHello in the first {MAX_HELLO_STREAM} bytes")


def _body(r: _Reader) -> ClientHello:
    version = r.uint(2)
    r.take(32)  # random
    session_id = r.vector(1)
    if session_id.left() > 32:  # RFC 8446 4.1.2: legacy_session_id<0..32>
        raise HelloError("session id longer than 32 bytes")
    ciphers = r.vector(2).uint16s()
    if not r.vector(1).left():  # RFC 5246 7.4.1.2: compression_methods<1..2^8-1>
        raise HelloError("no compression method")
    hello = ClientHello(version, ciphers, [])
    if r.left() == 0:  # a hello without extensions (SSL 3.0 style) is legal
        return hello
    exts = r.vector(2)
    if r.left():
        raise HelloError("bytes after the extensions")
    while exts.left():
        ext_type = exts.uint(2)
        hello.extensions.append(ext_type)
        _extension(hello, ext_type, exts.vector(2))
    return hello


def _extension(hello: ClientHello, ext_type: int, body: _Reader) -> None:
    if ext_type == EXT_SERVER_NAME and body.left():
        names = body.vector(2)
        while names.left():
            name_type, name = names.uint(1), names.vector(2).rest()
            if name_type == 0 and not hello.sni:  # RFC 6066 3: NameType host_name(0)
                hello.sni = name.decode("ascii", "replace")
    elif ext_type == EXT_ALPN and body.left():
        protos = body.vector(2)
        while protos.left():
            hello.alpn.append(protos.vector(1).rest())
    elif ext_type == EXT_SUPPORTED_VERSIONS and body.left():
        hello.supported_versions = body.vector(1).uint16s()
    elif ext_type == EXT_SIGNATURE_ALGORITHMS and body.left():
        hello.signature_algorithms = body.vector(2).uint16s()
    elif ext_type == EXT_SUPPORTED_GROUPS and body.left():
        hello.groups = body.vector(2).uint16s()
    elif ext_type == EXT_EC_POINT_FORMATS and body.left():
        hello.point_formats = list(body.vector(1).rest())
