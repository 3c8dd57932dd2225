"""The pipeline's records (pipeline.py): a Job per attack with the Steps (one per hook) still to
run, a Tail (a batch's jobs and the batch hooks still to call for them all), a Worker's batch
(its jobs, the writes it holds, what the watchdog reads of it), a Flush the watchdog hands from
one worker to another, and the pipeline's Counters. Plain classes with slots where one is made
per attack or per hook."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from honeytrap import background, writebatch
from honeytrap.attack import Attack
from honeytrap.background import Task


class Step:
    """One hook to call for one attack: `attack`, or its job's when None (a submitted attack's
    steps are made once and shared by every job: pipeline.py). A plain class with slots, not
    a dataclass: one is made per hook per virtual attack, and a dataclass's __init__ cost twice
    as much (the recorder's CPU per attack, bench/recorder.py)."""

    __slots__ = ("attack", "hook", "plugin", "call", "depth")

    def __init__(self, attack: Attack | None, hook: str, plugin: str,
                 call: Callable[[Attack], Iterable[Attack | Task] | None], depth: int) -> None:
        self.attack = attack
        self.hook = hook
        self.plugin = plugin
        self.call = call
        self.depth = depth


class BatchStep:
    """One batch hook (hooks.SaveDataBatch, PostProcBatch) to call for a whole batch."""

    __slots__ = ("hook", "plugin", "call")

    def __init__(self, hook: str, plugin: str,
                 call: Callable[[Sequence[Attack]], None]) -> None:
        self.hook = hook
        self.plugin = plugin
        self.call = call


class Job:
    """An attack's steps still to run, and what its end needs (slots: one per attack)."""

    __slots__ = ("steps", "attack", "virtuals", "made", "on_done", "token", "downloads",
                 "recorded", "followup")

    def __init__(self, steps: list[Step], attack: Attack,
                 on_done: Callable[[], None] | None = None, token: object = None) -> None:
        # The steps still to run, the next one last (pop, not a deque's popleft: an empty
        # deque allocates a 528-byte block, past pymalloc's 512, so every attack's job cost a
        # malloc and a free in glibc, the free on another thread than the malloc).
        self.steps = steps
        self.attack = attack
        self.virtuals = 0
        # The virtual attacks made for it, in order, when any (the batch hooks see them too).
        self.made: list[Attack] | None = None
        # Called once, from the worker thread, when every step ran (the recorder acknowledges
        # the attack to its server then: recorder.py).
        self.on_done = on_done
        # Or handed to the pipeline's on_tokens with its batch's (submit_tokens).
        self.token = token
        # The attack's admitted download tasks; started once every step ran.
        self.downloads: background.Group | None = None
        # Downloads and download tries on the attack when it was recorded: a follow-up records
        # only when its tasks added to them.
        self.recorded: tuple[int, int] = (0, 0)
        # A follow-up's job (the FOLLOWUP hooks): the batch hooks are not for it.
        self.followup = False


# The steps of a job that has none (its attack's hooks are all batch hooks: the default outputs'),
# shared by every such job rather than an empty list each. Never changed: steps are only added
# (_splice) for the virtual attacks a step returned, and such a job runs no step.
NO_STEPS: list[Step] = []


class Tail:
    """A batch's jobs, every per-attack step of theirs run, and the batch hooks still to call
    with their attacks (`attacks`: each root after its virtual attacks), then the writes, then
    their end. A worker written off in a hung batch hook, or split in a slow per-attack one,
    hands it on in a Flush with the writes it held, to a worker that goes on from the next
    batch hook (watchdog.py)."""

    __slots__ = ("steps", "jobs", "attacks")

    def __init__(self, steps: deque[BatchStep], jobs: list[Job]) -> None:
        self.steps = steps
        self.jobs = jobs
        attacks: list[Attack] = []
        for job in jobs:
            if job.made:
                attacks += job.made
            attacks.append(job.attack)
        self.attacks = attacks

    @property
    def attack(self) -> Attack:  # what the watchdog's log line names
        return self.attacks[0]


@dataclass
class Counters:
    attacks: int = 0
    finished: int = 0
    batches: int = 0  # batches finished (their attacks written and acknowledged together)
    plugin_failures: int = 0
    plugin_timeouts: int = 0
    virtual_refused: int = 0
    write_timeouts: int = 0  # an output's batch write hung past plugin_timeout (once a stall)
    write_lost: int = 0  # records for a stalled output past MAX_STALLED_BYTES, or at close
    slow_writes: int = 0  # an output's batch write that took longer than SLOW_WRITE
    followups: int = 0  # attacks that went through the FOLLOWUP hooks
    downloads_run: int = 0  # download pool tasks that ran to their end
    downloads_refused: int = 0  # refused: pool full, or an attack's or a source's budget spent
    downloads_abandoned: int = 0  # abandoned past plugin_timeout (sockets shut, thread retired)
    downloads_dropped: int = 0  # still waiting when the recorder stopped


@dataclass
class Worker:
    thread: threading.Thread | None = None
    # (step, job, started) while a hook runs (a batch hook: (batch step, tail, started)):
    # rebound by the worker (one atomic store), read by the watchdog. Cleared, and `abandoned`
    # checked, under `lock` after each hook returns.
    current: tuple[Step, Job, float] | tuple[BatchStep, Tail, float] | None = None
    abandoned: bool = False
    boosted: bool = False  # its job is slow: the watchdog let one more worker run meanwhile
    lock: threading.Lock = field(default_factory=threading.Lock)
    # The batch it runs: the jobs not started yet, the ones whose per-attack steps ran (when
    # there are batch hooks: they wait for them), the ones done (not finished before the
    # batch is written), the writes held. Changed under `lock` (the watchdog splits it).
    todo: deque[Job] = field(default_factory=deque)
    ran: list[Job] = field(default_factory=list)
    done: list[Job] = field(default_factory=list)
    batch: writebatch.WriteBatch = field(default_factory=writebatch.WriteBatch)
    # The batch's writes not made yet, per output, and (output, started) while one is made:
    # the watchdog hands them on to another worker when that write hangs.
    flush: deque[tuple[writebatch.Write, list[Any]]] = field(default_factory=deque)
    writing: tuple[writebatch.Write, float] | None = None


class Flush:
    """Writes and done jobs of a batch, handed from the watchdog to a worker (a split, or a
    worker written off in a hung hook or write): the worker makes the writes, then finishes the
    jobs. With a `tail`, its batch hooks first (the jobs whose per-attack steps ran, the batch
    hooks still to call for them), on their own, not with other jobs (pipeline.py)."""

    __slots__ = ("flush", "done", "tail")

    def __init__(self, flush: list[tuple[writebatch.Write, list[Any]]],
                 done: list[Job], tail: Tail | None = None) -> None:
        self.flush = flush
        self.done = done
        self.tail = tail
