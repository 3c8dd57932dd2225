"""A dynamic server (class DynamicServer): one port in a server process (server.py's
ServerProcess), its listening socket (bound by the master, as root), its template, its mode, its
connections, its listen timeout. It accepts in batches (ACCEPT_BATCH) when busy, backs off when
the process runs out of descriptors or memory, pauses accepting while the recorder or the port's
connection budget is full, and on "stop" takes what the kernel already queued for STOP_GRACE
before closing the listening socket."""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import socket
import time
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from honeytrap import control, templates
from honeytrap.addresses import split
from honeytrap.attack import Attack
from honeytrap.config import PortConf
from honeytrap.deadlines import Entry
from honeytrap.host import RESOURCE_ERRNOS, Finisher
from honeytrap.listener import AcceptedSocket, raw_family, ready_to_accept
from honeytrap.normal import NormalConnection, UdpServer
from honeytrap.plugin import ReadEvent
from honeytrap.relay import RELAY_MODES, RelayConnection
from honeytrap.session import Closed
from honeytrap.sockettransport import Poller
from honeytrap.wire import Endpoints

if TYPE_CHECKING:
    from honeytrap.server import ServerProcess

log = logging.getLogger("honeytrap.server")

# Connections accepted per wake-up of the listening socket, so one port cannot starve the loop.
ACCEPT_BATCH = 64
# ACCEPT_IN_C: why the accept is ours (Python) and not uvloop's create_server, which would save
# ~7 us of user time per connection (bench/accept.py: 57 against 50 us of a minimal server's
# CPU per connection, medians of 5 interleaved reps, three runs; ~6% of a server process's CPU
# per connection on one port). The libuv uvloop 0.23 bundles (1.52) accepts one connection per
# poll event of the listening socket and hands it to the protocol factory before anyone can
# look at it; on EMFILE or ENFILE it closes its reserve descriptor and accepts and closes every
# connection queued (they are lost, unrecorded: test_descriptor_exhaustion_is_survived_with_
# back_off requires they wait and are served); other accept errors are dropped silently. So it
# would keep every limit only with a guard around it: a port on it only while busy (a sweep's
# ports, one connection per wake-up, stay here), only while its max_connections and the
# process's descriptors (RLIMIT_NOFILE less what is open) have room for what one loop pass may
# accept (libuv polls again, up to 48 times, when 1,024 events came at once: that many per
# port), switched back here before that room is gone (the server closed at the end of the loop
# pass: closed from the factory it would also close the connection being accepted); the
# source's budget checked in connection_made (the address is not known before); the listening
# socket handed over as a dup (closing uvloop's server closes its descriptor) and a new server
# made on each resume (hold_back, a connection freed at max_connections). That guard was built
# and measured (tag attempt/fastaccept, session 8; its tests passed): the real daemon's
# servers cost MORE with it, 159.5 (142-175.5) against 122.5 (113-125.5) us per connection on
# one port (3 interleaved reps), 174 us in a bench/run.py one_port rep. The likely reason: libuv
# takes one connection per loop pass, this accept up to ACCEPT_BATCH, and a server process's
# loop pass costs more than the minimal server's of bench/accept.py. Not taken.
# A port woken to accept less than this long after its last wake-up is busy: it asks the kernel
# how many connections wait (listener.ready_to_accept) and takes them in one batch. One woken
# later takes the one that woke it and asks nothing: a sweep's ports get a connection now and
# then, one per wake-up, and the question was a system call (getsockopt) per connection there.
# If more did wait, the listening socket is still readable and its next wake-up, busy by then,
# asks. (The loop's clock, which uvloop keeps in milliseconds: well below this.)
ACCEPT_BUSY_SECONDS = 0.05
# accept() failing for lack of fds or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM): wait this long
# before trying again, doubling up to the maximum; logged at most once per back-off period.
ACCEPT_BACKOFF_MIN = 0.05
ACCEPT_BACKOFF_MAX = 2.0
# After "stop", connections already queued in the kernel are taken for this long before the
# listening socket is closed, so a SYN the master let through just before is still served.
STOP_GRACE = 0.2


