"""The recorder: one process that runs every finished attack through the plugins' attack hooks.

Dynamic servers serve connections and nothing else; each hands its finished attacks to the
recorder over a link of its own (a Unix stream socketpair made by the master, wire.py frames),
and keeps every attack until the recorder acknowledges it, which it does once every hook ran for
it (the savers and loggers included; not the downloads the hooks started, which run after it
in the pipeline's download pool and are recorded as follow-ups: pipeline.py). So:

- the plugins run beside the connection loops, not in them: a server's loop no longer shares its
  interpreter lock with plugin threads (bench/: that sharing cost more than half the throughput);
- one process holds the plugins' connections and spools (one database connection, one hpfeeds
  connection per sensor, not one per port), and replays spools whether or not anyone attacks;
- no attack is lost if the recorder dies: the master starts another and gives every server a new
  link ("relink"); each server sends again what was not acknowledged. An attack the dead recorder
  had half recorded may then be recorded twice (at least once, never lost); outputs with
  idempotent keys (PostgreSQL, the spools) take it once.

The master forks the recorder at start and on SIGHUP (the new plugins get a new recorder; the old
one finishes the attacks of the servers it still has, then exits). The recorder drops privileges
like the servers, then calls the plugins' `after_fork`.

master -> recorder (control, SOCK_SEQPACKET): "link" with a descriptor | "stop" (no more links:
exit once every link has closed and every attack is recorded). recorder -> master: "ready" (once,
privileges dropped and plugins' after_fork done: the master says READY=1 to systemd only then)
| "stats {...}".
"""

from __future__ import annotations

import gc
import logging
import os
import select
import selectors
import signal
import socket
import threading
import time
from dataclasses import dataclass, field

from honeytrap import control, forked, heaptrim, privileges, proctitle, wire
from honeytrap.attack import Attack
from honeytrap.config import Config
from honeytrap.pipeline import Pipeline, download_limits
from honeytrap.plugin import Registry
from honeytrap.recorderlink import max_frame, send_pending

log = logging.getLogger("honeytrap.recorder")

