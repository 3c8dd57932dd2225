"""Normal mode, sans-IO: one connection's dialogue, its limits and its clock, given data, ticks
and EOF.

The I/O adapter (normal.py) feeds events with the monotonic time and carries out the returned
`Output`; it asks `deadline()` when to tick next. No sockets here. What answers is a dialogue
(honeytrap/dialogue/: a `.dialogue` file, the port's raw template, or protocol detection); this
session bounds it:
  - `read_limit` bytes of the client are kept and fed to the dialogue; at the limit it closes;
  - the dialogue's `idle()` is called after each read timeout of silence (and once after its
    `quiet` period, for the raw template's timing, raw.py);
  - the connection closes after `idle_limit` read timeouts of silence (the C original's 11 idle
    timeouts), when the peer half-closes (it gets nothing more, as in the original), or when the
    dialogue says so;
  - a DialogueError (the client broke the dialogue) closes the connection with a note; nothing
    recorded is lost.
The transcript (the dialogue in order: byte counts each way, and our own bytes) goes into the
attack record.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from honeytrap.dialogue.base import DataChannel, Dialogue, DialogueError, Reply

log = logging.getLogger("honeytrap.session")

# The C original closed after 11 idle read timeouts in a row (10 template sends + 1).
DEFAULT_IDLE_LIMIT = 11
# Turns kept in the transcript; a longer dialogue keeps its first turns and counts the rest in
# the last (bounds the record of a client that sends a byte at a time).
MAX_TURNS = 1024


class Closed(enum.Enum):
    OPEN = "open"
    IDLE = "idle"  # idle_limit timeouts without data
    EOF = "eof"  # the peer half-closed or closed
    READ_LIMIT = "read_limit"  # read_limit bytes received
    LIFETIME = "lifetime"  # the connection's time cap (normal.py)
    RESET = "reset"  # a socket error
    SHUTDOWN = "shutdown"  # the server was stopped
    DIALOGUE = "dialogue"  # the dialogue closed it (QUIT, a protocol error, ...)
    ERROR = "error"  # the dialogue failed on the client's bytes (DialogueError)


@dataclass(slots=True)
class Output:
    send: bytes = b""
    close: bool = False
    delay: float = 0.0  # wait this long before sending (and closing)
    data: DataChannel | None = None  # FTP's data connection (normal.py's DataChannels)


@dataclass(slots=True)
class Transcript:
    """The dialogue in order: +n bytes from the client, -n bytes from us, and our bytes (at most
    `limit`, the read_limit: what we send is bounded like what we keep of the client)."""

    limit: int
    # The turns: the first here, the others (from the second on) in `more`, made then: most
    # connections have one turn (the banner), and an empty list each is ~90 bytes.
    first: int = 0
    more: list[int] | None = None
    # Our bytes: the first reply as it is (most connections' only one, a banner: the dialogue's
    # own bytes object, not a copy per connection), a bytearray from the second on.
    sent: bytes | bytearray = b""
    sent_cut: bool = False

    @property
    def turns(self) -> list[int]:
        if not self.first:
            return []
        return [self.first] if self.more is None else [self.first, *self.more]

    def add(self, count: int) -> None:
        if not count:
            return
        more = self.more
        if more is None:
            first = self.first
            if not first or (first > 0) == (count > 0):
                self.first = first + count
            elif MAX_TURNS > 1:
                self.more = [count]
            return
        if (more[-1] > 0) == (count > 0):
            more[-1] += count
        elif len(more) + 1 < MAX_TURNS:
            more.append(count)

    def ours(self, data: bytes) -> None:
        self.add(-len(data))
        sent = self.sent
        room = self.limit - len(sent)
        if len(data) > room:
            self.sent_cut = True
            data = data[: max(room, 0)]
        if not sent and type(data) is bytes:
            self.sent = data
        elif data:
            if type(sent) is bytes:
                sent = self.sent = bytearray(sent)
            sent += data


class NormalSession:
    # One per open connection, most of them idle: no instance dict (bench/idle.py).
    __slots__ = ("dialogue", "read_limit", "read_timeout", "idle_limit", "received",
                 "_said", "closed", "truncated", "error", "last", "next_idle", "quiet_done")

    def __init__(
        self,
        dialogue: Dialogue,
        *,
        read_limit: int,
        read_timeout: float,
        now: float,
        idle_limit: int = DEFAULT_IDLE_LIMIT,
    ) -> None:
        self.dialogue = dialogue
        self.read_limit = read_limit
        self.read_timeout = read_timeout
        self.idle_limit = idle_limit
        self.received: bytearray | None = None  # the client's bytes, made on the first
        # The transcript, made at the second event: until then only our first bytes (most idle
        # connections' whole dialogue, a banner or a raw template: the dialogue's own bytes),
        # not a Transcript and its turn count (~100 bytes per open connection, bench/idle.py).
        self._said: Transcript | bytes = b""
        self.closed = Closed.OPEN
        self.truncated = False
        self.error = ""  # why the dialogue failed, for the record's notes
        self.last = now  # the last client data (or the start)
        self.next_idle = read_timeout  # silence after which idle() is due next
        self.quiet_done = False

    @property
    def payload(self) -> bytes:
        return bytes(self.received) if self.received is not None else b""

    @property
    def transcript(self) -> Transcript:
        said = self._said
        if isinstance(said, Transcript):
            return said
        transcript = self._said = Transcript(self.read_limit)
        if said:
            transcript.ours(said)
        return transcript

    def start(self) -> Output:
        # The delay is read before start() (a dialogue may drop it once its banner is given).
        delay = max(float(getattr(self.dialogue, "start_delay", 0)), 0.0)
        first = self._call(self.dialogue.start)
        if isinstance(first, Reply):  # a DialogueError: closing
            return self._out(first)
        # _out(Reply(send=first, delay=start_delay)) without the Reply (once per connection).
        if first:
            self._ours(first)
        return Output(first, False, delay)

    def on_data(self, data: bytes, now: float) -> Output:
        if self.closed is not Closed.OPEN:
            return Output()
        received = self.received
        if received is None:
            received = self.received = bytearray()
        room = self.read_limit - len(received)
        full = len(data) >= room
        if len(data) > room:
            data = data[: max(room, 0)]
            self.truncated = True
        received += data
        self.transcript.add(len(data))
        self.last = now
        self.next_idle = self.read_timeout
        self.quiet_done = False
        out = self._out(self._reply(self.dialogue.receive, data))
        if full:
            out.close = True
            self._close(Closed.READ_LIMIT)
        return out

    def on_tick(self, now: float) -> Output:
        """The clock: idle() when due, the idle limit."""
        if self.closed is not Closed.OPEN:
            return Output()
        # Compared as deadline() computes them, so a tick at the deadline is never early.
        if now >= self.last + self.idle_limit * self.read_timeout:
            self._close(Closed.IDLE)
            return Output(close=True)
        quiet = self._quiet()
        if quiet is not None and not self.quiet_done and now >= self.last + quiet:
            self.quiet_done = True
            return self._out(self._reply(self.dialogue.idle))
        if now >= self.last + self.next_idle:
            self.next_idle += self.read_timeout
            return self._out(self._reply(self.dialogue.idle))
        return Output()

    def deadline(self) -> float:
        """When on_tick should run next (monotonic)."""
        last = self.last
        due = min(last + self.next_idle, last + self.idle_limit * self.read_timeout)
        if not self.quiet_done:
            quiet = self._quiet()
            if quiet is not None and last + quiet < due:
                return last + quiet
        return due

    def _quiet(self) -> float | None:
        quiet = getattr(self.dialogue, "quiet", None)
        return min(float(quiet), self.read_timeout) if quiet is not None else None

    def later(self, data: bytes) -> Output:
        """Bytes the dialogue asked for later (FTP's 226 once its data transfer is over)."""
        if self.closed is not Closed.OPEN or not data:
            return Output()
        return self._out(Reply(send=data))

    def on_eof(self) -> Output:
        """The peer half-closed: it gets nothing more (as in the original)."""
        self._close(Closed.EOF)
        return Output(close=True)

    def abort(self, why: Closed) -> Output:
        self._close(why)
        return Output(close=True)

    def _close(self, why: Closed) -> None:
        if self.closed is Closed.OPEN:
            self.closed = why

    def _reply(self, call: Callable[..., Reply], *args: Any) -> Reply:
        result = self._call(call, *args)
        return result if isinstance(result, Reply) else Reply()

    def _call(self, call: Callable[..., Any], *args: Any) -> Any:
        """The dialogue's answer; a failure closes the connection (the record is kept)."""
        try:
            return call(*args)
        except DialogueError as exc:
            self.error = f"dialogue {self.dialogue.name}: {exc}"
        except Exception as exc:  # a bug in a dialogue must not lose the attack record
            log.exception("dialogue %s failed", self.dialogue.name)
            self.error = f"dialogue {self.dialogue.name} failed: {type(exc).__name__}"
        self._close(Closed.ERROR)
        return Reply(close=True)

    def _ours(self, data: bytes) -> None:
        if type(data) is bytes and not self._said:
            self._said = data  # our first bytes and nothing else yet: the transcript's, later
        else:
            self.transcript.ours(data)

    def _out(self, reply: Reply) -> Output:
        if reply.send:
            self._ours(reply.send)
        if reply.close:
            self._close(Closed.DIALOGUE)
        return Output(reply.send, reply.close, max(reply.delay, 0.0), reply.data)

    def record(self) -> dict[str, Any]:
        """The dialogue's own fields for the record ({} if it fails to give them)."""
        result = self._call(self.dialogue.record)
        return result if isinstance(result, dict) else {}


class UdpExchange:
    """One peer's datagrams to a UDP port: one reply per datagram, one attack per exchange
    (the datagrams until the peer is silent for a read timeout). The original re-forked on one
    datagram and replied about ten times to it; we reply at most once. The reply is the
    dialogue's answer to the datagram (a code dialogue echoing what the client checks), or the
    port's raw template when the dialogue has none to give (raw.py answers only on idle)."""

    def __init__(self, template: bytes, *, read_limit: int, dialogue: Dialogue | None = None,
                 fallback: bool = False) -> None:
        self.template = template
        self.dialogue = dialogue
        # the port has a raw template of its own: it answers what the dialogue does not
        # recognise (a probe on 5060 that is not SIP), as it did before dialogues
        self.fallback = fallback
        self.read_limit = read_limit
        self.received = bytearray()
        self.transcript = Transcript(read_limit)
        self.datagrams = 0
        self.truncated = False
        self.error = ""

    @property
    def payload(self) -> bytes:
        return bytes(self.received)

    def on_datagram(self, data: bytes) -> bytes | None:
        """Record the datagram (up to read_limit) and return the one reply to send (None:
        none)."""
        self.datagrams += 1
        room = self.read_limit - len(self.received)
        if len(data) > room:
            self.truncated = True
            data = data[: max(room, 0)]
        self.received += data
        self.transcript.add(len(data))
        reply = self.template
        if self.dialogue is not None:
            try:
                answer = self.dialogue.receive(data)
            except DialogueError as exc:
                self.error = f"dialogue {self.dialogue.name}: {exc}"
                return None
            reply = answer.send or (self.template if self.fallback else b"")
            if not reply:
                return None
        self.transcript.ours(reply)
        return reply

    def record(self) -> dict[str, Any]:
        if self.dialogue is None:
            return {}
        try:
            fields = self.dialogue.record()
        except DialogueError:
            return {}
        return fields if isinstance(fields, dict) else {}
