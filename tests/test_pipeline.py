"""The pipeline: attack hooks in order, off the connection path, isolated from each other."""

from __future__ import annotations

import logging
import os
import threading
import time
import types
from collections.abc import Iterable
from pathlib import Path

import pytest
from pipeline_run import WAIT, PayloadGate  # WAIT: the bound on every wait in these tests

from honeytrap import outfile
from honeytrap import pipeline as pipeline_module
from honeytrap.attack import Attack, Connection, Download, Payload
from honeytrap.config import Config
from honeytrap.pipeline import MAX_BATCH, MAX_VIRTUAL_DEPTH, MAX_VIRTUAL_PER_ATTACK, Pipeline
from honeytrap.plugin import ATTACK_HOOKS, LoadedPlugin, PluginContext, Registry


class FakeClock:
    """The pipeline's clock, advanced by the test (the watchdog measures hook time with it)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Journal:
    """What the plugins saw, in order, from any worker thread."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str, bytes]] = []
        self.lock = threading.Lock()

    def add(self, plugin: str, hook: str, attack: Attack) -> None:
        with self.lock:
            self.entries.append((plugin, hook, attack.payload))

    def seen_by(self, plugin: str) -> list[tuple[str, bytes]]:
        with self.lock:
            return [(hook, data) for name, hook, data in self.entries if name == plugin]


class Recorder:
    """A plugin with every attack hook, writing what it sees to the journal."""

    def __init__(self, name: str, journal: Journal) -> None:
        self.name, self.journal = name, journal

    def preproc(self, attack: Attack) -> None:
        self.journal.add(self.name, "preproc", attack)

    def analyze(self, attack: Attack) -> None:
        self.journal.add(self.name, "analyze", attack)

    def savedata(self, attack: Attack) -> None:
        self.journal.add(self.name, "savedata", attack)

    def postproc(self, attack: Attack) -> None:
        self.journal.add(self.name, "postproc", attack)


def registry_of(*plugins: tuple[str, object]) -> Registry:
    registry = Registry()
    for name, instance in plugins:
        registry.register(LoadedPlugin(name, types.ModuleType(name), instance))
    return registry


def attack(data: bytes = b"root") -> Attack:
    return Attack(Connection("tcp", "192.0.2.1", 80, "198.51.100.7", 40001, Payload(data)))


def every_hook(data: bytes) -> list[tuple[str, bytes]]:
    return [(hook, data) for hook in ATTACK_HOOKS]


def run(registry: Registry, *attacks: Attack) -> Pipeline:
    pipeline = Pipeline(registry, workers=2)
    for a in attacks:
        pipeline.submit(a)
    assert pipeline.close(WAIT)
    return pipeline


def test_hooks_run_by_hook_then_in_configuration_order() -> None:
    journal = Journal()
    run(registry_of(("A", Recorder("A", journal)), ("B", Recorder("B", journal))), attack())
    assert journal.entries == [
        (name, hook, b"root") for hook in ATTACK_HOOKS for name in ("A", "B")
    ]


class Raiser:
    def analyze(self, attack: Attack) -> None:
        raise ValueError("plugin bug")


def test_a_raising_plugin_is_logged_and_later_plugins_still_see_the_attack(
    caplog: pytest.LogCaptureFixture,
) -> None:
    journal = Journal()
    registry = registry_of(("Raiser", Raiser()), ("After", Recorder("After", journal)))
    with caplog.at_level(logging.ERROR, logger="honeytrap.pipeline"):
        pipeline = run(registry, attack())
    assert journal.seen_by("After") == every_hook(b"root")
    assert pipeline.counters.plugin_failures == 1
    assert "plugin Raiser failed in analyze" in caplog.text


class Exiter:
    def preproc(self, attack: Attack) -> None:
        raise SystemExit(3)


def test_a_plugin_calling_sys_exit_does_not_stop_the_attack() -> None:
    journal = Journal()
    registry = registry_of(("Exiter", Exiter()), ("After", Recorder("After", journal)))
    pipeline = run(registry, attack(b"one"), attack(b"two"))
    assert sorted(journal.seen_by("After")) == sorted(every_hook(b"one") + every_hook(b"two"))
    assert pipeline.counters.plugin_failures == 2