class DynamicServer:
    """One port: its listening socket, template and connections, in a ServerProcess."""

    def __init__(
        self, process: ServerProcess, conf: PortConf, sock: socket.socket, template: bytes | None
    ) -> None:
        self.process = process
        self.config = process.config
        self.port = conf
        self.sock = sock
        # No template file: TCP answers by detection (catalog.py), UDP nothing (reflector.py).
        self.has_template = template is not None
        self.template = templates.DEFAULT_TEMPLATE if template is None else template
        self.reflector = process.reflector
        self.catalog = process.spec.catalog
        self.dialogue = self.catalog.factory(conf.port, template)
        self.port_key = (conf.protocol, conf.port)
        # Descriptors one connection holds: ours, and in mirror/proxy mode the relayed one.
        self.connection_fds = 0 if conf.protocol == "udp" else 2 if conf.mode in RELAY_MODES else 1
        self.stats = process.stats
        self.mirror = process.mirror
        assert process.loop is not None and process.deadlines is not None
        assert process.poller is not None
        self.loop: asyncio.AbstractEventLoop = process.loop
        self.deadlines = process.deadlines
        self.active = 0
        self.last_activity = time.monotonic()
        self.stopping = False
        # The open connections, as a dict's keys: a set of 5,000 had just grown to 32,768 slots
        # of 16 bytes (~100 bytes per connection), a dict's ~30 (sys.getsizeof; bench/idle.py).
        self.connections: dict[Finisher, None] = {}
        self.starting = 0  # accepted, transport not yet set up
        self._accepting = False
        self._family = raw_family(sock)
        # The address every accepted connection reaches when the port is bound to one (not a
        # wildcard: bind_address); None: each connection asks its transport, which on uvloop
        # has it already (TCPTransport reads getsockname and getpeername once, before
        # connection_made, and get_extra_info converts what it kept: ~0.6 us, no system call;
        # a getsockname of our own on the accepted descriptor was one more call, ~2.3 us).
        # Without bind_address the master bound a wildcard (listener.bind_port): nothing to ask.
        self._local: tuple[str, int] | None = None
        if self.config.bind_address and sock.family in (socket.AF_INET, socket.AF_INET6):
            bound = split(sock.getsockname())
            self._local = bound if bound[0] not in ("", "0.0.0.0", "::") else None
        # Normal mode's connections are served on the process's epoll (sockettransport.py);
        # mirror and proxy ones on the loop's transports (relay.py needs them).
        self._relays = conf.mode in RELAY_MODES
        self._poller: Poller = process.poller
        self._backoff = ACCEPT_BACKOFF_MIN
        self._woken = float("-inf")  # the loop's time at the last wake-up to accept
        self._expire_sent = False
        self._listener_closed = False
        # The listen timeout's next check: an entry in the process's Deadlines (one loop timer
        # for all), not a timer handle of the loop's own per port (a sweep starts thousands).
        self._timer: Entry | None = None
        self.udp: UdpServer | None = None

    # --- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        # The socket is listener.bind_port's, handed over by the master: non-blocking already
        # (ServerProcess._serve makes its socket object so) and, for TCP, with urgent data
        # inline (SO_OOBINLINE, set before listen so that connections queued before the
        # hand-over have it too; accepted sockets inherit it). No system call here for either:
        # a sweep hands over thousands of ports a second.
        if self.sock.gettimeout() != 0.0:
            self.sock.setblocking(False)
        if self.port.protocol == "tcp":
            self._resume_accepting()
        else:
            self.udp = UdpServer(self)
            if not self.process.held_back:
                self.udp.start()
        self._check_in(self.config.listen_timeout)

    def _check_in(self, delay: float) -> None:
        self._timer = self.deadlines.at(self.loop.time() + delay, self._check_listen_timeout)

    def _check_listen_timeout(self) -> None:
        if self.stopping:
            return
        idle_for = time.monotonic() - self.last_activity
        timeout = self.config.listen_timeout
        if self.process.held_back:
            # Not idle: its attackers wait in the backlog for the recorder to catch up
            # (unacked.py). Expired now, its stop would take that backlog in at once, past the
            # sensor's unacknowledged_limit.
            self._check_in(timeout)
            return
        if self.active == 0 and idle_for >= timeout:
            if not self._expire_sent:
                self._expire_sent = True
                self.process.port_reports.report()  # its idle first, or the master says no
                self.process.channel.send_message(control.Expire(self.port_key))
            # The master answers with "stop"; if it does not, we ask again next period.
            self._check_in(timeout)
            return
        wait = timeout - idle_for if self.active == 0 else timeout
        self._check_in(max(wait, 0.05))

    def stop(self, *, abort: bool) -> None:
        """Stop serving: take what the kernel already queued, close the port, tell the master
        it is free, then finish (abort=True: close open connections now and record them)."""
        if not self.stopping:
            self.stopping = True
            if self._timer is not None:
                self.deadlines.cancel(self._timer)
            self.loop.call_later(0 if abort else STOP_GRACE, self._close_listener)
        if abort:
            for conn in list(self.connections):
                conn.abort(Closed.SHUTDOWN)

    def _close_listener(self) -> None:
        if self.port.protocol == "tcp":
            self._pause_accepting()
            self._accept_batch(drain=True)
        elif self.udp is not None:
            self.udp.stop()
        try:
            self.sock.close()
        finally:
            self._listener_closed = True
            self.process.released(self)
            self._maybe_done()

    def _maybe_done(self) -> None:
        if self._listener_closed and not self.connections and not self.starting:
            self.process.server_done(self)

    # --- accounting --------------------------------------------------------------------------

    def connection_opened(self, conn: Finisher) -> None:
        self.connections[conn] = None
        self.active += 1
        self.process.connections_changed(self.connection_fds)
        self.stats.connections += 1
        self.last_activity = time.monotonic()
        if self.active == 1 and not self._listener_closed:
            self.process.port_reports.used(self.port_key, True)
        if self.port.protocol == "tcp" and self.active >= self.config.max_connections:
            self._pause_accepting()

    def connection_closed(self, conn: Finisher, attack: Attack) -> None:
        self.process.attack_finished(attack)
        self._closed(conn, attack.attack_connection.remote_addr)

    def normal_closed(self, handler: Finisher, conn: Endpoints, payload: bytes, start: float,
                      end: float, dialogue: str, turns: Sequence[int], sent: bytes,
                      fields: dict[str, Any], notes: Sequence[str]) -> None:
        """A normal-mode TCP connection ended: connection_closed with its attack's figures,
        not an Attack (ServerProcess.normal_finished)."""
        self.process.normal_finished(conn, payload, start, end, dialogue, turns, sent, fields,
                                     notes)
        self._closed(handler, conn.remote_addr)

    def _closed(self, conn: Finisher, remote_addr: str) -> None:
        """A connection's attack is handed over: the port's accounting."""
        self.connections.pop(conn, None)
        self.active -= 1
        self.process.connections_changed(-self.connection_fds)
        self.last_activity = time.monotonic()
        if self.port.protocol == "tcp":
            self.process.budget.release(remote_addr)
        if self.active == 0 and not self._listener_closed:
            self.process.port_reports.used(self.port_key, False)
        if (
            self.port.protocol == "tcp"
            and not self.stopping
            and self.active < self.config.max_connections
        ):
            self._resume_accepting()
        self._maybe_done()

    def perread(self, conn: Endpoints, direction: str, data: bytes) -> None:
        registry = self.process.registry
        if registry.hooks["perread"]:
            registry.perread(
                ReadEvent(
                    conn.protocol, conn.local_addr, conn.local_port,
                    conn.remote_addr, conn.remote_port, direction, data,
                )
            )

    # --- TCP accept loop ----------------------------------------------------------------------

    def hold_back(self, full: bool) -> None:
        """The recorder is behind (full) or caught up (see ServerProcess._recorder_full)."""
        if self.stopping:
            return
        if self.port.protocol == "udp":
            if self.udp is not None:
                if full:
                    self.udp.pause()
                else:
                    self.udp.start()
        elif full:
            self._pause_accepting()
        elif self.active < self.config.max_connections:
            self._resume_accepting()

    def _resume_accepting(self) -> None:
        if not self._accepting and not self.stopping and not self.process.held_back:
            self.loop.add_reader(self.sock.fileno(), self._accept_batch)
            self._accepting = True

    def _pause_accepting(self) -> None:
        if self._accepting:
            self.loop.remove_reader(self.sock.fileno())
            self._accepting = False

    def _accept_batch(self, drain: bool = False) -> None:
        """Accept what the kernel queued: on a busy port as many as it says are waiting
        (ready_to_accept; at least one, at most ACCEPT_BATCH), on a quiet one the one that woke
        it (ACCEPT_BUSY_SECONDS), or, draining, until accept() would block."""
        if drain:
            count = self.config.max_connections
        else:
            now = self.loop.time()
            busy = now - self._woken < ACCEPT_BUSY_SECONDS
            self._woken = now
            count = min(max(1, ready_to_accept(self.sock)), ACCEPT_BATCH) if busy else 1
        for _ in range(count):
            if self.active >= self.config.max_connections:
                if drain:
                    self.stats.refused_full += 1
                return
            try:
                # socket.accept() without its per-call AddressFamily enum conversion (~4% of a
                # server process's CPU under load, py-spy): the listening socket's family, kept.
                fd, addr = self.sock._accept()  # type: ignore[attr-defined]  # not in typeshed
            except (BlockingIOError, InterruptedError):
                self._backoff = ACCEPT_BACKOFF_MIN
                return
            except OSError as exc:
                if exc.errno in RESOURCE_ERRNOS:
                    self._back_off(exc)
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue  # the peer gave up before we took it
                raise
            remote = split(addr)
            source = remote[0]
            budget = self.process.budget
            why = budget.admit(source)
            if why is not None:
                os.close(fd)  # at once: a descriptor held for it is what the budget prevents
                self._refused_over_budget(source, why)
                continue
            # The record's address: the string the source's other open connections share.
            remote = (budget.shared(source), remote[1])
            if self._relays:
                self._start_connection(AcceptedSocket(self._family, socket.SOCK_STREAM, 0, fd),
                                       remote, self._local)
            else:  # served on its socket, without a loop transport (sockettransport.py)
                self._poller.transport(fd, self._family,
                                       NormalConnection(self, remote=remote, local=self._local))
        self._backoff = ACCEPT_BACKOFF_MIN  # accept() works again

    def _refused_over_budget(self, source: str, why: str) -> None:
        refused = self.process.budget.log_due()
        if refused:
            log.warning(
                "port %d/tcp: %d connections closed at accept over the per-source budgets "
                "since the last such line (last from %s: %s)",
                self.port.port, refused, source, why,
            )

    def _back_off(self, exc: OSError) -> None:
        """Out of fds or memory: stop accepting for a while (the kernel keeps the backlog)."""
        self.stats.accept_errors += 1
        log.warning(
            "port %d/tcp: accept failed (%s): backing off %.2f s",
            self.port.port, os.strerror(exc.errno or 0), self._backoff,
        )
        self._pause_accepting()
        self.loop.call_later(self._backoff, self._resume_accepting)
        self._backoff = min(self._backoff * 2, ACCEPT_BACKOFF_MAX)

    def _start_connection(self, sock: AcceptedSocket, remote: tuple[str, int],
                          local: tuple[str, int] | None = None) -> None:
        """Hand an accepted socket to the loop (mirror and proxy mode, which run on asyncio's
        loop: eventloop.py). Its transport set-up makes it non-blocking, and SO_OOBINLINE came
        with it from the listening socket (start): no system call here."""
        handler = self.handler_factory(remote, local)
        self.starting += 1
        self._set_up(self.loop.connect_accepted_socket(
            lambda: handler, sock), remote[0])

    def _set_up(self, setup: Coroutine[Any, Any, object], source: str, _: object = None) -> None:
        """Run the loop's set-up of a connection (connect_accepted_socket: a coroutine that
        waits for one future, the transport's connection_made) by hand, as a Task would, not in
        one: a Task, its registration and its two scheduled steps cost more than the set-up's
        own Python (~2 us of a connection's CPU, measured)."""
        try:
            waiter = setup.send(None)
        except (StopIteration, asyncio.CancelledError):  # done (or cancelled, as its Task was)
            self._setup_done(source, None)
            return
        except Exception as exc:  # noqa: BLE001 - a failed set-up is logged, its budget back
            self._setup_done(source, exc)
            return
        resume = functools.partial(self._set_up, setup, source)
        if isinstance(waiter, asyncio.Future):
            waiter.add_done_callback(resume)
        else:  # a bare yield: once more on the next round of the loop
            self.loop.call_soon(resume)

    def _setup_done(self, source: str, failure: Exception | None) -> None:
        """An accepted connection's transport is set up (it counts in `connections` now), or
        failed: until then the server is not done (a connection taken by the stop's last accept
        must not be cut by the process's exit). One that never reached its handler is never
        recorded: its budget back."""
        self.starting -= 1
        if failure is not None:
            log.error("connection setup failed: %r", failure)
            self.process.budget.release(source)
        self._maybe_done()

    def handler_factory(self, remote: tuple[str, int] | None = None,
                        local: tuple[str, int] | None = None) -> asyncio.Protocol:
        """The connection's protocol object; `remote`, the peer's address from accept, `local`
        the address it reached, if known (normal mode then asks the transport for them no
        more)."""
        if self.port.mode in RELAY_MODES:
            return RelayConnection(self)
        return NormalConnection(self, remote=remote, local=local)

    def fall_back_to_normal(
        self, old: Finisher, transport: asyncio.Transport, note: str, start: float
    ) -> None:
        """A mirror/proxy connection that cannot be relayed (relay.py) is served in normal
        mode from here on: same slot, same start time, the reason noted in its record."""
        handler = NormalConnection(self, notes=[note])
        handler.start = start
        self.connections.pop(old, None)
        self.connections[handler] = None
        transport.set_protocol(handler)
        handler.attach(transport)
        transport.resume_reading()
