"""A full disk loses nothing and corrupts nothing: records are appended whole or not at all, new
files appear complete or not at all, and what cannot be written waits in order (backlog.py).

The disk is real: a small tmpfs mounted for the test (as root) and filled with a filler file."""

from __future__ import annotations

import errno
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_output_plugins import instance, load, make_attack, make_download
from tmpfs import PAGE, Disk

from honeytrap import outfile, writebatch
from honeytrap.backlog import LOG_INTERVAL, Backlog
from honeytrap.log import AppendFileHandler

# Pages of the test's disk: room for the plugin test's files once the filler is gone.
DISK_PAGES = 64


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    disk = Disk(tmp_path / "disk", DISK_PAGES)
    try:
        yield disk
    finally:
        disk.unmount()


def test_a_short_append_is_taken_back(disk: Disk) -> None:
    """The first part of a record fits in the file's last page, the rest does not: the file
    ends where it ended before, and the next record starts on a line of its own."""
    path = disk.path / "log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        outfile.append_record(fd, b"a" * (PAGE - 1000) + b"\n")
        disk.fill()
        with pytest.raises(OSError) as info:
            outfile.append_record(fd, b"b" * 3000 + b"\n")
        assert info.value.errno == errno.ENOSPC
        assert path.read_bytes() == b"a" * (PAGE - 1000) + b"\n"
        disk.free()
        outfile.append_record(fd, b"c\n")
    finally:
        os.close(fd)
    assert path.read_bytes().split(b"\n") == [b"a" * (PAGE - 1000), b"c", b""]


