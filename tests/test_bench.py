"""The benchmark's short mode (bench/run.py --quick), run for real once: it must record every
completed connection, serve every idle connection, and produce its table with the filesystem
calibration line. Wall-clock figures are reported, never asserted (the machine is shared)."""

from __future__ import annotations

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
QUICK_TIMEOUT = 110.0  # the quick mode takes ~15 s; CI must stay well under 2 minutes
ONLY_TIMEOUT = 60.0  # one quick phase (latency: 20 fresh ports) takes a few seconds


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


@pytest.mark.parametrize("phase", ["one_port", "sweep"])
def test_every_completed_connection_is_recorded(quick: tuple[dict[str, Any], Path],
                                                phase: str) -> None:
    honeytrap = quick[0]["results"][phase]["honeytrap"]
    assert honeytrap["completed"] > 0
    assert honeytrap["records_json"] == honeytrap["completed"]
    assert honeytrap["records_log"] == honeytrap["completed"]
    assert honeytrap["records_files"] == honeytrap["completed"]  # 200-byte payloads saved


def test_all_idle_connections_are_served(quick: tuple[dict[str, Any], Path]) -> None:
    idle = quick[0]["results"]["idle_300"]
    assert idle["honeytrap"]["served"] == 300
    assert idle["baseline"]["served"] == 300


def test_the_table_is_written(quick: tuple[dict[str, Any], Path]) -> None:
    tables = list(quick[1].glob("bench-quick-*.md"))
    assert len(tables) == 1
    text = tables[0].read_text()
    assert "| measurement | baseline | honeytrap | ratio | target |" in text
    assert "first SYN to accept" in text and "PSS at 300 idle" in text


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
    assert f"Work directory {workdir} ({cal['filesystem']}): creating, writing" in text


@pytest.fixture
def parent_dir() -> Iterator[Path]:
    """A directory the user nobody can enter, outside /tmp (pytest's directories are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="honeytrap-test-bench-", dir="/var/tmp"))
    os.chmod(path, 0o755)  # noqa: S103 - the daemon's servers run as nobody
    try:
        yield path
    finally:
        shutil.rmtree(path)


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


def test_a_workdir_nobody_can_enter_is_refused(tmp_path: Path) -> None:
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    proc = subprocess.run(
        [*RUN, "--quick", "--workdir", str(closed), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=ONLY_TIMEOUT, cwd=str(REPO),
    )
    assert proc.returncode == 2
    assert f"nobody cannot enter {closed}" in proc.stderr
    assert list(closed.iterdir()) == []


def test_an_unknown_phase_is_a_usage_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*RUN, "--quick", "--only", "latency,warp", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=ONLY_TIMEOUT, cwd=str(REPO),
    )
    assert proc.returncode == 2 and "not warp" in proc.stderr
