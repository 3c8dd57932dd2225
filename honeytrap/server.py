"""Dynamic servers: one per protocol/port, hosted by server processes forked by the master.

A *dynamic server* (class DynamicServer) serves one port: its listening socket (bound by the
master, as root), its template, its mode, its connections, its listen timeout. A *server process*
(class ServerProcess) hosts up to `ports_per_process` of them on one asyncio loop: the master
forks it empty (a spare, named SPARE_NAME) before it is needed, and hands it ports' bound sockets
over the control channel (SCM_RIGHTS) while it has room, so no fork is on a first SYN's path and
a sweep over a thousand ports costs a few forks, not a thousand (bench/: a fork and the
copy-on-write faults of a fresh child cost ~15 ms of CPU here). With `ports_per_process = 1`
every port has a process of its own, as in the original.

A process drops privileges before it reads a single attacker byte, and serves every connection
concurrently (the original forked per connection; a slow attacker here delays nobody). Finished
attacks go to the recorder process (recorder.py), which runs the plugins: this process only
serves connections.

A port's server ends when the master says so over the control channel (control.py): after the
listen timeout without connections (the server asks, "expire"), on eviction, reload or shutdown.
A process ends when the master retires it (it hosts no port any more) or shuts it down, once its
last connection is recorded.
"""

from __future__ import annotations

import _socket
import asyncio
import errno
import functools
import gc
import logging
import os
import signal
import socket
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from honeytrap import control, eventloop, forked, privileges, proctitle, templates, wire
from honeytrap.addresses import split, split_local
from honeytrap.attack import Attack, Connection, new_id
from honeytrap.budget import SourceBudget
from honeytrap.config import Config, PortConf
from honeytrap.deadlines import Deadlines
from honeytrap.dialogue.catalog import Catalog
from honeytrap.host import RESOURCE_ERRNOS, Finisher
from honeytrap.listener import AcceptedSocket, UvAccepted, ready_to_accept
from honeytrap.mirror import MirrorPolicy
from honeytrap.normal import NormalConnection, UdpServer
from honeytrap.plugin import ReadEvent, Registry
from honeytrap.portstate import PortReporter
from honeytrap.recorder import RecorderClient
from honeytrap.reflector import ReflectorGuard, SensorBudget
from honeytrap.relay import RELAY_MODES, RelayConnection
from honeytrap.session import Closed

log = logging.getLogger("honeytrap.server")

# Connections accepted per wake-up of the listening socket, so one port cannot starve the loop.
ACCEPT_BATCH = 64
# accept() failing for lack of fds or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM): wait this long
# before trying again, doubling up to the maximum; logged at most once per back-off period.
ACCEPT_BACKOFF_MIN = 0.05
ACCEPT_BACKOFF_MAX = 2.0
# After "stop", connections already queued in the kernel are taken for this long before the
# listening socket is closed, so a SYN the master let through just before is still served.
STOP_GRACE = 0.2
# On exit, the recorder gets this long to acknowledge the attacks handed to it.
RECORDER_DRAIN_SECONDS = 30.0
# The collector's threshold for its youngest generation in a server process (Python's default:
# 700 container objects). A connection's objects are freed by reference counting (they hold no
# cycles), but the default ran a collection every ~40 connections, examining those still open
# each time (~1.5 us of every connection's CPU, measured); at this threshold one runs every few
# hundred, and garbage that does hold a cycle waits that much longer.
GC_YOUNG_THRESHOLD = 10000
# A server process's name until its first port (then `ht-<port>/<proto>`, proctitle.py).
SPARE_NAME = "ht-spare"
# Server statistics go to the master this long after they change (one message for all the
# changes meanwhile, not one per attack), so the master's figures, `unacknowledged` among them,
# are at most this stale: a drained server shows 0 within a second.
STATS_DELAY = 1.0


