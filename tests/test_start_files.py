"""Files root opens at start: the pid file is never followed through a link or written unless
regular; a configuration file or include that is not a regular file (a FIFO) is refused at once,
exit 2, naming it. Through the real command line, as root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from honeytrap.pidfile import PidFile, PidFileRefused

REPO = Path(__file__).resolve().parent.parent
HONEYTRAP = [sys.executable, "-m", "honeytrap"]
# Bounds a hang (the bug was a start blocked forever on a FIFO): not a speed assertion.
HANG_BOUND = 30


def start(tmp_path: Path, conf: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HONEYTRAP, "-D", "-C", str(conf), *extra], capture_output=True, text=True,
        timeout=HANG_BOUND, cwd=str(REPO), env=dict(os.environ, PYTHONPATH=str(REPO)),
    )


def plain_config(tmp_path: Path, pidfile: Path) -> Path:
    conf = tmp_path / "ht.conf"
    conf.write_text(f'logfile = "{tmp_path}/ht.log"\npidfile = "{pidfile}"\n')
    return conf


def test_symlinked_pid_file_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("keep me\n")
    link = tmp_path / "ht.pid"
    link.symlink_to(target)
    proc = start(tmp_path, plain_config(tmp_path, link))
    assert proc.returncode == 1
    assert f"pid file {link} is a symbolic link" in proc.stderr
    assert target.read_text() == "keep me\n"
    assert link.is_symlink()


def test_dangling_symlink_at_the_pid_file_path_creates_nothing(tmp_path: Path) -> None:
    """O_CREAT alone would follow a dangling link and create its target."""
    target = tmp_path / "created-through-the-link"
    link = tmp_path / "ht.pid"
    link.symlink_to(target)
    proc = start(tmp_path, plain_config(tmp_path, link))
    assert proc.returncode == 1
    assert "symbolic link" in proc.stderr
    assert not target.exists()


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_pid_file_that_is_not_a_regular_file_is_refused(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "ht.pid"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
    with pytest.raises(PidFileRefused, match=str(path)):
        PidFile(str(path)).acquire()


def test_stale_regular_pid_file_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "ht.pid"
    path.write_text("99999999\n")
    pidfile = PidFile(str(path))
    pidfile.acquire()
    try:
        assert path.read_text() == f"{os.getpid()}\n"
    finally:
        pidfile.release()
    assert not path.exists()


def test_fifo_as_configuration_file_exits_2_naming_it(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.conf"
    os.mkfifo(fifo)
    proc = start(tmp_path, fifo)
    assert proc.returncode == 2
    assert f"{fifo}: not a regular file" in proc.stderr


def test_fifo_as_include_exits_2_naming_it(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.conf"
    os.mkfifo(fifo)
    conf = tmp_path / "ht.conf"
    conf.write_text(f'logfile = "{tmp_path}/ht.log"\ninclude = "fifo.conf"\n')
    proc = start(tmp_path, conf)
    assert proc.returncode == 2
    assert f"{conf}:2" in proc.stderr
    assert f"cannot include {fifo}" in proc.stderr
    assert "not a regular file" in proc.stderr
