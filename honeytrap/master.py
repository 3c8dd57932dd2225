"""The master: watches the monitor, owns the dynamic servers' processes, handles signals.

It stays root and never reads attacker bytes beyond packet headers. One selector loop over the
monitor's descriptor, a signal wake-up socket, one control channel per server process and one per
recorder (recorder.py: the process running the plugins; recorders.py: the master gives each new
server process a link to it, and when a recorder dies, starts another and relinks every process
that used it).

Which port is served by which process, and what to do with each attempt (start, hand over,
fork, evict, refuse, hold while a port is released), is the port table's decision
(porttable.py, sans-IO); this module carries its actions out: it binds ports as root, hands their
sockets to server processes (server.py) over their control channels, forks processes (spares,
ahead of need, when the loop is idle) and gives the monitor's held attempts their verdicts. A
refused nfq attempt is still accepted untouched, so the kernel answers it with a reset; refusals
are counted by the table and logged here, rate-limited.
"""

from __future__ import annotations

import functools
import logging
import os
import resource
import selectors
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from honeytrap import (
    capabilities,
    control,
    daemon,
    eventloop,
    forked,
    limits,
    metrics,
    priority,
    templates,
)
from honeytrap import log as logs
from honeytrap.attack import Mode
from honeytrap.config import Config
from honeytrap.conntrackdrops import ConntrackDrops
from honeytrap.control import Channel
from honeytrap.dialogue.catalog import load_catalog
from honeytrap.errors import HoneytrapError
from honeytrap.fdlimit import nr_open
from honeytrap.handovers import Handovers, handover_fd_limit
from honeytrap.monitor import Held, Monitor
from honeytrap.plugin import Registry, load_plugins
from honeytrap.porttable import Action, Fork, PortTable, Retire, Start, Stop, Verdict
from honeytrap.privileges import Identity
from honeytrap.recorder import RecorderHandle, fork_recorder
from honeytrap.recorders import Recorders
from honeytrap.refusals import RefusalLog
from honeytrap.sensorbudget import SharedBucket
from honeytrap.server import ServerSpec, child_main
from honeytrap.unacked import Share, UnackedBudget

log = logging.getLogger("honeytrap.master")


def _nofile() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]

# On SIGTERM, dynamic servers get this long to record their attacks and exit; stragglers
# are then killed (by pid: never the process group, which may hold processes not ours).
SHUTDOWN_TIMEOUT = 45.0
# Then the recorders get this long to finish the attacks handed to them (their own pipeline
# drain is 30 s, recorder.DRAIN_SECONDS).
RECORDER_STOP_TIMEOUT = 40.0
# Statistics are logged this often (and on SIGUSR1).
STATS_LOG_INTERVAL = 300.0
# Verdicts are sent (monitor.flush) at least every this many attempts of a round: a batch, but the
# first SYN of a burst not kept waiting for the last one's bind (~50 us each).
VERDICT_ROUND = 32
# While a spare process is wanted, the loop waits this long for work before forking one.
SPARE_IDLE_WAIT = 0.005


@dataclass
class ProcessHandle:
    """A server process: its control channel (its ports are the port table's)."""

    pid: int
    channel: Channel
    stats: dict[str, int] = field(default_factory=dict)
    recorder: RecorderHandle | None = None  # the recorder its link goes to
    lost: list[tuple[str, int]] = field(default_factory=list)  # ports it had when it went
    killed: bool = False  # by the master (its channel overflowed): not a crash
    unacked: Share | None = None  # its slot in the sensor's unacknowledged bytes


