"""The master's port table: which dynamic server serves which port, in which server process, and
what to do with each new attempt. Sans-IO (no socket, no fork, no clock of its own): the master
feeds it attempts and its server processes' messages, and carries out the actions it returns, in
order (h11's state machine is the model).

Per attempt on an unserved port, in this order:
- the port is served: nothing to do but the verdict (and a touch, for least-recently-used);
- its previous server is still letting go of it: the attempt is held (pending) until "released",
  at most MAX_PENDING_PER_PORT per port, MAX_PENDING in all and PENDING_TIMEOUT seconds;
- a process with room takes it (Start): the fullest one that has fewer than ports_per_process
  ports and descriptors to spare for one more port, so the others empty and exit; spare processes
  (SPARE_PROCESSES, forked ahead off the packet's path: spares_wanted) are used last;
- no process has room: Fork (on the packet's path, counted: spares should make this rare), unless
  max_processes are alive: refused_draining;
- at most max_server_rate starts a second (refused_rate), and at most max_servers serving ports:
  the least recently used idle port is stopped to make room (servers_evicted), else refused_no_room.
Every attempt gets exactly one Verdict (an nfq packet is accepted then: on a port with nothing
bound the kernel answers with a reset). Refusals are counted by name.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from honeytrap import control
from honeytrap.limits import SPARE_HEADROOM, SPARES_WHILE_SERVING_HAS_ROOM, Limits
from honeytrap.tokenbucket import TokenBucket

Key = tuple[str, int]  # ("tcp", 8080)
Clock = Callable[[], float]

# --- actions: what the master carries out, in the order given ---------------------------------


@dataclass(frozen=True)
class Start:
    """Bind `key`'s port and hand it to process `pid`; then report started() or start_failed().
    `token`: the attempt it is for (its address family is the one to bind first)."""

    key: Key
    pid: int
    token: object


@dataclass(frozen=True)
class Fork:
    """No process has room for `key`: fork one, then report forked(pid, self) or
    fork_failed(self), which return the actions for the attempts waiting on it."""

    key: Key
    tokens: tuple[object, ...]


@dataclass(frozen=True)
class Stop:
    """Tell process `pid` to stop serving `key` (it answers "released" once the port is free).
    `why`: evicted (to make room), expired (listen timeout), reload. `started`: when the port
    was started (the table's clock)."""

    key: Key
    pid: int
    why: str = "expired"
    started: float = field(default=0.0, compare=False, repr=False)


@dataclass(frozen=True)
class Retire:
    """Tell process `pid` that no more ports come: it exits once its last connection is done."""

    pid: int


@dataclass(frozen=True)
class Verdict:
    """Let the held attempt go on (nfq: the accept verdict). `refused`: the counter it was
    refused under (the master logs it, rate-limited), or "" if it was served."""

    token: object
    key: Key
    refused: str = ""


Action = Start | Fork | Stop | Retire | Verdict


# --- the table's state --------------------------------------------------------------------------


@dataclass
class Port:
    key: Key
    pid: int
    started: float
    last_used: float
    busy: bool = False
    stopping: bool = False  # told to stop (or let go on its own): no longer counts as serving


@dataclass
class Process:
    pid: int
    ports: dict[Key, Port] = field(default_factory=dict)  # serving or letting go
    serving: int = 0  # of those, the ones not stopping: what counts against its room
    retired: bool = False
    descriptors: int = 0  # connection descriptors it reported (Load), listeners not included
    had_ports: bool = False  # a port was started in it: it is no longer a spare


@dataclass
class TableStats:
    attempts: int = 0
    ignored: int = 0
    servers_started: int = 0
    servers_evicted: int = 0
    servers_expired: int = 0
    refused_no_room: int = 0
    refused_rate: int = 0
    refused_draining: int = 0
    refused_pending: int = 0
    refused_privileged: int = 0  # a port we may not bind (no CAP_NET_BIND_SERVICE)
    refused_handovers: int = 0  # the master's descriptors full of undelivered handovers
    ports_in_use: int = 0
    fork_failures: int = 0
    forks_on_path: int = 0
    spares_forked: int = 0
    handover_failures: int = 0
    bind_failures: int = 0


START_FAILURES = ("ports_in_use", "bind_failures", "handover_failures", "refused_privileged",
                  "refused_handovers")


@dataclass
class _Held:
    token: object
    deadline: float


class PortTable:
    def __init__(self, limits: Limits, clock: Clock = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self.bucket = TokenBucket(limits.max_server_rate, clock)
        self.stats = TableStats()
        self.serving: dict[Key, Port] = {}
        self.releasing: dict[Key, Port] = {}  # told to stop, port not yet free
        self.idle: OrderedDict[Key, Port] = OrderedDict()  # serving, not busy: oldest use first
        self.processes: dict[int, Process] = {}
        self.pending: dict[Key, list[_Held]] = {}
        self.pending_count = 0
        self.running = True
        self._room: set[int] = set()  # pids that may take a port now
        self._target: int | None = None  # where the last port went (the fullest with room)
        self._forking = 0  # Fork actions handed out, not yet reported forked or failed

    # --- attempts --------------------------------------------------------------------------

    def attempt(
        self, key: Key, token: object, *, ignore: bool = False, refuse: str = ""
    ) -> list[Action]:
        """A new attempt on `key` (a SYN or a datagram to an unserved port, as the monitor saw).
        `ignore`: the port's mode is ignore; `refuse`: the master refuses it under this counter
        (refused_privileged: a port it may not bind)."""
        self.stats.attempts += 1
        if ignore:
            self.stats.ignored += 1
            return [Verdict(token, key)]
        if refuse:
            return self._refuse(refuse, key, (token,))
        port = self.serving.get(key)
        if port is not None:
            self._touch(port)
            return [Verdict(token, key)]
        if key in self.releasing:
            return self._hold(key, token)
        return self._decide(key, (token,))

    def _hold(self, key: Key, token: object) -> list[Action]:
        waiting = self.pending.setdefault(key, [])
        if len(waiting) >= self.limits.max_pending_per_port or (
            self.pending_count >= self.limits.max_pending
        ):
            if not waiting:
                del self.pending[key]
            return self._refuse("refused_draining", key, (token,))
        waiting.append(_Held(token, self.clock() + self.limits.pending_timeout))
        self.pending_count += 1
        return []

    def _decide(
        self, key: Key, tokens: tuple[object, ...], *, admitted: bool = False
    ) -> list[Action]:
        """Start `key` for the attempts `tokens`, evicting or forking as needed, or refuse them.
        `admitted`: the rate was already paid (a Fork for them was carried out)."""
        port = self.serving.get(key)
        if port is not None:  # started meanwhile (a Fork carried out late)
            self._touch(port)
            return [Verdict(token, key) for token in tokens]
        if key in self.releasing:
            actions: list[Action] = []
            for token in tokens:
                actions += self._hold(key, token)
            return actions
        full = len(self.serving) >= self.limits.max_servers
        if full and not self.idle:
            return self._refuse("refused_no_room", key, tokens)
        can_fork = self._alive() < self.limits.max_processes and self.running
        if self._with_room() is None and not can_fork and not full:
            return self._refuse("refused_draining", key, tokens)
        if not admitted and not self.bucket.take():
            return self._refuse("refused_rate", key, tokens)
        actions = []
        if full:
            _key, victim = self.idle.popitem(last=False)
            self.stats.servers_evicted += 1
            actions += self._stop(victim, "evicted")  # its process has room again
        pid = self._with_room()
        if pid is None:
            if not can_fork:
                return actions + self._refuse("refused_draining", key, tokens)
            self.stats.forks_on_path += 1
            self._forking += 1
            return [*actions, Fork(key, tokens)]
        actions.append(self._start(key, pid, tokens[0]))
        actions += [Verdict(token, key) for token in tokens]
        return actions

    def _start(self, key: Key, pid: int, token: object) -> Start:
        now = self.clock()
        port = Port(key, pid, now, now)
        process = self.processes[pid]
        process.ports[key] = port
        process.serving += 1
        self.serving[key] = port
        self.idle[key] = port
        self._update_room(process)
        return Start(key, pid, token)

    def _refuse(self, counter: str, key: Key, tokens: Iterable[object]) -> list[Action]:
        verdicts: list[Action] = []
        for token in tokens:
            setattr(self.stats, counter, getattr(self.stats, counter) + 1)
            verdicts.append(Verdict(token, key, counter))
        return verdicts

    def _touch(self, port: Port) -> None:
        port.last_used = self.clock()
        if not port.busy and port.key in self.idle:
            self.idle.move_to_end(port.key)

    # --- what the master reports back -------------------------------------------------------

    def started(self, key: Key, pid: int) -> None:
        """Start(key, pid) was carried out: the process has the port's socket."""
        if self._port(pid, key) is not None:
            self.stats.servers_started += 1
            self.processes[pid].had_ports = True

    def start_failed(self, key: Key, pid: int, why: str) -> list[Action]:
        """Start(key, pid) could not be carried out; `why` is one of START_FAILURES."""
        if why in START_FAILURES:
            setattr(self.stats, why, getattr(self.stats, why) + 1)
        port = self._port(pid, key)
        if port is None:
            return []
        return self._forget(port, retire_empty=False)  # the process itself is fine

    def forked(self, pid: int, fork: Fork | None = None) -> list[Action]:
        """A new server process `pid` is up (a spare when `fork` is None); the actions for the
        attempts that waited on it."""
        self.processes[pid] = Process(pid)
        self._update_room(self.processes[pid])
        if fork is not None:
            self._forking -= 1
        if fork is None:
            self.stats.spares_forked += 1
            return []
        if pid not in self._room:  # cannot happen with sane limits; never fork in a loop
            return self._refuse("refused_draining", fork.key, fork.tokens)
        return self._decide(fork.key, fork.tokens, admitted=True)

    def fork_failed(self, fork: Fork | None = None) -> list[Action]:
        self.stats.fork_failures += 1
        if fork is None:
            return []
        self._forking -= 1
        return self._refuse("refused_draining", fork.key, fork.tokens)

    def spares_wanted(self) -> int:
        """Spare processes to fork now (off the packet's path) to keep SPARE_PROCESSES ready
        (SPARES_WHILE_SERVING_HAS_ROOM while a serving process has room for another port, none
        while it has SPARE_HEADROOM)."""
        return self.spares()[1]

    def spares(self) -> tuple[int, int]:
        """(spares ready, spares to fork now): see spares_wanted. None ready while some are
        wanted means the next fork must not wait for an idle moment (a sweep may leave none):
        the serving process is down to SPARE_HEADROOM; once full, a port would wait for a fork."""
        if not self.running:
            return 0, 0
        spares = 0
        serving_room = serving_headroom = False
        for pid, process in self.processes.items():
            if process.retired:
                continue
            if not process.had_ports:
                spares += 1
            elif pid in self._room:
                serving_room = True
                serving_headroom = serving_headroom or self._room_for(process) >= SPARE_HEADROOM
        wanted = self.limits.spare_processes
        if serving_headroom:
            wanted = 0
        elif serving_room or (spares and self.limits.ports_per_process >= SPARE_HEADROOM):
            # (a spare there is will have the headroom once it serves: it is enough)
            wanted = min(wanted, SPARES_WHILE_SERVING_HAS_ROOM)
        room = self.limits.max_processes - self._alive()
        return spares, max(0, min(wanted - spares, room))

    # --- messages from a server process ------------------------------------------------------

    def busy(self, pid: int, *keys: Key) -> None:
        """`keys` of process `pid` went busy (one report)."""
        self._used(pid, keys, True)

    def idle_again(self, pid: int, *keys: Key) -> None:
        """`keys` of process `pid` are idle again, in their order of use."""
        self._used(pid, keys, False)

    def _used(self, pid: int, keys: tuple[Key, ...], busy: bool) -> None:
        """One report's keys: one lookup of the process and one clock reading for all (a
        sweep's report names every port of the process: per port, they were half of the
        table's cost per key)."""
        process = self.processes.get(pid)
        if process is None:
            return
        now, ports, idle = self.clock(), process.ports, self.idle
        for key in keys:
            port = ports.get(key)
            if port is None:
                continue
            port.busy = busy
            port.last_used = now
            if busy:
                idle.pop(key, None)
            elif not port.stopping:
                idle[key] = port
                idle.move_to_end(key)

    def expire(self, pid: int, key: Key) -> list[Action]:
        """The port was idle for the listen timeout: stop it (unless it is busy again)."""
        port = self._port(pid, key)
        if port is None or port.busy or port.stopping:
            return []
        self.stats.servers_expired += 1
        return self._stop(port)

    def released(self, pid: int, key: Key) -> list[Action]:
        """The process closed the port's socket: the port is free (a held attempt starts it)."""
        port = self._port(pid, key)
        if port is None:
            return []
        return self._forget(port)

    def load(self, pid: int, descriptors: int) -> None:
        """The process holds this many connection descriptors now."""
        process = self.processes.get(pid)
        if process is not None:
            process.descriptors = max(0, descriptors)
            self._update_room(process)

    def message(self, pid: int, message: control.Message) -> list[Action]:
        """A message from process `pid` about its ports (control.py); Stats and the master's own
        messages are none of the table's."""
        if isinstance(message, control.Busy):
            self.busy(pid, *message.keys)
        elif isinstance(message, control.Idle):
            self.idle_again(pid, *message.keys)
        elif isinstance(message, control.Expire):
            return self.expire(pid, message.key)
        elif isinstance(message, control.Released):
            return self.released(pid, message.key)
        elif isinstance(message, control.Load):
            self.load(pid, message.descriptors)
        return []

    def ports_of(self, pid: int) -> list[Key]:
        process = self.processes.get(pid)
        return list(process.ports) if process is not None else []

    def gone(self, pid: int) -> list[Action]:
        """The process exited (or its channel closed): every port it had is free."""
        process = self.processes.get(pid)
        if process is None:
            return []
        process.retired = True
        self._update_room(process)
        actions: list[Action] = []
        for port in list(process.ports.values()):
            actions += self._forget(port)
        del self.processes[pid]
        return actions

    # --- the clock, reload, shutdown -------------------------------------------------------

    def tick(self) -> list[Action]:
        """Held attempts past their deadline get their verdict (refused_pending)."""
        if not self.pending:
            return []
        now = self.clock()
        actions: list[Action] = []
        for key in list(self.pending):
            waiting = self.pending[key]
            late = [held for held in waiting if held.deadline <= now]
            if not late:
                continue
            self.pending[key] = [held for held in waiting if held.deadline > now]
            if not self.pending[key]:
                del self.pending[key]
            self.pending_count -= len(late)
            actions += self._refuse("refused_pending", key, [held.token for held in late])
        return actions

    def reload(self, limits: Limits) -> list[Action]:
        """New configuration: every serving port is stopped and every process retired (they hold
        the old configuration); new ports go to new processes."""
        self.limits = limits
        self.bucket = TokenBucket(limits.max_server_rate, self.clock)
        actions: list[Action] = []
        for port in list(self.serving.values()):
            actions += self._stop(port, "reload")
        for process in self.processes.values():
            if not process.retired:
                actions += self._retire(process)
        return actions

    def shutdown(self) -> list[Action]:
        """Every held attempt gets its verdict; nothing starts any more."""
        self.running = False
        actions: list[Action] = []
        for key, waiting in self.pending.items():
            actions += [Verdict(held.token, key) for held in waiting]
        self.pending.clear()
        self.pending_count = 0
        return actions

    # --- inside ------------------------------------------------------------------------------

    def _alive(self) -> int:
        """Server processes alive or being forked."""
        return len(self.processes) + self._forking

    def _port(self, pid: int, key: Key) -> Port | None:
        process = self.processes.get(pid)
        return process.ports.get(key) if process is not None else None

    def _stop(self, port: Port, why: str = "expired") -> list[Action]:
        if port.stopping:
            return []
        self._unserve(port)
        self.releasing[port.key] = port
        return [Stop(port.key, port.pid, why, port.started)]

    def _unserve(self, port: Port) -> None:
        """The port no longer counts as serving (told to stop, or let go)."""
        if port.stopping:
            return
        port.stopping = True
        process = self.processes[port.pid]
        process.serving -= 1
        if self.serving.get(port.key) is port:
            del self.serving[port.key]
        if self.idle.get(port.key) is port:
            del self.idle[port.key]
        self._update_room(process)

    def _forget(self, port: Port, *, retire_empty: bool = True) -> list[Action]:
        """The port is free: drop it, retire its process if that was its last port, and start
        the port again for the attempts held meanwhile."""
        self._unserve(port)
        if self.releasing.get(port.key) is port:
            del self.releasing[port.key]
        process = self.processes[port.pid]
        del process.ports[port.key]
        actions: list[Action] = []
        if not process.ports and not process.retired and retire_empty:
            actions += self._retire(process)
        waiting = self.pending.pop(port.key, [])
        self.pending_count -= len(waiting)
        if waiting:
            tokens = tuple(held.token for held in waiting)
            if self.running:
                actions += self._decide(port.key, tokens)
            else:
                actions += [Verdict(token, port.key) for token in tokens]
        return actions

    def _retire(self, process: Process) -> list[Action]:
        process.retired = True
        self._update_room(process)
        return [Retire(process.pid)]

    def _has_room(self, process: Process) -> bool:
        return not process.retired and self._room_for(process) >= 1

    def _room_for(self, process: Process) -> int:
        """How many more ports `process` may take (ports_per_process, descriptors)."""
        used = process.descriptors + len(process.ports)
        by_fds = (self.limits.fd_budget - used) // max(1, self.limits.port_fds)
        return min(self.limits.ports_per_process - process.serving, by_fds)

    def _update_room(self, process: Process) -> None:
        if self._has_room(process) and process.pid in self.processes:
            self._room.add(process.pid)
        else:
            self._room.discard(process.pid)
            if self._target == process.pid:
                self._target = None

    def _with_room(self) -> int | None:
        """The process the next port goes to: the last one while it has room, else the fullest
        with room (so that the others empty and exit, and spares stay spare)."""
        if self._target is not None and self._target in self._room:
            return self._target
        best: Process | None = None
        for pid in self._room:
            process = self.processes[pid]
            if best is None or process.serving > best.serving:
                best = process
        self._target = best.pid if best is not None else None
        return self._target
