"""The benchmark's short mode (bench/run.py --quick), run for real once: it must record every
completed connection, serve every idle connection, and produce its table with the filesystem
calibration line, and leave nothing behind (work directory, image, mount). Wall-clock figures are
reported, never asserted (the machine is shared)."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
RUN = [sys.executable, str(REPO / "bench" / "run.py")]
QUICK_TIMEOUT = 110.0  # the quick mode takes ~40 s; CI must stay well under 2 minutes
ONLY_TIMEOUT = 60.0  # one quick phase (latency: 20 fresh ports) takes a few seconds
# bench/workdir.py (the work directory and its fresh filesystem); bench/ is not a package.
sys.path.insert(0, str(REPO / "bench"))
workdir_module = importlib.import_module("workdir")


def mount_points() -> set[str]:
    """The mount points of this mount namespace (proc(5): /proc/self/mountinfo, 5th field)."""
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return {line.split()[4] for line in lines}


def loop_backing_files() -> list[str]:
    """The files behind the loop devices in use (/sys/block/loopN/loop/backing_file)."""
    return [p.read_text().strip() for p in Path("/sys/block").glob("loop*/loop/backing_file")]


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    if os.geteuid() != 0:
        pytest.fail("the benchmark runs as root: it creates network namespaces")
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [*RUN, "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=QUICK_TIMEOUT, cwd=str(REPO),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "latest-quick.json").read_text()), out


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["one_port", "sweep"])
def test_every_completed_connection_is_recorded(quick: tuple[dict[str, Any], Path],
                                                phase: str) -> None:
    """In every rep, honeytrap and both floors completed connections (the sweep's floors on
    both sides of honeytrap, twice the reps), none of honeytrap's timed out or failed; its three
    outputs hold one record per connection completed over all the reps."""
    figures = quick[0]["results"][phase]
    reps = figures["reps"]
    bursts = ("asyncio", "uvloop") + (("asyncio_after", "uvloop_after") if phase == "sweep" else ())
    per_rep = 2 if phase == "sweep" else 1
    assert len(reps) == per_rep * quick[0]["sizes"]["reps"] >= 2  # paired reps, medians
    for rep in reps:
        for target in ("honeytrap", *bursts):
            assert rep[target]["completed"] > 0
        assert {"honeytrap", *bursts} <= set(rep)
        assert phase == "sweep" or not [name for name in rep if name.endswith("_after")]
        assert rep["honeytrap"]["records_wait"] >= 0  # the recorder caught up after each
        # the rate until the last record is written: never above the rate served (the floors
        # write before they close; honeytrap's recorder after its servers)
        for target in ("honeytrap", *bursts):
            assert 0 < rep[target]["recorded_rate"] <= rep[target]["rate"] * 1.001, rep
        # every connection answered: none timed out, none failed (an attacker turned away)
        assert (rep["honeytrap"]["timeout"], rep["honeytrap"]["failed"]) == (0, 0), rep
    completed = sum(rep["honeytrap"]["completed"] for rep in reps)
    outputs = {k: sum(o[k] for o in figures["honeytrap_outputs"]) for k in ("json", "log", "files")}
    assert outputs == {"json": completed, "log": completed, "files": completed}
    assert all(o["exit"] == 0 and o["server_crashes"] == 0
               for o in figures["honeytrap_outputs"])
    for loop in ("asyncio", "uvloop"):
        assert figures["floor_records"][loop] == sum(
            rep[name]["completed"] for rep in reps for name in bursts if name.startswith(loop))


@pytest.mark.slow
def test_the_file_floor_saves_one_file_per_connection(
        quick: tuple[dict[str, Any], Path]) -> None:
    """The file floor (one_port only) records and saves every connection it completed, and its
    rows say where it stands against honeytrap."""
    figures = quick[0]["results"]["one_port"]
    completed = sum(rep["asyncio_files"]["completed"] for rep in figures["reps"])
    assert completed > 0
    assert figures["floor_records"]["asyncio_files"] == completed == figures["floor_files"]
    assert "asyncio_files" not in quick[0]["results"]["sweep"]["reps"][0]
    (table,) = quick[1].glob("bench-quick-*.md")
    assert "against the file floor" in table.read_text()


@pytest.mark.slow
def test_all_idle_connections_are_served(quick: tuple[dict[str, Any], Path]) -> None:
    reps = quick[0]["results"]["idle"]["300"]["reps"]
    assert len(reps) == quick[0]["sizes"]["reps"]
    for idle in reps:
        assert idle["honeytrap"]["served"] == 300
        assert idle["asyncio"]["served"] == 300 and idle["uvloop"]["served"] == 300


@pytest.mark.slow
def test_the_soak_records_and_acknowledges_everything_and_stops_cleanly(
    quick: tuple[dict[str, Any], Path],
) -> None:
    soak = quick[0]["results"]["soak"]
    assert soak["load"]["completed"] > 0
    # Every connection the load started ended served (none left in flight at the load
    # generators' deadline, bench/loadgen.py --duration), and each served one recorded once.
    assert soak["load"]["started"] == soak["load"]["completed"]
    assert soak["load"]["unfinished"] == soak["load"]["timeout"] == soak["load"]["failed"] == 0
    assert soak["outputs"]["json"] == soak["load"]["completed"]
    assert soak["unacknowledged"] == 0
    assert soak["outputs"]["exit"] == 0 and soak["outputs"]["server_crashes"] == 0
    assert soak["samples"]  # memory was sampled during the load
    # ... with what tells why the recorder would fall behind: its queue and pauses, the
    # servers' holds and unacknowledged bytes (-1 until the process reports it), the kernel's
    # dirty pages
    last = soak["samples"][-1]
    assert all(last[key] >= -1 for key in ("pending", "pauses", "held_back", "unacked_bytes"))
    assert max(s["unacked_bytes"] for s in soak["samples"]) >= 0  # the daemon's metrics read
    assert last["dirty_kib"] >= 0 and last["writeback_kib"] >= 0
    # ... and the recorder's time on a core and waiting for one (schedstat): it recorded the
    # load meanwhile, so its time on a core grew from the first sample to the last
    first = soak["samples"][0]
    assert last["recorder_cpu_s"] > first["recorder_cpu_s"] > 0
    assert last["recorder_runq_s"] >= first["recorder_runq_s"] >= 0


@pytest.mark.slow
def test_the_table_is_written(quick: tuple[dict[str, Any], Path]) -> None:
    tables = list(quick[1].glob("bench-quick-*.md"))
    assert len(tables) == 1
    text = tables[0].read_text()
    assert ("| measurement | asyncio floor | uvloop floor | honeytrap | ratio to asyncio | "
            "ratio to uvloop | target |") in text
    assert "first SYN to accept" in text and "PSS at 300 idle" in text
    assert "CPU per connection, one port (us)" in text and "soak: unacknowledged" in text
    assert "soak: the recorder's cores running / runnable and waiting for a core" in text
    assert "master's CPU per fresh port" in text
    assert "connections/s until the last record is written, one port" in text
    assert "floor's rate after honeytrap / before it, in each rep, 1000-port sweep" in text
    assert "Machine load average" in text


@pytest.mark.slow
def test_the_calibration_is_reported_and_its_work_directory_removed(
    quick: tuple[dict[str, Any], Path],
) -> None:
    """The file-creation cost of the work directory's filesystem is in the JSON and under the
    table's title; the work directory (a fresh one in /var/tmp by default) is gone."""
    cal = quick[0]["calibration"]
    assert cal["files"] == 2000 and cal["bytes"] == 200
    assert cal["cpu_us"] > 0 and cal["mean_us"] > 0 and cal["filesystem"] != "unknown"
    workdir = Path(cal["dir"])
    assert workdir.parent == Path("/var/tmp") and workdir.name.startswith("honeytrap-bench-")
    assert not workdir.exists()
    text = next(quick[1].glob("bench-quick-*.md")).read_text()
    assert f"Work directory {workdir} ({cal['filesystem']}" in text
    assert "): creating, writing (200 B) and closing one file there cost" in text