class Hanger:
    """Blocks in ANALYZE until the test releases it (bounded, so it never outlives the test)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.thread: threading.Thread | None = None

    def analyze(self, attack: Attack) -> None:
        self.thread = threading.current_thread()
        self.entered.set()
        self.release.wait(WAIT)


def test_a_hanging_plugin_is_abandoned_and_later_plugins_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    journal, hanger, clock = Journal(), Hanger(), FakeClock()
    registry = registry_of(("Hanger", hanger), ("After", Recorder("After", journal)))
    pipeline = Pipeline(registry, workers=1, plugin_timeout=5.0, clock=clock)
    try:
        pipeline.submit(attack())
        assert hanger.entered.wait(WAIT)
        clock.now += 6.0  # the hook has now run longer than plugin_timeout
        with caplog.at_level(logging.ERROR, logger="honeytrap.pipeline"):
            pipeline.check_hung()
        assert pipeline.drain(WAIT)
        assert journal.seen_by("After") == every_hook(b"root")
        assert pipeline.counters.plugin_timeouts == 1
        assert "plugin Hanger hung in analyze" in caplog.text
    finally:
        hanger.release.set()
        assert pipeline.close(WAIT)
    assert hanger.thread is not None
    hanger.thread.join(WAIT)
    # The abandoned thread, once free, retires: it does not run the job's steps a second time.
    assert not hanger.thread.is_alive()
    assert journal.seen_by("After") == every_hook(b"root")


def test_the_watchdog_thread_abandons_a_hook_on_its_own() -> None:
    """With the real clock and a short plugin_timeout, nobody calls check_hung by hand."""
    journal, hanger = Journal(), Hanger()
    registry = registry_of(("Hanger", hanger), ("After", Recorder("After", journal)))
    pipeline = Pipeline(registry, workers=1, plugin_timeout=0.2)
    try:
        pipeline.submit(attack())
        assert pipeline.drain(WAIT)
        assert journal.seen_by("After") == every_hook(b"root")
        assert pipeline.counters.plugin_timeouts == 1
    finally:
        hanger.release.set()
        assert pipeline.close(WAIT)


def test_the_watchdog_leaves_a_hook_within_its_time_alone() -> None:
    journal, hanger, clock = Journal(), Hanger(), FakeClock()
    registry = registry_of(("Hanger", hanger), ("After", Recorder("After", journal)))
    pipeline = Pipeline(registry, workers=1, plugin_timeout=5.0, clock=clock)
    try:
        pipeline.submit(attack())
        assert hanger.entered.wait(WAIT)
        clock.now += 4.0
        pipeline.check_hung()
        assert pipeline.counters.plugin_timeouts == 0
    finally:
        hanger.release.set()
        assert pipeline.close(WAIT)
    assert journal.seen_by("After") == every_hook(b"root")


class Decoder:
    """PREPROC: the root attack yields one virtual attack with its payload decoded."""

    def preproc(self, attack: Attack) -> Iterable[Attack]:
        return [] if attack.is_virtual else [attack.derive(b"decoded", "test decoder")]


def test_a_virtual_attack_goes_through_every_hook_before_its_parent_goes_on() -> None:
    journal = Journal()
    registry = registry_of(("Decoder", Decoder()), ("After", Recorder("After", journal)))
    run(registry, attack())
    assert journal.seen_by("After") == every_hook(b"decoded") + every_hook(b"root")


class TwoDecoder:
    """PREPROC: the root attack yields two virtual attacks."""

    def preproc(self, attack: Attack) -> Iterable[Attack]:
        return [] if attack.is_virtual else [attack.derive(b"one", "first"),
                                             attack.derive(b"two", "second")]


def test_virtual_attacks_go_through_every_hook_in_the_order_they_were_made() -> None:
    """A job's steps are kept with the next one last (Job.steps): the ones spliced in for
    several virtual attacks still run first to last, before the parent's next step."""
    journal = Journal()
    registry = registry_of(("Decoder", TwoDecoder()), ("After", Recorder("After", journal)))
    run(registry, attack())
    assert journal.seen_by("After") == every_hook(b"one") + every_hook(b"two") + every_hook(b"root")


class Finder:
    """ANALYZE: finds a download in virtual attacks only, as a download plugin would."""

    def analyze(self, attack: Attack) -> None:
        if attack.is_virtual:
            sample = Payload(b"sample")
            attack.add_download(Download("http", "203.0.113.9", 80, "x", "http://x/", sample))


