"""The pipeline's watchdog (pipeline.py): a thread that looks at every worker every BOOST_AFTER.

A hook or a batch's write to one output that runs longer than BOOST_AFTER lets one more worker
run beside it (`Pipeline._boost`), so a slow hook (a download, a database write) holds up no
other attack; the jobs of its batch done before it are written and finished by another worker
now and the ones not started are queued again (`_split`), not kept until the slow hook ends.

Past `plugin_timeout` the worker is written off: a hung hook's job goes on on a fresh worker from
the next step; a hung write's output is marked stalled (stalls.py: its later records wait in
memory, nobody calls its write) and the batch's other writes and its jobs go on on a fresh
worker. A batch hook (hooks.SaveDataBatch) is watched the same way; hung, the batch's jobs go on
on a fresh worker from the next batch hook, with the writes they held. The watchdog itself
never calls a hook or a write (what it takes from a worker goes to another as a `Flush`), so
neither can stall it.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import TYPE_CHECKING

from honeytrap import writebatch
from honeytrap.pipelinejobs import BatchStep, Flush, Job, Step, Tail, Worker

if TYPE_CHECKING:
    from honeytrap.pipeline import Pipeline

log = logging.getLogger("honeytrap.pipeline")

# A hook call or a batch write running longer than this (seconds) lets one more worker run.
BOOST_AFTER = 0.05


class Watchdog:
    """Watches `pipeline`'s workers (its thread: `start`; or `check`, called directly)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    def run(self) -> None:
        pipeline = self._pipeline
        interval = min(BOOST_AFTER, pipeline.plugin_timeout / 4)
        while not pipeline._stopping:
            time.sleep(interval)
            self.check()

    def check(self) -> None:
        """Let one more worker run beside each slow hook or write; write off workers stuck in
        one past the timeout (their jobs go on elsewhere)."""
        pipeline = self._pipeline
        now = pipeline._clock()
        for worker in list(pipeline._workers):
            with worker.lock:
                if worker.writing is None or worker.abandoned:
                    continue
                flush = self._check_write(worker, now)
            if flush is not None:
                pipeline._replace(worker)
                pipeline._queue.put(flush)
        for worker in list(pipeline._workers):
            self._check_hook(worker, now)

    def _check_hook(self, worker: Worker, now: float) -> None:
        pipeline = self._pipeline
        timeout = pipeline.plugin_timeout
        with worker.lock:
            current = worker.current
            if current is None or worker.abandoned:
                return
            step, job, started = current
            boost = not worker.boosted and now - started >= min(BOOST_AFTER, timeout)
            if boost:
                worker.boosted = True
                pipeline._boost()
            hung = now - started >= timeout
            if hung:
                worker.abandoned = True
            split: tuple[list[Job], Flush] | None = None
            if isinstance(job, Tail):
                # A batch hook: the batch's jobs are all in it, nothing to split off. Hung:
                # the tail goes on elsewhere from its next batch hook, with the batch's writes.
                if hung:
                    split = ([], _handed_on(worker, job))
            elif boost or hung:
                split = _split(worker, pipeline._tail_steps)
        if split is not None:
            todo, flush = split
            if flush.flush or flush.done or flush.tail is not None:
                pipeline._queue.put(flush)
            for queued in todo:
                pipeline._queue.put(queued)
        if not hung:
            return
        with pipeline._idle:
            pipeline.counters.plugin_timeouts += 1
        if isinstance(job, Tail):
            log.error("plugin %s hung in %s for a batch of %d attacks (from %s) for over %.0f s: "
                      "abandoned, going on", step.plugin, step.hook, len(job.attacks),
                      job.attack.id, timeout)
            pipeline._replace(worker)
            return
        assert isinstance(step, Step)
        log.error(
            "plugin %s hung in %s for attack %s for over %.0f s: abandoned, going on",
            step.plugin, step.hook, (job.attack if step.attack is None else step.attack).id,
            timeout,
        )
        pipeline._replace(worker)
        pipeline._queue.put(job)

    def _check_write(self, worker: Worker, now: float) -> Flush | None:
        """Under worker.lock, while it makes a batch's write: let one more worker run past
        BOOST_AFTER; past plugin_timeout write it off and take its batch's rest (returned)."""
        pipeline = self._pipeline
        assert worker.writing is not None
        write, started = worker.writing
        if not worker.boosted and now - started >= min(BOOST_AFTER, pipeline.plugin_timeout):
            worker.boosted = True
            pipeline._boost()
        if now - started < pipeline.plugin_timeout:
            return None
        worker.abandoned = True
        flush = Flush(list(worker.flush), worker.done)
        worker.flush.clear()
        worker.done = []
        name = writebatch.name_of(write)
        if not pipeline._stalls.mark(write, name, started):
            return flush  # another worker's write to it hung first: said already
        with pipeline._idle:
            pipeline.counters.write_timeouts += 1
        log.error(
            "output %s: a batch write hung for over %.0f s: its worker abandoned, the other "
            "outputs and later attacks go on; its records wait until it returns",
            name, pipeline.plugin_timeout,
        )
        return flush


def _split(worker: Worker, tail_steps: tuple[BatchStep, ...]) -> tuple[list[Job], Flush]:
    """Under worker.lock, while one of its per-attack hooks runs long: take from its batch the
    jobs not started (queued again), the ones done and what they held (written and finished
    by another worker now, not when the slow hook ends), and those that wait for the batch
    hooks (called for them by that worker first)."""
    todo = list(worker.todo)
    worker.todo.clear()
    ran, worker.ran = worker.ran, []
    return todo, _handed_on(worker, Tail(deque(tail_steps), ran) if ran else None)


def _handed_on(worker: Worker, tail: Tail | None) -> Flush:
    """Under worker.lock: the worker's done jobs and held writes, and `tail`, for another."""
    done, worker.done = worker.done, []
    flush = list(worker.flush)
    worker.flush.clear()
    flush.extend(worker.batch.take().items())
    return Flush(flush, done, tail)