@pytest.mark.slow
def test_the_json_says_whether_the_filesystem_was_fresh_and_nothing_of_it_stays(
    quick: tuple[dict[str, Any], Path],
) -> None:
    """The quick run worked on a fresh loop-mounted ext4 with a journal, or the JSON and the
    calibration line say why not; afterwards its directory, image, mount and loop device are
    gone."""
    cal = quick[0]["calibration"]
    text = next(quick[1].glob("bench-quick-*.md")).read_text()
    assert isinstance(cal["fresh_fs"], bool)
    if cal["fresh_fs"]:
        assert cal["why"] is None and cal["filesystem"] == "ext4" and cal["journal"] is True
        image = Path(cal["image"])
        assert image.parent == Path("/var/tmp") and not image.exists()
        assert not [f for f in loop_backing_files() if f.startswith(str(image))]
        assert "(ext4 with journal, fresh: a loop-mounted image on /var/tmp)" in text
    else:
        assert cal["why"] and cal["image"] is None
        assert f", not fresh: {cal['why']}): creating" in text
    assert not Path(cal["dir"]).exists()
    assert cal["dir"] not in mount_points()


@pytest.fixture
def parent_dir() -> Iterator[Path]:
    """A directory the user nobody can enter, outside /tmp (pytest's directories are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="honeytrap-test-bench-", dir="/var/tmp"))
    os.chmod(path, 0o755)  # noqa: S103 - the daemon's servers run as nobody
    try:
        yield path
    finally:
        shutil.rmtree(path)


@pytest.mark.slow
def test_only_runs_the_phases_named_in_a_fresh_directory_of_workdir(
    parent_dir: Path, tmp_path: Path,
) -> None:
    proc = subprocess.run(
        [*RUN, "--quick", "--only", "latency", "--workdir", str(parent_dir), "--out",
         str(tmp_path)],
        capture_output=True, text=True, timeout=ONLY_TIMEOUT, cwd=str(REPO),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "latest-quick-latency.json").read_text())
    assert data["phases"] == ["latency"] and list(data["results"]) == ["latency"]
    assert len(data["results"]["latency"]["honeytrap"]) > 0
    assert Path(data["calibration"]["dir"]).parent == parent_dir
    assert list(parent_dir.iterdir()) == []  # the run's work directory is removed
    assert not (tmp_path / "latest-quick.json").exists()  # a partial run is never the whole


@pytest.mark.slow
def test_no_fresh_fs_makes_a_plain_directory_on_the_workdir_filesystem(
    parent_dir: Path, tmp_path: Path,
) -> None:
    proc = subprocess.run(
        [*RUN, "--quick", "--only", "latency", "--no-fresh-fs", "--workdir", str(parent_dir),
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=ONLY_TIMEOUT, cwd=str(REPO),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    cal = json.loads((tmp_path / "latest-quick-latency.json").read_text())["calibration"]
    assert cal["fresh_fs"] is False and cal["why"] == "--no-fresh-fs" and cal["image"] is None
    assert cal["filesystem"] == workdir_module.filesystem(parent_dir)
    assert "no fresh filesystem" not in proc.stderr  # asked for, not a fallback
    assert list(parent_dir.iterdir()) == []


def test_an_error_in_the_run_still_unmounts_and_removes_the_fresh_filesystem(
    parent_dir: Path,
) -> None:
    """What Ctrl-C does in the middle of a run: the work directory's filesystem is unmounted,
    its image deleted and the directory removed, the files in it with them."""
    with pytest.raises(KeyboardInterrupt):
        with workdir_module.work_directory(parent_dir, fresh=True) as wd:
            (wd.path / "attack").write_bytes(b"x")
            assert wd.fresh_fs == (str(wd.path) in mount_points()), wd.why
            assert os.stat(wd.path).st_mode & 0o777 == 0o755
            raise KeyboardInterrupt
    assert str(wd.path) not in mount_points()
    assert list(parent_dir.iterdir()) == []


def test_without_mkfs_the_work_directory_falls_back_to_a_plain_one(
    parent_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """A machine without e2fsprogs (a PATH without mkfs.ext4): a plain directory, and why."""
    monkeypatch.setenv("PATH", str(tmp_path))
    with workdir_module.work_directory(parent_dir, fresh=True) as wd:
        assert not wd.fresh_fs and wd.image is None
        assert wd.why == "mkfs.ext4 is not installed"
        assert [p.name for p in parent_dir.iterdir()] == [wd.path.name]  # no image left
    assert "no fresh filesystem (mkfs.ext4 is not installed)" in capsys.readouterr().err
    assert list(parent_dir.iterdir()) == []


def test_a_workdir_nobody_can_enter_is_refused(tmp_path: Path) -> None:
    # Under a directory nobody may pass (pytest's own base is 0700: it would be named first).
    with tempfile.TemporaryDirectory(dir="/tmp") as base:
        os.chmod(base, 0o711)  # noqa: S103 - nobody must pass through it
        closed = Path(base) / "closed"
        closed.mkdir(mode=0o700)
        proc = subprocess.run(
            [*RUN, "--quick", "--workdir", str(closed), "--out", str(tmp_path)],
            capture_output=True, text=True, timeout=ONLY_TIMEOUT, cwd=str(REPO),
        )
        assert proc.returncode == 2
        assert f"nobody cannot enter {closed}," in proc.stderr
        assert list(closed.iterdir()) == []


def test_an_unknown_phase_is_a_usage_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*RUN, "--quick", "--only", "latency,warp", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=ONLY_TIMEOUT, cwd=str(REPO),
    )
    assert proc.returncode == 2 and "not warp" in proc.stderr


def test_the_line_counter_reads_only_what_was_appended(tmp_path: Path) -> None:
    """The soak's record count (bench/harness.py LineCounter) reads each byte of the growing
    log once, not the whole file at every sample, and counts a line once it is complete."""
    harness = importlib.import_module("harness")
    log = tmp_path / "attackers.json"
    counter = harness.LineCounter(log)
    assert counter() == 0  # not written yet
    log.write_bytes(b'{"a":1}\n{"a":2}\n{"a"')
    assert counter() == 2
    assert counter.offset == log.stat().st_size
    with log.open("ab") as f:
        f.write(b':3}\n' + b'{"a":4}\n' * 1000)
    before = counter.offset
    assert counter() == 1003
    assert counter.offset - before == 4 + 8 * 1000  # the appended bytes alone
    assert counter() == 1003
    assert harness.wait_lines(counter, 1003, 0.0) >= 0


def test_the_recorded_rate_ends_with_the_last_write_after_the_burst(tmp_path: Path) -> None:
    """bench/harness.py's rate until recorded: the burst's completed connections over the span
    from its start to the last write of an output, or to its own end if every write came
    before it; a path not written (yet) is left out."""
    harness = importlib.import_module("harness")
    out = tmp_path / "attackers.json"
    out.write_text("{}\n")
    os.utime(out, ns=(0, 1_010 * 10**9))
    written = harness.last_write([out, tmp_path / "absent"])
    assert written == 1_010.0
    assert harness.last_write([tmp_path / "absent"]) == 0.0
    burst = {"completed": 800, "started_at": 1_000.0, "ended_at": 1_008.0}
    assert harness.recorded_rate(burst, written) == 80.0  # 800 over 10 s, not 8
    assert harness.recorded_rate(burst, 1_004.0) == 100.0  # written within the burst
    assert harness.recorded_rate({**burst, "ended_at": 1_000.0}, 0.0) == 0.0  # no span


def test_the_file_cost_bench_writes_every_file_each_way_and_leaves_nothing(
    parent_dir: Path,
) -> None:
    """bench/filecost.py on a fresh filesystem: each way's line, every kept file under its name
    with its bytes (the script checks, exit 0), the filesystem unmounted and removed."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "filecost.py"), "--files", "40", "--rounds", "2",
         "--workdir", str(parent_dir)],
        capture_output=True, text=True, timeout=ONLY_TIMEOUT, cwd=str(REPO),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    filecost = importlib.import_module("filecost")
    ways = [line.split()[0] for line in proc.stdout.splitlines()[1:]]
    assert ways == list(filecost.WAYS)
    assert "(fresh ext4;" in proc.stdout.splitlines()[0] or "not fresh" in proc.stdout
    assert list(parent_dir.iterdir()) == []