class DownloadCounter:
    def __init__(self) -> None:
        self.at_savedata: dict[bytes, int] = {}

    def savedata(self, attack: Attack) -> None:
        self.at_savedata[attack.payload] = len(attack.downloads)


def test_downloads_of_a_virtual_attack_are_on_its_parent_before_the_parent_is_saved() -> None:
    counter = DownloadCounter()
    registry = registry_of(("Decoder", Decoder()), ("Finder", Finder()), ("Saver", counter))
    run(registry, attack())
    assert counter.at_savedata == {b"decoded": 1, b"root": 1}


class EndlessDecoder:
    """Every attack, virtual or not, yields another: only the depth limit stops it."""

    def preproc(self, attack: Attack) -> Iterable[Attack]:
        return [attack.derive(attack.payload + b"+", "again")]


def test_virtual_attacks_nest_at_most_max_virtual_depth() -> None:
    journal = Journal()
    registry = registry_of(("Endless", EndlessDecoder()), ("After", Recorder("After", journal)))
    pipeline = run(registry, attack(b"r"))
    postprocs = [data for hook, data in journal.seen_by("After") if hook == "postproc"]
    assert postprocs == [b"r" + b"+" * n for n in range(MAX_VIRTUAL_DEPTH, -1, -1)]
    assert pipeline.counters.virtual_refused == 1


class Flooder:
    """The root attack yields far more virtual attacks than allowed."""

    def preproc(self, attack: Attack) -> Iterable[Attack]:
        if attack.is_virtual:
            return []
        return [attack.derive(b"v%d" % i, "flood") for i in range(MAX_VIRTUAL_PER_ATTACK + 10)]


def test_one_attack_yields_at_most_max_virtual_per_attack() -> None:
    journal = Journal()
    registry = registry_of(("Flooder", Flooder()), ("After", Recorder("After", journal)))
    pipeline = run(registry, attack())
    postprocs = [data for hook, data in journal.seen_by("After") if hook == "postproc"]
    assert len(postprocs) == MAX_VIRTUAL_PER_ATTACK + 1  # the virtual ones and the root
    assert pipeline.counters.virtual_refused == 10


class Returner:
    """Hooks returning things that are not attacks."""

    def preproc(self, attack: Attack) -> object:
        return ["not an attack", 7, None]

    def analyze(self, attack: Attack) -> object:
        return 42  # not even iterable: counted as a failure


def test_return_values_other_than_attacks_are_ignored() -> None:
    journal = Journal()
    registry = registry_of(("Returner", Returner()), ("After", Recorder("After", journal)))
    pipeline = run(registry, attack())
    assert journal.seen_by("After") == every_hook(b"root")
    assert pipeline.counters.plugin_failures == 1


class Gate:
    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def postproc(self, attack: Attack) -> None:
        self.entered.set()
        self.release.wait(WAIT)


def test_drain_waits_for_every_submitted_attack() -> None:
    gate = Gate()
    pipeline = Pipeline(registry_of(("Gate", gate)), workers=1)
    try:
        pipeline.submit(attack())
        assert gate.entered.wait(WAIT)
        assert not pipeline.drain(0.05)
        assert pipeline.pending() == 1
        gate.release.set()
        assert pipeline.drain(WAIT)
        assert pipeline.pending() == 0 and pipeline.counters.finished == 1
    finally:
        gate.release.set()
        pipeline.close(WAIT)


def test_close_reports_attacks_left_unfinished(caplog: pytest.LogCaptureFixture) -> None:
    gate = Gate()
    pipeline = Pipeline(registry_of(("Gate", gate)), workers=1)
    try:
        pipeline.submit(attack())
        assert gate.entered.wait(WAIT)
        with caplog.at_level(logging.ERROR, logger="honeytrap.pipeline"):
            assert not pipeline.close(0.05)
        assert "1 attacks unfinished" in caplog.text
    finally:
        gate.release.set()


def test_close_finishes_queued_attacks_then_stops_the_workers() -> None:
    journal = Journal()
    pipeline = Pipeline(registry_of(("R", Recorder("R", journal))), workers=2)
    for i in range(20):
        pipeline.submit(attack(b"%d" % i))
    assert pipeline.close(WAIT)
    assert len(journal.seen_by("R")) == 20 * len(ATTACK_HOOKS)
    for worker in pipeline._workers:
        assert worker.thread is not None
        worker.thread.join(WAIT)
        assert not worker.thread.is_alive()