def test_a_new_file_that_does_not_fit_leaves_nothing(disk: Disk) -> None:
    dir_fd = os.open(disk.path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        disk.fill()
        with pytest.raises(OSError) as info:
            outfile.write_new(dir_fd, ["final"], b"x" * (3 * PAGE))
        assert info.value.errno == errno.ENOSPC
        assert sorted(os.listdir(disk.path)) == ["filler"]
        disk.free()
        assert outfile.write_new(dir_fd, ["final"], b"x" * (3 * PAGE)) == "final"
    finally:
        os.close(dir_fd)
    assert (disk.path / "final").read_bytes() == b"x" * (3 * PAGE)


@pytest.fixture(params=["AT_EMPTY_PATH", "/proc/self/fd"])
def link_way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways of naming the unnamed file: linkat(AT_EMPTY_PATH) where the kernel lets the
    process do it (Linux >= 6.10), and the /proc path older kernels need."""
    if request.param == "/proc/self/fd":
        monkeypatch.setattr(outfile, "_linkat", None)
    else:
        assert outfile._linkat is not None
    return str(request.param)


def test_a_new_file_is_complete_under_its_name_either_way(tmp_path: Path, link_way: str) -> None:
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert outfile.write_new(dir_fd, ["name"], b"data") == "name"
    finally:
        os.close(dir_fd)
    assert sorted(os.listdir(tmp_path)) == ["name"]
    assert (tmp_path / "name").read_bytes() == b"data"


def test_a_new_file_is_named_as_the_os_module_names_it(tmp_path: Path, link_way: str) -> None:
    """The name is encoded as os.fsencode encodes it (a byte the locale cannot decode comes
    back as itself); a NUL in it is refused, as os.link refuses it, and nothing is left."""
    name = "caf\u00e9-\udcff"
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert outfile.write_new(dir_fd, [name], b"data") == name
        with pytest.raises(ValueError):
            outfile.write_new(dir_fd, ["cut\x00here"], b"data")
    finally:
        os.close(dir_fd)
    assert os.listdir(os.fsencode(tmp_path)) == [os.fsencode(name)]
    assert (tmp_path / name).read_bytes() == b"data"


def test_a_new_file_never_replaces_an_existing_one(tmp_path: Path, link_way: str) -> None:
    (tmp_path / "taken").write_bytes(b"old")
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert outfile.write_new(dir_fd, ["taken", "taken.1"], b"new") == "taken.1"
        with pytest.raises(FileExistsError):
            outfile.write_new(dir_fd, ["taken"], b"newer")
    finally:
        os.close(dir_fd)
    assert (tmp_path / "taken").read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["taken", "taken.1"]


def test_a_numbered_file_is_write_new_of_its_numbered_names(tmp_path: Path,
                                                             link_way: str) -> None:
    """write_numbered (SaveFile's attack file in one call) names the file as write_new names
    it with the names numbered() gives: the first free one, never replacing a file, a NUL
    refused, and FileExistsError with nothing left once every one is taken."""
    assert list(outfile.numbered("a"))[:3] == ["a", "a.1", "a.2"]
    assert len(list(outfile.numbered("a"))) == outfile.MAX_NAME_ATTEMPTS
    (tmp_path / "taken").write_bytes(b"old")
    (tmp_path / "taken.1").write_bytes(b"old too")
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert outfile.write_numbered(dir_fd, "free", b"one") == "free"
        assert outfile.write_numbered(dir_fd, "taken", b"two") == "taken.2"
        assert outfile.write_new(dir_fd, outfile.numbered("taken"), b"three") == "taken.3"
        with pytest.raises(ValueError):
            outfile.write_numbered(dir_fd, "cut\x00here", b"data")
        for name in outfile.numbered("full"):
            (tmp_path / name).write_bytes(b"")
        with pytest.raises(FileExistsError):
            outfile.write_numbered(dir_fd, "full", b"data")
    finally:
        os.close(dir_fd)
    assert (tmp_path / "free").read_bytes() == b"one"
    assert (tmp_path / "taken").read_bytes() == b"old"
    assert (tmp_path / "taken.2").read_bytes() == b"two"
    assert (tmp_path / "taken.3").read_bytes() == b"three"
    assert len(os.listdir(tmp_path)) == 5 + outfile.MAX_NAME_ATTEMPTS


def test_a_numbered_file_that_does_not_fit_leaves_nothing(disk: Disk) -> None:
    dir_fd = os.open(disk.path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        disk.fill()
        with pytest.raises(OSError) as info:
            outfile.write_numbered(dir_fd, "final", b"x" * (3 * PAGE))
        assert info.value.errno == errno.ENOSPC
        assert sorted(os.listdir(disk.path)) == ["filler"]
        disk.free()
        assert outfile.write_numbered(dir_fd, "final", b"x" * (3 * PAGE)) == "final"
    finally:
        os.close(dir_fd)
    assert (disk.path / "final").read_bytes() == b"x" * (3 * PAGE)


# --- the backlog, with an injected clock and writes that fail on demand ------------------------


class Sink:
    def __init__(self) -> None:
        self.full = False
        self.written: list[int] = []

    def writer(self, n: int) -> object:
        def write() -> None:
            if self.full:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written.append(n)
        return write


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def backlog(clock: Clock, **kw: int) -> Backlog:
    return Backlog("logJSON", "/x/attackers.json", logging.getLogger("test.backlog"),
                   clock=clock, retry_interval=None, **kw)


def test_backlog_keeps_the_order_through_an_outage() -> None:
    sink, clock = Sink(), Clock()
    queue = backlog(clock)
    assert queue.submit(1, sink.writer(0))
    sink.full = True
    assert not any(queue.submit(1, sink.writer(n)) for n in range(1, 5))
    assert queue.stats()["spool_depth"] == 4
    sink.full = False
    assert queue.submit(1, sink.writer(5))  # the held ones first, then this one
    assert sink.written == [0, 1, 2, 3, 4, 5]
    assert queue.stats() == {"spool_depth": 0, "spool_refused": 0, "write_failures": 4}


class SizedWriter:
    """Sink.writer with a size (Backlog.submit_each weighs its writes by len())."""

    def __init__(self, sink: Sink, n: int, size: int = 1) -> None:
        self.write, self.size = sink.writer(n), size

    def __call__(self) -> None:
        self.write()  # type: ignore[operator]

    def __len__(self) -> int:
        return self.size


def test_backlog_submit_each_keeps_the_order_through_an_outage() -> None:
    """A batch's writes: those before the first failure written, it and the later ones held
    (not each tried in turn: one failed write), then written in order before the next."""
    sink, clock = Sink(), Clock()
    queue = backlog(clock)
    queue.submit_each([SizedWriter(sink, n) for n in range(3)])
    assert sink.written == [0, 1, 2]
    writes = [SizedWriter(sink, n) for n in range(3, 8)]
    calls = []
    def fill_at_five() -> None:
        calls.append(5)
        sink.full = True
        raise OSError(errno.ENOSPC, "No space left on device")
    writes[2].write = fill_at_five
    queue.submit_each(writes)
    assert sink.written == [0, 1, 2, 3, 4]
    assert calls == [5]
    assert queue.stats() == {"spool_depth": 3, "spool_refused": 0, "write_failures": 1}
    queue.submit_each([SizedWriter(sink, 8)])  # held behind them: one more failed try
    assert queue.stats() == {"spool_depth": 4, "spool_refused": 0, "write_failures": 2}
    sink.full = False
    writes[2].write = sink.writer(5)
    queue.submit_each([SizedWriter(sink, 9)])
    assert sink.written == list(range(10))
    assert queue.stats()["spool_depth"] == 0


def test_backlog_submit_each_loses_only_the_record_that_raises_otherwise() -> None:
    """A write raising what is not an OSError (a bug, a name with a NUL) costs its record
    only, as submit's would: the others are written, then the first such error is raised."""
    sink, clock = Sink(), Clock()
    queue = backlog(clock)
    writes = [SizedWriter(sink, n) for n in range(4)]
    def broken() -> None:
        raise ValueError("embedded null byte")
    writes[1].write = writes[2].write = broken
    with pytest.raises(ValueError):
        queue.submit_each(writes)
    assert sink.written == [0, 3]
    assert queue.stats() == {"spool_depth": 0, "spool_refused": 0, "write_failures": 0}


def test_backlog_submit_each_refuses_past_its_bounds() -> None:
    sink, clock = Sink(), Clock()
    queue = backlog(clock, max_records=3, max_bytes=100)
    sink.full = True
    queue.submit_each([SizedWriter(sink, n, 10) for n in range(5)] + [SizedWriter(sink, 5, 95)])
    assert queue.stats() == {"spool_depth": 3, "spool_refused": 3, "write_failures": 1}
    sink.full = False
    assert queue.drain()
    assert sink.written == [0, 1, 2]


def test_backlog_drains_without_new_records() -> None:
    sink, clock = Sink(), Clock()
    queue = backlog(clock)
    sink.full = True
    queue.submit(1, sink.writer(0))
    assert not queue.drain()
    sink.full = False
    assert queue.drain()
    assert sink.written == [0]


def test_backlog_refuses_past_its_bounds_and_counts() -> None:
    sink, clock = Sink(), Clock()
    queue = backlog(clock, max_records=3, max_bytes=100)
    sink.full = True
    for n in range(5):
        queue.submit(10, sink.writer(n))
    queue.submit(95, sink.writer(5))  # over the byte bound
    assert queue.stats()["spool_depth"] == 3
    assert queue.stats()["spool_refused"] == 3
    sink.full = False
    assert queue.drain()
    assert sink.written == [0, 1, 2]


def test_backlog_logs_once_per_outage_and_interval(caplog: pytest.LogCaptureFixture) -> None:
    sink, clock = Sink(), Clock()
    queue = backlog(clock)
    sink.full = True
    with caplog.at_level(logging.WARNING, logger="test.backlog"):
        for _ in range(100):
            queue.submit(1, sink.writer(0))
            clock.now += 0.1  # 10 s in all: within one LOG_INTERVAL
        assert [r.levelno for r in caplog.records] == [logging.ERROR]
        assert "cannot write /x/attackers.json (No space left on device)" in caplog.text
        clock.now += LOG_INTERVAL
        queue.submit(1, sink.writer(0))
        assert len(caplog.records) == 2
        assert "still cannot write" in caplog.records[1].getMessage()
        sink.full = False
        queue.drain()
        assert len(caplog.records) == 3
        assert "writing /x/attackers.json again" in caplog.records[2].getMessage()
        assert "101 held records written" in caplog.records[2].getMessage()
    assert not any(r.exc_info for r in caplog.records)


def test_backlog_close_says_what_it_could_not_write(caplog: pytest.LogCaptureFixture) -> None:
    sink, clock = Sink(), Clock()
    queue = backlog(clock)
    sink.full = True
    queue.submit(1, sink.writer(0))
    with caplog.at_level(logging.ERROR, logger="test.backlog"):
        queue.close()
    assert "1 records never written" in caplog.text


def test_backlog_retry_thread_writes_held_records_by_itself() -> None:
    sink = Sink()
    queue = Backlog("x", "y", logging.getLogger("test.backlog"), retry_interval=0.01)
    sink.full = True
    queue.submit(1, sink.writer(0))
    sink.full = False
    retrier = queue._retrier
    assert retrier is not None
    retrier.join(10)  # it ends once nothing is held
    assert not retrier.is_alive()
    assert sink.written == [0]
    queue.close()


# --- the file output plugins on a disk that fills and empties ---------------------------------


def test_file_outputs_on_a_full_disk_hold_and_then_write_everything(
    disk: Disk, caplog: pytest.LogCaptureFixture
) -> None:
    registry = load(
        ("SaveFile", {"attacks_dir": str(disk.path / "attacks"),
                      "downloads_dir": str(disk.path / "dl")}),
        ("logJSON", {"logfile": str(disk.path / "attackers.json")}),
    )
    attacks = [make_attack(b"attack %d " % n + b"x" * 3000) for n in range(8)]
    attacks[5].add_download(make_download(b"MZ" + b"s" * 5000))
    try:
        with caplog.at_level(logging.INFO):
            for n, attack in enumerate(attacks):
                if n == 2:
                    disk.fill()
                if n == 6:
                    disk.free()
                for hook in ("savedata", "postproc"):
                    for _, call in registry.hooks[hook]:
                        call(attack)  # never raises for a full disk
        assert not any(r.exc_info for r in caplog.records)
        assert instance(registry, "logJSON").stats()["spool_depth"] == 0
    finally:
        registry.close()
    lines = (disk.path / "attackers.json").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == [a.id for a in attacks]
    saved = sorted(os.listdir(disk.path / "attacks"))
    assert saved == sorted(os.path.basename(a.analysis["SaveFile"]["attack_file"])
                           for a in attacks)
    for attack in attacks:
        path = attack.analysis["SaveFile"]["attack_file"]
        assert Path(path).read_bytes() == attack.payload
    sample = make_download(b"MZ" + b"s" * 5000).payload
    assert (disk.path / "dl" / sample.md5).read_bytes() == sample.data


@pytest.mark.parametrize("sync_files", ["yes", "no"])
def test_a_batch_of_attack_files_on_a_disk_that_fills_holds_the_rest_in_order(
    disk: Disk, sync_files: str,
) -> None:
    """SaveFile's batch way (with sync_files, the files written unnamed first, settled at once,
    then named) on a disk with room for 10 of 30: those 10 named, the other 20 held in order (no
    started file left open), a later batch held behind them; once room returns, all 32 whole
    and in order."""
    filler = disk.path / "filler"
    filler.write_bytes(b"\0" * ((DISK_PAGES - 20) * PAGE))  # room for 10 files of 2 pages
    registry = load(("SaveFile", {"attacks_dir": str(disk.path / "attacks"),
                                  "downloads_dir": str(disk.path / "dl"),
                                  "sync_files": sync_files}))
    save = instance(registry, "SaveFile")
    attacks = [make_attack(b"attack %d " % n + b"x" * (PAGE + 100)) for n in range(32)]
    descriptors = len(os.listdir("/proc/self/fd"))
    errors: list[BaseException] = []
    try:
        for part in (attacks[:30], attacks[30:]):
            batch = writebatch.WriteBatch()
            with writebatch.running(batch):
                save.savedata_batch(part)
            batch.take().write(lambda _write, exc: errors.append(exc))
        assert errors == []  # a full disk is held, not raised
        assert len(os.listdir(disk.path / "attacks")) == 10
        assert save.stats()["spool_depth"] == 22
        assert len(os.listdir("/proc/self/fd")) == descriptors  # no started file kept open
        filler.unlink()
        assert save.backlog.drain()
    finally:
        registry.close()
    for attack in attacks:
        assert Path(attack.analysis["SaveFile"]["attack_file"]).read_bytes() == attack.payload
    assert len(os.listdir(disk.path / "attacks")) == 32


def test_the_log_file_on_a_full_disk_loses_records_quietly(
    disk: Disk, capsys: pytest.CaptureFixture[str]
) -> None:
    """honeytrap's own log on a full disk: no traceback per record on stderr (logging's
    "--- Logging error ---"), one counted line; after room returns, whole lines again."""
    path = disk.path / "honeytrap.log"
    handler = AppendFileHandler(str(path))
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("test.full_disk.log")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("before")
        disk.fill()
        for n in range(20):
            logger.warning("while full %d %s", n, "x" * 3000)
        disk.free()
        logger.warning("after")
    finally:
        logger.removeHandler(handler)
        handler.close()
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Logging error" not in err
    assert err.count("cannot write the log file") == 1
    assert handler.lost >= 19
    lines = path.read_text().splitlines()
    assert lines[0] == "before" and lines[-1] == "after"  # the next record on a line of its own
