"""The contract every dialogue keeps: bytes in, bytes out, no sockets, no clocks.

A dialogue answers one connection (or one UDP peer exchange) of normal mode. The I/O adapter
creates it on accept, sends what `start()` returns (a server-speaks-first banner, or nothing;
after the dialogue's optional `start_delay` attribute, seconds, read before start() is called,
else at once), feeds every chunk the client sends to `receive()`, calls `idle()` after each read
timeout that passed without data (and, for a dialogue with a `quiet` attribute, seconds, once
that long a silence passed), and carries out the returned `Reply`. What a dialogue wants in the
attack record beyond the client's raw bytes (the protocol name, a TLS fingerprint, the decrypted
stream) it returns from `record()` when the connection ends.

Wrapping dialogues (TLS) hold an inner dialogue and satisfy the same contract, so the adapter
never knows whether it speaks to the client in clear or through a TLS layer.

Only `DialogueError` (and its subclasses) may escape a dialogue's methods; the adapter logs it,
counts it and closes the connection, keeping everything recorded so far.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from honeytrap.entropy import BlockRandom
from honeytrap.errors import RemoteError

# The dialogues' randomness (salts, ids, jitter): one SystemRandom for every connection of the
# process. It draws from os.urandom and keeps no state of its own that matters, but each
# instance still carries a Mersenne Twister state of ~2.5 KiB: one per connection was ~40% of
# an idle connection's memory in a server process (bench/idle.py). Fork-safe (no state). Its
# draws come from os.urandom in blocks (entropy.py: not one system call per draw).
SENSOR_RNG: random.Random = BlockRandom()


class DialogueError(RemoteError):
    """The client's bytes broke a dialogue (the attacker's doing): logged, counted, closed."""


@dataclass
class DataChannel:
    """FTP's second connection (RFC 959 3.2), as a dialogue asks the adapter for it. The adapter
    only ever listens for the connection's own client (a connection from anyone else is closed
    unread) and never connects anywhere."""

    listen: int = 0  # listen on this port of the local address for the client's data connection
    send: bytes | None = None  # send these bytes on the data connection, then close it
    receive: bool = False  # read the data connection (recorded) until the client closes it
    then: bytes = b""  # for the control connection once that transfer is over (FTP's 226)


@dataclass(slots=True)
class Reply:
    send: bytes = b""  # bytes for the client (already framed or encrypted)
    close: bool = False  # close after sending
    delay: float = 0.0  # seconds to wait before sending (a served reply's jitter); 0: at once
    data: DataChannel | None = None  # FTP only: what to do with the data connection


@dataclass(slots=True)  # one per connection: no instance dict
class Context:
    """What a dialogue may know about where it runs. Never the attacker's bytes."""

    protocol: str  # "tcp" | "udp"
    port: int  # the local port answered
    read_limit: int  # bytes of the client kept at most (the adapter enforces it too)
    rng: random.Random = SENSOR_RNG  # salts, ids, jitter (a seeded Random in unit tests)
    hostname: str = "localhost"  # the sensor's plausible host name, per sensor
    state_dir: str = ""  # per-sensor state (certificate, keys); "" in unit tests
    extra: dict[str, Any] = field(default_factory=dict)  # per-sensor material (e.g. an SSLContext)
    local_addr: str = ""  # the address the client connected to ("" in unit tests)
    remote_addr: str = ""  # the client's address (MySQL's "Access denied" names it; "" in units)
    remote_port: int = 0  # the client's port (SIP's Via rport, RFC 3581, names it; 0 in units)


class Dialogue(Protocol):
    name: str  # the protocol recorded for this connection: "ftp", "http", "tls", ...

    def start(self) -> bytes:
        """Bytes to send as soon as the connection is accepted (b"": wait for the client)."""
        ...

    def receive(self, data: bytes) -> Reply:
        """The client sent `data` (any chunking: a dialogue buffers partial lines itself)."""
        ...

    def idle(self) -> Reply:
        """One read timeout passed without data."""
        ...

    def record(self) -> dict[str, Any]:
        """Fields for the attack record when the connection ends (JSON-able values; bytes are
        stored as hex by the outputs). Keys are fixed names, never derived from client bytes."""
        ...


# Makes a fresh dialogue for one connection.
DialogueFactory = Callable[[Context], Dialogue]