def test_an_attack_submitted_after_close_is_refused_loudly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    journal = Journal()
    pipeline = Pipeline(registry_of(("R", Recorder("R", journal))), workers=1)
    assert pipeline.close(WAIT)
    with caplog.at_level(logging.ERROR, logger="honeytrap.pipeline"):
        pipeline.submit(attack())
    assert "not processed" in caplog.text
    assert pipeline.drain(WAIT) and journal.entries == []


def test_attacks_submitted_together_run_in_order_each_done_once_then_on_finished() -> None:
    journal = Journal()
    done: list[int] = []
    pending_seen: list[int] = []
    pipeline = Pipeline(registry_of(("R", Recorder("R", journal))), workers=1,
                        on_finished=pending_seen.append)
    pipeline.submit_many([(attack(b"%d" % i), lambda i=i: done.append(i)) for i in range(5)])
    assert pipeline.close(WAIT)
    assert journal.seen_by("R") == [(hook, b"%d" % i) for i in range(5) for hook in ATTACK_HOOKS]
    assert done == list(range(5))
    assert pipeline.counters.attacks == pipeline.counters.finished == 5
    assert pending_seen and pending_seen[-1] == 0  # the last batch left nothing pending


def test_tokens_of_attacks_submitted_together_come_back_once_each_in_order_by_batch() -> None:
    journal = Journal()
    batches: list[list[object]] = []
    pipeline = Pipeline(registry_of(("R", Recorder("R", journal))), workers=1,
                        on_tokens=batches.append)
    count = MAX_BATCH * 2 + 3  # more than a batch: the jobs are queued by MAX_BATCH
    pipeline.submit_tokens([(attack(b"%d" % i), ("token", i)) for i in range(count)])
    pipeline.submit_many([(attack(b"no token"), None)])
    assert pipeline.close(WAIT)
    assert all(batches) and len(batches) >= 3
    assert [token for batch in batches for token in batch] == [("token", i) for i in range(count)]
    assert len(journal.seen_by("R")) == (count + 1) * len(ATTACK_HOOKS)


def test_attacks_submitted_together_after_close_are_refused_loudly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pipeline = Pipeline(Registry(), workers=1)
    assert pipeline.close(WAIT)
    with caplog.at_level(logging.ERROR, logger="honeytrap.pipeline"):
        pipeline.submit_many([(attack(), None), (attack(), None)])
    assert caplog.text.count("not processed") == 2
    assert pipeline.pending() == 0


def test_an_attack_with_no_plugins_finishes() -> None:
    pipeline = run(Registry(), attack())
    assert pipeline.counters.attacks == pipeline.counters.finished == 1



def test_a_slow_hook_lets_another_worker_take_the_next_attacks() -> None:
    """One worker takes jobs while hooks are quick; a hook slower than BOOST_AFTER lets one
    more run, so attacks queued behind a slow download still finish meanwhile."""
    journal, slow = Journal(), PayloadGate(b"slow")
    registry = registry_of(("Slow", slow), ("After", Recorder("After", journal)))
    pipeline = Pipeline(registry, workers=2, plugin_timeout=60.0)
    done: list[bytes] = []
    try:
        pipeline.submit(attack(b"slow"), on_done=lambda: done.append(b"slow"))
        assert slow.entered.wait(WAIT)
        for n in range(5):
            pipeline.submit(attack(b"quick%d" % n), on_done=lambda n=n: done.append(b"q%d" % n))
        deadline = time.monotonic() + WAIT
        while len(done) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sorted(done) == [b"q%d" % n for n in range(5)]  # the slow one still runs
        assert pipeline.pending() == 1
    finally:
        slow.opened.set()
        assert pipeline.close(WAIT)
    assert done[-1] == b"slow"
    assert pipeline.counters.finished == 6


