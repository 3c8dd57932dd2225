"""Runs finished attacks through the attack hooks, off the connection path.

Each attack becomes a job: the list of (attack, hook, plugin) steps in order. Worker threads take
jobs from a queue. A hook that raises is logged and counted; the job goes on with the next step.
A hook that hangs past `plugin_timeout` is abandoned by the watchdog: its thread is written off,
the job goes on on a fresh worker from the next step, so a stuck plugin stalls nothing and the
later plugins (the savers and loggers) still see the attack.

Virtual attacks returned by a hook are spliced into the job right after the current step, with
all the attack hooks, so they are finished before their parent goes on.

Slow work (downloads) never holds up recording: a hook returns it as `background.Task`s, which
are admitted to the download pool at once (a refusal is on the record) and started once every
hook has recorded the attack. When the last of an attack's tasks ended, and they added
downloads or download tries to it, the attack goes through the FOLLOWUP hooks (a follow-up
job on these workers): the outputs record what was found later (logJSON a follow-up line,
SaveFile the samples, the databases and hpfeeds the downloads; docs/plugins.md). FOLLOWUP
hooks run in the order of their plugins' first attack hook (analyzers, then savers, then
loggers), then in configuration order.

A worker takes the jobs queued at once together (a batch, at most MAX_BATCH) and runs them one
after another in a write batch (writebatch.py): the line logs append the batch's lines in one
write at its end, and only then are its attacks finished (acknowledged). The outputs' batch
hooks (hooks.SaveDataBatch, PostProcBatch) that no per-attack hook follows are called once for
the batch's attacks after their per-attack steps (a Tail; Registry.attack_order says which). A
hook of the batch that turns slow does not hold the others: the watchdog writes and finishes
the jobs done before it (through the batch hooks first) and queues the ones not started again
(watchdog.py).

A batch's write to one output that hangs (a stalled NFS mount, a FIFO nobody reads) is watched
like a hook: past BOOST_AFTER one more worker may run; past `plugin_timeout` the output is marked
stalled (logged once with its name, counted in `write_timeouts`), the worker is written off and
its batch goes on on a fresh worker: the other outputs are written and the attacks finished.
While an output is stalled its later records wait in memory and nobody calls its write; its
hung write's thread writes them when it returns (stalls.py). The watchdog never writes itself
(a split's records go to a worker as a `Flush`), so a hung output cannot stall the watchdog.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from honeytrap import background, writebatch
from honeytrap.attack import Attack
from honeytrap.background import DownloadPool, Task
from honeytrap.config import Config
from honeytrap.pipelinejobs import NO_STEPS, BatchStep, Counters, Flush, Job, Step, Tail, Worker
from honeytrap.plugin import ATTACK_HOOKS, BATCH_HOOKS, FOLLOWUP_HOOK, Registry
from honeytrap.stalls import StalledOutputs
from honeytrap.watchdog import Watchdog

log = logging.getLogger("honeytrap.pipeline")

# Worker threads: at most this many hooks run at once. Only one takes jobs while hooks are
# quick (threads contending for the GIL cost more than they give: measured +60 us per attack
# with 4 busy workers); a hook running longer than watchdog.BOOST_AFTER (a download, a database
# write) lets one more worker go on, so slow hooks do not hold up the others. One starts with the
# pipeline, the others when a slow hook lets one more run and none waits (15 idle threads were
# ~0.4 MiB of the recorder's PSS at rest: stacks, malloc arenas, pages copied from the master).
DEFAULT_WORKERS = 16
# A worker that waited this long (seconds) for a slot ends (never the last); a slow hook or write
# starts another. Workers started for a disk's stall (SaveFile's files held back 0.1-0.4 s, a
# few times a minute under load) stayed for good, each with its glibc tcache (freed blocks only
# it reuses), stack pages and thread state: glibc's bytes in use grew ~2.5 KiB/s at 4,000
# attacks/s (bench/recordermemory.py; 0.15 with the tcache off, Python's allocations flat). 5 s
# is past a stall's slow writes; a thread started again costs ~0.12 ms of CPU.
WORKER_IDLE = 5.0
# Jobs a worker takes from the queue at once (those already queued, it never waits for more):
# their lines are appended in one write per log and they are finished together. Bounded so
# the first of a long queue is not held back long (a few ms of hooks).
MAX_BATCH = 128
# A hook call running longer than this is abandoned (downloaders cap their own time well below).
DEFAULT_PLUGIN_TIMEOUT = 300.0
# Virtual attacks nest (a decoded payload decoded again) at most this deep, and one attack
# yields at most this many in all: attacker-controlled data must not make unbounded work.
MAX_VIRTUAL_DEPTH = 3
MAX_VIRTUAL_PER_ATTACK = 32
# Abandoned (hung) threads tolerated before we stop replacing them and say so loudly.
MAX_ABANDONED_WORKERS = 32
# At close, downloads cancelled (sockets shut) get this long to end and their follow-ups this
# long to be recorded, even when the drain time is spent.
CANCEL_GRACE = 2.0
# An output's batch write taking longer than this (seconds; a batch's usually take a few ms) is
# counted (slow_writes) and logged, at most every SLOW_WRITE_LOG_INTERVAL, with its output and
# time: a disk that holds writes back (ext4's journal full, on a directory of hundreds of
# thousands of attack files: bench/README.md) shows as itself, not only as a recorder behind.
SLOW_WRITE = 0.1
SLOW_WRITE_LOG_INTERVAL = 10.0


DEFAULT_DOWNLOAD_LIMITS = background.Limits()


def download_limits(config: Config) -> background.Limits:
    return background.Limits(
        workers=config.download_workers,
        queue=config.download_queue,
        per_attack=config.download_per_attack,
        per_source=config.download_per_source,
    )


class Pipeline:
    def __init__(
        self,
        registry: Registry,
        *,
        workers: int = DEFAULT_WORKERS,
        plugin_timeout: float = DEFAULT_PLUGIN_TIMEOUT,
        downloads: background.Limits = DEFAULT_DOWNLOAD_LIMITS,
        clock: Callable[[], float] = time.monotonic,
        on_finished: Callable[[int], None] | None = None,
        on_tokens: Callable[[list[object]], None] | None = None,
    ) -> None:
        """`on_finished(pending)` is called (from a worker thread) after each batch of jobs
        finished (their `on_done` called first), with the number of jobs pending then: the
        recorder sends its acknowledgements once per batch, or when the pipeline is idle.
        `on_tokens(tokens)` is called just before it with the tokens (submit_tokens) of the
        batch's jobs that had one, in the order they finished."""
        self.registry = registry
        self.on_finished = on_finished
        self.on_tokens = on_tokens
        # The attack hooks in the order they run, listed once (the registry is complete before
        # a pipeline is made): every attack's steps are made from it; the batch hooks at the
        # end, called once per batch (_tail_steps: Registry.attack_order).
        each, batched = registry.attack_order()
        self._attack_hooks = each
        self._tail_steps = tuple(BatchStep(hook, name, call) for hook, name, call in batched)
        # A submitted attack's steps, shared by every job (their attack is the job's): no Step
        # made per hook per attack; a virtual attack's steps are made for it (_steps). The
        # next step last (Job.steps), so a job's steps are a copy of this list.
        self._root_steps = [Step(None, hook, name, call, 0)
                            for hook, name, call in reversed(self._attack_hooks)]
        self.plugin_timeout = plugin_timeout
        self.counters = Counters()
        self._clock = clock
        self._queue: queue.SimpleQueue[Job | list[Job] | Flush | None] = queue.SimpleQueue()
        self._workers: list[Worker] = []
        self._max_workers = workers
        self._waiting = 0  # workers waiting for a slot: one takes a slot let go for a slow hook
        self._waiting_lock = threading.Lock()
        self._abandoned = 0
        self._pending = 0
        self._idle = threading.Condition()
        self._slow_logged = (-SLOW_WRITE_LOG_INTERVAL, 0)  # (when, slow_writes then)
        self._stalls = StalledOutputs(self.counters, self._idle, clock, self._write_failed)
        self._stopping = False
        # Workers allowed to take jobs at once: one, plus one per slow job (check_hung).
        self._slots = threading.Semaphore(1)
        if workers > 0:
            self._spawn()  # the others when a slow hook wants them (_more_workers)
        self.downloads = DownloadPool(downloads, timeout=plugin_timeout, clock=clock)
        self._watchdog = Watchdog(self)
        threading.Thread(target=self._watchdog.run, name="pipeline-watchdog", daemon=True).start()

    def submit(self, attack: Attack, on_done: Callable[[], None] | None = None) -> None:
        """Queue a finished attack. Never blocks the caller. `on_done` is called (from a worker
        thread) once every hook has run for it and for the virtual attacks it produced."""
        if self._stopping:
            # No worker would ever take it, and drain() would wait for it forever.
            log.error("pipeline closed: attack %s not processed", attack.id)
            return
        job = Job(self._root_steps[:], attack, on_done=on_done)
        with self._idle:
            self._pending += 1
            self.counters.attacks += 1
        self._queue.put(job)

    def submit_many(self, attacks: Sequence[tuple[Attack, Callable[[], None] | None]]) -> None:
        """submit() for several (attack, on_done) at once, in order, with one lock for all (the
        recorder submits the attacks of each read from a link together)."""
        if self._stopping:
            for attack, _on_done in attacks:
                log.error("pipeline closed: attack %s not processed", attack.id)
            return
        steps = self._root_steps
        self._put_jobs([Job(steps[:], attack, on_done) for attack, on_done in attacks])

    def submit_tokens(self, attacks: Sequence[tuple[Attack, object]]) -> None:
        """submit_many for a caller that takes its attacks' ends by the batch: each (attack,
        token) given, the token goes to `on_tokens` with the others of the batch the attack
        finished in (the recorder's acknowledgements: no callable made, nor called, per
        attack)."""
        if self._stopping:
            for attack, _token in attacks:
                log.error("pipeline closed: attack %s not processed", attack.id)
            return
        steps = self._root_steps
        if not steps:  # every hook a batch hook (the default outputs), or none: no list each
            self._put_jobs([Job(NO_STEPS, attack, None, token) for attack, token in attacks])
            return
        self._put_jobs([Job(steps[:], attack, None, token) for attack, token in attacks])

    def _put_jobs(self, jobs: list[Job]) -> None:
        """Count the jobs pending, then queue them by MAX_BATCH: one put (and at most one
        worker woken) per batch, not per job."""
        with self._idle:
            self._pending += len(jobs)
            self.counters.attacks += len(jobs)
        put = self._queue.put
        for start in range(0, len(jobs), MAX_BATCH):
            put(jobs[start:start + MAX_BATCH])

    def _followup(self, job: Job, root: Attack) -> None:
        """The attack's download tasks all ended (called from a pool thread): if they found
        anything, queue the attack for the FOLLOWUP hooks."""
        with root._lock:
            found = (len(root.downloads), len(root.download_tries))
        steps = self._followup_steps(root)
        if found == job.recorded or not steps or self._stopping:
            return
        with self._idle:
            self._pending += 1
            self.counters.followups += 1
        steps.reverse()  # the next step last (Job.steps)
        job = Job(steps, root)
        job.followup = True
        self._queue.put(job)

    def _followup_steps(self, attack: Attack) -> list[Step]:
        """The FOLLOWUP hooks, by their plugin's first attack hook, then configuration order."""
        hooks = self.registry.hooks
        rank: dict[str, int] = {}
        for index, hook in enumerate(ATTACK_HOOKS):
            batch_hook = BATCH_HOOKS.get(hook)
            for name, _call in [*hooks[hook], *(hooks[batch_hook] if batch_hook else ())]:
                rank.setdefault(name, index)
        ordered = sorted(hooks[FOLLOWUP_HOOK], key=lambda item: rank.get(item[0], 0))
        return [Step(attack, FOLLOWUP_HOOK, name, call, 0) for name, call in ordered]

    def stats(self) -> dict[str, int]:
        """The counters, the download pool's included, and the gauges: pending, threads."""
        pool = self.downloads.counters
        self.counters.downloads_run = pool.tasks
        self.counters.downloads_refused = pool.refused
        self.counters.downloads_abandoned = pool.abandoned
        self.counters.downloads_dropped = pool.dropped
        return {**self.counters.__dict__, "downloads_pending": self.downloads.pending(),
                "download_threads": self.downloads.threads()}

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
        """Drain (the attacks, then their downloads and follow-ups), then stop the workers.
        Downloads still running then are cancelled (their sockets shut). True if nothing was
        left unfinished."""
        deadline = time.monotonic() + timeout
        done = self.drain(timeout)
        done = self.downloads.close(max(0.0, deadline - time.monotonic())) and done
        # Cancelled downloads end at once (their sockets are shut); their follow-ups are queued.
        self.downloads.drain(max(CANCEL_GRACE, deadline - time.monotonic()))
        done = self.drain(max(CANCEL_GRACE, deadline - time.monotonic())) and done
        self._stopping = True
        for _ in self._workers:
            self._queue.put(None)
        self._stalls.drop()
        if not done:
            log.error("pipeline closed with %d attacks unfinished", self.pending())
        return done

    def _steps(self, attack: Attack, depth: int) -> list[Step]:
        return [Step(attack, hook, name, call, depth) for hook, name, call in self._attack_hooks]

    def check_hung(self) -> None:
        """The watchdog's look at the workers now (its thread does it every BOOST_AFTER)."""
        self._watchdog.check()

    def _boost(self) -> None:
        """(The watchdog) a hook or write of a worker runs long: let one more worker run."""
        self._slots.release()
        self._more_workers()

    def _replace(self, worker: Worker) -> None:
        """(The watchdog) a worker written off in a hung hook or write: a fresh one instead,
        up to MAX_ABANDONED_WORKERS."""
        self._workers.remove(worker)
        self._abandoned += 1
        if self._abandoned <= MAX_ABANDONED_WORKERS:
            self._spawn()
        else:
            log.critical("%d hung plugin threads: not replacing more", self._abandoned)

    def _more_workers(self) -> None:
        """A slot was let go for a slow hook: a worker for it, unless one waits already."""
        with self._waiting_lock:
            if self._waiting or self._stopping or len(self._workers) >= self._max_workers:
                return
        self._spawn()

    def _acquire_slot(self, worker: Worker) -> bool:
        """Wait for a slot. False if the worker waited WORKER_IDLE in vain and is not the last:
        it is out of the pipeline's workers, and its thread ends."""
        with self._waiting_lock:
            self._waiting += 1
        while not self._slots.acquire(timeout=WORKER_IDLE):
            # Decided under the lock _more_workers looks at `_waiting` under: a slot let go
            # before is taken here (a boost that saw this worker waiting started none), one let
            # go after finds it gone from `_waiting` and starts a worker.
            with self._waiting_lock:
                if self._slots.acquire(blocking=False):
                    break
                if len(self._workers) > 1 and worker in self._workers:
                    self._waiting -= 1
                    self._workers.remove(worker)
                    return False
        with self._waiting_lock:
            self._waiting -= 1
        return True

    def _spawn(self) -> None:
        worker = Worker()
        thread = threading.Thread(target=self._work, args=(worker,), name="pipeline", daemon=True)
        worker.thread = thread
        self._workers.append(worker)
        thread.start()

    def _work(self, worker: Worker) -> None:
        """Take jobs while holding a slot. A slot is kept from job to job (no hand-over on the
        quick path); after a slow job, for which one more slot was let in, this worker gives its
        slot up and waits for one again, so the number running falls back."""
        if not self._acquire_slot(worker):
            return
        stop = False
        while not stop:
            item = self._queue.get()
            if item is None:
                break
            jobs: list[Job] = []
            adopted: list[Flush] = []
            while True:
                if type(item) is list:  # submitted together (_put_jobs)
                    jobs += item
                elif isinstance(item, Flush):
                    if item.tail is not None:  # batch hooks to call first: on its own
                        if not self._run_tail_pass(worker, item):
                            return
                    else:
                        adopted.append(item)
                else:
                    assert isinstance(item, Job)
                    jobs.append(item)
                if len(jobs) >= MAX_BATCH:  # (under twice that: a list is at most MAX_BATCH)
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True  # after this batch
                    break
            if not self._run_batch(worker, jobs, adopted):
                return  # abandoned: its slot went to the worker that took the job over
            with worker.lock:
                boosted, worker.boosted = worker.boosted, False
            if boosted and not self._acquire_slot(worker):
                return  # idle since, and not the last: it holds no slot
        self._slots.release()

    def _run_batch(self, worker: Worker, jobs: list[Job], adopted: list[Flush]) -> bool:
        """Run the jobs (their per-attack steps one job after another, then the batch hooks
        once for them all), write what they held, finish them (and the adopted writes and jobs
        first). False if abandoned meanwhile."""
        with worker.lock:
            worker.todo.extend(jobs)
            for flush in adopted:
                worker.flush.extend(flush.flush)
                worker.done.extend(flush.done)
        batch = worker.batch
        tail_steps = self._tail_steps
        with writebatch.running(batch):
            while True:
                with worker.lock:
                    todo = worker.todo
                    # Jobs with no per-attack step (every hook a batch hook: the default
                    # outputs) wait for the batch hooks at once, not one lock each.
                    while todo and not todo[0].steps:
                        job = todo.popleft()
                        (worker.ran if tail_steps and not job.followup else worker.done).append(
                            job)
                    if not todo:
                        break
                    job = todo.popleft()
                if not self._run(worker, job):
                    return False
                with worker.lock:  # a follow-up's job: its FOLLOWUP hooks were all it had
                    (worker.ran if tail_steps and not job.followup else worker.done).append(job)
            if tail_steps:
                with worker.lock:
                    ran, worker.ran = worker.ran, []
                if ran and not self._run_tail(worker, Tail(deque(tail_steps), ran)):
                    return False
        return self._write_and_finish(worker)

    def _run_tail_pass(self, worker: Worker, flush: Flush) -> bool:
        """A batch handed on from another worker with batch hooks still to call (watchdog.py):
        call them, then write what it and they held, then finish its jobs."""
        assert flush.tail is not None
        with worker.lock:
            worker.flush.extend(flush.flush)
            worker.done.extend(flush.done)
        with writebatch.running(worker.batch):
            if not self._run_tail(worker, flush.tail):
                return False
        return self._write_and_finish(worker)

    def _run_tail(self, worker: Worker, tail: Tail) -> bool:
        """Call the batch hooks still to call with the tail's attacks, each isolated as a hook
        is; its jobs are then done. False if abandoned meanwhile (the tail went on elsewhere)."""
        steps = tail.steps
        while steps:
            step = steps.popleft()
            worker.current = (step, tail, self._clock())
            try:
                step.call(tail.attacks)
            except BaseException:  # as _call: a plugin's sys.exit() must not end the worker
                with self._idle:
                    self.counters.plugin_failures += 1
                log.exception("plugin %s failed in %s for a batch of %d attacks (from %s)",
                              step.plugin, step.hook, len(tail.attacks), tail.attack.id)
            with worker.lock:
                worker.current = None
                if worker.abandoned:
                    return False
        with worker.lock:
            worker.done.extend(tail.jobs)
        return True

    def _write_and_finish(self, worker: Worker) -> bool:
        """Write what the worker's batch holds, then finish its done jobs."""
        held = worker.batch.take().items()
        with worker.lock:
            worker.flush.extend(held)
        if not self._flush(worker):
            return False
        with worker.lock:
            if worker.abandoned:
                return False
            done, worker.done = worker.done, []
        self._finished(done)
        return True

    def _flush(self, worker: Worker) -> bool:
        """Make the batch's writes, one call per output. False if the watchdog wrote this
        worker off in one of them (the rest went on on another worker)."""
        while True:
            with worker.lock:
                if worker.abandoned:
                    return False
                if not worker.flush:
                    return True
                write, records = worker.flush.popleft()
                if self._stalls.defer(write, records):
                    continue
                worker.writing = (write, started := self._clock())
            try:
                write(records)
            except Exception as exc:
                self._write_failed(write, exc)
            if (took := self._clock() - started) > SLOW_WRITE:
                self._write_slow(write, len(records), took)
            with worker.lock:
                worker.writing = None
                abandoned = worker.abandoned
            if abandoned:
                self._stalls.unstall(write)
                return False

    def _write_slow(self, write: writebatch.Write, records: int, took: float) -> None:
        with self._idle:
            self.counters.slow_writes += 1
            now, last = self._clock(), self._slow_logged
            if now - last[0] < SLOW_WRITE_LOG_INTERVAL:
                return
            self._slow_logged = (now, self.counters.slow_writes)
        log.warning("writing %d records (%s) took %.2f s: the disk is holding writes back "
                    "(%d slow writes since the last such line)", records,
                    writebatch.name_of(write), took, self.counters.slow_writes - last[1])

    def _write_failed(self, write: writebatch.Write, exc: BaseException) -> None:
        with self._idle:
            self.counters.plugin_failures += 1
        log.error("writing a batch of records (%s) failed", write, exc_info=exc)

    def _run(self, worker: Worker, job: Job) -> bool:
        """Run the job's steps. False if the watchdog abandoned this worker meanwhile."""
        steps = job.steps
        while steps:
            step = steps.pop()  # the next step is the last (Job.steps)
            attack = job.attack if step.attack is None else step.attack
            worker.current = (step, job, self._clock())
            result = self._call(step, attack)
            with worker.lock:
                worker.current = None
                if worker.abandoned:
                    # The watchdog gave this job to another worker; this thread retires.
                    return False
            if not result:
                continue  # most hooks return nothing
            virtuals = [item for item in result if isinstance(item, Attack)]
            if virtuals:
                self._splice(job, step, attack, virtuals)
            for task in result:
                if isinstance(task, Task):
                    self._admit(job, step, task)
        return True

    def _admit(self, job: Job, step: Step, task: Task) -> None:
        if step.hook == FOLLOWUP_HOOK:
            log.error("plugin %s returned a download task from followup: ignored", step.plugin)
            return
        if job.downloads is None:
            job.downloads = self.downloads.group(job.attack, lambda root: self._followup(job,
                                                                                        root))
        self.downloads.admit(job.downloads, task)

    def _call(self, step: Step, attack: Attack) -> Sequence[Attack | Task]:
        try:
            produced = step.call(attack)
            if produced is None:
                return ()  # most hooks: no list made for nothing
            return [a for a in produced if isinstance(a, Attack | Task)]
        except BaseException:
            # BaseException too: a plugin's sys.exit() would otherwise end this worker thread
            # quietly, and its job (the attack) would never finish.
            with self._idle:
                self.counters.plugin_failures += 1
            log.exception(
                "plugin %s failed in %s for attack %s", step.plugin, step.hook, attack.id
            )
            return []

    def _splice(self, job: Job, step: Step, attack: Attack, virtuals: list[Attack]) -> None:
        extra: list[Step] = []
        made = job.made
        for virtual in virtuals:
            if step.depth + 1 > MAX_VIRTUAL_DEPTH or job.virtuals >= MAX_VIRTUAL_PER_ATTACK:
                with self._idle:
                    self.counters.virtual_refused += 1
                log.warning(
                    "attack %s: virtual attack from %s dropped (limit of %d deep, %d in all)",
                    attack.root.id, step.plugin, MAX_VIRTUAL_DEPTH, MAX_VIRTUAL_PER_ATTACK,
                )
                continue
            job.virtuals += 1
            if self._tail_steps:  # the batch hooks see it too, before its root (Tail)
                if made is None:
                    made = job.made = []
                made.append(virtual)
            extra.extend(self._steps(virtual, step.depth + 1))
        job.steps.extend(reversed(extra))  # next, in their order (the next step last)

    def _finished(self, jobs: list[Job]) -> None:
        """Finish a batch's jobs: each one's on_done and downloads, then the counters once
        for all (one lock and one notify per batch, not per attack), then on_finished."""
        if not jobs:
            return
        tokens: list[object] = []
        for job in jobs:
            if job.token is not None:
                tokens.append(job.token)
            if job.on_done is not None:
                try:
                    job.on_done()
                except Exception:
                    log.exception("attack completion callback failed")
            if job.downloads is not None:
                root = job.attack
                with root._lock:
                    job.recorded = (len(root.downloads), len(root.download_tries))
                self.downloads.start(job.downloads)
        with self._idle:
            self._pending -= len(jobs)
            self.counters.finished += len(jobs)
            self.counters.batches += 1
            pending = self._pending
            self._idle.notify_all()
        if tokens and self.on_tokens is not None:
            try:
                self.on_tokens(tokens)
            except Exception:
                log.exception("batch completion callback failed")
        if self.on_finished is not None:
            try:
                self.on_finished(pending)
            except Exception:
                log.exception("batch completion callback failed")
