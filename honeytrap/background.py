"""The download pool: slow analysis (downloads) off the recording path, in bounded threads.

An attack hook hands slow work to the pool by returning `Task`s (beside any virtual attacks):
the downloader plugins return one per URL they found. The pipeline admits each task at once
(`admit`: the budgets below, checked while the attack is still being recorded, so a refusal is
on the attack's record) and starts the admitted tasks of an attack only once every hook has
recorded it (`start`): recording never waits for a download, and the attack's record never
depends on how fast one was. When the last task of an attack ends, the pool calls back; the
pipeline then runs the FOLLOWUP hooks on the attack (pipeline.py), which record what the tasks
found.

Bounds (config keys, man/honeytrap.8):
- `download_workers` threads run tasks; the rest wait in order;
- `download_queue` tasks are admitted at most at once (waiting or running); past it new tasks
  are refused ("download pool full") and counted;
- `download_per_attack` tasks per attack (its virtual attacks' included) and
  `download_per_source` tasks at once per attacker address: one attacker's hundred URLs, or
  one source's flood of attacks, cannot take the pool from everyone else.

Worker threads start with the work (none while no download was asked for), up to
`download_workers`, and then stay. A task running past `plugin_timeout` is abandoned:
`cancel()` is called (a download shuts its sockets: download/deadline.py), its attack's count
is settled, and its thread is written off; a fresh thread takes its place, as long as no more
than MAX_ABANDONED are written off at once. A written-off thread whose task returns after all
exits, and a worker held back is started: the pool recovers by itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from honeytrap.attack import Attack

log = logging.getLogger("honeytrap.background")

# Threads running downloads. A download mostly waits on the network; 16 keep a sensor's usual
# handful of droppers moving while bounding threads (and sockets) held by tarpits.
DEFAULT_WORKERS = 16
# Tasks admitted at once (waiting or running): bounds the memory and the delay of the queue.
# At the downloaders' 60 s cap and 16 workers, the last of 256 starts within about 16 minutes.
DEFAULT_QUEUE = 256
# Tasks per attack (with its virtual attacks): the download policy's own per-attack quota
# (download.policy.DEFAULT_MAX_PER_ATTACK) is 8 network downloads; tasks past it would only
# be refused there.
DEFAULT_PER_ATTACK = 8
# Tasks at once per attacker address: a quarter of the queue, so four sources can fill it and
# no single one can.
DEFAULT_PER_SOURCE = 64
# Written-off (abandoned, still running) threads tolerated at once; past it no replacement is
# started until one of them returns (each holds a thread; a flood of hung tasks must not grow
# the process without bound).
MAX_ABANDONED = 16
# The watchdog looks for tasks past their time this often.
WATCH_INTERVAL = 0.5
# At close, threads (their tasks cancelled) get at least this long to end.
JOIN_SECONDS = 5.0


def _nothing(*_args: object) -> None:
    pass


@dataclass
class Task:
    """Slow work handed to the pool by an attack hook.

    `run()` does it (a download: records its outcome on the attack itself); `refused(reason)`
    is called instead when the pool has no room (the downloader records a refused try);
    `cancel()` is called from the watchdog when the task is abandoned (close its sockets)."""

    label: str  # for the log: plugin and what it fetches (attacker data: logged quoted)
    run: Callable[[], None]
    refused: Callable[[str], None] = _nothing
    cancel: Callable[[], None] = _nothing


@dataclass(frozen=True)
class Limits:
    workers: int = DEFAULT_WORKERS
    queue: int = DEFAULT_QUEUE
    per_attack: int = DEFAULT_PER_ATTACK
    per_source: int = DEFAULT_PER_SOURCE


@dataclass
class PoolCounters:
    tasks: int = 0  # tasks run to their end
    refused: int = 0  # tasks refused for a full pool or a spent budget
    abandoned: int = 0  # tasks abandoned past plugin_timeout
    dropped: int = 0  # tasks still waiting when the pool closed


@dataclass
class Group:
    """The admitted tasks of one attack; `done` once the last one ended."""

    root: Attack
    source: str
    done: Callable[[Attack], None]
    tasks: list[Task] = field(default_factory=list)
    left: int = 0


@dataclass
class _Worker:
    thread: threading.Thread | None = None
    current: tuple[Group, Task, float] | None = None
    abandoned: bool = False


class DownloadPool:
    def __init__(
        self,
        limits: Limits,
        *,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
        watch: bool = True,
    ) -> None:
        self.limits = limits
        self.timeout = timeout
        self.counters = PoolCounters()
        self._clock = clock
        self._cond = threading.Condition()
        self._queue: deque[tuple[Group, Task]] = deque()
        self._admitted = 0  # admitted tasks not yet ended (reserved, waiting or running)
        self._per_source: Counter[str] = Counter()
        self._workers: list[_Worker] = []
        self._threads: list[threading.Thread] = []  # every thread started, until joined
        self._abandoned = 0  # written-off threads still running
        self._idle = 0  # workers waiting for a task
        self._closing = False
        self._watching = watch  # the watchdog thread starts with the first worker

    # -- the pipeline's side ----------------------------------------------------------------

    def group(self, root: Attack, done: Callable[[Attack], None]) -> Group:
        return Group(root, root.attack_connection.remote_addr, done)

    def admit(self, group: Group, task: Task) -> bool:
        """Reserve room for `task` in `group`, or refuse it (task.refused is called, counted)."""
        with self._cond:
            why = self._refusal(group)
            if why is None:
                self._admitted += 1
                self._per_source[group.source] += 1
                group.tasks.append(task)
                return True
            self.counters.refused += 1
        log.warning("attack %s: %s refused: %s", group.root.id, task.label, why)
        try:
            task.refused(why)
        except Exception:
            log.exception("attack %s: %s: recording the refusal failed", group.root.id,
                          task.label)
        return False

    def _refusal(self, group: Group) -> str | None:
        if self._closing:
            return "the recorder is stopping"
        if len(group.tasks) >= self.limits.per_attack:
            return f"at most {self.limits.per_attack} downloads per attack in the download pool"
        if self._per_source[group.source] >= self.limits.per_source:
            return (f"at most {self.limits.per_source} downloads at once per source in the "
                    "download pool")
        if self._admitted >= self.limits.queue:
            return f"download pool full ({self.limits.queue} downloads)"
        return None

    def start(self, group: Group) -> None:
        """Queue the group's admitted tasks (the attack is recorded); `group.done` is called
        once they all ended. A group without tasks is done at once."""
        if not group.tasks:
            return
        with self._cond:
            group.left = len(group.tasks)
            closed = self._closing
            if closed:  # admitted before the pool closed; no worker will take them now
                self.counters.dropped += len(group.tasks)
            else:
                for task in group.tasks:
                    self._queue.append((group, task))
                self._top_up()
                self._cond.notify(len(group.tasks))
        if closed:
            log.error("attack %s: %d downloads not started: the download pool is closed",
                      group.root.id, len(group.tasks))
            for _task in group.tasks:
                self._settle(group)

    def pending(self) -> int:
        """Tasks admitted and not yet ended."""
        with self._cond:
            return self._admitted

    def threads(self) -> int:
        """Threads of the pool alive: workers and written-off ones still running."""
        with self._cond:
            return sum(thread.is_alive() for thread in self._threads)

    def drain(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._admitted:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout: float) -> bool:
        """Let the admitted tasks end for up to `timeout`; then cancel those running, drop
        those waiting (counted), and stop the workers. True if nothing was cut short."""
        end = time.monotonic() + timeout
        done = self.drain(timeout)
        with self._cond:
            self._closing = True
            dropped = list(self._queue)
            self._queue.clear()
            running = [w.current for w in self._workers if w.current is not None]
            self.counters.dropped += len(dropped)
            self._cond.notify_all()
        if dropped:
            log.error("download pool closed: %d downloads not started", len(dropped))
        for _group, task, _started in running:
            task.cancel()
        for group, _task in dropped:
            self._settle(group)
        # Every thread ends now (the running tasks were cancelled): join them, bounded.
        end = max(end, time.monotonic() + JOIN_SECONDS)
        with self._cond:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, end - time.monotonic()))
        return done

    # -- workers --------------------------------------------------------------------------

    def _top_up(self) -> None:
        """Start the workers the queue needs (under the lock): threads come with the work, up
        to `workers`, and never past `workers` + MAX_ABANDONED with the written-off ones."""
        if self._closing:
            return
        room = min(self.limits.workers - len(self._workers),
                   self.limits.workers + MAX_ABANDONED - len(self._workers) - self._abandoned)
        for _ in range(min(room, len(self._queue) - self._idle)):
            self._spawn()
        if room <= 0 and self._queue and not self._workers:
            log.critical("%d abandoned download threads still running: no new one until one "
                         "returns", self._abandoned)

    def _spawn(self) -> None:
        if self._watching:
            self._watching = False
            threading.Thread(target=self._watch, name="download-watchdog", daemon=True).start()
        worker = _Worker()
        worker.thread = threading.Thread(target=self._work, args=(worker,), name="download",
                                         daemon=True)
        self._workers.append(worker)
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(worker.thread)
        worker.thread.start()

    def _work(self, worker: _Worker) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._idle += 1
                    self._cond.wait()
                    self._idle -= 1
                if not self._queue:
                    self._workers.remove(worker)
                    return
                group, task = self._queue.popleft()
                worker.current = (group, task, self._clock())
            self._run(group, task)
            with self._cond:
                worker.current = None
                if worker.abandoned:
                    # The watchdog settled this task and replaced this thread: retire, and
                    # start a worker the cap on written-off threads may have held back.
                    self._abandoned -= 1
                    self._top_up()
                    return
                self.counters.tasks += 1
            self._settle(group)

    def _run(self, group: Group, task: Task) -> None:
        try:
            task.run()
        except BaseException:
            # BaseException too: a sys.exit() in a task must not end the thread quietly.
            log.exception("attack %s: %s failed", group.root.id, task.label)

    def _settle(self, group: Group) -> None:
        """One task of `group` ended (ran, abandoned or dropped)."""
        with self._cond:
            self._admitted -= 1
            self._per_source[group.source] -= 1
            if not self._per_source[group.source]:
                del self._per_source[group.source]
            group.left -= 1
            last = group.left == 0
            self._cond.notify_all()
        if last:
            try:
                group.done(group.root)
            except Exception:
                log.exception("attack %s: download follow-up failed", group.root.id)

    # -- the watchdog ---------------------------------------------------------------------

    def _watch(self) -> None:
        while True:
            with self._cond:
                if self._closing:
                    return
            time.sleep(WATCH_INTERVAL)
            self.check_hung()

    def check_hung(self) -> None:
        """Abandon tasks running past the timeout: cancel them, settle their groups, and
        replace their threads (up to MAX_ABANDONED written off at once)."""
        now = self._clock()
        hung: list[tuple[Group, Task]] = []
        with self._cond:
            for worker in list(self._workers):
                if worker.current is None or now - worker.current[2] < self.timeout:
                    continue
                group, task, _started = worker.current
                worker.abandoned = True
                self._workers.remove(worker)
                self._abandoned += 1
                self.counters.abandoned += 1
                hung.append((group, task))
            self._top_up()
        for group, task in hung:
            log.error("attack %s: %s ran over %.0f s: abandoned", group.root.id, task.label,
                      self.timeout)
            try:
                task.cancel()
            except Exception:
                log.exception("attack %s: cancelling %s failed", group.root.id, task.label)
            self._settle(group)