def test_workers_start_when_a_slow_hook_wants_one_not_before() -> None:
    """At rest one worker thread runs, not `workers` of them (their stacks and arenas are the
    recorder's memory at rest); a slow hook starts one more, which takes the next attack, and
    only as many as the slow hooks want."""
    slow = PayloadGate(b"slow")
    pipeline = Pipeline(registry_of(("Slow", slow)), workers=4, plugin_timeout=60.0)
    quick = threading.Event()
    try:
        assert len(pipeline._workers) == 1
        pipeline.submit(attack(b"slow"))
        assert slow.entered.wait(WAIT)
        pipeline.submit(attack(b"quick"), on_done=quick.set)
        assert quick.wait(WAIT)  # taken by a worker started for the slow hook's slot
        assert len(pipeline._workers) == 2
        assert sum(w.thread is not None and w.thread.is_alive() for w in pipeline._workers) == 2
    finally:
        slow.opened.set()
        assert pipeline.close(WAIT)


def test_a_worker_started_for_a_slow_hook_ends_once_idle(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker a slow hook let in stays; the slow one, waiting WORKER_IDLE for a slot since,
    ends (its thread's memory goes back), and the next slow hook starts one again."""
    monkeypatch.setattr(pipeline_module, "WORKER_IDLE", 0.05)
    slow = PayloadGate(b"slow")
    pipeline = Pipeline(registry_of(("Slow", slow)), workers=4, plugin_timeout=60.0)
    try:
        for _round in range(2):
            slow.entered.clear()
            slow.opened.clear()
            pipeline.submit(attack(b"slow"))
            assert slow.entered.wait(WAIT)
            quick = threading.Event()
            pipeline.submit(attack(b"quick"), on_done=quick.set)
            assert quick.wait(WAIT)  # taken by a worker started for the slow hook's slot
            assert len(pipeline._workers) == 2
            slowed = [w for w in pipeline._workers if w.current is not None]
            assert len(slowed) == 1 and slowed[0].thread is not None
            slow.opened.set()
            slowed[0].thread.join(WAIT)
            assert not slowed[0].thread.is_alive()
            assert pipeline._workers == [w for w in pipeline._workers if w is not slowed[0]]
            assert len(pipeline._workers) == 1
        done = threading.Event()
        pipeline.submit(attack(b"after"), on_done=done.set)
        assert done.wait(WAIT)  # the one left takes the next attacks
    finally:
        slow.opened.set()
        assert pipeline.close(WAIT)


def test_with_one_worker_a_slow_hook_holds_up_the_attacks_behind_it() -> None:
    """The converse (so the test above can fail): no other worker, nothing overtakes."""
    slow = PayloadGate(b"slow")
    pipeline = Pipeline(registry_of(("Slow", slow)), workers=1, plugin_timeout=60.0)
    done: list[bytes] = []
    try:
        pipeline.submit(attack(b"slow"), on_done=lambda: done.append(b"slow"))
        assert slow.entered.wait(WAIT)
        pipeline.submit(attack(b"quick"), on_done=lambda: done.append(b"quick"))
        time.sleep(0.3)  # several BOOST_AFTER periods
        assert done == []
    finally:
        slow.opened.set()
        assert pipeline.close(WAIT)
    assert done == [b"slow", b"quick"]


# --- batches: the line logs' lines of the attacks queued together, one append each ----------



class CountingLog(outfile.LineLog):
    """logAttacker's kind of output: one line per attack (its payload), appends counted."""

    def __init__(self, ctx: PluginContext) -> None:
        super().__init__(ctx)
        self.appends = 0

    def line(self, attack: Attack) -> bytes:
        return attack.payload + b"\n"

    def _append(self, lines: bytes) -> None:
        self.appends += 1
        super()._append(lines)


def counting_log(path: Path) -> CountingLog:
    ctx = PluginContext("Lines", {"logfile": str(path)}, Config(), logging.getLogger("test"))
    return CountingLog(ctx)


def test_a_batch_is_appended_in_one_write_and_acknowledged_only_once_written(
    tmp_path: Path,
) -> None:
    gate, log_path = PayloadGate(b"gate"), tmp_path / "lines.log"
    lines = counting_log(log_path)
    pipeline = Pipeline(registry_of(("Gate", gate), ("Lines", lines)), workers=1)
    in_file_when_done: list[bool] = []

    def done(data: bytes) -> None:  # runs when the attack is finished (acknowledged)
        in_file_when_done.append(data + b"\n" in log_path.read_bytes().splitlines(True))

    try:
        pipeline.submit(attack(b"gate"), on_done=lambda: done(b"gate"))
        assert gate.entered.wait(WAIT)
        for n in range(20):
            pipeline.submit(attack(b"a%d" % n), on_done=lambda n=n: done(b"a%d" % n))
        gate.opened.set()
        assert pipeline.drain(WAIT)
    finally:
        gate.opened.set()
        assert pipeline.close(WAIT)
        lines.close()
    assert in_file_when_done == [True] * 21
    assert log_path.read_bytes() == b"gate\n" + b"".join(b"a%d\n" % n for n in range(20))
    assert lines.appends == 2  # the gate's batch of one, then the twenty queued behind it


def test_a_slow_hook_in_a_batch_holds_up_only_its_own_attack(tmp_path: Path) -> None:
    """The attacks of the batch before the slow one are written and acknowledged, the ones
    after it go to another worker, while the slow hook still runs."""
    gate, slow, log_path = PayloadGate(b"gate"), PayloadGate(b"slow"), tmp_path / "lines.log"
    lines = counting_log(log_path)
    registry = registry_of(("Gate", gate), ("Slow", slow), ("Lines", lines))
    pipeline = Pipeline(registry, workers=2, plugin_timeout=60.0)
    done: list[bytes] = []
    all_quick_done = threading.Event()

    def finished(data: bytes) -> None:
        done.append(data)
        if len(done) == 5:
            all_quick_done.set()

    try:
        pipeline.submit(attack(b"gate"), on_done=lambda: finished(b"gate"))
        assert gate.entered.wait(WAIT)
        for data in (b"q1", b"q2", b"slow", b"q3", b"q4"):
            pipeline.submit(attack(data), on_done=lambda data=data: finished(data))
        gate.opened.set()
        assert slow.entered.wait(WAIT)
        assert all_quick_done.wait(WAIT)  # the watchdog split the batch (BOOST_AFTER)
        assert sorted(done) == [b"gate", b"q1", b"q2", b"q3", b"q4"]
        assert sorted(log_path.read_bytes().splitlines()) == sorted(done)
    finally:
        slow.opened.set()
        gate.opened.set()
        assert pipeline.close(WAIT)
        lines.close()
    assert done[-1] == b"slow"
    assert sorted(log_path.read_bytes().splitlines()) == sorted(done)


# --- a batch's write that hangs: watched like a hook ------------------------------------------


class Lines(outfile.LineLog):
    """A line log writing each attack's payload as its line."""

    def line(self, attack: Attack) -> bytes:
        return attack.payload + b"\n"


def lines_log(name: str, path: Path) -> Lines:
    return Lines(PluginContext(name, {"logfile": str(path)}, Config(), logging.getLogger("test")))


class FullFifo:
    """A FIFO whose pipe buffer the test filled: the log opens it (the test holds it open for
    reading too, O_RDWR), and its writes block until the test reads."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        self.filler = 0
        while True:
            try:
                self.filler += os.write(self.fd, b"f" * 4096)
            except BlockingIOError:
                break
        os.set_blocking(self.fd, True)

    def read_exactly(self, size: int) -> bytes:
        """Blocking reads until `size` bytes came (each read lets a blocked writer go on)."""
        data = b""
        while len(data) < size:
            data += os.read(self.fd, size - len(data))
        return data


def test_a_hung_batch_write_is_abandoned_and_the_other_outputs_go_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    fifo = FullFifo(tmp_path / "hung.log")
    hung, good = lines_log("Hung", tmp_path / "hung.log"), lines_log("Good", tmp_path / "good.log")
    pipeline = Pipeline(registry_of(("Hung", hung), ("Good", good)), workers=2,
                        plugin_timeout=0.2)
    done = {name: threading.Event() for name in (b"a0", b"a1", b"a2")}
    try:
        with caplog.at_level(logging.WARNING, logger="honeytrap.pipeline"):
            pipeline.submit(attack(b"a0"), on_done=done[b"a0"].set)
            # Its write to Hung blocks: the attack is finished once the watchdog gave it up.
            assert done[b"a0"].wait(WAIT)
            assert pipeline.counters.write_timeouts == 1
            pipeline.submit(attack(b"a1"), on_done=done[b"a1"].set)
            pipeline.submit(attack(b"a2"), on_done=done[b"a2"].set)
            assert done[b"a1"].wait(WAIT) and done[b"a2"].wait(WAIT)
            assert (tmp_path / "good.log").read_bytes() == b"a0\na1\na2\n"
            # What was handed to the hung write, then what waited for it, once it unblocks.
            assert fifo.read_exactly(fifo.filler) == b"f" * fifo.filler
            assert fifo.read_exactly(9) == b"a0\na1\na2\n"
            assert pipeline.close(WAIT)
        hung_lines = [r.getMessage() for r in caplog.records if "hung for over" in r.getMessage()]
        assert len(hung_lines) == 1 and "output Hung" in hung_lines[0]  # once, by its name
        assert pipeline.counters.write_timeouts == 1
        assert pipeline.counters.write_lost == 0
        assert pipeline.counters.finished == 3
    finally:
        os.close(fifo.fd)
        hung.close()
        good.close()


def test_records_waiting_for_a_still_hung_output_at_close_are_counted_lost(
    tmp_path: Path,
) -> None:
    fifo = FullFifo(tmp_path / "hung.log")
    hung = lines_log("Hung", tmp_path / "hung.log")
    pipeline = Pipeline(registry_of(("Hung", hung)), workers=2, plugin_timeout=0.2)
    done = [threading.Event() for _ in range(3)]
    try:
        pipeline.submit(attack(b"a0"), on_done=done[0].set)
        assert done[0].wait(WAIT)
        pipeline.submit(attack(b"a1"), on_done=done[1].set)
        pipeline.submit(attack(b"a2"), on_done=done[2].set)
        assert done[1].wait(WAIT) and done[2].wait(WAIT)
        assert pipeline.close(WAIT)
        assert pipeline.counters.write_lost == 2  # a1 and a2 waited; a0 is in the hung write
        # The recorder closes its plugins next: that must not hang on the hung write either.
        closing = threading.Thread(target=hung.close, daemon=True)
        closing.start()
        closing.join(WAIT)
        assert not closing.is_alive(), "closing the output hung on its hung write"
    finally:
        fifo.read_exactly(fifo.filler + 3)  # the hung write returns: its thread may end
        os.close(fifo.fd)
        hung.close()


class SlowDisk(CountingLog):
    """A line log whose appends take `took` seconds of the pipeline's (fake) clock: a disk that
    holds writes back, without waiting for one."""

    def __init__(self, ctx: PluginContext, clock: FakeClock) -> None:
        super().__init__(ctx)
        self.clock, self.took = clock, 0.0

    def _append(self, lines: bytes) -> None:
        self.clock.now += self.took
        super()._append(lines)


def test_a_slow_batch_write_is_counted_and_logged_at_most_once_an_interval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """An output's batch write longer than SLOW_WRITE is counted (slow_writes) and logged with
    the output's name and time, at most once every SLOW_WRITE_LOG_INTERVAL with the count
    since: the disk shows as the cause when the recorder falls behind. A quick one is not."""
    clock = FakeClock()
    ctx = PluginContext("Lines", {"logfile": str(tmp_path / "lines.log")}, Config(),
                        logging.getLogger("test"))
    disk = SlowDisk(ctx, clock)
    pipeline = Pipeline(registry_of(("Lines", disk)), workers=1, clock=clock)
    caplog.set_level(logging.WARNING, logger="honeytrap.pipeline")

    def one_batch(n: int) -> None:
        pipeline.submit(attack(b"a%d" % n))
        assert pipeline.drain(WAIT)

    def slow_lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if "holding writes back" in r.getMessage()]

    try:
        one_batch(0)
        assert pipeline.stats()["slow_writes"] == 0 and slow_lines() == []
        disk.took = 2 * pipeline_module.SLOW_WRITE
        for n in range(1, 4):
            one_batch(n)
        assert pipeline.stats()["slow_writes"] == 3
        assert len(slow_lines()) == 1
        assert "(Lines) took 0.20 s" in slow_lines()[0]
        assert "(1 slow writes since the last such line)" in slow_lines()[0]
        clock.now += pipeline_module.SLOW_WRITE_LOG_INTERVAL
        one_batch(4)
        assert pipeline.stats()["slow_writes"] == 4
        assert len(slow_lines()) == 2 and "(3 slow writes since" in slow_lines()[1]
    finally:
        assert pipeline.close(WAIT)
        disk.close()
    assert disk.appends == 5  # every record written, slow or not
