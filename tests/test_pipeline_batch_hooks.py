"""The batch hooks (hooks.SaveDataBatch, PostProcBatch): one call per batch, in the hooks' order,
isolated as the per-attack hooks are, and every attack acknowledged only once they wrote it."""

from __future__ import annotations

import logging
import threading
import types
from collections.abc import Sequence
from pathlib import Path

import pytest
from pipeline_run import WAIT, PayloadGate

from honeytrap import outfile, writebatch
from honeytrap.attack import Attack, Connection, Download, Payload
from honeytrap.background import Task
from honeytrap.config import Config
from honeytrap.pipeline import Pipeline
from honeytrap.plugin import LoadedPlugin, PluginContext, Registry


def registry_of(*plugins: tuple[str, object]) -> Registry:
    registry = Registry()
    for name, instance in plugins:
        registry.register(LoadedPlugin(name, types.ModuleType(name), instance))
    return registry


def attack(data: bytes) -> Attack:
    return Attack(Connection("tcp", "192.0.2.1", 80, "198.51.100.7", 40001, Payload(data)))


class Journal:
    """What the plugins saw, in order, from any worker thread: (plugin, hook, payloads)."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str, list[bytes]]] = []
        self.lock = threading.Lock()

    def add(self, plugin: str, hook: str, attacks: Sequence[Attack]) -> None:
        with self.lock:
            self.entries.append((plugin, hook, [a.payload for a in attacks]))


class Each:
    """Per-attack SAVEDATA and POSTPROC hooks."""

    def __init__(self, name: str, journal: Journal) -> None:
        self.name, self.journal = name, journal

    def savedata(self, attack: Attack) -> None:
        self.journal.add(self.name, "savedata", [attack])

    def postproc(self, attack: Attack) -> None:
        self.journal.add(self.name, "postproc", [attack])


class Batched:
    """A saver's and a logger's batch hooks, and the per-attack ones the pipeline then leaves."""

    def __init__(self, name: str, journal: Journal) -> None:
        self.name, self.journal = name, journal

    def savedata_batch(self, attacks: Sequence[Attack]) -> None:
        self.journal.add(self.name, "savedata_batch", attacks)

    def postproc_batch(self, attacks: Sequence[Attack]) -> None:
        self.journal.add(self.name, "postproc_batch", attacks)

    def postproc(self, attack: Attack) -> None:
        raise AssertionError("the pipeline calls postproc_batch instead")


class BatchLines(outfile.LineLog):
    """A line log that takes its batches whole: its lines held in the write batch."""

    def line(self, attack: Attack) -> bytes:
        return attack.payload + b"\n"

    def postproc_batch(self, attacks: Sequence[Attack]) -> None:
        batch = writebatch.current()
        assert batch is not None, "a batch hook runs in the worker's write batch"
        batch.add_all(self._appender, [self.line(a) for a in attacks if not a.is_virtual])


def batch_lines(name: str, path: Path) -> BatchLines:
    ctx = PluginContext(name, {"logfile": str(path)}, Config(), logging.getLogger("test"))
    return BatchLines(ctx)


def run_together(registry: Registry, payloads: Sequence[bytes]) -> Pipeline:
    """The attacks submitted together (one batch, MAX_BATCH permitting), then the pipeline
    closed."""
    pipeline = Pipeline(registry, workers=2)
    pipeline.submit_many([(attack(p), None) for p in payloads])
    assert pipeline.close(WAIT)
    return pipeline


class Saver:
    """A per-attack SAVEDATA hook only."""

    def __init__(self, name: str, journal: Journal) -> None:
        self.name, self.journal = name, journal

    def savedata(self, attack: Attack) -> None:
        self.journal.add(self.name, "savedata", [attack])


def test_a_batch_hook_takes_the_attacks_submitted_together_in_one_call() -> None:
    journal = Journal()
    run_together(registry_of(("Saver", Saver("Saver", journal)),
                             ("Batched", Batched("Batched", journal))), [b"a", b"b", b"c"])
    assert journal.entries == [
        ("Saver", "savedata", [b"a"]), ("Saver", "savedata", [b"b"]),
        ("Saver", "savedata", [b"c"]),
        ("Batched", "savedata_batch", [b"a", b"b", b"c"]),
        ("Batched", "postproc_batch", [b"a", b"b", b"c"]),
    ]


def test_a_batch_hook_a_per_attack_hook_follows_is_called_per_attack_in_the_hooks_order() -> None:
    """Each's postproc follows Batched's savedata_batch and postproc_batch: each attack sees
    the four hooks in order, Batched's called with a list of one."""
    journal = Journal()
    run_together(registry_of(("Batched", Batched("Batched", journal)),
                             ("Each", Each("Each", journal))), [b"a", b"b"])
    assert journal.entries == [
        (name, hook, [data]) for data in (b"a", b"b") for name, hook in (
            ("Batched", "savedata_batch"), ("Each", "savedata"),
            ("Batched", "postproc_batch"), ("Each", "postproc"))
    ]


