"""The control channel between the master and a child (a server process, the recorder): a Unix
socketpair and an outgoing queue, so a message that does not fit the socket's buffer now waits
its turn (flushed, in order, when the socket is writable again) instead of being dropped or torn:
on a stream socket (the server processes': its buffer holds thousands of messages, where a
SOCK_SEQPACKET pair holds net.unix.max_dgram_qlen, 10 by default, and a sweep's handovers then
piled up in the master) what a send() did not take is kept and sent first; messages end with a
newline; descriptors go with their message's first byte and are taken in order by the receiver.
On a SOCK_SEQPACKET socket (the recorder's) each message is a packet of its own.

The messages between the master and a server process are typed (controlmessages.py: one
encoder, one decoder; their names are importable from here too). The recorder's own words
(ready, link, stop, stats) go over the same Channel as text (`send`, `receive`).
"""

from __future__ import annotations

import logging
import os
import select
import socket
from collections import deque
from collections.abc import Callable
from typing import Any

from honeytrap.controlmessages import (
    Busy,
    ControlError,
    Expire,
    Idle,
    Key,
    Load,
    Message,
    Released,
    Relink,
    Retire,
    Serve,
    Shutdown,
    Stats,
    Stop,
    decode,
    encode,
    parse_key,
    parse_stats,
    port_key,
)

# The messages' names, importable from here as before the split (control.Serve, control.decode).
__all__ = [
    "HANDOVER_BATCH", "LOAD_STEP", "MAX_FDS", "MAX_MESSAGE", "MAX_QUEUED", "Busy", "Channel",
    "ControlError", "Expire", "FdTally", "Idle", "Key", "Load", "Message", "Relink", "Released",
    "Retire", "Serve", "Shutdown", "Stats", "Stop", "channel_pair", "decode", "descriptors",
    "encode", "later", "parse_key", "parse_stats", "port_key", "uncork",
]

log = logging.getLogger("honeytrap.control")

# A message is a word or a small JSON object; anything longer is a bug on the other side.
MAX_MESSAGE = 64 * 1024
# Serve messages the master sends in one sendmsg (Channel.cork): a sweep's handovers then cost
# one syscall and one wake-up of the process per batch, not per port, and the socket's buffer
# (which counts sendmsg calls, not descriptors) holds this many times more bound ports in flight
# instead of the master's own descriptor table (bench/sweep.py: a 5,000 SYN/s sweep filled a
# 20,000 descriptor limit with queued handovers, and ports could no longer be bound).
HANDOVER_BATCH = 64
# Descriptors accepted with one receive: a batch of serve messages, each with its bound socket
# and its template file (more is a bug on the other side). Below the kernel's SCM_MAX_FD (253).
MAX_FDS = 2 * HANDOVER_BATCH
# Messages waiting for the socket to drain, at most: past this the other side has stopped
# reading for good (a hung child); the channel is closed (`overflowed`): the master kills the
# child and frees its ports at once (master.py, _drop_unreachable).
MAX_QUEUED = 1 << 16
# A server process reports its connections' descriptors when they moved by this many since the
# last report (the master's port table gives new ports to processes with descriptors to spare).
LOAD_STEP = 256


# --- the channel --------------------------------------------------------------------------------


def descriptors(channels: list[Channel]) -> list[int]:
    """The open channels' descriptors with those queued in them (bound ports, recorder links),
    which a forked child must close: one that inherited a port would keep it bound, unserved."""
    return [fd for c in channels if not c.closed for fd in (c.fileno(), *c.queued_fds())]


def later(channel: Channel, corked: list[Channel]) -> Channel:
    """`channel`, corked (and added to `corked`, for uncork) if it was not already."""
    if channel.cork():
        corked.append(channel)
    return channel


def uncork(channels: list[Channel]) -> None:
    """Send what the corked channels gathered (Channel.cork), and forget them."""
    for channel in channels:
        channel.uncork()
    channels.clear()


def _find_serve(lines: list[bytes], fds: int, key: Key) -> tuple[int, int, int] | None:
    """(line, first descriptor, descriptors) of the last serve for `key` in `lines` (our own
    encoding), if the serves in them own exactly `fds` descriptors, in order (a batch partly sent
    owns none: its descriptors went with its first byte)."""
    prefix = f"serve {port_key(*key)} ".encode()
    owned, found = 0, None
    for index, line in enumerate(lines):
        if line.startswith(b"serve "):
            count = int(line.rsplit(b" ", 1)[1])
            if line.startswith(prefix):
                found = (index, owned, count)
            owned += count
    return found if owned == fds else None


