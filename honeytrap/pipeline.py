"""Runs finished attacks through the attack hooks, off the connection path.

Each attack becomes a job: the list of (attack, hook, plugin) steps in order. Worker threads take
jobs from a queue. A hook that raises is logged and counted; the job goes on with the next step.
A hook that hangs past `plugin_timeout` is abandoned by the watchdog: its thread is written off,
the job goes on on a fresh worker from the next step, so a stuck plugin stalls nothing and the
later plugins (the savers and loggers) still see the attack.

Virtual attacks returned by a hook are spliced into the job right after the current step, with
all the attack hooks, so they are finished before their parent goes on (honeytrap(8): downloads
found in decoded data are attached to the original attack before it is saved).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from honeytrap.attack import Attack
from honeytrap.plugin import ATTACK_HOOKS, Registry

log = logging.getLogger("honeytrap.pipeline")

# Worker threads: at most this many hooks run at once. Only one takes jobs while hooks are
# quick (threads contending for the GIL cost more than they give: measured +60 us per attack
# with 4 busy workers); a hook running longer than BOOST_AFTER (a download, a database write)
# lets one more worker go on, so slow hooks do not hold up the others.
DEFAULT_WORKERS = 16
BOOST_AFTER = 0.05
# A hook call running longer than this is abandoned (downloaders cap their own time well below).
DEFAULT_PLUGIN_TIMEOUT = 300.0
# Virtual attacks nest (a decoded payload decoded again) at most this deep, and one attack
# yields at most this many in all: attacker-controlled data must not make unbounded work.
MAX_VIRTUAL_DEPTH = 3
MAX_VIRTUAL_PER_ATTACK = 32
# Abandoned (hung) threads tolerated before we stop replacing them and say so loudly.
MAX_ABANDONED_WORKERS = 32


@dataclass
class Step:
    attack: Attack
    hook: str
    plugin: str
    call: Callable[[Attack], Iterable[Attack] | None]
    depth: int


@dataclass
class Job:
    steps: deque[Step]
    virtuals: int = 0
    # Called once, from the worker thread, when every step ran (the recorder acknowledges the
    # attack to its server then: recorder.py).
    on_done: Callable[[], None] | None = None


@dataclass
class Counters:
    attacks: int = 0
    finished: int = 0
    plugin_failures: int = 0
    plugin_timeouts: int = 0
    virtual_refused: int = 0


@dataclass
class _Worker:
    thread: threading.Thread | None = None
    # (step, job, started) while a hook runs: rebound by the worker (one atomic store), read by
    # the watchdog. Cleared, and `abandoned` checked, under `lock` after each hook returns.
    current: tuple[Step, Job, float] | None = None
    abandoned: bool = False
    boosted: bool = False  # its job is slow: the watchdog let one more worker run meanwhile
    lock: threading.Lock = field(default_factory=threading.Lock)


class Pipeline:
    def __init__(
        self,
        registry: Registry,
        *,
        workers: int = DEFAULT_WORKERS,
        plugin_timeout: float = DEFAULT_PLUGIN_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.plugin_timeout = plugin_timeout
        self.counters = Counters()
        self._clock = clock
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._workers: list[_Worker] = []
        self._abandoned = 0
        self._pending = 0
        self._idle = threading.Condition()
        self._stopping = False
        # Workers allowed to take jobs at once: one, plus one per slow job (check_hung).
        self._slots = threading.Semaphore(1)
        for _ in range(workers):
            self._spawn()
        self._watchdog = threading.Thread(target=self._watch, name="pipeline-watchdog", daemon=True)
        self._watchdog.start()

    def submit(self, attack: Attack, on_done: Callable[[], None] | None = None) -> None:
        """Queue a finished attack. Never blocks the caller. `on_done` is called (from a worker
        thread) once every hook has run for it and for the virtual attacks it produced."""
        if self._stopping:
            # No worker would ever take it, and drain() would wait for it forever.
            log.error("pipeline closed: attack %s not processed", attack.id)
            return
        job = Job(deque(self._steps(attack, 0)), on_done=on_done)
        with self._idle:
            self._pending += 1
            self.counters.attacks += 1
        self._queue.put(job)

    def pending(self) -> int:
        with self._idle:
            return self._pending

    def drain(self, timeout: float) -> bool:
        """Wait until every submitted attack went through every hook, or timeout passes."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self, timeout: float) -> bool:
        """Drain, then stop the workers. True if nothing was left unfinished."""
        done = self.drain(timeout)
        self._stopping = True
        for _ in self._workers:
            self._queue.put(None)
        if not done:
            log.error("pipeline closed with %d attacks unfinished", self.pending())
        return done

    def _steps(self, attack: Attack, depth: int) -> list[Step]:
        hooks = self.registry.hooks
        return [
            Step(attack, hook, name, call, depth)
            for hook in ATTACK_HOOKS
            for name, call in hooks[hook]
        ]

    def _spawn(self) -> None:
        worker = _Worker()
        thread = threading.Thread(target=self._work, args=(worker,), name="pipeline", daemon=True)
        worker.thread = thread
        self._workers.append(worker)
        thread.start()

    def _work(self, worker: _Worker) -> None:
        """Take jobs while holding a slot. A slot is kept from job to job (no hand-over on the
        quick path); after a slow job, for which one more slot was let in, this worker gives its
        slot up and waits for one again, so the number running falls back."""
        self._slots.acquire()
        while True:
            job = self._queue.get()
            if job is None:
                self._slots.release()
                return
            self._run(worker, job)
            with worker.lock:
                if worker.abandoned:
                    return  # its slot went to the worker that took the job over
                boosted, worker.boosted = worker.boosted, False
            if boosted:
                self._slots.acquire()

    def _run(self, worker: _Worker, job: Job) -> None:
        while job.steps:
            step = job.steps.popleft()
            worker.current = (step, job, self._clock())
            result = self._call(step)
            with worker.lock:
                worker.current = None
                if worker.abandoned:
                    # The watchdog gave this job to another worker; this thread retires.
                    return
            if result:
                self._splice(job, step, result)
        self._finished(job)

    def _call(self, step: Step) -> list[Attack]:
        try:
            produced = step.call(step.attack)
            return [a for a in produced or () if isinstance(a, Attack)]
        except BaseException:
            # BaseException too: a plugin's sys.exit() would otherwise end this worker thread
            # quietly, and its job (the attack) would never finish.
            with self._idle:
                self.counters.plugin_failures += 1
            log.exception(
                "plugin %s failed in %s for attack %s", step.plugin, step.hook, step.attack.id
            )
            return []

    def _splice(self, job: Job, step: Step, virtuals: list[Attack]) -> None:
        extra: list[Step] = []
        for virtual in virtuals:
            if step.depth + 1 > MAX_VIRTUAL_DEPTH or job.virtuals >= MAX_VIRTUAL_PER_ATTACK:
                with self._idle:
                    self.counters.virtual_refused += 1
                log.warning(
                    "attack %s: virtual attack from %s dropped (limit of %d deep, %d in all)",
                    step.attack.root.id, step.plugin, MAX_VIRTUAL_DEPTH, MAX_VIRTUAL_PER_ATTACK,
                )
                continue
            job.virtuals += 1
            extra.extend(self._steps(virtual, step.depth + 1))
        job.steps.extendleft(reversed(extra))

    def _finished(self, job: Job) -> None:
        if job.on_done is not None:
            try:
                job.on_done()
            except Exception:
                log.exception("attack completion callback failed")
        with self._idle:
            self._pending -= 1
            self.counters.finished += 1
            self._idle.notify_all()

    def _watch(self) -> None:
        interval = min(BOOST_AFTER, self.plugin_timeout / 4)
        while not self._stopping:
            time.sleep(interval)
            self.check_hung()

    def check_hung(self) -> None:
        """Let one more worker run beside each slow hook; abandon workers stuck in one hook
        past the timeout (their jobs go on elsewhere)."""
        now = self._clock()
        for worker in list(self._workers):
            with worker.lock:
                current = worker.current
                if current is None or worker.abandoned:
                    continue
                step, job, started = current
                if not worker.boosted and now - started >= min(BOOST_AFTER, self.plugin_timeout):
                    worker.boosted = True
                    self._slots.release()
                if now - started < self.plugin_timeout:
                    continue
                worker.abandoned = True
            with self._idle:
                self.counters.plugin_timeouts += 1
            self._workers.remove(worker)
            self._abandoned += 1
            log.error(
                "plugin %s hung in %s for attack %s for over %.0f s: abandoned, going on",
                step.plugin, step.hook, step.attack.id, self.plugin_timeout,
            )
            if self._abandoned <= MAX_ABANDONED_WORKERS:
                self._spawn()
            else:
                log.critical("%d hung plugin threads: not replacing more", self._abandoned)
            self._queue.put(job)

