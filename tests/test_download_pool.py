"""The download pool (background.py) under the pipeline: an attack is recorded before its
downloads run, what they find is recorded by the FOLLOWUP hooks, the budgets refuse (and
count) what does not fit, and an abandoned download is cancelled while the pool recovers."""

from __future__ import annotations

import threading
import types
from collections.abc import Iterator

import pytest

from honeytrap import background
from honeytrap.attack import Attack, Connection, Download, DownloadTry, Payload
from honeytrap.background import Limits, Task
from honeytrap.pipeline import Pipeline
from honeytrap.plugin import LoadedPlugin, Registry

WAIT = 30.0  # bound on every wait: only a bug reaches it


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Fetcher:
    """A downloader: `tasks` tasks per attack, each of which (the first `hold` of them) waits
    for `release`, then adds a download (or, with `finds=False`, nothing)."""

    def __init__(self, finds: bool = True, tasks: int = 1, hold: int = 1_000_000) -> None:
        self.finds = finds
        self.tasks = tasks
        self.hold = hold
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.started = threading.Semaphore(0)
        self.refusals: list[str] = []
        self.cancelled = threading.Event()

    def analyze(self, attack: Attack) -> list[Task]:
        return [Task(f"fetch {n}", lambda: self.fetch(attack), self.refusals.append,
                     self.cancelled.set) for n in range(self.tasks)]

    def fetch(self, attack: Attack) -> None:
        with self.lock:
            self.hold -= 1
            wait = self.hold >= 0
        self.started.release()
        if wait:
            self.release.wait(WAIT)
        if self.finds:
            attack.add_download_try(DownloadTry("http", "http://x/", "x", 80, "ok"))
            attack.add_download(Download("http", "198.51.100.9", 80, "x", "http://x/",
                                         Payload(b"MZ sample")))


class Output:
    """A saver and logger: what it recorded, at SAVEDATA and at FOLLOWUP."""

    def __init__(self, name: str, journal: list[tuple[str, str, int]]) -> None:
        self.name = name
        self.journal = journal
        self.recorded = threading.Event()
        self.followed = threading.Event()

    def savedata(self, attack: Attack) -> None:
        self.journal.append((self.name, "savedata", len(attack.downloads)))
        self.recorded.set()

    def followup(self, attack: Attack) -> None:
        self.journal.append((self.name, "followup", len(attack.downloads)))
        self.followed.set()


def registry_of(*plugins: tuple[str, object]) -> Registry:
    registry = Registry()
    for name, instance in plugins:
        registry.register(LoadedPlugin(name, types.ModuleType(name), instance))
    return registry


def attack(source: str = "198.51.100.7") -> Attack:
    return Attack(Connection("tcp", "192.0.2.1", 80, source, 40001, Payload(b"wget x")))


@pytest.fixture
def journal() -> list[tuple[str, str, int]]:
    return []


@pytest.fixture
def closing() -> Iterator[list[Pipeline]]:
    pipelines: list[Pipeline] = []
    yield pipelines
    for pipeline in pipelines:
        pipeline.close(WAIT)


def test_an_attack_is_recorded_and_acknowledged_before_its_download_ends(
    journal: list[tuple[str, str, int]], closing: list[Pipeline]
) -> None:
    fetcher, output = Fetcher(), Output("SaveFile", journal)
    pipeline = Pipeline(registry_of(("fetch", fetcher), ("SaveFile", output)), workers=1)
    closing.append(pipeline)
    acked = threading.Event()
    pipeline.submit(attack(), on_done=acked.set)
    assert acked.wait(WAIT) and output.recorded.is_set()
    assert fetcher.started.acquire(timeout=WAIT)  # the download runs only now
    assert journal == [("SaveFile", "savedata", 0)]
    fetcher.release.set()
    assert output.followed.wait(WAIT)
    assert journal == [("SaveFile", "savedata", 0), ("SaveFile", "followup", 1)]
    assert pipeline.close(WAIT)
    assert pipeline.stats()["followups"] == 1 and pipeline.stats()["downloads_run"] == 1


def test_a_download_that_finds_nothing_makes_no_follow_up(
    journal: list[tuple[str, str, int]]
) -> None:
    fetcher, output = Fetcher(finds=False), Output("SaveFile", journal)
    fetcher.release.set()
    pipeline = Pipeline(registry_of(("fetch", fetcher), ("SaveFile", output)), workers=1)
    pipeline.submit(attack())
    assert pipeline.close(WAIT)
    assert journal == [("SaveFile", "savedata", 0)]
    assert pipeline.stats()["followups"] == 0


def test_follow_up_hooks_run_analyzers_then_savers_then_loggers(
    journal: list[tuple[str, str, int]]
) -> None:
    """In the configuration file the logger comes first; its follow-up still runs last."""

    class Logger(Output):
        def postproc(self, attack: Attack) -> None:
            pass

        savedata = None  # type: ignore[assignment]

    class Scanner(Output):
        def analyze(self, attack: Attack) -> None:
            pass

        savedata = None  # type: ignore[assignment]

    fetcher = Fetcher()
    fetcher.release.set()
    registry = registry_of(("logJSON", Logger("logJSON", journal)), ("fetch", fetcher),
                           ("SaveFile", Output("SaveFile", journal)),
                           ("ClamAV", Scanner("ClamAV", journal)))
    pipeline = Pipeline(registry, workers=1)
    pipeline.submit(attack())
    assert pipeline.close(WAIT)
    assert [(n, h) for n, h, _ in journal if h == "followup"] == [
        ("ClamAV", "followup"), ("SaveFile", "followup"), ("logJSON", "followup")]


