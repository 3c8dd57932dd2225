"""PostgreSQL up to the password (Frontend/Backend Protocol 3.0, "Message Flow: Start-up"):
SSLRequest and GSSENCRequest are declined with 'N', the StartupMessage's parameters (user,
database, application_name, ...) are recorded, the client is asked for its password in clear
or as MD5 with a fresh salt (templates/postgres.servers, per sensor), the PasswordMessage is
recorded and answered with the FATAL "password authentication failed" a real server sends,
then the connection closes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from honeytrap.dialogue import sensor
from honeytrap.dialogue.base import Context, Dialogue, Reply
from honeytrap.dialogue.binary import Cursor, Truncated, text
from honeytrap.errors import ConfigError

SERVERS = "postgres.servers"
SSL_REQUEST, GSSENC_REQUEST, CANCEL_REQUEST = 80877103, 80877104, 80877102
PROTOCOL_MAJOR = 3
# PostgreSQL's own bounds: MAX_STARTUP_PACKET_LENGTH (postmaster.c) and
# PG_MAX_AUTH_TOKEN_LENGTH (auth.c) for the password message.
MAX_STARTUP = 10000
MAX_PASSWORD = 65535
MAX_PARAMETERS = 64
AUTH_CODES = {"password": 3, "md5": 5}  # AuthenticationCleartextPassword / MD5Password


@dataclass(frozen=True)
class Server:
    auth: str
    file: str
    line: str
    routine: str

    @classmethod
    def parse(cls, line: str) -> Server:
        fields = [f.strip() for f in line.split("|")]
        if len(fields) != 4 or fields[0] not in AUTH_CODES or not all(
                f.isascii() and f for f in fields):
            raise ConfigError(f"want 'password|md5 | file | line | routine', got {line[:60]!r}",
                              file=SERVERS)
        return cls(*fields)


def message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", 4 + len(body)) + body


def error_response(server: Server, code: str, text_: str) -> bytes:
    fields = [(b"S", "FATAL"), (b"V", "FATAL"), (b"C", code), (b"M", text_),
              (b"F", server.file), (b"L", server.line), (b"R", server.routine)]
    return message(b"E", b"".join(k + v.encode() + b"\0" for k, v in fields) + b"\0")


class PostgresDialogue:
    name = "postgres"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.server = Server.parse(sensor.pick(SERVERS, ctx.hostname))
        self.salt = ctx.rng.randbytes(4)
        self._buf = bytearray()
        self._started = False
        self._done = False
        self._rec: dict[str, Any] = {"auth": self.server.auth, "ssl_requested": False,
                                     "gss_requested": False, "error": ""}

    def start(self) -> bytes:
        return b""  # the client speaks first

    def receive(self, data: bytes) -> Reply:
        if self._done:
            return Reply(close=True)
        self._buf += data
        send = b""
        while not self._done:
            step = self._startup() if not self._started else self._password()
            if step is None:
                break
            send += step.send
            if step.close:
                self._done = True
        return Reply(send, self._done)

    def idle(self) -> Reply:
        return Reply()

    def record(self) -> dict[str, Any]:
        return {"postgres": dict(self._rec)}

    def _take(self, header: int, limit: int) -> bytes | None:
        """The next message's body (its length field counts itself), None while incomplete."""
        if len(self._buf) < header:
            return None
        (length,) = struct.unpack_from("!I", self._buf, header - 4)
        if length < 4 or length > limit:
            raise Truncated(f"message length {length}")
        if len(self._buf) < header - 4 + length:
            return None
        body = bytes(self._buf[header : header - 4 + length])
        del self._buf[: header - 4 + length]
        return body

    def _startup(self) -> Reply | None:
        try:
            body = self._take(4, MAX_STARTUP)
            if body is None:
                return None
            c = Cursor(body)
            code = c.be(4)
        except Truncated as exc:
            return self._fail(f"startup: {exc}")
        if code in (SSL_REQUEST, GSSENC_REQUEST):
            self._rec["ssl_requested" if code == SSL_REQUEST else "gss_requested"] = True
            return Reply(b"N")  # declined: the client goes on in clear
        if code == CANCEL_REQUEST or code >> 16 != PROTOCOL_MAJOR:
            return self._fail(f"startup code {code}")
        try:
            params = self._parameters(c)
        except Truncated as exc:
            return self._fail(f"startup parameters: {exc}")
        self._rec["parameters"] = params
        for key, value in params:
            if key in ("user", "database", "application_name") and key not in self._rec:
                self._rec[key] = value
        self._started = True
        auth = struct.pack("!I", AUTH_CODES[self.server.auth])
        return Reply(message(b"R", auth + (self.salt if self.server.auth == "md5" else b"")))

    @staticmethod
    def _parameters(c: Cursor) -> list[list[str]]:
        params: list[list[str]] = []  # [name, value]: names are the client's, not ours
        while c.left() and c.data[c.pos] != 0 and len(params) < MAX_PARAMETERS:
            key = text(c.cstring(MAX_STARTUP))
            params.append([key, text(c.cstring(MAX_STARTUP))])
        return params

    def _password(self) -> Reply | None:
        if not self._buf:
            return None
        kind = self._buf[:1]
        if kind != b"p":  # 'X' Terminate: no password to give (libpq's -w)
            return self._fail(f"message {kind!r} instead of a password")
        try:
            body = self._take(5, MAX_PASSWORD)
        except Truncated as exc:
            return self._fail(f"password message: {exc}")
        if body is None:
            return None
        self._rec["password"] = text(body.rstrip(b"\0"), MAX_PASSWORD)
        user = str(self._rec.get("user", ""))[:64]
        return Reply(error_response(self.server, "28P01",
                                    f'password authentication failed for user "{user}"'),
                     close=True)

    def _fail(self, why: str) -> Reply:
        self._rec["error"] = why
        return Reply(close=True)


def factory(ctx: Context) -> Dialogue:
    """The catalog's DialogueFactory for this protocol."""
    return PostgresDialogue(ctx)