@dataclass
class ServerStats:
    connections: int = 0
    attacks: int = 0
    bytes_in: int = 0
    refused_full: int = 0
    accept_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class ServerSpec:
    """What the master hands a new server process: what every port needs. It is forked empty,
    a spare (SPARE_NAME), ahead of need; its ports come over the control channel."""

    config: Config
    registry: Registry
    identity: privileges.Identity
    control: socket.socket
    recorder: socket.socket | None = None  # this process's link to the recorder
    close_in_child: list[int] = field(default_factory=list)
    catalog: Catalog = field(default_factory=Catalog)  # the sensor's dialogues (the master's)
    # The UDP replies the whole sensor may send (the master's shared bucket, sensorbudget.py);
    # None: this process's own (a process made without a master).
    sensor_budget: SensorBudget | None = None


def child_main(spec: ServerSpec) -> int:
    """Runs in the forked child; returns the exit status."""
    forked.leave_master(spec.close_in_child, SPARE_NAME)
    privileges.drop(spec.identity)
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    process = ServerProcess(spec)
    try:
        with asyncio.Runner(loop_factory=eventloop.factory(spec.config)) as runner:
            done = runner.run(process.serve())
    finally:
        process.channel.uncork()  # what the last loop pass gathered
        process.send_stats()  # the last figures: the master keeps them
    return 0 if done else 1