def _waiting(sock: int) -> bool:
    """A connection (or a datagram) waits on the listening socket `sock`."""
    poll = select.poll()
    poll.register(sock, select.POLLIN)
    return any(events & select.POLLIN for _fd, events in poll.poll(0))


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """A socketpair for a server process's control channel (see the module's docstring)."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)


class FdTally:
    """Descriptors held by the channels sharing it and not yet delivered (corked or queued): the
    master's bound ports in handovers (handovers.py bounds them)."""

    __slots__ = ("held",)

    def __init__(self) -> None:
        self.held = 0


class Channel:
    """One end of a control channel. `on_backlog(True)` is called when messages start waiting
    for the socket (the owner then calls flush() when it is writable), `on_backlog(False)` when
    they are all sent. `on_close()` is called once, just before the socket is closed (by close(),
    or by a send that found the other end gone): the owner takes it out of its selector while
    the descriptor is still its own (a descriptor closed while registered stays in a selector's
    map, and the next socket given that number cannot be registered)."""

    def __init__(self, sock: socket.socket,
                 on_backlog: Callable[[bool], None] | None = None,
                 tally: FdTally | None = None) -> None:
        self.sock = sock
        self.tally = tally if tally is not None else FdTally()
        self.sock.setblocking(False)
        self.closed = False
        self.overflowed = False  # closed by a send past MAX_QUEUED: the other side reads nothing
        self.fds: list[int] = []
        self.on_backlog = on_backlog
        self.on_close: Callable[[], None] | None = None
        # What waits for the socket: (bytes, their descriptors, the messages in them: a corked
        # batch is one entry of several).
        # And the ports whose serves own those descriptors (none once a byte of it was sent).
        self._queue: deque[tuple[bytes, list[int], int, tuple[Key, ...]]] = deque()
        self._queued_messages = 0
        self._stream = sock.type == socket.SOCK_STREAM
        self._buffer = bytearray()
        # While corked (cork(), until uncork()): messages gathered here, in order, with the
        # descriptors they own (closed once sent).
        self._corked: list[bytes] | None = None
        self._corked_fds: list[int] = []
        self._corked_serves: list[Key] = []
        # Ports whose serve is corked or queued with its descriptors: cancel_serve's quick "no"
        # (most stops are for ports delivered long ago).
        self._undelivered: set[Key] = set()
        self._corked_messages = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def backlog(self) -> int:
        """Messages waiting for the socket."""
        return self._queued_messages

    def queued_fds(self) -> list[int]:
        """Our copies of the descriptors waiting in the queue (or corked): a process forked
        meanwhile must close them (a listening socket inherited by a child that never serves it
        stays bound, its connections unanswered, after the port's own server has let it go)."""
        return [fd for _data, fds, _count, _serves in self._queue for fd in fds] + self._corked_fds

    @property
    def corked(self) -> bool:
        return self._corked is not None

    def cork(self) -> bool:
        """Gather what is sent from now on (in order) until uncork(), which sends it in
        batches of at most HANDOVER_BATCH messages, one sendmsg each. True if it was not
        corked already."""
        if self._corked is None and not self.closed:
            self._corked = []
            return True
        return False

    def hand(self, message: Message, fds: list[int]) -> bool:
        """Send a typed message with descriptors that become the channel's (closed once sent,
        or when the channel closes; also when this returns False)."""
        if self._corked is None or self._queued_messages + self._corked_messages >= MAX_QUEUED:
            # Not corked; or the queue is full: what is corked goes first, and this one fails
            # now (False: the master refuses its attempt), the channel closing on it.
            self._send_corked()
            serves = (message.key,) if isinstance(message, Serve) else ()
            return self._send_now(encode(message), fds, owned=True, serves=serves)
        self._corked_fds += fds
        self.tally.held += len(fds)
        if isinstance(message, Serve):
            self._corked_serves.append(message.key)
            self._undelivered.add(message.key)
        self._add_corked(encode(message))
        return True

    def _add_corked(self, data: bytes) -> None:
        assert self._corked is not None
        self._corked.append(data + b"\n")
        self._corked_messages += 1
        if self._corked_messages >= HANDOVER_BATCH:
            self._send_corked()

    def uncork(self) -> None:
        """Send what was gathered since cork(), and send directly again."""
        if self._corked is not None:
            self._send_corked()
            self._corked = None

    def _send_corked(self) -> None:
        if not self._corked:
            return
        data, fds, count = b"".join(self._corked), self._corked_fds, self._corked_messages
        serves = tuple(self._corked_serves)
        self._corked, self._corked_fds, self._corked_messages = [], [], 0
        self._corked_serves = []
        self._undelivered.difference_update(serves)  # queued again below if not sent
        self.tally.held -= len(fds)
        # If the channel closes on it (the other side gone, or not reading: MAX_QUEUED), its
        # ports go with the process (the master frees a killed or dead process's ports).
        self._send_now(data[:-1], fds, owned=True, messages=count, serves=serves)  # (+ newline)

    def cancel_serve(self, key: Key) -> bool:
        """Take back the Serve for `key` if it is not delivered yet (corked, or queued with
        none of its batch sent) and its socket has nothing waiting (a connection in its accept
        queue, a datagram: an attack the process must still see): its descriptors are closed
        here, as if it was never handed. False if it is delivered, on its way (its batch partly
        sent: its descriptors went with the first byte), or has something waiting."""
        if key not in self._undelivered:
            return False
        if key in self._corked_serves and self._corked is not None:
            found = _find_serve(self._corked, len(self._corked_fds), key)
            if found is None or _waiting(self._corked_fds[found[1]]):
                return False
            line, first, count = found
            del self._corked[line]
            self._corked_messages -= 1
            self._corked_serves.remove(key)
            self._undelivered.discard(key)
            self._close_taken(self._corked_fds, first, count)
            return True
        for index, (data, fds, messages, serves) in enumerate(self._queue):
            if key not in serves:
                continue
            lines = data[:-1].split(b"\n")
            found = _find_serve(lines, len(fds), key)
            if found is None or _waiting(fds[found[1]]):
                return False
            line, first, count = found
            del lines[line]
            self._close_taken(fds, first, count)
            self._undelivered.discard(key)
            self._queued_messages -= 1
            if lines:
                rest = tuple(k for k in serves if k != key)
                self._queue[index] = (b"\n".join(lines) + b"\n", fds, messages - 1, rest)
            else:
                del self._queue[index]
                if not self._queue and self.on_backlog is not None:
                    self.on_backlog(False)
            return True
        return False

    def _close_taken(self, fds: list[int], first: int, count: int) -> None:
        for fd in fds[first:first + count]:
            os.close(fd)
        del fds[first:first + count]
        self.tally.held -= count

    def send(self, message: str) -> None:
        self._send(message.encode(), [])

    def send_message(self, message: Message, fds: list[int] | None = None) -> bool:
        """Send a typed message (with descriptors: the caller keeps and closes its copies);
        False only if the channel is closed."""
        return self._send(encode(message), list(fds or ()))

    def send_fd(self, message: str, fd: int) -> bool:
        """Send `message` with a descriptor (the caller keeps and closes its own copy)."""
        return self.send_fds(message, [fd])

    def send_fds(self, message: str, fds: list[int]) -> bool:
        """Send `message` with descriptors (the caller keeps and closes its own copies)."""
        return self._send(message.encode(), fds)

    def send_stats(self, stats: dict[str, Any]) -> None:
        self.send_message(Stats({k: v for k, v in stats.items() if isinstance(v, int)}))

    def _send(self, data: bytes, fds: list[int]) -> bool:
        if self.closed:
            return False
        if self._corked is not None:  # after what waits in the cork, in order
            if not fds:
                self._add_corked(data)
                return True
            self._send_corked()
        return self._send_now(data, fds)

    def _send_now(
        self, data: bytes, fds: list[int], *, owned: bool = False, messages: int = 1,
        serves: tuple[Key, ...] = (),
    ) -> bool:
        """Send or queue `data` (its newline added) with `fds`: copies of them, or, `owned`,
        the descriptors themselves, which are the channel's then (closed once sent, or now if
        this returns False)."""
        if self.closed:
            self._close_owned(fds, owned)
            return False
        data += b"\n"
        if not self._queue:
            sent = self._try(data, fds)
            if sent is None:
                self._close_owned(fds, owned)
                return False
            if sent:  # sent, descriptors and all with the first byte
                self._close_owned(fds, owned)
                if sent == len(data):
                    return True
                data, fds, owned = data[sent:], [], True  # a stream took part: the rest first
                serves = ()
        if self._queued_messages >= MAX_QUEUED:
            log.error("control channel: %d messages unread by the other side: closing it",
                      self._queued_messages)
            self._close_owned(fds, owned)
            self.overflowed = True
            self.close()
            return False
        if not owned:  # our own copies: the caller closes its own when we return
            copies: list[int] = []
            try:
                for fd in fds:
                    copies.append(os.dup(fd))
            except OSError as exc:  # out of descriptors: this message fails, the channel lives
                for fd in copies:
                    os.close(fd)
                log.error("control channel: cannot keep a message's descriptors (%s)",
                          exc.strerror)
                return False
            fds = copies
        self._queue.append((data, fds, messages, serves))
        self._undelivered.update(serves)
        self.tally.held += len(fds)
        self._queued_messages += messages
        if len(self._queue) == 1 and self.on_backlog is not None:
            self.on_backlog(True)
        return True

    @staticmethod
    def _close_owned(fds: list[int], owned: bool) -> None:
        if owned:
            for fd in fds:
                os.close(fd)

    def _try(self, data: bytes, fds: list[int]) -> int | None:
        """Bytes sent (0: it would block), None if the channel is closed now."""
        try:
            if fds:
                return socket.send_fds(self.sock, [data], fds)
            return self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError:
            self.close()
            return None

    def flush(self) -> None:
        """Send what waits, in order, until the socket would block again."""
        while self._queue and not self.closed:
            data, fds, count, serves = self._queue[0]
            sent = self._try(data, fds)
            if not sent:
                return
            for fd in fds:  # sent with the first byte
                os.close(fd)
            self.tally.held -= len(fds)
            self._undelivered.difference_update(serves)
            if sent < len(data):
                self._queue[0] = (data[sent:], [], count, ())
                return
            self._queue.popleft()
            self._queued_messages -= count
        if not self._queue and self.on_backlog is not None:
            self.on_backlog(False)

    def receive_raw(self) -> list[bytes]:
        """Every complete message pending (the descriptors that came go to `fds`, in order);
        b"" last when the other end closed."""
        messages: list[bytes] = []
        while not self.closed:
            try:
                data, fds, flags, _addr = socket.recv_fds(self.sock, MAX_MESSAGE, MAX_FDS)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                data, fds, flags = b"", [], 0
            self.fds.extend(fds)
            if not data:
                self.closed = True
                break
            if not self._stream:
                if flags & socket.MSG_TRUNC:
                    log.error("control channel: oversized message discarded")
                else:
                    messages.append(data.rstrip(b"\n"))
                continue
            self._buffer += data
            if len(self._buffer) > MAX_MESSAGE and b"\n" not in self._buffer:
                log.error("control channel: oversized message discarded")
                self._buffer.clear()
        if self._stream and self._buffer:
            *lines, rest = self._buffer.split(b"\n")
            self._buffer = bytearray(rest)
            messages.extend(bytes(line) for line in lines)
        if self.closed:
            messages.append(b"")
        return messages

    def receive(self) -> list[str]:
        """Every message pending as text (its descriptors go to `fds`, in order); "" (last)
        when the other end closed."""
        return [data.decode(errors="replace") for data in self.receive_raw()]

    def take_fds(self, count: int) -> list[int]:
        taken, self.fds = self.fds[:count], self.fds[count:]
        return taken

    def take_fd(self) -> int | None:
        return self.fds.pop(0) if self.fds else None

    def close(self) -> None:
        """Close the socket and every descriptor held (idempotent; after the other end closed
        too, when receive_raw() only marked the channel closed)."""
        if self.on_close is not None:
            callback, self.on_close = self.on_close, None
            callback()
        self.closed = True
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()
        for fd in self._corked_fds:
            os.close(fd)
        self.tally.held -= len(self._corked_fds)
        self._corked, self._corked_fds = None, []
        self._corked_serves, self._undelivered = [], set()
        while self._queue:
            fds = self._queue.popleft()[1]
            for fd in fds:
                os.close(fd)
            self.tally.held -= len(fds)
        self._queued_messages = 0
        self.sock.close()
