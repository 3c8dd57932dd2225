"""Builds TLS ClientHello bytes from explicit fields (RFC 8446 4.1.2), for the fingerprint
and TLS dialogue tests, and captures a real client's first bytes over loopback."""

from __future__ import annotations

import socket
import struct
import subprocess


def u16(v: int) -> bytes:
    return struct.pack("!H", v)


def vec(data: bytes, size: int) -> bytes:
    return len(data).to_bytes(size, "big") + data


def ext(ext_type: int, body: bytes) -> bytes:
    return u16(ext_type) + vec(body, 2)


def sni_ext(name: bytes) -> bytes:
    return ext(0x0000, vec(b"\x00" + vec(name, 2), 2))


def alpn_ext(protos: list[bytes]) -> bytes:
    return ext(0x0010, vec(b"".join(vec(p, 1) for p in protos), 2))


def list16_ext(ext_type: int, values: list[int], size: int = 2) -> bytes:
    return ext(ext_type, vec(b"".join(u16(v) for v in values), size))


def client_hello(ciphers: list[int], extensions: list[bytes] | None, version: int = 0x0303,
                 session_id: bytes = b"\x11" * 32, record_sizes: list[int] | None = None) -> bytes:
    """A ClientHello in TLS records: one record, or records of `record_sizes` bytes."""
    body = (u16(version) + b"\x22" * 32 + vec(session_id, 1)
            + vec(b"".join(u16(c) for c in ciphers), 2) + vec(b"\x00", 1))
    if extensions is not None:
        body += vec(b"".join(extensions), 2)
    handshake = b"\x01" + vec(body, 3)
    sizes = record_sizes or [len(handshake)]
    out, pos = b"", 0
    for size in sizes:
        chunk = handshake[pos : pos + size]
        out += b"\x16\x03\x01" + vec(chunk, 2)
        pos += size
    if pos < len(handshake):
        out += b"\x16\x03\x01" + vec(handshake[pos:], 2)
    return out


def capture_first_bytes(argv: list[str], need: int = 5, timeout: float = 20.0) -> bytes:
    """Run a client (its argv names {port}) against a loopback listener that never answers,
    and return what it sent first: at least the first TLS record, read to its length."""
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]
        proc = subprocess.Popen([a.format(port=port) for a in argv], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            srv.settimeout(timeout)
            conn, _ = srv.accept()
            with conn:
                conn.settimeout(timeout)
                data = b""
                while len(data) < need or len(data) < 5 + int.from_bytes(data[3:5], "big"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                return data
        finally:
            proc.kill()
            proc.wait()
            assert proc.stdin is not None
            proc.stdin.close()