def test_the_steps_keep_configuration_order_within_a_stage() -> None:
    journal = Journal()
    registry = registry_of(("First", Batched("First", journal)),
                           ("Second", Each("Second", journal)),
                           ("Third", Batched("Third", journal)))
    each, tail = registry.attack_order()
    assert [(hook, name) for hook, name, _call in each] == [
        ("savedata_batch", "First"), ("savedata", "Second"), ("savedata_batch", "Third"),
        ("postproc_batch", "First"), ("postproc", "Second")]
    assert [(hook, name) for hook, name, _call in tail] == [("postproc_batch", "Third")]
    # The per-attack hook stays registered for those who call it directly.
    assert [name for name, _call in registry.hooks["postproc"]] == ["First", "Second", "Third"]


class Deriver:
    def preproc(self, attack: Attack) -> list[Attack]:
        return [] if attack.is_virtual else [attack.derive(attack.payload + b"-decoded", "t")]


def test_virtual_attacks_reach_the_batch_hooks_before_their_root() -> None:
    journal = Journal()
    run_together(registry_of(("Deriver", Deriver()), ("Batched", Batched("Batched", journal))),
                 [b"a", b"b"])
    assert journal.entries == [
        ("Batched", "savedata_batch", [b"a-decoded", b"a", b"b-decoded", b"b"]),
        ("Batched", "postproc_batch", [b"a-decoded", b"a", b"b-decoded", b"b"]),
    ]


class RaisingBatch:
    def postproc_batch(self, attacks: Sequence[Attack]) -> None:
        raise ValueError("plugin bug")


def test_a_raising_batch_hook_costs_its_own_records_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    good = batch_lines("Good", tmp_path / "good.log")
    try:
        with caplog.at_level(logging.ERROR, logger="honeytrap.pipeline"):
            pipeline = run_together(registry_of(("Raiser", RaisingBatch()), ("Good", good)),
                                    [b"a", b"b", b"c"])
    finally:
        good.close()
    assert (tmp_path / "good.log").read_bytes() == b"a\nb\nc\n"
    assert pipeline.counters.plugin_failures == 1
    assert pipeline.counters.finished == 3
    assert "plugin Raiser failed in postproc_batch for a batch of 3 attacks" in caplog.text


