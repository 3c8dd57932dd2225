"""The master: watches the monitor, owns the table of dynamic servers, handles signals.

It stays root and never reads attacker bytes beyond packet headers. One selector loop over the
monitor's descriptor, a signal wake-up socket, one control channel per server process and one per
recorder (recorder.py: the process running the plugins; the master gives each new server process
a link to it, and when a recorder dies, starts another and relinks every process that used it).

A dynamic server serves one port; server processes host up to `ports_per_process` of them
(server.py). For a new port the master binds it and hands the socket to the fullest process that
has room, and forks a new process only when none has. A process that serves no port any more is
retired (it exits once its last connection is recorded); so is every process on reload, since it
holds the old configuration.

Bounds (an Internet-wide sweep must not fork-bomb us): at most `max_servers` running servers
(the least recently used idle one is stopped to make room, else the attempt is refused), at most
`max_server_rate` new servers a second, and a bounded queue of attempts waiting for a port whose
old server is still letting go of it. Every refusal is counted and logged (rate-limited); a
refused nfq attempt is still accepted untouched, so the kernel answers it with a reset.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from honeytrap import capabilities, control, daemon, forked, metrics, templates
from honeytrap import log as logs
from honeytrap.attack import Mode
from honeytrap.config import Config, PortConf
from honeytrap.control import Channel
from honeytrap.errors import HoneytrapError
from honeytrap.listener import PortInUse, bind_port
from honeytrap.monitor import Held, Monitor
from honeytrap.plugin import Registry, load_plugins
from honeytrap.privileges import Identity
from honeytrap.recorder import RecorderHandle, fork_recorder
from honeytrap.server import ServerSpec, child_main, parse_key

log = logging.getLogger("honeytrap.master")

# On SIGTERM, dynamic servers get this long to record their attacks and exit; stragglers
# are then killed (by pid: never the process group, which may hold processes not ours).
SHUTDOWN_TIMEOUT = 45.0
# Then the recorders get this long to finish the attacks handed to them (their own pipeline
# drain is 30 s, recorder.DRAIN_SECONDS).
RECORDER_STOP_TIMEOUT = 40.0
# Attempts held for one port while its previous server releases it.
MAX_PENDING_PER_PORT = 64
# Dynamic servers that were told to stop but still finish their work (not counted in
# max_servers): at most this many times max_servers, else new attempts are refused.
DRAINING_FACTOR = 2
# A refusal is logged at most once per this many seconds (with the count since the last line).
REFUSAL_LOG_INTERVAL = 5.0
# Statistics are logged this often (and on SIGUSR1).
STATS_LOG_INTERVAL = 300.0


@dataclass
class ProcessHandle:
    """A server process: its control channel and the ports it serves or still lets go of."""

    pid: int
    channel: Channel
    ports: dict[tuple[str, int], ServerHandle] = field(default_factory=dict)
    serving: int = 0  # of those ports, the ones not told to stop: what counts against its room
    retired: bool = False  # told "retire" or "shutdown": no more ports go to it
    lost: list[tuple[str, int]] = field(default_factory=list)  # ports it had when it went
    stats: dict[str, int] = field(default_factory=dict)
    recorder: RecorderHandle | None = None  # the recorder its link goes to


@dataclass
class ServerHandle:
    """A dynamic server: one port, in a server process."""

    key: tuple[str, int]
    process: ProcessHandle
    conf: PortConf
    started: float
    last_used: float
    busy: bool = False
    draining: bool = False
    released: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass
class MasterStats:
    attempts: int = 0
    ignored: int = 0
    servers_started: int = 0
    servers_evicted: int = 0
    refused_no_room: int = 0
    refused_rate: int = 0
    refused_draining: int = 0
    refused_privileged: int = 0  # a port we may not bind (no CAP_NET_BIND_SERVICE)
    ports_in_use: int = 0
    fork_failures: int = 0
    handover_failures: int = 0
    bind_failures: int = 0
    server_crashes: int = 0
    recorder_crashes: int = 0


class TokenBucket:
    """At most `rate` events a second, with bursts up to `rate`."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = float(rate)
        self.tokens = float(rate)
        self.clock = clock
        self.last = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.rate, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Master:
    def __init__(
        self,
        config: Config,
        registry: Registry,
        monitor: Monitor,
        identity: Identity,
        *,
        reload_config: Callable[[], Config],
        keep_out_of_children: Callable[[], list[int]] = lambda: [],
    ) -> None:
        self.config = config
        self.registry = registry
        self.monitor = monitor
        self.identity = identity
        self.reload_config = reload_config
        self.keep_out_of_children = keep_out_of_children
        self.stats = MasterStats()
        self.finished_stats: dict[str, int] = {}
        self.servers: dict[tuple[str, int], ServerHandle] = {}  # running
        self.releasing: dict[tuple[str, int], ServerHandle] = {}  # draining, port not yet free
        self.children: dict[int, ProcessHandle] = {}  # every live server process, by pid
        self.pending: dict[tuple[str, int], list[Held]] = {}
        self.recorder: RecorderHandle | None = None  # the one new servers link to
        self.recorders: dict[int, RecorderHandle] = {}  # every live recorder, by pid
        self.bucket = TokenBucket(config.max_server_rate)
        self.port_privilege = capabilities.PortPrivilege()
        self.bind_refusals = capabilities.BindRefusals()
        self.selector = selectors.DefaultSelector()
        self._signals: list[int] = []
        self._running = True
        self._refusals_logged = 0.0
        self._refusals_unlogged = 0
        self._wake_r, self._wake_w = socket.socketpair()
        # Prometheus /metrics (metrics_listen), served from this loop: no thread in the master.
        self.metrics = metrics.start(config, self.totals, self.selector)

    # --- the loop ---------------------------------------------------------------------------

    def run(self) -> int:
        self._install_signals()
        self.selector.register(self.monitor.fileno(), selectors.EVENT_READ, "monitor")
        self.selector.register(self._wake_r.fileno(), selectors.EVENT_READ, "signal")
        next_stats = time.monotonic() + STATS_LOG_INTERVAL
        self._start_recorder()
        daemon.notify("READY=1")
        log.log(logs.NOTICE, "honeytrap master running (monitor %s)", self.config.monitor)
        while self._running:
            for key, _events in self.selector.select(timeout=1.0):
                if key.data == "monitor":
                    self._on_monitor()
                elif key.data == "signal":
                    self._on_signals()
                elif isinstance(key.data, ProcessHandle):
                    self._on_channel(key.data)
                elif isinstance(key.data, RecorderHandle):
                    self._on_recorder(key.data)
                elif isinstance(key.data, metrics.Ready):
                    key.data.callback()
            if self.metrics is not None:
                self.metrics.tick()
            if time.monotonic() >= next_stats:
                next_stats = time.monotonic() + STATS_LOG_INTERVAL
                self.log_stats()
        return self._shutdown()

    def _install_signals(self) -> None:
        self._wake_w.setblocking(False)
        self._wake_r.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD):
            signal.signal(sig, self._note_signal)

    def _note_signal(self, signum: int, _frame: object) -> None:
        self._signals.append(signum)

    def _on_signals(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        signals, self._signals = self._signals, []
        for signum in dict.fromkeys(signals):
            if signum in (signal.SIGTERM, signal.SIGINT):
                log.log(logs.NOTICE, "%s received: shutting down", signal.Signals(signum).name)
                self._running = False
            elif signum == signal.SIGHUP:
                self.reload()
            elif signum == signal.SIGUSR1:
                self.log_stats()
            elif signum == signal.SIGCHLD:
                self._reap()

    # --- attempts ---------------------------------------------------------------------------

    def _on_monitor(self) -> None:
        try:
            attempts = self.monitor.poll()
        except OSError as exc:
            log.error("monitor read failed: %s", exc)
            return
        for held in attempts:
            try:
                self.on_attempt(held)
            finally:
                if not self._is_pending(held):
                    held.release()

    def _is_pending(self, held: Held) -> bool:
        key = (held.attempt.protocol, held.attempt.local_port)
        return any(h is held for h in self.pending.get(key, ()))

    def on_attempt(self, held: Held) -> None:
        attempt = held.attempt
        self.stats.attempts += 1
        key = (attempt.protocol, attempt.local_port)
        conf = self.config.port_mode(attempt.protocol, attempt.local_port)
        if conf.mode is Mode.IGNORE:
            self.stats.ignored += 1
            return
        server = self.servers.get(key)
        if server is not None:
            server.last_used = time.monotonic()
            return
        if key in self.releasing:
            waiting = self.pending.setdefault(key, [])
            if len(waiting) < MAX_PENDING_PER_PORT:
                waiting.append(held)
            else:
                self._refuse("refused_draining", key)
            return
        self.start_server(key, conf, attempt.family)

    def start_server(self, key: tuple[str, int], conf: PortConf, family: int) -> bool:
        missing = self.port_privilege.missing_for(conf.port)
        if missing is not None:  # refused before binding: the verdict lets the kernel RST it
            self.stats.refused_privileged += 1
            self.bind_refusals.refuse(conf.port, conf.protocol, missing)
            return False
        if len(self.servers) >= self.config.max_servers and not self._evict_one():
            self._refuse("refused_no_room", key)
            return False
        process = self._process_with_room()
        if process is None and len(self.children) >= self._process_limit():
            self._refuse("refused_draining", key)
            return False
        if not self.bucket.take():
            self._refuse("refused_rate", key)
            return False
        try:
            sock = bind_port(conf.protocol, conf.port, self.config.bind_address, family)
        except PortInUse:
            self.stats.ports_in_use += 1
            log.debug("port %d/%s is served by someone else", conf.port, conf.protocol)
            return False
        except PermissionError:  # a policy beyond the capability check (LSM, sysctl changed)
            self.stats.refused_privileged += 1
            self.bind_refusals.refuse(conf.port, conf.protocol, "a permission the system refuses")
            return False
        except OSError as exc:
            self.stats.bind_failures += 1
            log.error("cannot bind %d/%s: %s", conf.port, conf.protocol, exc)
            return False
        try:
            if process is not None:
                handed = self._hand_over(process, conf, sock)
            else:
                process = self._fork(conf, sock)
                handed = process is not None
        finally:
            sock.close()
        if process is None or not handed:
            return False
        now = time.monotonic()
        handle = ServerHandle(key, process, conf, now, now)
        process.ports[key] = handle
        process.serving += 1
        self.servers[key] = handle
        self.stats.servers_started += 1
        log.log(
            logs.NOTICE, "dynamic server for %d/%s started (pid %d, %s mode)",
            conf.port, conf.protocol, process.pid, conf.mode.label,
        )
        return True

    def _process_limit(self) -> int:
        """Server processes alive at most, those letting go of their ports included: enough
        for max_servers ports, times (1 + DRAINING_FACTOR)."""
        per = self.config.ports_per_process
        return (1 + DRAINING_FACTOR) * -(-self.config.max_servers // per)

    def _process_with_room(self) -> ProcessHandle | None:
        """The fullest process that can take one more port (so the others empty and exit)."""
        best: ProcessHandle | None = None
        for process in self.children.values():
            if process.retired or process.channel.closed:
                continue
            if process.serving < self.config.ports_per_process and (
                best is None or process.serving > best.serving
            ):
                best = process
        return best

    def _hand_over(self, process: ProcessHandle, conf: PortConf, sock: socket.socket) -> bool:
        """Give a running process the port's bound socket and its template file."""
        template = templates.open_template(self.config.response_dir, conf.protocol, conf.port)
        fds = [sock.fileno()] if template is None else [sock.fileno(), template]
        try:
            sent = process.channel.send_fds(
                f"serve {conf.protocol} {conf.port} {len(fds)}", fds
            )
        finally:
            if template is not None:
                os.close(template)
        if not sent:
            self.stats.handover_failures += 1
            log.error("cannot hand %d/%s to server process %d", conf.port, conf.protocol,
                      process.pid)
        return sent

    def _fork(self, conf: PortConf, sock: socket.socket) -> ProcessHandle | None:
        if self.recorder is None:
            self._start_recorder()
        recorder = self.recorder
        link = recorder.link() if recorder is not None else None
        if link is None:
            # Attacks wait in the server until the recorder is back (relinked then).
            log.error("no recorder link for %d/%s", conf.port, conf.protocol)
        parent_end, child_end = socket.socketpair()
        spec = ServerSpec(
            conf, sock, self.config, self.registry, self.identity, child_end, recorder=link,
            close_in_child=[*self._fds_for_child(), parent_end.fileno()],
        )
        pid = forked.fork_child(
            f"server process for {conf.port}/{conf.protocol}", lambda: child_main(spec)
        )
        for end in (child_end, link):
            if end is not None:
                end.close()
        if pid is None:
            self.stats.fork_failures += 1
            parent_end.close()
            return None
        process = ProcessHandle(
            pid, Channel(parent_end), recorder=recorder if link is not None else None
        )
        self.children[pid] = process
        self.selector.register(process.channel.fileno(), selectors.EVENT_READ, process)
        return process

    # --- the recorder -------------------------------------------------------------------------

    def _start_recorder(self) -> None:
        """Fork a recorder with the current plugins; it becomes the one new servers link to."""
        handle = fork_recorder(self.config, self.registry, self.identity, self._fds_for_child())
        if handle is None:
            self.recorder = None
            return
        self.recorder = handle
        self.recorders[handle.pid] = handle
        if not handle.wait_ready():
            log.error("the recorder (pid %d) did not get ready", handle.pid)
        if not handle.channel.closed:
            self.selector.register(handle.channel.fileno(), selectors.EVENT_READ, handle)
        log.info("recorder started (pid %d)", handle.pid)

    def _on_recorder(self, handle: RecorderHandle) -> None:
        for message in handle.channel.receive():
            if message.startswith("stats "):
                stats = control.parse_stats(message)
                if stats is not None:
                    handle.stats = stats
            elif message == "":
                try:
                    self.selector.unregister(handle.channel.fileno())
                except (KeyError, ValueError):
                    pass

    def _recorder_exited(self, handle: RecorderHandle, code: int) -> None:
        if not handle.channel.closed:
            self._on_recorder(handle)  # its final stats
            try:
                self.selector.unregister(handle.channel.fileno())
            except (KeyError, ValueError):
                pass
            handle.channel.close()
        self._keep_stats(handle.stats)
        linked = [h for h in self.children.values() if h.recorder is handle]
        if code == 0 and handle.stopped and not linked:
            log.info("recorder (pid %d) finished", handle.pid)
            return
        self.stats.recorder_crashes += 1
        log.error("recorder (pid %d) exited with status %d; %d server processes to relink",
                  handle.pid, code, len(linked))
        if self.recorder is handle:
            self.recorder = None
        if self.recorder is None and (self._running or linked):
            self._start_recorder()
        for server in linked:
            self._relink(server)

    def _relink(self, server: ProcessHandle) -> None:
        recorder = self.recorder
        link = recorder.link() if recorder is not None else None
        server.recorder = None
        if recorder is None or link is None:
            return
        try:
            if server.channel.send_fd("relink", link.fileno()):
                server.recorder = recorder
        finally:
            link.close()

    def _fds_for_child(self) -> list[int]:
        fds = [self.monitor.fileno(), self._wake_r.fileno(), self._wake_w.fileno()]
        fds += [h.channel.fileno() for h in self.children.values() if not h.channel.closed]
        fds += [r.channel.fileno() for r in self.recorders.values() if not r.channel.closed]
        selector_fd = getattr(self.selector, "fileno", None)
        if callable(selector_fd):
            fds.append(selector_fd())
        fds += self.keep_out_of_children()
        if self.metrics is not None:
            fds += self.metrics.fds()
        return fds

    def _evict_one(self) -> bool:
        idle = [h for h in self.servers.values() if not h.busy]
        if not idle:
            return False
        victim = min(idle, key=lambda h: h.last_used)
        self.stats.servers_evicted += 1
        log.info("evicting idle server for %d/%s to make room", victim.conf.port,
                 victim.conf.protocol)
        self._drain(victim)
        return True

    def _drain(self, handle: ServerHandle) -> None:
        """Stop a port's server: it lets go of the port after its stop grace ("released"), and
        its open connections finish."""
        if handle.draining:
            return
        handle.draining = True
        handle.process.serving -= 1
        if self.servers.get(handle.key) is handle:
            del self.servers[handle.key]
            if not handle.released:
                self.releasing[handle.key] = handle
        handle.process.channel.send(f"stop {handle.key[0]} {handle.key[1]}")

    def _retire(self, process: ProcessHandle, how: str = "retire") -> None:
        """No more ports for this process: it exits once its last connection is recorded
        ("retire"), or records and closes everything now ("shutdown")."""
        process.retired = True
        process.channel.send(how)

    def _refuse(self, counter: str, key: tuple[str, int]) -> None:
        setattr(self.stats, counter, getattr(self.stats, counter) + 1)
        now = time.monotonic()
        self._refusals_unlogged += 1
        if now - self._refusals_logged >= REFUSAL_LOG_INTERVAL:
            log.warning(
                "no room for a server on %d/%s (%s); %d attempts refused since the last report",
                key[1], key[0], counter.replace("_", " "), self._refusals_unlogged,
            )
            self._refusals_logged = now
            self._refusals_unlogged = 0

    # --- dynamic servers --------------------------------------------------------------------

    def _on_channel(self, process: ProcessHandle) -> None:
        for message in process.channel.receive():
            word, _, rest = message.partition(" ")
            if word == "stats":
                stats = control.parse_stats(message)
                if stats is not None:
                    process.stats = stats
                continue
            if message == "":
                self._gone(process)
                continue
            handle = process.ports.get(parse_key(rest))
            if handle is None:
                continue  # a port this process already let go of
            if word == "busy":
                handle.busy = True
                handle.last_used = time.monotonic()
            elif word == "idle":
                handle.busy = False
                handle.last_used = time.monotonic()
            elif word == "expire":
                if not handle.busy:
                    self._drain(handle)
            elif word == "released":
                self._released(handle)

    def _released(self, handle: ServerHandle) -> None:
        handle.released = True
        process = handle.process
        if not handle.draining:  # let go on its own (a malformed handover, a crash)
            handle.draining = True
            process.serving -= 1
        if process.ports.get(handle.key) is handle:
            del process.ports[handle.key]
            if not process.ports and not process.retired:
                self._retire(process)
        if self.servers.get(handle.key) is handle:
            del self.servers[handle.key]
        if self.releasing.get(handle.key) is handle:
            del self.releasing[handle.key]
        waiting = self.pending.pop(handle.key, [])
        if waiting and self._running:
            attempt = waiting[0].attempt
            conf = self.config.port_mode(attempt.protocol, attempt.local_port)
            if conf.mode is not Mode.IGNORE:
                self.start_server(handle.key, conf, attempt.family)
        for held in waiting:
            held.release()

    def _gone(self, process: ProcessHandle) -> None:
        """The channel closed: the process exited (or crashed); its ports are free."""
        try:
            self.selector.unregister(process.channel.fileno())
        except (KeyError, ValueError):
            pass
        process.retired = True
        process.lost = list(process.ports)
        for handle in list(process.ports.values()):
            self._released(handle)
        process.channel.close()
        self._keep_stats(process.stats)
        process.stats = {}

    def _keep_stats(self, stats: dict[str, int]) -> None:
        """A gone child's last statistics: its counters stay in the totals for good, its gauges
        (spool_depth, pipeline_pending: levels, not events) go with it."""
        for name, value in stats.items():
            if name not in metrics.GAUGES:
                self.finished_stats[name] = self.finished_stats.get(name, 0) + value

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            recorder = self.recorders.pop(pid, None)
            if recorder is not None:
                self._recorder_exited(recorder, code)
                continue
            process = self.children.pop(pid, None)
            if process is None:
                continue
            if not process.channel.closed:
                self._on_channel(process)  # read its last words (final stats)
            if not process.channel.closed or process.ports:
                self._gone(process)
            if code != 0:
                self.stats.server_crashes += 1
                ports = " ".join(f"{port}/{proto}" for proto, port in process.lost) or "none"
                log.error("server process %d (ports %s) exited with status %d", pid, ports, code)

    # --- reload, stats, shutdown ------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: re-read the configuration and reload the plugins from scratch; on any error
        keep running with the old ones. Running servers are drained so new connections meet
        the new configuration."""
        daemon.notify("RELOADING=1")
        try:
            config = self.reload_config()
            registry = load_plugins(config)
        except HoneytrapError as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            daemon.notify("READY=1")
            return
        old = self.registry
        self.config, self.registry = config, registry
        self.bucket = TokenBucket(config.max_server_rate)
        old.close()
        # New plugins, new recorder; the old one records what its servers still hand it, then
        # exits once they all have.
        previous = self.recorder
        self._start_recorder()
        if previous is not None:
            previous.stop()
        logs.reopen()
        for handle in list(self.servers.values()):
            self._drain(handle)
        for process in self.children.values():  # they hold the old configuration
            if not process.retired:
                self._retire(process)
        log.log(logs.NOTICE, "configuration and %d plugins reloaded", len(registry.plugins))
        daemon.notify("READY=1")

    def totals(self) -> dict[str, int]:
        totals = dict(self.stats.__dict__)
        live = [p.stats for p in self.children.values()]
        live += [r.stats for r in self.recorders.values()]
        for stats in [self.finished_stats, *live]:
            for name, value in stats.items():
                totals[name] = totals.get(name, 0) + value
        totals["servers_running"] = len(self.servers)
        totals["servers_total"] = sum(len(p.ports) for p in self.children.values())
        totals["server_processes"] = len(self.children)
        return totals

    def log_stats(self) -> None:
        totals = self.totals()
        log.log(logs.NOTICE, "statistics: %s",
                " ".join(f"{k}={v}" for k, v in sorted(totals.items())))

    def _shutdown(self) -> int:
        daemon.notify("STOPPING=1")
        for waiting in self.pending.values():
            for held in waiting:
                held.release()
        self.pending.clear()
        for process in list(self.children.values()):
            self._retire(process, "shutdown")
        self._wait_for(lambda: bool(self.children), SHUTDOWN_TIMEOUT)
        self._kill(self.children, "server process")
        self.children.clear()
        # The servers are gone: the recorders finish what they were handed, then exit.
        for recorder in self.recorders.values():
            recorder.stop()
        self._wait_for(lambda: bool(self.recorders), RECORDER_STOP_TIMEOUT)
        self._kill(self.recorders, "recorder")
        self.recorders.clear()
        self.log_stats()
        if self.metrics is not None:
            self.metrics.close()
        self.monitor.close()
        self.registry.close()
        log.log(logs.NOTICE, "honeytrap stopped")
        return 0

    def _wait_for(self, busy: Callable[[], bool], seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while busy() and time.monotonic() < deadline:
            for key, _events in self.selector.select(timeout=0.2):
                if key.data == "monitor":
                    for held in self.monitor.poll():
                        held.release()
                elif isinstance(key.data, ProcessHandle):
                    self._on_channel(key.data)
                elif isinstance(key.data, RecorderHandle):
                    self._on_recorder(key.data)
                elif key.data == "signal":
                    self._on_signals()
            self._reap()

    def _kill(self, processes: Mapping[int, object], what: str) -> None:
        for pid in list(processes):
            log.error("%s pid %d did not stop in time: killing it", what, pid)
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            except OSError as exc:
                if exc.errno != errno.ECHILD:
                    raise
