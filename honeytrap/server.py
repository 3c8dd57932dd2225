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

import asyncio
import gc
import logging
import os
import signal
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from honeytrap import control, eventloop, forked, privileges, proctitle, templates, wire
from honeytrap.attack import Attack, new_id
from honeytrap.budget import SourceBudget
from honeytrap.config import Config, PortConf
from honeytrap.deadlines import Deadlines
from honeytrap.dialogue.catalog import Catalog
from honeytrap.dynamicserver import DynamicServer
from honeytrap.mirror import MirrorPolicy
from honeytrap.plugin import Registry
from honeytrap.portstate import PortReporter
from honeytrap.recorderlink import RecorderClient
from honeytrap.reflector import ReflectorGuard, SensorBudget
from honeytrap.sockettransport import Poller
from honeytrap.unacked import Share

log = logging.getLogger("honeytrap.server")

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
    # Its slot in the sensor's bound on unacknowledged attacks (the master's, unacked.py); None:
    # the bound is this process's alone.
    unacked: Share | None = None


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
            spec.recorder, spec.config, self._recorder_full, on_acked=self.stats_changed,
            share=spec.unacked,
        )
        self.held_back = False  # the recorder is behind: no new connections meanwhile
        self.stats = ServerStats()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.deadlines: Deadlines | None = None  # the connections' deadlines, on self.loop
        # The epoll of the normal-mode TCP connections, on self.loop (sockettransport.py).
        self.poller: Poller | None = None
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
        self.poller = Poller(self.loop)
        self.finished = asyncio.Event()
        self.recorder.start(self.loop)
        self.loop.add_signal_handler(signal.SIGTERM, self.shutdown)
        self.loop.add_reader(self.spec.control.fileno(), self._on_control)
        self.port_reports.start(self.loop)
        self.channel.flush()  # what was queued before the loop ran
        await self.finished.wait()
        self.poller.close()  # every connection has ended
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
        # Its type given, and non-blocking as the master made it (listener.bind_port): the socket
        # object then asks the kernel only its address (to learn the family), not its type and
        # protocol too, and needs no setblocking() (three system calls fewer per port).
        kind = socket.SOCK_STREAM if key[0] == "tcp" else socket.SOCK_DGRAM
        sock = socket.socket(type=kind | socket.SOCK_NONBLOCK, proto=0, fileno=fds[0])
        self.add(self.config.port_mode(*key), sock, template)

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

    def normal_finished(self, conn: wire.Endpoints, payload: bytes, start: float, end: float,
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
        stats["held_back"] = self.recorder.holdback.holds
        stats.update(self.reflector.counters.__dict__)
        stats.update(self.budget.counters.__dict__)
        self.channel.send_stats(stats)
