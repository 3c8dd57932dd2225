"""A link between a dynamic server and the recorder: the server's end (RecorderClient), and
what both ends share (the largest frame, sending what a non-blocking socket takes).

A server process sends each finished attack over its link (wire.py frames) and keeps it until
the recorder acknowledges it (recorder.py: once every hook ran for it); a recorder restarted by
the master gets a new link ("relink") and everything not acknowledged is sent again. What is
kept unacknowledged counts against the sensor's bound (unacked.py): past it the server holds
back new connections until the recorder catches up.

A frame is kept once, in `unacked` (framestore.py: packed in chunks of their own mappings,
each given back once every frame in it is acknowledged). What waits to be sent is copied into
the send buffer only as far as SEND_BUFFER_BYTES: the rest is the frames from `unsent_from` on,
taken from `unacked` as the socket drains. (Copying every frame into the buffer as it came
kept a second copy of all that was unsent: while the recorder did not read, which is when the
servers hold the most, their memory was unacknowledged_limit and that much again: bench/ soak,
15 -> 173 MiB.)
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

from honeytrap import heaptrim, unacked, wire
from honeytrap.attack import Attack
from honeytrap.config import Config
from honeytrap.framestore import FrameStore, chunk_bytes

log = logging.getLogger("honeytrap.recorder")

# A server's finished attacks go to the recorder at most this long after the first of them
# waits, all in one send: sent at the end of each loop pass, they were one send() (and one
# wake-up of the recorder) per connection at moderate rates, 8% of a server process's CPU at
# ~500 connections/s (py-spy). An attack reaches the recorder this much later at most.
FLUSH_DELAY = 0.005
# ... or at once, when this many bytes of frames wait.
FLUSH_BYTES = 256 * 1024
# Bytes read from the link at a time: acknowledgements, a few bytes each, ACK_BATCH
# (recorder.py) of them at a time. Below malloc's mmap threshold, so a read's buffer comes from
# the heap (256 KiB, as the recorder reads, cost an mmap, an mremap and an munmap per read).
ACK_READ_SIZE = 64 * 1024
# Frames copied into the send buffer ahead of the socket, at most (plus the one frame that
# crossed it): as much as a FLUSH_BYTES flush sends in one call, so a link the recorder reads
# as fast as it comes sends as before, and a link it does not read costs no more than this
# beside the frames kept for it in `unacked`.
SEND_BUFFER_BYTES = FLUSH_BYTES
# Once the frames held came down by this much from their high-water mark, the process's C heap
# is trimmed (heaptrim.py; at most every heaptrim.TRIM_INTERVAL): the frames themselves go back
# with their chunks (framestore.py), but the heap keeps the free pages between what a backlog
# allocated beside them (a chunk's offsets, the acknowledgements' reads): ~1.5 MiB after 15 MB
# held and given back three times (tests/test_recorderlink_memory.py).
TRIM_BYTES = 4 * 1024 * 1024


def max_frame(config: Config) -> int:
    """The largest frame a link carries: two connections' payloads of read_limit each."""
    return max(wire.MAX_FRAME, 2 * config.read_limit + 1024 * 1024)


def send_pending(sock: socket.socket, out: bytearray) -> None:
    """Send what the (non-blocking) socket takes now; the rest stays in `out`. Errors other
    than would-block are the caller's."""
    try:
        while out:
            del out[: sock.send(out)]
    except (BlockingIOError, InterruptedError):
        pass


