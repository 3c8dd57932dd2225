"""SMB up to the client's credentials: NetBIOS session (RFC 1002) or direct TCP framing
(MS-SMB2 2.1), an SMB1 multi-protocol NEGOTIATE offering SMB2 or an SMB2 NEGOTIATE answered
with an SMB2 NEGOTIATE response (fresh server GUID, SPNEGO offering NTLMSSP), the first
SESSION_SETUP answered with an NTLMSSP CHALLENGE (fresh server challenge), the second's
AUTHENTICATE recorded (user, domain, workstation, NTLM responses) and refused with
STATUS_LOGON_FAILURE. The Windows release posed as comes from templates/smb.servers.

SMB1-only clients get the close of a server with SMB1 disabled (Windows' default since 2017):
their negotiate is recorded raw all the same.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from honeytrap.dialogue import datagram, ntlm, sensor
from honeytrap.dialogue.base import Context, Dialogue, Reply
from honeytrap.dialogue.binary import Cursor, Truncated, text
from honeytrap.errors import ConfigError

SERVERS = "smb.servers"
# Context.extra key of a clock for SystemTime and the NTLM timestamp (tests fix it)
CLOCK_KEY = datagram.CLOCK_KEY
SESSION_REQUEST, POSITIVE_RESPONSE, KEEPALIVE, SESSION_MESSAGE = 0x81, 0x82, 0x85, 0x00
SMB1, SMB2 = b"\xffSMB", b"\xfeSMB"
SMB1_NEGOTIATE = 0x72
NEGOTIATE, SESSION_SETUP = 0, 1
WILDCARD = 0x02FF  # MS-SMB2 3.3.5.3.1: answer to an SMB1 negotiate offering "SMB 2.???"
DIALECTS = (0x0202, 0x0210, 0x0300, 0x0302)  # no 3.1.1: it needs negotiate contexts
STATUS_SUCCESS = 0
STATUS_MORE_PROCESSING_REQUIRED = 0xC0000016
STATUS_LOGON_FAILURE = 0xC000006D
STATUS_NOT_SUPPORTED = 0xC00000BB
FLAGS_SERVER_TO_REDIR = 0x1
SIGNING_ENABLED = 0x1
# MS-SMB2 2.2.4 Capabilities: DFS, LEASING, LARGE_MTU (2.1+); + MULTI_CHANNEL, ENCRYPTION (3.x)
CAPS = {0x0202: 0x1, 0x0210: 0x7, 0x0300: 0x4F, 0x0302: 0x4F}
MAX_SIZE = 8 * 1024 * 1024  # MaxTransact/Read/WriteSize of Windows Server 2012 and later
# An SMB2 NEGOTIATE or SESSION_SETUP is a few hundred bytes (Kerberos tickets a few KiB); the
# NetBIOS length field allows 128 KiB, more than a client sends before logging in.
MAX_MESSAGE = 64 * 1024
MAX_COMMANDS = 32  # commands recorded
HEADER = 64


@dataclass(frozen=True)
class Server:
    dialect: int
    domain: str
    version: tuple[int, int, int]

    @classmethod
    def parse(cls, line: str) -> Server:
        try:
            dialect, domain, version = (f.strip() for f in line.split("|"))
            major, minor, build = (int(v) for v in version.split("."))
            server = cls(int(dialect, 16), domain, (major, minor, build))
        except ValueError as exc:
            raise ConfigError(f"want 'dialect | domain | version', got {line[:60]!r}",
                              file=SERVERS) from exc
        if server.dialect not in DIALECTS or not domain.isascii() or len(domain) > 15:
            raise ConfigError(f"bad line {line[:60]!r}", file=SERVERS)
        return server


def netbios_name(hostname: str) -> str:
    return (hostname.split(".")[0] or "SERVER")[:15].upper()


def smb2_header(command: int, status: int, message_id: int, session_id: int = 0,
                credits: int = 1) -> bytes:
    return (SMB2 + struct.pack("<HHIHHIIQIIQ", HEADER, 0, status, command, credits,
                               FLAGS_SERVER_TO_REDIR, 0, message_id, 0, 0, session_id)
            + b"\0" * 16)


def error_body() -> bytes:
    return struct.pack("<HBBI", 9, 0, 0, 0) + b"\0"  # MS-SMB2 2.2.2 ERROR Response


class SmbDialogue:
    name = "smb"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.server = Server.parse(sensor.pick(SERVERS, ctx.hostname))
        self.guid = ctx.rng.randbytes(16)
        self.challenge = ctx.rng.randbytes(8)
        self.session_id = ctx.rng.getrandbits(64) | 1
        self._clock: Callable[[], float] = lambda: datagram.clock(ctx)
        self._buf = bytearray()
        self._done = False
        self._rec: dict[str, Any] = {"smb1_dialects": [], "dialects": [], "dialect": None,
                                     "commands": [], "error": "",
                                     "server_challenge": self.challenge}

    def start(self) -> bytes:
        return b""  # the client speaks first

    def receive(self, data: bytes) -> Reply:
        if self._done:
            return Reply(close=True)
        self._buf += data
        send = b""
        while len(self._buf) >= 4 and not self._done:
            kind, length = self._buf[0], int.from_bytes(self._buf[1:4], "big")
            if kind not in (SESSION_REQUEST, KEEPALIVE, SESSION_MESSAGE) or length > MAX_MESSAGE:
                self._fail(f"not an SMB transport frame (type 0x{kind:02x}, length {length})")
                break
            if len(self._buf) < 4 + length:
                break
            body = bytes(self._buf[4 : 4 + length])
            del self._buf[: 4 + length]
            if kind == SESSION_REQUEST:  # RFC 1002 4.3.2, port 139: granted
                send += bytes([POSITIVE_RESPONSE, 0, 0, 0])
            elif kind == SESSION_MESSAGE:
                send += self._message(body)
        return Reply(send, self._done)

    def idle(self) -> Reply:
        return Reply()

    def record(self) -> dict[str, Any]:
        return {"smb": dict(self._rec)}

    def _fail(self, why: str) -> bytes:
        self._rec["error"] = why
        self._done = True
        return b""

    def _frame(self, smb: bytes) -> bytes:
        return b"\0" + len(smb).to_bytes(3, "big") + smb

    def _message(self, body: bytes) -> bytes:
        try:
            if body.startswith(SMB1):
                return self._smb1(body)
            if body.startswith(SMB2) and len(body) >= HEADER:
                return self._smb2(body)
        except Truncated as exc:
            return self._fail(f"malformed SMB message: {exc}")
        return self._fail("not an SMB message")

    def _smb1(self, body: bytes) -> bytes:
        if body[4:5] != bytes([SMB1_NEGOTIATE]):
            return self._fail(f"SMB1 command {body[4:5].hex()}")
        c = Cursor(body, 32)
        c.take(c.le(1) * 2)  # WordCount words
        dialects = Cursor(c.take(c.le(2)))
        names: list[bytes] = []
        while dialects.left() and len(names) < MAX_COMMANDS:
            if dialects.le(1) != 2:  # BufferFormat: dialect string
                raise Truncated("dialect without buffer format 0x02")
            names.append(dialects.cstring(dialects.left()))
        self._rec["smb1_dialects"] = [text(n) for n in names]
        if b"SMB 2.???" in names:
            return self._negotiate_response(WILDCARD, 0)
        if b"SMB 2.002" in names:
            return self._negotiate_response(0x0202, 0)
        return self._fail("SMB1 only")  # SMB1 disabled: the connection is closed

    def _smb2(self, body: bytes) -> bytes:
        command, message_id = struct.unpack_from("<H", body, 12)[0], struct.unpack_from(
            "<Q", body, 24)[0]
        if len(self._rec["commands"]) < MAX_COMMANDS:
            self._rec["commands"].append(command)
        if command == NEGOTIATE:
            c = Cursor(body, HEADER)
            _size, count, _mode, _res, _caps = struct.unpack("<HHHHI", c.take(12))
            self._rec["client_guid"] = c.take(16)
            c.take(8)
            offered = [c.le(2) for _ in range(min(count, 64))]
            self._rec["dialects"] = offered
            common = [d for d in offered if d in DIALECTS and d <= self.server.dialect]
            if not common:
                return self._frame(smb2_header(NEGOTIATE, STATUS_NOT_SUPPORTED, message_id)
                                   + error_body())
            return self._negotiate_response(max(common), message_id)
        if command == SESSION_SETUP:
            return self._session_setup(body, message_id)
        return self._fail(f"SMB2 command {command} before logging in")

    def _negotiate_response(self, dialect: int, message_id: int) -> bytes:
        """MS-SMB2 2.2.4 NEGOTIATE Response."""
        self._rec["dialect"] = dialect
        blob = ntlm.spnego_init()
        now = ntlm.filetime(self._clock())
        body = (struct.pack("<HHHH", 65, SIGNING_ENABLED, dialect, 0) + self.guid
                + struct.pack("<IIIIQQHHI", CAPS.get(dialect, 0x7), MAX_SIZE, MAX_SIZE,
                              MAX_SIZE, now, 0, HEADER + 64, len(blob), 0) + blob)
        return self._frame(smb2_header(NEGOTIATE, STATUS_SUCCESS, message_id) + body)

    def _session_setup(self, body: bytes, message_id: int) -> bytes:
        c = Cursor(body, HEADER)
        _size, _flags, _mode, _caps, _chan, offset, length = struct.unpack(
            "<HBBIIHH", c.take(16))
        if offset + length > len(body):
            raise Truncated("security buffer beyond the message")
        found = ntlm.find_message(body[offset : offset + length])
        if found is None:
            return self._fail("session setup without NTLMSSP")
        kind, msg = found
        if kind == ntlm.NEGOTIATE:
            token = ntlm.spnego_challenge(ntlm.challenge(
                self.challenge, self.server.domain, netbios_name(self.ctx.hostname),
                self.server.domain.lower(), self.server.version, self._clock()))
            reply = struct.pack("<HHHH", 9, 0, HEADER + 8, len(token)) + token
            return self._frame(smb2_header(SESSION_SETUP, STATUS_MORE_PROCESSING_REQUIRED,
                                           message_id, self.session_id) + reply)
        if kind == ntlm.AUTHENTICATE:
            self._rec.update(ntlm.parse_authenticate(msg))
            self._done = True
            return self._frame(smb2_header(SESSION_SETUP, STATUS_LOGON_FAILURE, message_id,
                                           self.session_id) + error_body())
        return self._fail(f"NTLMSSP message type {kind}")


def factory(ctx: Context) -> Dialogue:
    """The catalog's DialogueFactory for this protocol."""
    return SmbDialogue(ctx)