# Bytes read from a link at a time (the recorder reads into one buffer of this size: a
# recv(READ_SIZE) allocated a new one per read, above malloc's mmap threshold, so each read cost
# an mmap, an mremap to shrink it and an munmap, and page faults for what it held). One read's
# attacks are decoded at once and may go past MAX_QUEUED_ATTACKS (a read is taken while the
# pipeline is below it), so this also bounds the queue's overshoot: 16 KiB is ~45 of bench/'s
# attacks (~360 bytes a frame), ~0.12 MiB decoded (256 KiB overshot by ~700, ~1.9 MiB); at
# 5,000 attacks/s that is ~110 reads a second, ~1 us of a recv each per attack's ~80.
READ_SIZE = 16 * 1024
# Attacks accepted but not yet through every hook: above this the recorder stops reading its
# links (the servers' unacknowledged attacks then grow, and past their own bound they stop
# accepting connections: the kernel's backlog holds the load, nothing is dropped); it reads again
# once the pipeline is down to the low mark. A decoded, queued attack takes ~2.8 KB (bench/'s,
# 200-byte payloads; tracemalloc), seven times its frame, and the heap keeps what the deepest
# queue took: in the 600-s soak (bench/README.md) the recorder's PSS rose by ~9 MiB at the
# first ext4 journal stall (a file call of 0.4-0.9 s) that filled a queue of 4,096, and stayed
# there. What the recorder has not read waits in the servers anyway (each keeps every frame
# until it is acknowledged, unacknowledged_limit) and in the link's socket buffer, so a deep
# queue here only held a second, decoded copy of it. 256 is two of the pipeline's batches
# (pipeline.MAX_BATCH), ~15 ms of the hooks' work, enough to keep a worker busy until the loop
# reads again: at the low mark, one batch, a worker wakes it. It also bounds the workers that a
# journal stall can keep busy at once (each takes a batch), and so their threads' arenas.
MAX_QUEUED_ATTACKS = 256
QUEUED_LOW_MARK = 128
# What the recorder holds decoded at its fullest (MAX_QUEUED_ATTACKS and one read's overshoot
# on one link) of bench/'s attacks, at most (tests/test_recorder_queue.py measures it): the
# recorder's memory follows its queue's bound, not the number of attacks it has recorded, and
# a bound this far under its ~17 MiB at rest keeps a soak's memory flat (within 10%).
QUEUED_MEMORY = 1024 * 1024
# A pause (and the resumption after it) is counted every time (recorder_pauses) and logged at
# most this often (seconds), with the pauses since the last line: under a sustained overload
# the recorder pauses several times a second.
PAUSE_LOG_INTERVAL = 10.0
# On stop, attacks in the pipeline get this long to finish.
DRAIN_SECONDS = 30.0
# A worker sends the acknowledgements itself at the end of a batch (pipeline.py) once this many
# wait, or when it has no attack left to do; the loop sends any left at least every
# LOOP_TIMEOUT. One send per attack cost a system call (and a wake-up of the server) each; a
# wake-up of the loop per batch, to send them from there, a thread switch and a loop pass each
# (most of what a batch of a few attacks cost beyond their hooks).
ACK_BATCH = 64
LOOP_TIMEOUT = 1.0
# A server sends what it finished every FLUSH_DELAY (recorderlink.py, 5 ms), so below full load
# each read brings a few attacks and finds the pipeline idle: each then paid a batch of its own
# (a worker woken, a write per log, a round of acknowledgements: bench/recorder.py --flush-ms 5,
# 2.5-3.7x the recorder's own CPU per attack of large sends). When a loop pass read fewer than
# GATHER_ENOUGH attacks and the pipeline is idle, the recorder stops watching the links for
# GATHER_DELAY (control and wake-ups still heard), then reads every link that has something and
# submits it all as one batch. The servers keep each attack until it is acknowledged, so
# nothing is at risk meanwhile: an acknowledgement comes at most GATHER_DELAY later (a few
# hundred attacks more held by the servers at full load, far below unacknowledged_limit), and
# a stop cuts the wait short. 15 ms (three flushes of a server) cut the recorder's CPU per
# attack at a server's pace (4,000/s, flushes of 5 ms, 6 interleaved reps) by 10% with the
# outputs and 27% without, 10 ms by 8% and 19%.
GATHER_ENOUGH = 64
GATHER_DELAY = 0.015
# The collector's youngest generation is collected after this many new container objects, not
# the default 700: an attack makes a few dozen (its record, the pipeline's job and steps, the
# outputs' dicts), none in a cycle, and the default ran a collection every ~20 attacks (and
# one of the older generations, which hold the queued attacks, every ten of those). Garbage
# that does hold a cycle waits that much longer (the servers do the same, for the same reason).
GC_YOUNG_THRESHOLD = 10000
# Statistics go to the master this often.
STATS_INTERVAL = 10.0
# The master waits this long for a new recorder's "ready" (plugins' after_fork included).
READY_TIMEOUT = 30.0


# --- the recorder process -------------------------------------------------------------------


@dataclass
class RecorderSpec:
    config: Config
    registry: Registry
    identity: privileges.Identity
    control: socket.socket  # SOCK_SEQPACKET to the master
    close_in_child: list[int] = field(default_factory=list)


def recorder_main(spec: RecorderSpec) -> int:
    """Runs in the forked recorder; returns the exit status."""
    forked.leave_master(spec.close_in_child, proctitle.RECORDER)
    heaptrim.limit_arenas(heaptrim.RECORDER_ARENAS)  # before its first thread (heaptrim.py)
    privileges.drop(spec.identity)
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    spec.registry.after_fork()
    pipeline = Pipeline(spec.registry, plugin_timeout=spec.config.plugin_timeout,
                        downloads=download_limits(spec.config))
    recorder = Recorder(spec, pipeline)
    signal.signal(signal.SIGTERM, lambda _s, _f: recorder.stop())
    try:
        recorder.run()
    finally:
        done = pipeline.close(DRAIN_SECONDS)
        spec.registry.close()
        recorder.send_stats()
    return 0 if done else 1


class _Link:
    """The recorder's end of one server's link."""

    def __init__(self, sock: socket.socket, frame_limit: int) -> None:
        self.sock = sock
        self.reader = wire.FrameReader(max_frame=frame_limit)
        self.out = bytearray()
        self.open = True
        self.registered = False  # in the selector (not while paused with nothing to send)