def test_the_file_cost_check_finds_a_temporary_name_or_a_short_file(tmp_path: Path) -> None:
    """What filecost.check would report: a way that left a temporary name, a file short of its
    bytes, a file missing."""
    filecost = importlib.import_module("filecost")
    (tmp_path / "a").write_bytes(b"x" * 200)
    assert filecost.check(tmp_path, "excl", 1, 200) is None
    assert filecost.check(tmp_path, "excl", 2, 200) == "excl: 1 files, 2 expected"
    (tmp_path / "b").write_bytes(b"x" * 10)
    assert filecost.check(tmp_path, "excl", 2, 200) == "excl: 1 files of the wrong size, e.g. b"
    (tmp_path / ".tmp-c").write_bytes(b"")
    assert filecost.check(tmp_path, "excl", 2, 200) == (
        "excl: 1 temporary names left, e.g. .tmp-c")


RECORDER_MEMORY_TIMEOUT = 60.0  # a 3-s run: the recorder's fork, its load and its stop


def test_recorder_memory_samples_the_recorder_and_its_own_figures(
    parent_dir: Path, tmp_path: Path,
) -> None:
    """bench/recordermemory.py: every sample has the recorder's smaps figures and, with
    --probe, the ones it reports itself; every attack sent was acknowledged (it exits 0)."""
    out = tmp_path / "samples.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "recordermemory.py"), "--seconds", "3",
         "--sample", "1", "--warmup", "1", "--rate", "500", "--probe", "--no-fresh-fs",
         "--workdir", str(parent_dir), "--json", str(out)],
        capture_output=True, text=True, timeout=RECORDER_MEMORY_TIMEOUT, cwd=str(REPO),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    samples = json.loads(out.read_text())
    assert len(samples) >= 3
    assert all(s["Pss"] > 0 and s["rss_heap"] > 0 for s in samples)
    assert all(s["blocks"] > 0 and s["threads"] >= 2 and "pymalloc_in_use" in s
               for s in samples)
    assert samples[-1]["sent"] > 0 and "Pss:" in proc.stdout
    assert list(parent_dir.iterdir()) == []
