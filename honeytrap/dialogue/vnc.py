"""VNC up to the password (RFC 6143, the Remote Framebuffer protocol): the ProtocolVersion at
once, the client's version, the security types (3.7, 3.8) or the type the server names (3.3),
VNC Authentication's fresh 16-byte challenge, the client's 16-byte response recorded (a DES
encryption of the challenge with the password: crackable offline), then SecurityResult failed
("Authentication failed" in 3.8) and the close.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from honeytrap.dialogue import sensor
from honeytrap.dialogue.base import Context, Dialogue, Reply
from honeytrap.dialogue.binary import text
from honeytrap.errors import ConfigError

SERVERS = "vnc.servers"
VERSION_LEN = 12  # RFC 6143 7.1.1: "RFB xxx.yyy\n"
VNC_AUTH = 2
CHALLENGE = 16
FAILED = 1  # SecurityResult
REASON = b"Authentication failed"


@dataclass(frozen=True)
class Server:
    version: str  # "003.008"
    types: tuple[int, ...]

    @classmethod
    def parse(cls, line: str) -> Server:
        version, _, types = (f.strip() for f in line.partition("|"))
        try:
            major, minor = (int(v) for v in version.split("."))
            offered = tuple(int(t) for t in types.split(","))
        except ValueError as exc:
            raise ConfigError(f"want 'xxx.yyy | types', got {line[:60]!r}",
                              file=SERVERS) from exc
        if len(version) != 7 or VNC_AUTH not in offered or not all(0 < t < 256 for t in offered):
            raise ConfigError(f"bad line {line[:60]!r} (type 2 must be offered)", file=SERVERS)
        return cls(version, offered)

    def minor(self) -> int:
        return int(self.version.split(".")[1])


def _minor(line: bytes) -> int | None:
    """The minor version of a client's "RFB 003.00x\\n" (RFC 6143 7.1.1), None if not one."""
    if len(line) != VERSION_LEN or not line.startswith(b"RFB ") or line[-1:] != b"\n":
        return None
    try:
        major, minor = (int(v) for v in line[4:11].split(b"."))
    except ValueError:
        return None
    return minor if major == 3 else 8  # RFB 004/005 (RealVNC) speak 3.8 to us


class VncDialogue:
    name = "vnc"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.server = Server.parse(sensor.pick(SERVERS, ctx.hostname))
        self.challenge = ctx.rng.randbytes(CHALLENGE)
        self._buf = bytearray()
        self._minor = 0
        self._state = "version"
        self._rec: dict[str, Any] = {"server_version": self.server.version,
                                     "client_version": "", "security_type": None,
                                     "response": b"", "error": ""}

    def start(self) -> bytes:
        return f"RFB {self.server.version}\n".encode("ascii")

    def receive(self, data: bytes) -> Reply:
        if self._state == "closed":
            return Reply(close=True)
        self._buf += data
        send = b""
        while self._state != "closed":
            step = getattr(self, f"_{self._state}")()
            if step is None:
                break
            send += step.send
            if step.close:
                self._state = "closed"
        return Reply(send, self._state == "closed")

    def idle(self) -> Reply:
        return Reply()

    def record(self) -> dict[str, Any]:
        return {"vnc": dict(self._rec, challenge=self.challenge)}

    def _version(self) -> Reply | None:
        if len(self._buf) < VERSION_LEN:
            return None
        line = bytes(self._buf[:VERSION_LEN])
        del self._buf[:VERSION_LEN]
        self._rec["client_version"] = text(line.rstrip(b"\n"), VERSION_LEN)
        minor = _minor(line)
        if minor is None:
            return self._fail("not an RFB ProtocolVersion")
        # RFC 6143 7.1.1: the lower of the two versions; unknown minors count as 3.3
        self._minor = min(self.server.minor(), minor if minor in (3, 7, 8) else 3)
        if self._minor == 3:  # the server names the type (RFB 3.3, 7.1.2), then challenges
            self._state = "response"
            self._rec["security_type"] = VNC_AUTH
            return Reply(struct.pack("!I", VNC_AUTH) + self.challenge)
        self._state = "choice"
        return Reply(bytes([len(self.server.types), *self.server.types]))

    def _choice(self) -> Reply | None:
        if not self._buf:
            return None
        choice = self._buf[0]
        del self._buf[:1]
        self._rec["security_type"] = choice
        if choice != VNC_AUTH:  # Tight, or a type we did not offer: the client gets no further
            return self._result(f"security type {choice} chosen")
        self._state = "response"
        return Reply(self.challenge)

    def _response(self) -> Reply | None:
        if len(self._buf) < CHALLENGE:
            return None
        self._rec["response"] = bytes(self._buf[:CHALLENGE])
        del self._buf[:CHALLENGE]
        return self._result("")

    def _result(self, why: str) -> Reply:
        """SecurityResult failed (RFC 6143 7.1.3), with the reason string from 3.8 on."""
        self._rec["error"] = why
        reason = struct.pack("!I", len(REASON)) + REASON if self._minor >= 8 else b""
        return Reply(struct.pack("!I", FAILED) + reason, close=True)

    def _fail(self, why: str) -> Reply:
        self._rec["error"] = why
        return Reply(close=True)


def factory(ctx: Context) -> Dialogue:
    """The catalog's DialogueFactory for this protocol."""
    return VncDialogue(ctx)