class Recorder:
    def __init__(self, spec: RecorderSpec, pipeline: Pipeline) -> None:
        self.spec = spec
        self.pipeline = pipeline
        self.channel = control.Channel(spec.control)
        self.selector = selectors.DefaultSelector()
        # What the loop hears while it gathers (_gather): the master and the wake-ups only.
        self.quiet = selectors.DefaultSelector()
        self._gathered: list[tuple[Attack, tuple[_Link, int]]] = []  # read, not submitted
        self.links: dict[int, _Link] = {}
        self.stopping = False
        self.reading = True
        self.received = 0
        self.link_errors = 0
        self.pauses = 0  # times the pipeline was full and the links paused
        self._pauses_logged = 0
        self._pause_logged_at = -PAUSE_LOG_INTERVAL  # monotonic time of the last pause line
        self._frame_limit = max_frame(spec.config)
        self._read_buffer = bytearray(READ_SIZE)  # the loop's alone
        self._read_view = memoryview(self._read_buffer)
        # The links' `out` and sockets are shared with the workers, which send the acks
        # (_done, _send_acks): changed, sent on and closed under this lock. The selector is
        # the loop's alone: a worker that finds a link full leaves it in _blocked and wakes
        # the loop, which waits for it to drain.
        self._out_lock = threading.Lock()
        self._unsent: dict[_Link, None] = {}  # links with acks not sent yet, in order
        self._unsent_acks = 0
        self._blocked: set[_Link] = set()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._woken = False  # a wake-up byte is pending: later wake-ups ride on it
        self._last_stats = time.monotonic()
        self._last_trim = time.monotonic()
        pipeline.on_finished = self._finished
        pipeline.on_tokens = self._done  # type: ignore[assignment]  # its tokens: (link, seq)

    def stop(self) -> None:
        self.stopping = True
        self._wake()

    def _wake(self) -> None:
        """Wake the loop (from a worker thread or the SIGTERM handler): one byte per wake-up.
        The caller made its change first (a link blocked, the pipeline down to the low mark,
        stop); _on_wake empties the pipe, then clears the flag, then looks (see there why in
        that order)."""
        if not self._woken:
            self._woken = True
            try:
                os.write(self._wake_w, b"\0")
            except BlockingIOError:
                pass

    def run(self) -> None:
        self.channel.send("ready")
        self.selector.register(self.channel.fileno(), selectors.EVENT_READ, "control")
        self.selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self.quiet.register(self.channel.fileno(), selectors.EVENT_READ, "control")
        self.quiet.register(self._wake_r, selectors.EVENT_READ, "wake")
        while not (self.stopping and not self.links and self.pipeline.pending() == 0
                   and not self._gathered):
            self._dispatch(self.selector.select(timeout=LOOP_TIMEOUT))
            if self._gathered:
                if (len(self._gathered) < GATHER_ENOUGH and not self.stopping
                        and self.pipeline.pending() == 0):
                    self._gather()
                self._submit()
            if self._unsent:  # fewer than ACK_BATCH, the pipeline busy meanwhile
                self._send_acks()
                self._take_blocked()
            self._pace()
            now = time.monotonic()
            if now - self._last_stats >= STATS_INTERVAL:
                self.send_stats()
            if now - self._last_trim >= heaptrim.TRIM_INTERVAL:
                # The workers' arenas and the heap keep pages a burst freed (heaptrim.py).
                self._last_trim = now
                heaptrim.trim()
        self._on_wake()

    def _dispatch(self, ready: list[tuple[selectors.SelectorKey, int]]) -> None:
        for key, events in ready:
            if key.data == "control":
                self._on_control()
            elif key.data == "wake":
                self._on_wake()
            elif isinstance(key.data, _Link):
                if events & selectors.EVENT_WRITE:
                    self._flush(key.data)
                if events & selectors.EVENT_READ and key.data.open:
                    self._on_link(key.data)

    def _gather(self) -> None:
        """Let the servers' next flushes come (GATHER_DELAY, or until a stop), then read
        every link that has something: what they sent meanwhile joins this batch."""
        deadline = time.monotonic() + GATHER_DELAY
        while not self.stopping and (left := deadline - time.monotonic()) > 0:
            self._dispatch(self.quiet.select(timeout=left))
        self._dispatch(self.selector.select(timeout=0))

    def _submit(self) -> None:
        batch, self._gathered = self._gathered, []
        self.pipeline.submit_tokens(batch)

    # --- master ---

    def _on_control(self) -> None:
        for message in self.channel.receive():
            if message == "link":
                fd = self.channel.take_fd()
                if fd is None:
                    log.error("link message without a descriptor")
                    continue
                self._add_link(socket.socket(fileno=fd))
            elif message in ("stop", ""):
                self.stopping = True
                if message == "":
                    self.selector.unregister(self.channel.fileno())
                    self.quiet.unregister(self.channel.fileno())

    def _add_link(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        link = _Link(sock, self._frame_limit)
        self.links[sock.fileno()] = link
        self._update(link)

    def _events(self, link: _Link) -> int:
        events = selectors.EVENT_READ if self.reading else 0
        if link.out:
            events |= selectors.EVENT_WRITE
        return events

    def _update(self, link: _Link) -> None:
        """(Re)register the link for what it waits for; none (paused, nothing to send): out."""
        events = self._events(link)
        if not events:
            if link.registered:
                self.selector.unregister(link.sock)
                link.registered = False
        elif link.registered:
            self.selector.modify(link.sock, events, link)
        else:
            self.selector.register(link.sock, events, link)
            link.registered = True

    # --- links ---

    def _on_link(self, link: _Link) -> None:
        try:
            count = link.sock.recv_into(self._read_buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.warning("link read failed: %s", exc.strerror)
            count = 0
        if not count:
            self._close(link)
            return
        try:
            # The reader copies what it keeps (its frames' bytes, an incomplete frame's).
            messages = link.reader.feed(self._read_view[:count])
        except wire.WireError as exc:
            # Only a server's bug (or a compromised server) gets here; what it sent before
            # the bad frame is being recorded.
            self.link_errors += 1
            log.error("malformed frame from a dynamic server, link closed: %s", exc)
            self._close(link)
            return
        batch = [(attack, (link, seq))
                 for kind, seq, attack in messages if kind == "attack" and attack is not None]
        if batch:
            self.received += len(batch)
            self._gathered += batch  # submitted after the loop pass (run, _gather)

    def _done(self, acks: list[tuple[_Link, int]]) -> None:
        """A worker thread finished a batch of attacks: their acks, to be sent (_finished)."""
        encode = wire.encode_ack
        with self._out_lock:
            unsent = self._unsent
            for link, seq in acks:
                if link.open:
                    link.out += encode(seq)
                    unsent[link] = None
            self._unsent_acks += len(acks)

    def _finished(self, pending: int) -> None:
        """A worker finished a batch of attacks (their acks added by _done): send the acks
        once ACK_BATCH wait or the pipeline has nothing else to do; wake the loop only if it
        has something to do (a link full, reading to resume, stopping)."""
        if self._unsent_acks >= ACK_BATCH or pending == 0:
            if self._send_acks():
                self._wake()
        if (not self.reading and pending < QUEUED_LOW_MARK) or (self.stopping and pending == 0):
            self._wake()

    def _send_acks(self) -> bool:
        """Send the acks waiting, as far as each link's socket takes them (from a worker or
        the loop). True if a link is left with some: the loop must wait for it to drain."""
        with self._out_lock:
            links, self._unsent = self._unsent, {}
            self._unsent_acks = 0
            for link in links:
                if link.open and not self._send(link):
                    self._blocked.add(link)
            return bool(self._blocked)

    def _send(self, link: _Link) -> bool:
        """Under _out_lock: send what the socket takes; False if some is left."""
        try:
            send_pending(link.sock, link.out)
        except OSError:
            link.out.clear()  # the server is gone; it no longer waits for these acks
        return not link.out

    def _take_blocked(self) -> None:
        """Wait for the links the workers found full to drain (EVENT_WRITE: _flush)."""
        if not self._blocked:
            return
        with self._out_lock:
            blocked, self._blocked = self._blocked, set()
        for link in blocked:
            if link.open:
                self._update(link)

    def _on_wake(self) -> None:
        # Empty the pipe first, clear the flag second, take the acks last. A wake-up between
        # the first two finds the flag set and writes nothing, but its ack was queued before,
        # so the third step takes it; one after the second writes a byte that wakes us again.
        # (Clearing first lost a byte written in between: the flag stayed set with the pipe
        # empty, no worker wrote again and acknowledgements stopped for good under load.)
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        self._woken = False
        self._take_blocked()

    def _flush(self, link: _Link) -> None:
        """The link is writable again (EVENT_WRITE): send what waits, wait for the rest."""
        with self._out_lock:
            if not link.open:
                return
            self._send(link)
        self._update(link)

    def _close(self, link: _Link) -> None:
        self.links.pop(link.sock.fileno(), None)
        if link.registered:
            self.selector.unregister(link.sock)
            link.registered = False
        with self._out_lock:  # no worker is sending on it, nor will
            link.open = False
            link.out.clear()
            link.sock.close()
        if link.reader.pending():
            log.error("a dynamic server's link closed mid-frame (%d bytes dropped): it will "
                      "send the attack again on its next link", link.reader.pending())

    def _pace(self) -> None:
        """Stop reading links while the pipeline is full; read again once it has room."""
        pending = self.pipeline.pending()
        reading = pending < (QUEUED_LOW_MARK if not self.reading else MAX_QUEUED_ATTACKS)
        if reading != self.reading:
            self.reading = reading
            if not reading:
                self.pauses += 1
                now = time.monotonic()
                if now - self._pause_logged_at >= PAUSE_LOG_INTERVAL:
                    log.warning("%d attacks waiting for the plugins: pausing the servers' links "
                                "(%d pauses since the last such line; the servers keep the "
                                "attacks meanwhile, nothing is lost)",
                                pending, self.pauses - self._pauses_logged)
                    self._pause_logged_at, self._pauses_logged = now, self.pauses
            for link in list(self.links.values()):
                self._update(link)

    def send_stats(self) -> None:
        """Our counters and the plugins' (Registry.stats: spool depth, downloads...); ours
        win a name clash."""
        self._last_stats = time.monotonic()
        stats = self.spec.registry.stats()
        stats.update({f"pipeline_{k}": v for k, v in self.pipeline.stats().items()})
        stats["pipeline_pending"] = self.pipeline.pending()
        stats["recorder_link_errors"] = self.link_errors
        stats["recorder_pauses"] = self.pauses
        self.channel.send_stats(stats)


# --- the master's side ------------------------------------------------------------------------


@dataclass
class RecorderHandle:
    pid: int
    channel: control.Channel
    registry: Registry
    stats: dict[str, int] = field(default_factory=dict)
    stopped: bool = False

    def link(self) -> socket.socket | None:
        """A new link: the recorder gets one end now, the caller the other (for a server)."""
        try:
            mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError as exc:  # out of descriptors: the master goes on, the process unlinked
            log.error("no link to the recorder: %s", exc.strerror)
            return None
        try:
            if not self.channel.send_fd("link", theirs.fileno()):
                mine.close()
                return None
        finally:
            theirs.close()
        return mine

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.channel.send("stop")

    def wait_ready(self, seconds: float = READY_TIMEOUT) -> bool:
        """Block until the recorder says "ready" (False: it died or took longer)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([self.channel.fileno()], [], [], left)
            if not readable:
                continue
            for message in self.channel.receive():
                if message == "ready":
                    return True
                if message == "":
                    return False
                stats = control.parse_stats(message)
                if stats is not None:
                    self.stats = stats
        return False


def fork_recorder(
    config: Config, registry: Registry, identity: privileges.Identity, close_in_child: list[int]
) -> RecorderHandle | None:
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    spec = RecorderSpec(
        config, registry, identity, child_end, [*close_in_child, parent_end.fileno()]
    )
    pid = forked.fork_child("the recorder", lambda: recorder_main(spec))
    child_end.close()
    if pid is None:
        parent_end.close()
        return None
    return RecorderHandle(pid, control.Channel(parent_end), registry)


# --- the server's side ------------------------------------------------------------------------