def test_attacks_are_acknowledged_once_their_batch_hooks_lines_are_written(
    tmp_path: Path,
) -> None:
    path = tmp_path / "lines.log"
    lines = batch_lines("Lines", path)
    pipeline = Pipeline(registry_of(("Lines", lines)), workers=1)
    written_when_done: list[bool] = []
    try:
        pipeline.submit_many([
            (attack(p), lambda p=p: written_when_done.append(p + b"\n" in path.read_bytes()))
            for p in (b"a", b"b", b"c")])
        assert pipeline.close(WAIT)
    finally:
        lines.close()
    assert written_when_done == [True, True, True]
    assert path.read_bytes() == b"a\nb\nc\n"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class HangingBatch:
    """Blocks in its batch hook until released (bounded by WAIT)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.thread: threading.Thread | None = None

    def postproc_batch(self, attacks: Sequence[Attack]) -> None:
        self.thread = threading.current_thread()
        self.entered.set()
        self.release.wait(WAIT)


def test_a_hung_batch_hook_is_abandoned_and_the_later_outputs_write_the_batch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    hanger, clock = HangingBatch(), FakeClock()
    before, after = batch_lines("Before", tmp_path / "before.log"), \
        batch_lines("After", tmp_path / "after.log")
    pipeline = Pipeline(registry_of(("Before", before), ("Hanger", hanger), ("After", after)),
                        workers=1, plugin_timeout=5.0, clock=clock)
    done: list[bytes] = []
    try:
        pipeline.submit_many([(attack(p), lambda p=p: done.append(p)) for p in (b"a", b"b")])
        assert hanger.entered.wait(WAIT)
        clock.now += 6.0
        with caplog.at_level(logging.ERROR, logger="honeytrap.pipeline"):
            pipeline.check_hung()
        assert pipeline.drain(WAIT)
        # Before's lines were held by the abandoned worker: written by the one that went on.
        assert (tmp_path / "before.log").read_bytes() == b"a\nb\n"
        assert (tmp_path / "after.log").read_bytes() == b"a\nb\n"
        assert done == [b"a", b"b"]
        assert pipeline.counters.plugin_timeouts == 1
        assert "plugin Hanger hung in postproc_batch for a batch of 2 attacks" in caplog.text
    finally:
        hanger.release.set()
        assert pipeline.close(WAIT)
        before.close()
        after.close()
    assert hanger.thread is not None
    hanger.thread.join(WAIT)
    assert not hanger.thread.is_alive()  # the abandoned worker retired, writing nothing twice
    assert (tmp_path / "after.log").read_bytes() == b"a\nb\n"
    assert done == [b"a", b"b"]


def test_a_slow_per_attack_hook_splits_the_batch_and_the_batch_hooks_see_every_attack(
    tmp_path: Path,
) -> None:
    """The attacks before the slow one go through the batch hooks on another worker and are
    acknowledged, the ones after it too, while the slow hook still runs."""
    slow, path = PayloadGate(b"slow"), tmp_path / "lines.log"
    lines = batch_lines("Lines", path)
    pipeline = Pipeline(registry_of(("Slow", slow), ("Lines", lines)), workers=2,
                        plugin_timeout=60.0)
    done: list[bytes] = []
    quick_done = threading.Event()

    def finished(data: bytes) -> None:
        done.append(data)
        if len(done) == 4:
            quick_done.set()

    try:
        pipeline.submit_many([(attack(p), lambda p=p: finished(p))
                              for p in (b"q1", b"q2", b"slow", b"q3", b"q4")])
        assert slow.entered.wait(WAIT)
        assert quick_done.wait(WAIT)  # the watchdog split the batch (BOOST_AFTER)
        assert sorted(done) == [b"q1", b"q2", b"q3", b"q4"]
        assert sorted(path.read_bytes().splitlines()) == sorted(done)
    finally:
        slow.opened.set()
        assert pipeline.close(WAIT)
        lines.close()
    assert done[-1] == b"slow"
    assert sorted(path.read_bytes().splitlines()) == [b"q1", b"q2", b"q3", b"q4", b"slow"]


class Finder:
    """A downloader whose task finds a sample."""

    def analyze(self, attack: Attack) -> list[Task]:
        def fetch() -> None:
            attack.add_download(Download("http", "198.51.100.9", 80, "x", "http://x/",
                                         Payload(b"MZ sample")))
        return [Task("fetch", fetch)]


class BatchedWithFollowUp(Batched):
    def __init__(self, name: str, journal: Journal) -> None:
        super().__init__(name, journal)
        self.followed = threading.Event()

    def followup(self, attack: Attack) -> None:
        self.journal.add(self.name, "followup", [attack])
        self.followed.set()


def test_a_follow_up_goes_through_the_followup_hooks_only_not_the_batch_hooks_again() -> None:
    journal = Journal()
    output = BatchedWithFollowUp("Out", journal)
    pipeline = Pipeline(registry_of(("Finder", Finder()), ("Out", output)), workers=1)
    try:
        pipeline.submit(attack(b"a"))
        assert output.followed.wait(WAIT)
        assert pipeline.drain(WAIT)
    finally:
        assert pipeline.close(WAIT)
    assert journal.entries == [("Out", "savedata_batch", [b"a"]),
                               ("Out", "postproc_batch", [b"a"]), ("Out", "followup", [b"a"])]
