"""A writer killed while writing a new file leaves no partial file under the file's name.

A child process writes large files with outfile.write_numbered, saying when it starts each and
its name once it is written; it is killed (SIGKILL) while it writes the second: once it said it
starts it and has then run INTO_WRITE_NS more on a CPU (its /proc/PID/schedstat), well past the
file's open and well before the end of its write of FILE_BYTES. Every name then in the
directory holds the whole file: with O_TMPFILE the unwritten file had no name and is gone with
the process; without it (bindfs: no O_TMPFILE) only a hidden temporary name may hold a part."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_outfile_no_tmpfile import NoTmpfile

from honeytrap import outfile

REPO = Path(__file__).resolve().parent.parent
FILE_BYTES = 32 * 1024 * 1024
WRITTEN_BEFORE_KILL = 1
# Pages of the no-O_TMPFILE filesystem: the files written before the kill and the one cut.
DISK_PAGES = (WRITTEN_BEFORE_KILL + 2) * FILE_BYTES // os.sysconf("SC_PAGE_SIZE")
CHILD_TIMEOUT = 60.0
# CPU time the writer runs after saying it starts a file before it is killed: past the open's
# few microseconds, inside the write (~10 ms per 32 MiB here; a killed write stops short).
INTO_WRITE_NS = 2_000_000

WRITER = """
import os, sys
from honeytrap import outfile
dir_fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
data = b"a" * int(sys.argv[2])
n = 0
while True:
    print("start", flush=True)
    print(outfile.write_numbered(dir_fd, f"from_port_{n}", data), flush=True)
    n += 1
"""


def run_time(pid: int) -> int:
    """Nanoseconds process `pid` has run on a CPU (proc(5): /proc/PID/schedstat's first)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


def kill_while_writing(directory: Path) -> list[str]:
    """Run the writer in `directory`, kill it once it starts the file after
    WRITTEN_BEFORE_KILL files; their names."""
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(directory), str(FILE_BYTES)],
        stdout=subprocess.PIPE, text=True, cwd=str(REPO),
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    written: list[str] = []
    try:
        assert child.stdout is not None
        while True:
            line = child.stdout.readline().strip()
            assert line, "the writer stopped before it was killed"
            if line != "start":
                written.append(line)
            elif len(written) == WRITTEN_BEFORE_KILL:
                break
        start, deadline = run_time(child.pid), time.monotonic() + CHILD_TIMEOUT
        while run_time(child.pid) - start < INTO_WRITE_NS:
            # The writer is on a CPU, in its write: watched, not waited for.
            assert child.poll() is None, "the writer exited before it was killed"
            assert time.monotonic() < deadline, "the writer does not run"
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        status = child.wait(CHILD_TIMEOUT)
        if child.stdout is not None:
            child.stdout.close()
    assert status == -signal.SIGKILL
    return written


def assert_only_whole_files(directory: Path, written: list[str], hidden_allowed: bool) -> None:
    names = sorted(os.listdir(directory))
    visible = [n for n in names if not n.startswith(".")]
    assert set(written) <= set(visible)
    # At most the file being written when the kill came, if it was named just before.
    assert len(visible) <= len(written) + 1
    for name in visible:
        assert (directory / name).stat().st_size == FILE_BYTES, f"{name} is partial"
    hidden = [n for n in names if n.startswith(".")]
    if hidden_allowed:
        assert all(n.startswith(outfile.TEMP_PREFIX) for n in hidden), hidden
        assert len(hidden) <= 1
    else:
        assert hidden == []


def test_with_o_tmpfile_a_killed_writer_leaves_only_whole_files(tmp_path: Path) -> None:
    directory = tmp_path / "attacks"
    directory.mkdir()
    written = kill_while_writing(directory)
    assert_only_whole_files(directory, written, hidden_allowed=False)


def test_without_o_tmpfile_a_killed_writer_leaves_only_whole_files_under_names(
    tmp_path: Path,
) -> None:
    fs = NoTmpfile(tmp_path, DISK_PAGES)
    try:
        with pytest.raises(OSError):  # what the test is about: no O_TMPFILE here
            os.close(os.open(".", os.O_WRONLY | os.O_TMPFILE, 0o644, dir_fd=fs.dir_fd))
        written = kill_while_writing(fs.path)
        assert_only_whole_files(fs.path, written, hidden_allowed=True)
    finally:
        fs.close()
