"""MySQL up to the client's credentials (MySQL Client/Server Protocol): a HandshakeV10 greeting
with a fresh 20-byte scramble at once, the client's HandshakeResponse41 read (user name,
database, plugin, auth response, connection attributes recorded), then "Access denied"
(ER_ACCESS_DENIED_ERROR 1045, SQLSTATE 28000) and the close a real server makes.

The server version, plugin, collation and capabilities come from templates/mysql.servers,
chosen per sensor; CLIENT_SSL is never offered, so the client answers in clear.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from honeytrap.dialogue import sensor
from honeytrap.dialogue.base import Context, Dialogue, Reply
from honeytrap.dialogue.binary import Cursor, Truncated, text
from honeytrap.errors import ConfigError

SERVERS = "mysql.servers"
# Who "Access denied" names when the adapter gave no client address (unit tests): what a server
# names a client on its own Unix socket.
NO_PEER = "localhost"
# A HandshakeResponse41 with connection attributes is well under 2 KiB; a client that sends
# more than this before authenticating is not one we follow.
MAX_PACKET = 16 * 1024
SCRAMBLE = 20  # auth-plugin-data: 8 + 12 bytes, then a NUL
CONNECTION_IDS = (8, 60000)  # the thread id a server that has been up a while gives
MAX_FIELD = 256

CLIENT_CONNECT_WITH_DB = 0x8
CLIENT_PROTOCOL_41 = 0x200
CLIENT_SSL = 0x800
CLIENT_SECURE_CONNECTION = 0x8000
CLIENT_PLUGIN_AUTH = 1 << 19
CLIENT_CONNECT_ATTRS = 1 << 20
CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA = 1 << 21
SERVER_STATUS_AUTOCOMMIT = 0x0002
ER_ACCESS_DENIED_ERROR = 1045


@dataclass(frozen=True)
class Server:
    version: str
    plugin: str
    collation: int
    capabilities: int

    @classmethod
    def parse(cls, line: str) -> Server:
        fields = [f.strip() for f in line.split("|")]
        try:
            version, plugin, collation, caps = fields
            server = cls(version, plugin, int(collation), int(caps, 16))
        except ValueError as exc:
            raise ConfigError(f"want 'version | plugin | collation | capabilities', "
                              f"got {line[:60]!r}", file=SERVERS) from exc
        if not (version.isascii() and plugin.isascii() and 0 < server.collation < 256):
            raise ConfigError(f"bad line {line[:60]!r}", file=SERVERS)
        return server


def scramble(ctx: Context) -> bytes:
    """20 bytes as a server draws them: 1..127, never NUL or '$' (MySQL's generate_user_salt)."""
    out = bytearray()
    while len(out) < SCRAMBLE:
        b = ctx.rng.randint(1, 127)
        if b != ord("$"):
            out.append(b)
    return bytes(out)


def frame(payload: bytes, seq: int) -> bytes:
    return len(payload).to_bytes(3, "little") + bytes([seq & 0xFF]) + payload


def greeting(server: Server, salt: bytes, connection_id: int) -> bytes:
    caps = server.capabilities & ~CLIENT_SSL
    payload = (b"\x0a" + server.version.encode("ascii") + b"\0"
               + struct.pack("<I", connection_id) + salt[:8] + b"\0"
               + struct.pack("<HBHHB", caps & 0xFFFF, server.collation,
                             SERVER_STATUS_AUTOCOMMIT, caps >> 16, SCRAMBLE + 1)
               + b"\0" * 10 + salt[8:] + b"\0" + server.plugin.encode("ascii") + b"\0")
    return frame(payload, 0)


def error(code: int, state: str, message: str, seq: int) -> bytes:
    return frame(b"\xff" + struct.pack("<H", code) + b"#" + state.encode("ascii")
                 + message.encode("utf-8"), seq)


def lenenc(c: Cursor) -> int:
    first = c.le(1)
    sizes = {0xFC: 2, 0xFD: 3, 0xFE: 8}
    if first < 0xFB:
        return first
    if first not in sizes:
        raise Truncated(f"bad length-encoded integer 0x{first:02x}")
    return c.le(sizes[first])


def parse_response(payload: bytes) -> dict[str, Any]:
    """Protocol::HandshakeResponse41 (or 320); Truncated when it does not parse."""
    c = Cursor(payload)
    fields: dict[str, Any] = {}
    if len(payload) < 4 or not (int.from_bytes(payload[:2], "little") & CLIENT_PROTOCOL_41):
        caps = c.le(2)
        c.le(3)  # max packet size
        fields.update(capabilities=caps, user=text(c.cstring(MAX_FIELD)), auth_response=c.rest())
        return fields
    caps = c.le(4)
    c.take(4 + 1 + 23)  # max packet size, character set, filler
    fields["capabilities"] = caps
    if caps & CLIENT_SSL and c.left() == 0:
        fields["ssl_request"] = True
        return fields
    fields["user"] = text(c.cstring(MAX_FIELD))
    if caps & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA:
        fields["auth_response"] = c.take(lenenc(c))
    elif caps & CLIENT_SECURE_CONNECTION:
        fields["auth_response"] = c.take(c.le(1))
    else:
        fields["auth_response"] = c.cstring(MAX_FIELD)
    if caps & CLIENT_CONNECT_WITH_DB and c.left():
        fields["database"] = text(c.cstring(MAX_FIELD))
    if caps & CLIENT_PLUGIN_AUTH and c.left():
        fields["auth_plugin"] = text(c.cstring(MAX_FIELD))
    if caps & CLIENT_CONNECT_ATTRS and c.left():
        attrs = Cursor(c.take(lenenc(c)))
        pairs: list[list[str]] = []  # [key, value]: the keys are the client's, not ours
        while attrs.left():
            key = text(attrs.take(lenenc(attrs)))
            pairs.append([key, text(attrs.take(lenenc(attrs)))])
        fields["attributes"] = pairs
    return fields


class MysqlDialogue:
    name = "mysql"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.server = Server.parse(sensor.pick(SERVERS, ctx.hostname))
        self.salt = scramble(ctx)
        self.connection_id = ctx.rng.randint(*CONNECTION_IDS)
        self._buf = bytearray()
        self._fields: dict[str, Any] = {}
        self._error = ""
        self._done = False

    def start(self) -> bytes:
        return greeting(self.server, self.salt, self.connection_id)

    def receive(self, data: bytes) -> Reply:
        if self._done:
            return Reply(close=True)
        self._buf += data
        if len(self._buf) < 4:
            return Reply()
        length, seq = int.from_bytes(self._buf[:3], "little"), self._buf[3]
        if length > MAX_PACKET:
            return self._fail(f"packet of {length} bytes")
        if len(self._buf) < 4 + length:
            return Reply()
        self._done = True
        try:
            self._fields = parse_response(bytes(self._buf[4 : 4 + length]))
        except Truncated as exc:
            return self._fail(f"handshake response: {exc}")
        if self._fields.get("ssl_request"):
            return Reply(close=True)  # TLS was not offered: a real server drops it too
        user = self._fields.get("user", "")[:64].replace("'", "''")
        # The client's address, as a server started with skip-name-resolve (the usual set-up of
        # an exposed one) names it: 'root'@'198.18.0.2'.
        peer = self.ctx.remote_addr or NO_PEER
        using = "YES" if self._fields.get("auth_response") else "NO"
        message = f"Access denied for user '{user}'@'{peer}' (using password: {using})"
        return Reply(error(ER_ACCESS_DENIED_ERROR, "28000", message, seq + 1), close=True)

    def idle(self) -> Reply:
        return Reply()

    def record(self) -> dict[str, Any]:
        return {"mysql": {"server_version": self.server.version, "error": self._error,
                          **self._fields}}

    def _fail(self, why: str) -> Reply:
        self._error = why
        self._done = True
        return Reply(close=True)


def factory(ctx: Context) -> Dialogue:
    """The catalog's DialogueFactory for this protocol."""
    return MysqlDialogue(ctx)