@dataclass
class MasterStats:
    """What the master counts itself, beside the port table's counters."""

    server_crashes: int = 0
    server_kills: int = 0  # processes that stopped reading their control channel
    recorder_crashes: int = 0


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
        self.catalog = load_catalog(config)  # dialogues, inherited by every server process
        eventloop.preload(config)
        self.monitor = monitor
        self.identity = identity
        self.reload_config = reload_config
        self.keep_out_of_children = keep_out_of_children
        self.stats = MasterStats()
        self.conntrack = ConntrackDrops()  # SYNs the kernel dropped, its table full
        self.table = PortTable(self._limits(config))
        self.finished_stats: dict[str, int] = {}
        self.children: dict[int, ProcessHandle] = {}  # every live server process, by pid
        self.template_names = templates.template_names(config.response_dir)
        self._unreachable: list[ProcessHandle] = []  # channels overflowed: to kill
        # The UDP replies all server processes may send a second (reflector.py): before any fork.
        self.sensor_budget = SharedBucket(config.udp_replies_per_sensor, time.monotonic())
        # The bytes all server processes may hold for the recorder (unacked.py): before any fork;
        # slots for twice the processes the table allows, so a reload that allows more still
        # finds some (a process forked without one bounds itself alone).
        self.unacked = UnackedBudget(config.unacknowledged_limit,
                                     2 * self.table.limits.max_processes)
        self.port_privilege = capabilities.PortPrivilege()
        self.selector = selectors.DefaultSelector()
        self.recorders = Recorders(self.selector, self._fork_recorder)
        self._signals: list[int] = []
        self._running = True
        self.refusals = RefusalLog(log)  # refusals and failed starts, rate-limited
        self.handovers = Handovers(self._handover_limit(), self.refusals)
        self.bind_refusals = self.handovers.bind_refusals
        self._wake_r, self._wake_w = socket.socketpair()
        # Prometheus /metrics (metrics_listen), served from this loop: no thread in the master.
        self.metrics = metrics.start(config, self.totals, self.selector)

    @staticmethod
    def _limits(config: Config) -> limits.Limits:
        """The table's bounds; the descriptor budget is what RLIMIT_NOFILE allows now
        (raise_fd_limit raised it at start)."""
        return limits.Limits.from_config(config, min(nr_open(), _nofile()))

    def _handover_limit(self) -> int:
        return handover_fd_limit(_nofile(), self.table.limits.max_processes)

    # --- the loop ---------------------------------------------------------------------------

    def run(self) -> int:
        self._install_signals()
        priority.set_master(self.config.master_nice, self.config.master_realtime)  # before forks
        self.selector.register(self.monitor.fileno(), selectors.EVENT_READ, "monitor")
        self.selector.register(self._wake_r.fileno(), selectors.EVENT_READ, "signal")
        next_stats = time.monotonic() + STATS_LOG_INTERVAL
        self.recorders.start()
        for _spare in range(self.table.spares_wanted()):  # all of them before the first SYN
            self._refill_spares(idle=True)
        daemon.notify("READY=1")
        log.log(logs.NOTICE, "honeytrap master running (monitor %s)", self.config.monitor)
        while self._running:
            # Spares are forked when the loop has nothing else to do (a short wait for that).
            # While a spare is wanted, a short wait: one is forked when the loop is idle.
            wait = SPARE_IDLE_WAIT if self.table.spares_wanted() else 1.0
            events = self.selector.select(timeout=wait)
            # The packets last: what the processes said in the same pass (a port released, a
            # channel's EOF when one died) is in the table before a packet is decided on it;
            # else a SYN to a crashed process's port got the verdict of a served one, a reset.
            packets = False
            for key, mask in events:
                if key.data == "monitor":
                    packets = True
                elif isinstance(key.data, ProcessHandle) and mask & selectors.EVENT_WRITE:
                    key.data.channel.flush()
                    if mask & selectors.EVENT_READ:
                        self._on_channel(key.data)
                elif key.data == "signal":
                    self._on_signals()
                elif isinstance(key.data, ProcessHandle):
                    self._on_channel(key.data)
                elif isinstance(key.data, RecorderHandle):
                    self.recorders.on_readable(key.data)
                elif isinstance(key.data, metrics.Ready):
                    key.data.callback()
            if packets:
                self._on_monitor()
            self._drop_unreachable()
            self._carry_out(self.table.tick())
            self.monitor.flush()  # the verdicts of attempts held and decided since
            self.handovers.uncork()  # then what the pass gave the processes
            self._refill_spares(idle=not events)
            if self.metrics is not None:
                self.metrics.tick()
            self.conntrack.tick(time.monotonic())
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
        try:
            for n, held in enumerate(attempts, 1):
                try:
                    self.on_attempt(held)
                except Exception:
                    held.release()  # never left without a verdict, even by a bug here
                    raise
                if n % VERDICT_ROUND == 0:
                    self.monitor.flush()
        finally:
            # The round's verdicts (a batch: monitor.flush), then its handovers, a sendmsg per
            # process (control.HANDOVER_BATCH): the verdicts need only the ports listening.
            self.monitor.flush()
            self.handovers.uncork()

    def on_attempt(self, held: Held) -> None:
        attempt = held.attempt
        key = (attempt.protocol, attempt.local_port)
        conf = self.config.port_mode(*key)
        refuse = ""
        if conf.mode is not Mode.IGNORE and key not in self.table.serving:
            missing = self.port_privilege.missing_for(conf.port)
            if missing is not None:  # refused before binding: the verdict lets the kernel RST it
                self.bind_refusals.refuse(conf.port, conf.protocol, missing)
                refuse = "refused_privileged"
            elif self.handovers.full() and key not in self.table.releasing:
                refuse = "refused_handovers"  # before binding (handovers.py)
        self._carry_out(
            self.table.attempt(key, held, ignore=conf.mode is Mode.IGNORE, refuse=refuse)
        )

    def _carry_out(self, actions: list[Action]) -> None:
        """The port table's actions, in order (porttable.py says what each means)."""
        for action in actions:
            if isinstance(action, Verdict):
                # A privileged port's refusal is logged by bind_refusals, naming the capability.
                if action.refused and action.refused != "refused_privileged":
                    self.refusals.note(logging.WARNING, action.refused,
                                       "no room for a server on %d/%s (%s)", action.key[1],
                                       action.key[0], action.refused.replace("_", " "))
                cast(Held, action.token).release()
            elif isinstance(action, Start):
                self._start(action)
            elif isinstance(action, Stop):
                process = self.children.get(action.pid)
                if action.why == "evicted":
                    log.info("evicting idle server for %d/%s to make room", action.key[1],
                             action.key[0])
                age = self.table.clock() - action.started
                if process is not None and self.handovers.stop(process.channel, action.key, age):
                    self._carry_out(self.table.released(action.pid, action.key))
            elif isinstance(action, Retire):
                process = self.children.get(action.pid)
                if process is not None:
                    process.channel.send_message(control.Retire())
            elif isinstance(action, Fork):
                pid = self._fork()
                if pid is None:
                    self._carry_out(self.table.fork_failed(action))
                else:
                    self._carry_out(self.table.forked(pid, action))

    def _start(self, action: Start) -> None:
        """Bind the port as root and hand its socket (and template) to the process
        (handovers.py), or report why not."""
        key, pid = action.key, action.pid
        conf = self.config.port_mode(*key)
        process = self.children.get(pid)
        why = self.handovers.start(self.config, conf, cast(Held, action.token).attempt.family,
                                   None if process is None else process.channel,
                                   self.template_names)
        if why:
            self._carry_out(self.table.start_failed(key, pid, why))
            return
        self.table.started(key, pid)
        # info, not notice: a sweep starts thousands a second (the counters say how many).
        log.info("dynamic server for %d/%s started (pid %d, %s mode)",
                 conf.port, conf.protocol, pid, conf.mode.label)

    def _refill_spares(self, *, idle: bool) -> None:
        """Fork one spare process if the table wants one and the loop is idle (a fork blocks it
        for milliseconds, which must not fall between a first SYN and its verdict), or now, after
        the round's verdicts, when none is ready (a sweep may never leave the loop idle: the
        serving process would fill and a port wait for a fork). One per round, so a burst of
        packets waits for one fork at most."""
        ready, wanted = self.table.spares()
        if wanted and (idle or not ready):
            pid = self._fork()
            if pid is None:
                self._carry_out(self.table.fork_failed())
            else:
                self.table.forked(pid)

    def _fork(self) -> int | None:
        """Fork an empty server process (it drops privileges and waits for its ports)."""
        try:
            parent_end, child_end = control.channel_pair()
        except OSError as exc:  # out of descriptors (a sweep's handovers queued, say)
            log.error("cannot fork a server process: %s", exc.strerror)
            return None
        # No link: attacks wait in the server until the recorder is back (relinked then).
        recorder, link = self.recorders.link()
        spec = ServerSpec(
            self.config, self.registry, self.identity, child_end, recorder=link,
            close_in_child=[*self._fds_for_child(), parent_end.fileno()], catalog=self.catalog,
            sensor_budget=self.sensor_budget, unacked=(share := self.unacked.share()),
        )
        pid = forked.fork_child("server process", lambda: child_main(spec))
        for end in (child_end, link):
            if end is not None:
                end.close()
        if pid is None:
            parent_end.close()
            if share is not None:
                self.unacked.release(share, 0)
            return None
        channel = self.handovers.channel(parent_end)
        process = ProcessHandle(pid, channel, recorder=recorder, unacked=share)
        channel.on_backlog = functools.partial(self._backlog, process)
        channel.on_close = functools.partial(self._channel_closed, process)
        self.children[pid] = process
        self.selector.register(process.channel.fileno(), selectors.EVENT_READ, process)
        return pid

    # --- the recorder -------------------------------------------------------------------------

    def _fork_recorder(self) -> RecorderHandle | None:
        return fork_recorder(self.config, self.registry, self.identity, self._fds_for_child())

    def _recorder_exited(self, handle: RecorderHandle, code: int) -> None:
        linked = [h for h in self.children.values() if h.recorder is handle]
        crashed = self.recorders.exited(handle, code, len(linked),
                                        restart=self._running or bool(linked))
        self._keep_stats(handle.stats)
        if crashed:
            self.stats.recorder_crashes += 1
            for server in linked:
                server.recorder = self.recorders.relink(server.channel)

    def _fds_for_child(self) -> list[int]:
        fds = [self.monitor.fileno(), self._wake_r.fileno(), self._wake_w.fileno()]
        fds += control.descriptors([h.channel for h in self.children.values()]
                                   + self.recorders.channels())
        selector_fd = getattr(self.selector, "fileno", None)
        if callable(selector_fd):
            fds.append(selector_fd())
        fds += self.keep_out_of_children()
        if self.metrics is not None:
            fds += self.metrics.fds()
        return fds

    # --- dynamic servers --------------------------------------------------------------------

    def _unwatch(self, channel: Channel) -> None:
        """A child's channel closes (Channel.on_close): out of the selector first. A send to a
        child that died (EPIPE) closes it in the middle of the loop; left registered, its number
        went to the next channel's socketpair and register() raised: the master exited."""
        try:
            self.selector.unregister(channel.fileno())
        except (KeyError, ValueError):
            pass

    def _channel_closed(self, process: ProcessHandle) -> None:
        """Out of the selector (_unwatch); an overflowed channel's process is dropped after the
        round (the close comes in the middle of carrying out the table's actions)."""
        self._unwatch(process.channel)
        if process.channel.overflowed and process.pid in self.table.processes:
            self._unreachable.append(process)

    def _drop_unreachable(self) -> None:
        """A live process that left control.MAX_QUEUED messages unread (hung, or stopped) can be
        told nothing, not even to exit: it is killed (its listening sockets go with it) and its
        ports are the table's at once, not when it is reaped (a hung one never is)."""
        while self._unreachable:
            process = self._unreachable.pop()
            if process.pid in self.table.processes:
                process.killed = True
                self.stats.server_kills += 1
                forked.kill_unreachable(process.pid, self.table.ports_of(process.pid))
                self._gone(process)

    def _backlog(self, process: ProcessHandle, waiting: bool) -> None:
        """Messages wait for the process's control socket: watch it for writing meanwhile."""
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if waiting else 0)
        try:
            self.selector.modify(process.channel.fileno(), events, process)
        except (KeyError, ValueError):
            pass

    def _on_channel(self, process: ProcessHandle) -> None:
        for data in process.channel.receive_raw():
            for fd in process.channel.take_fds(len(process.channel.fds)):
                os.close(fd)  # no message from a server process carries one
            if not data:
                self._gone(process)
                continue
            try:
                message = control.decode(data)
            except control.ControlError as exc:
                log.warning("server process %d: %s", process.pid, exc)
                continue
            if isinstance(message, control.Stats):
                process.stats = message.values
            else:
                self._carry_out(self.table.message(process.pid, message))

    def _gone(self, process: ProcessHandle) -> None:
        """The channel closed: the process exited (or crashed); its ports are free."""
        try:
            self.selector.unregister(process.channel.fileno())
        except (KeyError, ValueError):
            pass
        process.lost = self.table.ports_of(process.pid)
        self._carry_out(self.table.gone(process.pid))
        process.channel.close()  # also after its EOF, which only marked it closed
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
            if self.sensor_budget.forget(pid):
                log.warning("server process %d died holding the UDP budget's lock", pid)
            recorder = self.recorders.reaped(pid)
            if recorder is not None:
                self._recorder_exited(recorder, code)
                continue
            process = self.children.pop(pid, None)
            if process is None:
                continue
            if process.unacked is not None:  # what it held for the recorder is gone with it
                self.unacked.release(process.unacked, pid)
            if not process.channel.closed:
                self._on_channel(process)  # read its last words (final stats)
            if pid in self.table.processes:
                self._gone(process)
            if code != 0 and not process.killed:
                self.stats.server_crashes += 1
                log.error("server process %d (ports %s) exited with status %d", pid,
                          forked.port_list(process.lost), code)

    # --- reload, stats, shutdown ------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: re-read the configuration and reload the plugins from scratch; on any error
        keep running with the old ones. Running servers are drained so new connections meet
        the new configuration."""
        daemon.notify("RELOADING=1")
        try:
            config = self.reload_config()
            catalog = load_catalog(config)
            registry = load_plugins(config)
        except HoneytrapError as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            daemon.notify("READY=1")
            return
        old = self.registry
        self.config, self.registry, self.catalog = config, registry, catalog
        eventloop.preload(config)
        self.template_names = templates.template_names(config.response_dir)
        priority.set_master(config.master_nice, config.master_realtime)
        self.unacked.set_limit(config.unacknowledged_limit)  # every process's, from now on
        if config.udp_replies_per_sensor != self.sensor_budget.rate:  # for the processes to come
            self.sensor_budget.close()
            self.sensor_budget = SharedBucket(config.udp_replies_per_sensor, time.monotonic())
        old.close()
        self.recorders.replace()  # new plugins, new recorder (recorders.py)
        logs.reopen()
        # Every process holds the old configuration: each is retired, its ports stopped.
        self._carry_out(self.table.reload(self._limits(config)))
        self.handovers.limit = self._handover_limit()
        log.log(logs.NOTICE, "configuration and %d plugins reloaded", len(registry.plugins))
        daemon.notify("READY=1")

    def totals(self) -> dict[str, int]:
        totals = {**self.table.stats.__dict__, **self.stats.__dict__}
        live = [p.stats for p in self.children.values()]
        live += [r.stats for r in self.recorders.live.values()]
        for stats in [self.finished_stats, *live]:
            for name, value in stats.items():
                totals[name] = totals.get(name, 0) + value
        totals["servers_running"] = len(self.table.serving)
        totals["servers_total"] = sum(len(p.ports) for p in self.table.processes.values())
        totals["server_processes"] = len(self.children)
        # Messages waiting for a server process to read its channel (control.Channel's queue):
        # a level that stays up means a process stopped reading (hung, or SIGSTOPped).
        totals["control_queued"] = sum(p.channel.backlog for p in self.children.values())
        # What the server processes hold for the recorder (unacked.py), the sensor's total.
        totals["unacknowledged_bytes"] = self.unacked.total()
        totals["conntrack_drops"] = self.conntrack.total
        return totals

    def log_stats(self) -> None:
        totals = self.totals()
        log.log(logs.NOTICE, "statistics: %s",
                " ".join(f"{k}={v}" for k, v in sorted(totals.items())))

    def _shutdown(self) -> int:
        daemon.notify("STOPPING=1")
        self._carry_out(self.table.shutdown())
        self.monitor.flush()
        for process in list(self.children.values()):
            process.channel.send_message(control.Shutdown())
        self._wait_for(lambda: bool(self.children), SHUTDOWN_TIMEOUT)
        forked.kill_all(self.children, "server process")
        self.children.clear()
        # The servers are gone: the recorders finish what they were handed, then exit.
        self.recorders.stop_all()
        self._wait_for(lambda: bool(self.recorders.live), RECORDER_STOP_TIMEOUT)
        forked.kill_all(self.recorders.live, "recorder")
        self.recorders.live.clear()
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
                    key.data.channel.flush()
                    self._on_channel(key.data)
                elif isinstance(key.data, RecorderHandle):
                    self.recorders.on_readable(key.data)
                elif key.data == "signal":
                    self._on_signals()
            self._reap()
            self.monitor.flush()  # the verdicts, then what the processes were given
            self.handovers.uncork()