class ServerProcess:
    """The loop, the control channel and the recorder link shared by the dynamic servers of one
    process; it adds a server for each port the master hands it."""

    def __init__(self, spec: ServerSpec) -> None:
        self.spec = spec
        self.config = spec.config
        self.registry = spec.registry
        self.recorder = RecorderClient(
            spec.recorder, spec.config, self._recorder_full, on_acked=self.stats_changed
        )
        self.held_back = False  # the recorder is behind: no new connections meanwhile
        self.stats = ServerStats()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.deadlines: Deadlines | None = None  # the connections' deadlines, on self.loop
        self.finished: asyncio.Event | None = None
        self.channel = control.Channel(spec.control, self._control_backlog)
        self.connection_fds = 0  # descriptors of this process's connections (Load)
        self._load_sent = 0
        self.servers: dict[tuple[str, int], DynamicServer] = {}  # listening
        self.draining: set[DynamicServer] = set()  # port let go, connections still open
        self.retiring = False  # the master hands no more ports: exit once all are done
        self._stats_timer: asyncio.TimerHandle | None = None
        self.port_reports = PortReporter(self.channel)  # busy/idle, to the master in batches
        self._retitle_due = False
        self.mirror = MirrorPolicy()  # mirror mode's target policy and loop guard (mirror.py)
        # Connections a source address or network may hold in this process (budget.py).
        self.budget = SourceBudget(per_source=self.config.max_connections_per_source,
                                   per_network=self.config.max_connections_per_network)
        # What the UDP ports of this process may send to a source (reflector.py), within the
        # sensor's budget shared by every server process.
        self.reflector = ReflectorGuard(per_source=self.config.udp_replies_per_source,
                                        per_sensor=self.config.udp_replies_per_sensor,
                                        sensor=spec.sensor_budget)

    async def serve(self) -> bool:
        """Serve every port handed over until retired or shut down; True if the recorder
        acknowledged every attack."""
        self.loop = asyncio.get_running_loop()
        self.deadlines = Deadlines(self.loop)
        self.finished = asyncio.Event()
        self.recorder.start(self.loop)
        self.loop.add_signal_handler(signal.SIGTERM, self.shutdown)
        self.loop.add_reader(self.spec.control.fileno(), self._on_control)
        self.port_reports.start(self.loop)
        self.channel.flush()  # what was queued before the loop ran
        await self.finished.wait()
        if await self.recorder.drained(RECORDER_DRAIN_SECONDS):
            return True
        log.error("server process: %d attacks not acknowledged by the recorder at exit",
                  len(self.recorder.unacked))
        return False

    def add(self, conf: PortConf, sock: socket.socket, template: bytes | None) -> None:
        """Serve a port; `template` None: the port has no template file."""
        key = (conf.protocol, conf.port)
        if key in self.servers or self.retiring:  # a bug on the master's side: let it go
            log.error("port %d/%s handed over twice or too late", conf.port, conf.protocol)
            sock.close()
            self.channel.send_message(control.Released(key))
            return
        server = DynamicServer(self, conf, sock, template)
        self.servers[key] = server
        server.start()
        self._retitle_soon()

    def _retitle_soon(self) -> None:
        """Retitle once the loop is through the batch of ports it was handed or let go (a
        sweep hands over thousands a second, in batches: control.HANDOVER_BATCH; setting the
        title per port was 15% of a server process's time)."""
        if self.loop is None:
            self._retitle()
        elif not self._retitle_due:
            self._retitle_due = True
            self.loop.call_soon(self._retitle)

    def _retitle(self) -> None:
        """`ht-<port>/<proto>` for the oldest port served, `+N` for the others."""
        self._retitle_due = False
        if self.servers:
            first = next(iter(self.servers.values())).port
            name = proctitle.server_name(first.port, first.protocol, len(self.servers) - 1)
            proctitle.set_name(name)

    def _control_backlog(self, waiting: bool) -> None:
        """Messages wait for the control socket: flush them when it is writable."""
        if self.loop is None:
            return
        if waiting:
            self.loop.add_writer(self.channel.fileno(), self.channel.flush)
        else:
            self.loop.remove_writer(self.channel.fileno())

    def _on_control(self) -> None:
        for data in self.channel.receive_raw():
            if not data:  # the master went away
                self.shutdown()
                continue
            try:
                message = control.decode(data)
            except control.ControlError as exc:
                log.error("control message from the master refused: %s", exc)
                continue
            if isinstance(message, control.Serve):
                fds = self.channel.take_fds(message.fds)
                if len(fds) == message.fds:
                    self._serve(message.key, fds)
                    continue
                log.error("serve %d/%s came without its descriptors", message.key[1],
                          message.key[0])
                for fd in fds:
                    os.close(fd)
                self.channel.send_message(control.Released(message.key))
            elif isinstance(message, control.Stop):
                server = self.servers.get(message.key)
                if server is not None:
                    server.stop(abort=False)
            elif isinstance(message, control.Retire):
                self.retiring = True
                self._maybe_finish()
            elif isinstance(message, control.Shutdown):
                self.shutdown()
            elif isinstance(message, control.Relink):
                for fd in self.channel.take_fds(1):
                    self.recorder.relink(socket.socket(fileno=fd))

    def _serve(self, key: tuple[str, int], fds: list[int]) -> None:
        """A port to serve: its bound socket, then the template file the master opened (none:
        the port has no usable template)."""
        template: bytes | None = None
        if len(fds) > 1:
            path = templates.template_path(self.config.response_dir, key[0], key[1])
            template = templates.read_template(fds[1], path)
        self.add(self.config.port_mode(*key), socket.socket(fileno=fds[0]), template)

    def connections_changed(self, descriptors: int) -> None:
        """Connections opened (+) or closed (-): the master hears at each LOAD_STEP."""
        self.connection_fds += descriptors
        if abs(self.connection_fds - self._load_sent) >= control.LOAD_STEP:
            self._load_sent = self.connection_fds
            self.channel.send_message(control.Load(self.connection_fds))

    def shutdown(self) -> None:
        """Record and close every connection now; exit once all are recorded."""
        self.retiring = True
        for server in [*self.servers.values(), *self.draining]:
            server.stop(abort=True)
        self._maybe_finish()

    def released(self, server: DynamicServer) -> None:
        """A server closed its listening socket: the port is free for the master again."""
        key = (server.port.protocol, server.port.port)
        if self.servers.get(key) is server:
            del self.servers[key]
        self.draining.add(server)
        self.port_reports.forget(key)
        if self.loop is not None and self.channel.cork():  # the loop pass's releases: one send
            self.loop.call_soon(self.channel.uncork)
        self.channel.send_message(control.Released(key))
        self._retitle_soon()

    def server_done(self, server: DynamicServer) -> None:
        """A released server's last connection ended."""
        self.draining.discard(server)
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        done = self.retiring and not self.servers and not self.draining
        if done and self.finished is not None:
            self.finished.set()

    def _recorder_full(self, full: bool) -> None:
        """The recorder is behind (full) or caught up: every port holds back new connections
        and datagrams meanwhile (the kernel's backlog and socket buffers hold them, bounded)."""
        self.held_back = full
        for server in list(self.servers.values()):
            server.hold_back(full)

    def attack_finished(self, attack: Attack) -> None:
        self.stats.attacks += 1
        self.stats.bytes_in += attack.attack_connection.payload.size
        try:
            self.recorder.submit(attack)
        except ValueError:
            log.exception("attack %s cannot be handed to the recorder", attack.id)
        self.stats_changed()

    def normal_finished(self, conn: Connection, payload: bytes, start: float, end: float,
                        dialogue: str, turns: Sequence[int], sent: bytes,
                        fields: dict[str, Any], notes: Sequence[str]) -> None:
        """A normal-mode TCP attack, as attack_finished takes the Attack of one, encoded
        straight from the connection's figures (wire.encode_normal)."""
        self.stats.attacks += 1
        self.stats.bytes_in += len(payload)
        recorder = self.recorder
        ident = new_id()
        seq = recorder.seq + 1
        try:
            recorder.send(seq, wire.encode_normal(seq, ident, conn, payload, start, end,
                                                  dialogue, turns, sent, fields, notes,
                                                  max_frame=recorder.frame_limit))
        except ValueError:
            log.exception("attack %s cannot be handed to the recorder", ident)
        self.stats_changed()

    def stats_changed(self) -> None:
        """Send the statistics STATS_DELAY from now, with whatever else changes meanwhile."""
        if self._stats_timer is None and self.loop is not None:
            self._stats_timer = self.loop.call_later(STATS_DELAY, self.send_stats)

    def send_stats(self) -> None:
        if self._stats_timer is not None:
            self._stats_timer.cancel()
            self._stats_timer = None
        stats = self.stats.as_dict()
        # A level, not a count: attacks handed to the recorder and not yet acknowledged.
        stats["unacknowledged"] = len(self.recorder.unacked)
        stats.update(self.reflector.counters.__dict__)
        stats.update(self.budget.counters.__dict__)
        self.channel.send_stats(stats)


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
        self.key = control.port_key(conf.protocol, conf.port)
        self.port_key = (conf.protocol, conf.port)
        # Descriptors one connection holds: ours, and in mirror/proxy mode the relayed one.
        self.connection_fds = 0 if conf.protocol == "udp" else 2 if conf.mode in RELAY_MODES else 1
        self.stats = process.stats
        self.mirror = process.mirror
        assert process.loop is not None and process.deadlines is not None
        self.loop: asyncio.AbstractEventLoop = process.loop
        self.deadlines = process.deadlines
        self.active = 0
        self.last_activity = time.monotonic()
        self.stopping = False
        self.connections: set[Finisher] = set()
        self.starting = 0  # accepted, transport not yet set up
        self._accepting = False
        self._family = int(sock.family)
        # The address every accepted connection reaches when the port is bound to one (not a
        # wildcard: bind_address); None: asked per connection (_local_address).
        bound = split(sock.getsockname()) if sock.family in (socket.AF_INET, socket.AF_INET6) \
            else ("", 0)
        self._local = bound if bound[0] not in ("", "0.0.0.0", "::") else None
        # What an accepted descriptor is handed to the loop as (see UvAccepted).
        self._accepted: type[AcceptedSocket | UvAccepted] = (
            UvAccepted if type(self.loop).__module__.startswith("uvloop") else AcceptedSocket)
        self._backoff = ACCEPT_BACKOFF_MIN
        self._expire_sent = False
        self._listener_closed = False
        self._timer: asyncio.TimerHandle | None = None
        self.udp: UdpServer | None = None

    # --- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        self.sock.setblocking(False)
        if self.port.protocol == "tcp":
            # Urgent data inline (listener.py sets it where the master binds, before listen, so
            # that connections queued before the hand-over have it too; accepted sockets
            # inherit it): again here for a socket bound elsewhere.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)
            self._resume_accepting()
        else:
            self.udp = UdpServer(self)
            if not self.process.held_back:
                self.udp.start()
        self._timer = self.loop.call_later(self.config.listen_timeout, self._check_listen_timeout)

    def _check_listen_timeout(self) -> None:
        if self.stopping:
            return
        idle_for = time.monotonic() - self.last_activity
        timeout = self.config.listen_timeout
        if self.active == 0 and idle_for >= timeout:
            if not self._expire_sent:
                self._expire_sent = True
                self.process.port_reports.report()  # its idle first, or the master says no
                self.process.channel.send_message(control.Expire(self.port_key))
            # The master answers with "stop"; if it does not, we ask again next period.
            self._timer = self.loop.call_later(timeout, self._check_listen_timeout)
            return
        wait = timeout - idle_for if self.active == 0 else timeout
        self._timer = self.loop.call_later(max(wait, 0.05), self._check_listen_timeout)

    def stop(self, *, abort: bool) -> None:
        """Stop serving: take what the kernel already queued, close the port, tell the master
        it is free, then finish (abort=True: close open connections now and record them)."""
        if not self.stopping:
            self.stopping = True
            if self._timer is not None:
                self._timer.cancel()
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
        self.connections.add(conn)
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

    def normal_closed(self, handler: Finisher, conn: Connection, payload: bytes, start: float,
                      end: float, dialogue: str, turns: Sequence[int], sent: bytes,
                      fields: dict[str, Any], notes: Sequence[str]) -> None:
        """A normal-mode TCP connection ended: connection_closed with its attack's figures,
        not an Attack (ServerProcess.normal_finished)."""
        self.process.normal_finished(conn, payload, start, end, dialogue, turns, sent, fields,
                                     notes)
        self._closed(handler, conn.remote_addr)

    def _closed(self, conn: Finisher, remote_addr: str) -> None:
        """A connection's attack is handed over: the port's accounting."""
        self.connections.discard(conn)
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

    def perread(self, conn: Connection, direction: str, data: bytes) -> None:
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
        """Accept what the kernel queued: as many as it says are waiting (ready_to_accept; at
        least one, at most ACCEPT_BATCH), or, draining, until accept() would block."""
        if drain:
            count = self.config.max_connections
        else:
            count = min(max(1, ready_to_accept(self.sock)), ACCEPT_BATCH)
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
            why = self.process.budget.admit(source)
            if why is not None:
                os.close(fd)  # at once: a descriptor held for it is what the budget prevents
                self._refused_over_budget(source, why)
                continue
            self._start_connection(self._accepted(self._family, socket.SOCK_STREAM, 0, fd), remote,
                                   self._local or self._local_address(fd))
        self._backoff = ACCEPT_BACKOFF_MIN  # accept() works again

    def _local_address(self, fd: int) -> tuple[str, int] | None:
        """The address an accepted connection reached (the listening socket is a wildcard's),
        asked of its descriptor once here on uvloop: its transport's get_extra_info("sockname")
        made two system calls and a socket.socket for it (~3 us against ~1.3, timeit). None on
        asyncio's loop (its transport asks when it is made anyway) or if it fails (the
        connection then asks its transport)."""
        if self._accepted is not UvAccepted:
            return None
        probe = _socket.socket(self._family, socket.SOCK_STREAM, 0, fd)
        try:
            return split_local(probe.getsockname())
        except OSError:
            return None
        finally:
            probe.detach()

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

    def _start_connection(self, sock: AcceptedSocket | UvAccepted, remote: tuple[str, int],
                          local: tuple[str, int] | None = None) -> None:
        """Hand an accepted socket to the loop. Both loops make it non-blocking themselves
        (uvloop's uv_tcp_open, asyncio's transport set-up), and SO_OOBINLINE came with it from
        the listening socket (start): no system call here."""
        handler = self.handler_factory(remote, local)
        self.starting += 1
        self._set_up(self.loop.connect_accepted_socket(
            lambda: handler, sock), remote[0])  # type: ignore[arg-type]  # UvAccepted: see it

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
        self.connections.discard(old)
        self.connections.add(handler)
        transport.set_protocol(handler)
        handler.attach(transport)
        transport.resume_reading()