@pytest.mark.parametrize(
    ("limits", "tasks", "sources", "reason"),
    [
        (Limits(workers=1, queue=100, per_attack=2, per_source=100), 5, 1,
         "at most 2 downloads per attack in the download pool"),
        (Limits(workers=1, queue=100, per_attack=8, per_source=3), 1, 1,
         "at most 3 downloads at once per source in the download pool"),
        (Limits(workers=1, queue=3, per_attack=8, per_source=100), 1, 5,
         "download pool full (3 downloads)"),
    ],
    ids=["per-attack", "per-source", "queue"],
)
def test_work_past_a_budget_is_refused_counted_and_on_the_record(
    journal: list[tuple[str, str, int]], limits: Limits, tasks: int, sources: int, reason: str
) -> None:
    """Five attacks (from `sources` addresses) naming `tasks` downloads each, while no
    download can end: what does not fit is refused with the reason, before the record."""
    fetcher, output = Fetcher(tasks=tasks), Output("SaveFile", journal)
    pipeline = Pipeline(registry_of(("fetch", fetcher), ("SaveFile", output)), workers=1,
                        downloads=limits)
    attacks = [attack(f"198.51.100.{n % sources + 1}") for n in range(5)]
    for a in attacks:
        pipeline.submit(a)
    assert pipeline.drain(WAIT)  # all five recorded while the downloads wait
    admitted = pipeline.downloads.pending()
    refused = 5 * tasks - admitted
    assert refused > 0 and set(fetcher.refusals) == {reason}
    assert len(fetcher.refusals) == refused == pipeline.stats()["downloads_refused"]
    assert [h for _, h, _ in journal] == ["savedata"] * 5
    fetcher.release.set()
    assert pipeline.close(WAIT)
    assert pipeline.downloads.pending() == 0


def test_a_hung_download_is_cancelled_and_the_pool_recovers(
    journal: list[tuple[str, str, int]]
) -> None:
    clock = Clock()
    fetcher, output = Fetcher(hold=1), Output("SaveFile", journal)
    limits = Limits(workers=1, queue=10, per_attack=8, per_source=10)
    pipeline = Pipeline(registry_of(("fetch", fetcher), ("SaveFile", output)), workers=1,
                        downloads=limits, plugin_timeout=60, clock=clock)
    pool = pipeline.downloads
    pipeline.submit(attack())
    assert fetcher.started.acquire(timeout=WAIT)
    clock.now += 61
    pool.check_hung()
    assert fetcher.cancelled.is_set()  # the download's sockets are shut
    assert pool.pending() == 0 and pipeline.stats()["downloads_abandoned"] == 1
    # a fresh worker took the hung one's place: the next attack's download runs and is
    # followed up
    pipeline.submit(attack())
    assert output.followed.wait(WAIT)
    assert pool.threads() == 2  # the worker, and the written-off one still in its task
    fetcher.release.set()  # the hung task returns: its thread retires
    assert pipeline.close(WAIT)
    assert pool.threads() == 0


def test_written_off_threads_are_capped_then_replaced_as_they_return(
    journal: list[tuple[str, str, int]]
) -> None:
    clock = Clock()
    fetcher = Fetcher()
    workers = 2
    limits = Limits(workers=workers, queue=1000, per_attack=8, per_source=1000)
    pipeline = Pipeline(registry_of(("fetch", fetcher), ("SaveFile", Output("S", journal))),
                        workers=1, downloads=limits, plugin_timeout=60, clock=clock)
    pool = pipeline.downloads
    cap = background.MAX_ABANDONED + workers
    for _ in range(cap + 3):
        pipeline.submit(attack())
    # each hung task is abandoned and replaced until MAX_ABANDONED are written off; the last
    # `workers` ones are not replaced: `cap` tasks start in all, then none
    for _ in range(cap):
        assert fetcher.started.acquire(timeout=WAIT)
        clock.now += 61
        pool.check_hung()
    assert pool.threads() == cap
    assert pipeline.stats()["downloads_abandoned"] == cap
    assert pool.pending() == 3  # waiting for a worker
    fetcher.release.set()  # the hung tasks return: their threads retire, missing ones restart
    assert pipeline.close(WAIT)
    assert pipeline.stats()["downloads_run"] == 3
    assert pool.threads() == 0


def test_tasks_started_after_the_pool_closed_are_dropped_and_counted() -> None:
    """An attack still being recorded when the recorder stopped: its downloads never start,
    and nothing waits for them."""
    pool = background.DownloadPool(Limits(), timeout=60)
    done: list[Attack] = []
    group = pool.group(attack(), done.append)
    assert pool.admit(group, Task("fetch", lambda: None))
    assert not pool.close(0)  # one admitted, not ended
    pool.start(group)
    assert (pool.pending(), pool.counters.dropped, done) == (0, 1, [group.root])
    assert pool.threads() == 0
