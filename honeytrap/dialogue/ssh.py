"""SSH up to the key exchange (RFC 4253): the sensor's identification string at once, and after
the client's own, a server SSH_MSG_KEXINIT with a fresh cookie and the algorithm lists of the
OpenSSH server the sensor poses as (templates/ssh.servers, chosen per sensor). Clients go on to
their key exchange message; we record their identification string, their KEXINIT and its HASSH,
and answer nothing more (no key exchange: cowrie does that, and a full SSH server is out of a
low-interaction honeypot's scope).
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass
from typing import Any

from honeytrap.dialogue import sensor
from honeytrap.dialogue.base import Context, Reply
from honeytrap.errors import ConfigError
from honeytrap.fingerprint import hassh

SERVERS = "ssh.servers"
# RFC 4253 4.2: the identification string is at most 255 characters, CR LF included.
MAX_ID_LINE = 255
# OpenSSH's answer to a first line that is not "SSH-..." (kex.c), then it closes.
BAD_ID = b"Invalid SSH identification string.\r\n"
# RFC 4253 6.1: implementations must take packets of 35000 bytes; OpenSSH refuses more than
# 256 KiB. A KEXINIT is at most a few KiB; more than this is not a client we follow.
MAX_PACKET = 35000
MSG_KEXINIT = 20  # RFC 4253 12
BLOCK = 8  # RFC 4253 6: the cipher block size before keys, at least 8
MIN_PADDING = 4
COOKIE = 16
# RFC 4253 7.1: the name-lists of SSH_MSG_KEXINIT, in order
NAME_LISTS = (
    "kex_algorithms", "server_host_key_algorithms",
    "encryption_algorithms_client_to_server", "encryption_algorithms_server_to_client",
    "mac_algorithms_client_to_server", "mac_algorithms_server_to_client",
    "compression_algorithms_client_to_server", "compression_algorithms_server_to_client",
    "languages_client_to_server", "languages_server_to_client",
)
MAX_MESSAGES = 16  # message numbers recorded after the KEXINIT


@dataclass(frozen=True)
class Server:
    """One line of templates/ssh.servers."""

    version: str
    kex: str
    host_key: str
    ciphers: str
    macs: str
    compression: str

    @classmethod
    def parse(cls, line: str) -> Server:
        fields = [f.strip() for f in line.split("|")]
        if len(fields) != 6 or not fields[0].startswith("SSH-2.0-") or not all(fields):
            raise ConfigError(f"want 'version | kex | host key | ciphers | MACs | "
                              f"compression', got {line[:60]!r}", file=SERVERS)
        if len(fields[0]) + 2 > MAX_ID_LINE or any(" " in f for f in fields[1:]):
            raise ConfigError(f"bad line {line[:60]!r}", file=SERVERS)
        if not all(f.isascii() and f.isprintable() for f in fields):
            raise ConfigError(f"not printable ASCII: {line[:60]!r}", file=SERVERS)
        return cls(*fields)


def server_for(hostname: str) -> Server:
    return Server.parse(sensor.pick(SERVERS, hostname))


def name_list(value: str) -> bytes:
    data = value.encode("ascii")
    return struct.pack("!I", len(data)) + data


def kexinit_payload(server: Server, rng: random.Random) -> bytes:
    lists = (server.kex, server.host_key, server.ciphers, server.ciphers, server.macs,
             server.macs, server.compression, server.compression, "", "")
    return (bytes([MSG_KEXINIT]) + rng.randbytes(COOKIE) + b"".join(map(name_list, lists))
            + b"\x00" + b"\x00\x00\x00\x00")  # first_kex_packet_follows false, reserved 0


def packet(payload: bytes, rng: random.Random) -> bytes:
    """RFC 4253 6: uint32 packet_length, byte padding_length, payload, random padding; the
    whole a multiple of the block size, at least 4 bytes of padding."""
    padding = BLOCK - (5 + len(payload)) % BLOCK
    if padding < MIN_PADDING:
        padding += BLOCK
    return (struct.pack("!IB", 1 + len(payload) + padding, padding) + payload
            + rng.randbytes(padding))


class KexinitError(ValueError):
    """A client KEXINIT that does not parse."""


def parse_kexinit(payload: bytes) -> dict[str, Any]:
    """The fields of a KEXINIT payload (RFC 4253 7.1); KexinitError when it does not parse."""
    if len(payload) < 1 + COOKIE or payload[0] != MSG_KEXINIT:
        raise KexinitError("not a KEXINIT")
    pos = 1 + COOKIE
    fields: dict[str, Any] = {}
    for name in NAME_LISTS:
        if len(payload) - pos < 4:
            raise KexinitError(f"{name}: truncated")
        (length,) = struct.unpack_from("!I", payload, pos)
        pos += 4
        if length > len(payload) - pos:
            raise KexinitError(f"{name}: {length} bytes announced")
        fields[name] = payload[pos : pos + length].decode("ascii", "replace")
        pos += length
    if len(payload) - pos < 5:
        raise KexinitError("first_kex_packet_follows/reserved: truncated")
    fields["first_kex_packet_follows"] = payload[pos] != 0
    return fields


class SshDialogue:
    name = "ssh"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.server = server_for(ctx.hostname)
        self._buf = bytearray()
        self._client_version = ""
        self._kexinit: dict[str, Any] | None = None
        self._messages: list[int] = []
        self._error = ""
        self._closed = False

    def start(self) -> bytes:
        return self.server.version.encode("ascii") + b"\r\n"

    def receive(self, data: bytes) -> Reply:
        if self._closed:
            return Reply(close=True)
        # bounded: an incomplete line is cut at MAX_ID_LINE, an incomplete packet at MAX_PACKET
        self._buf += data
        send = b""
        if not self._client_version:
            line = self._version_line()
            if line is None:
                return self._refuse_if_too_long()
            if not line.startswith(b"SSH-"):
                return self._fail("not an SSH identification string", BAD_ID)
            self._client_version = line.decode("ascii", "replace")
            send = packet(kexinit_payload(self.server, self.ctx.rng), self.ctx.rng)
        return Reply(send, self._packets())

    def idle(self) -> Reply:
        return Reply()  # we never go past the KEXINIT: the client waits, then gives up

    def record(self) -> dict[str, Any]:
        ssh: dict[str, Any] = {"client_version": self._client_version,
                               "server_version": self.server.version, "error": self._error,
                               "messages": list(self._messages)}
        if self._kexinit is not None:
            k = self._kexinit
            algorithms = hassh.hassh_algorithms(
                k["kex_algorithms"], k["encryption_algorithms_client_to_server"],
                k["mac_algorithms_client_to_server"],
                k["compression_algorithms_client_to_server"])
            ssh.update(k, hassh=hassh.hassh(algorithms), hassh_algorithms=algorithms)
        return {"ssh": ssh}

    def _version_line(self) -> bytes | None:
        end = self._buf.find(b"\n", 0, MAX_ID_LINE)
        if end < 0:
            return None
        line = bytes(self._buf[:end]).rstrip(b"\r")
        del self._buf[: end + 1]
        return line

    def _refuse_if_too_long(self) -> Reply:
        if len(self._buf) >= MAX_ID_LINE:
            return self._fail(f"no identification line in {MAX_ID_LINE} bytes", BAD_ID)
        return Reply()

    def _packets(self) -> bool:
        """Take the client's complete packets; whether to close (a corrupt one)."""
        while len(self._buf) >= 5:
            length, padding = struct.unpack_from("!IB", self._buf)
            if length > MAX_PACKET or length < 1 + padding + 1 or padding < MIN_PADDING:
                self._fail(f"bad packet length {length} (padding {padding})", b"")
                return True
            if len(self._buf) < 4 + length:
                return False
            payload = bytes(self._buf[5 : 4 + length - padding])
            del self._buf[: 4 + length]
            if self._kexinit is None:
                try:
                    self._kexinit = parse_kexinit(payload)
                except KexinitError as exc:
                    self._fail(f"client KEXINIT: {exc}", b"")
                    return True
            elif len(self._messages) < MAX_MESSAGES:
                self._messages.append(payload[0])
        return False

    def _fail(self, why: str, send: bytes) -> Reply:
        self._error = why
        self._closed = True
        return Reply(send, close=True)