class RecorderClient:
    """A dynamic server's end of its link: sends finished attacks, keeps each until acked.

    `on_full(True)` when the sensor's unacknowledged bytes pass unacknowledged_limit (unacked.py:
    the server stops taking connections), `on_full(False)` once they are down to its low mark;
    `on_acked()` after acknowledgements arrived."""

    def __init__(
        self, sock: socket.socket | None, config: Config, on_full: Callable[[bool], None],
        on_acked: Callable[[], None] = lambda: None,
        share: unacked.Share | unacked.PrivateShare | None = None,
    ) -> None:
        self.sock = sock  # attached to the loop by start()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.on_full = on_full
        self.on_acked = on_acked
        self.frame_limit = max_frame(config)  # what a frame handed to send() may be at most
        self.reader = wire.FrameReader(max_frame=self.frame_limit)
        self.unacked = FrameStore(chunk_bytes(config.unacknowledged_limit))
        self._high = 0  # the most bytes held since the last trim
        self._trimmed = 0.0  # when (the loop's clock)
        # This process's part of the sensor's bound (the master's share; None: its own alone).
        self.holdback = unacked.Holdback(
            share if share is not None else unacked.PrivateShare(config.unacknowledged_limit),
            on_full)
        self.seq = 0
        self.out = bytearray()  # frames copied for the socket: about SEND_BUFFER_BYTES at most
        # The first frame not copied into `out` yet (self.seq + 1: none); the frames from it on
        # wait in `unacked` alone (_refill).
        self.unsent_from = 1
        self._writing = False  # a writer is registered: the socket was full
        self._flush_soon = False  # a flush is scheduled (FLUSH_DELAY)
        self._idle = asyncio.Event()  # set while nothing is unacknowledged
        self._idle.set()

    @property
    def unacked_bytes(self) -> int:
        return self.unacked.bytes

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.holdback.loop = loop
        if self.sock is not None:
            self._attach(self.sock)

    def submit(self, attack: Attack) -> None:
        """Hand a finished attack over. The frames of FLUSH_DELAY go out in one send."""
        seq = self.seq + 1
        self.send(seq, wire.encode_attack(seq, attack, max_frame=self.frame_limit))

    def send(self, seq: int, frame: bytes) -> None:
        """Hand over an attack's frame, encoded with sequence number seq: the next one,
        self.seq + 1 (wire.encode_normal: a server's normal-mode attacks are encoded without an
        Attack)."""
        self.seq = seq
        store = self.unacked
        store.add(seq, frame)
        if store.bytes > self._high:
            self._high = store.bytes
        self._idle.clear()
        if self.sock is not None:
            out = self.out
            if self.unsent_from == seq and len(out) < SEND_BUFFER_BYTES:
                out += frame  # nothing waits before it and the buffer has room
                self.unsent_from = seq + 1
            if not self._writing:
                if len(out) >= FLUSH_BYTES:
                    self._flush()
                elif not self._flush_soon:
                    assert self.loop is not None
                    self._flush_soon = True
                    self.loop.call_later(FLUSH_DELAY, self._flush)
        self.holdback.added(len(frame))

    def relink(self, sock: socket.socket) -> None:
        """A new link (the recorder was restarted): send again what was not acknowledged."""
        self._detach()
        self._attach(sock)
        # unacked is in sequence order (frames are added in it, only removed): its first is the
        # oldest one not acknowledged, and every frame from it on is sent again (_refill).
        oldest = self.unacked.oldest()
        self.unsent_from = self.seq + 1 if oldest is None else oldest
        log.warning("relinked to the recorder: %d attacks sent again", len(self.unacked))
        self._flush()

    async def drained(self, seconds: float) -> bool:
        """Wait until every attack handed over is acknowledged, or `seconds` pass."""
        if not self.unacked:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), seconds)
        except TimeoutError:
            return False
        return True

    def _attach(self, sock: socket.socket) -> None:
        assert self.loop is not None
        sock.setblocking(False)
        self.sock = sock
        self.reader = wire.FrameReader(max_frame=self.frame_limit)
        self.out.clear()
        self._writing = False
        self.loop.add_reader(sock.fileno(), self._readable)

    def _detach(self) -> None:
        if self.sock is None:
            return
        assert self.loop is not None
        self.loop.remove_reader(self.sock.fileno())
        if self._writing:
            self.loop.remove_writer(self.sock.fileno())
        self.sock.close()
        self.sock = None
        self.out.clear()

    def _flush(self) -> None:
        self._flush_soon = False
        if self.sock is None:
            return  # the link was lost meanwhile; the frames wait in unacked for a relink
        assert self.loop is not None
        try:
            send_pending(self.sock, self.out)
            while not self.out and self._refill():
                send_pending(self.sock, self.out)
        except OSError as exc:
            self._lost(exc.strerror or "send failed")
            return
        if self.out and not self._writing:
            self.loop.add_writer(self.sock.fileno(), self._flush)
            self._writing = True
        elif not self.out and self._writing:
            self.loop.remove_writer(self.sock.fileno())
            self._writing = False

    def _refill(self) -> bool:
        """Copy the next frames waiting in `unacked` into the empty send buffer, up to
        SEND_BUFFER_BYTES; False if none waits."""
        # (Frames acknowledged before a relink are skipped.)
        self.unsent_from = self.unacked.copy_into(self.out, self.unsent_from, SEND_BUFFER_BYTES)
        return bool(self.out)

    def _readable(self) -> None:
        assert self.sock is not None
        try:
            data = self.sock.recv(ACK_READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(exc.strerror or "recv failed")
            return
        if not data:
            self._lost("closed")
            return
        seqs = wire.ack_seqs(data) if not self.reader.pending() else None
        if seqs is None:
            try:
                messages = self.reader.feed(data)
            except wire.WireError as exc:
                self._lost(f"malformed ack: {exc}")
                return
            seqs = [seq for kind, seq, _attack in messages if kind == "ack"]
        self.holdback.acked(self.unacked.pop_many(seqs))
        if not self.unacked:
            self._idle.set()
        if self._high - self.unacked.bytes >= TRIM_BYTES:
            self._trim()
        self.on_acked()

    def _trim(self) -> None:
        assert self.loop is not None
        now = self.loop.time()
        if now - self._trimmed >= heaptrim.TRIM_INTERVAL or not self.unacked:
            self._trimmed = now
            self._high = self.unacked.bytes
            heaptrim.trim()

    def _lost(self, why: str) -> None:
        log.error("link to the recorder lost (%s): %d attacks kept until the master relinks",
                  why, len(self.unacked))
        self._detach()
