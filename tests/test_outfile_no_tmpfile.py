"""A filesystem without O_TMPFILE: new files are still complete before their names appear.

outfile writes a new file unnamed (O_TMPFILE) and links it; where the filesystem refuses
O_TMPFILE (EOPNOTSUPP: FUSE filesystems, whose servers do not implement it, and others), it
writes a hidden temporary name, links the final name to it and unlinks the temporary one. The
filesystem here is real: bindfs (FUSE) over a small tmpfs mounted for the test, as root."""

from __future__ import annotations

import errno
import os
import select
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tmpfs import PAGE, Disk

from honeytrap import outfile

# Pages of the disk under the FUSE mount: room for the reader test's files.
DISK_PAGES = 1024
# The reader test: files written while another thread reads every name that appears.
READER_FILES = 200
READER_FILE_BYTES = 2 * PAGE + 100  # more than one write's page: a partial file would show
# bindfs exits at once on SIGTERM; past this something is wrong.
SERVER_EXIT_TIMEOUT = 10.0


class NoTmpfile:
    """bindfs mounted on `path`, over a tmpfs `disk`: a real filesystem without O_TMPFILE."""

    def __init__(self, base: Path, pages: int) -> None:
        if shutil.which("bindfs") is None:
            pytest.fail("bindfs is not installed (debian-packages.txt: tests)")
        self.disk = Disk(base / "disk", pages)
        self.path = base / "fuse"
        self.path.mkdir()
        try:
            # bindfs returns once the filesystem is mounted (then serves it in the background,
            # and exits when it is unmounted).
            subprocess.run(["bindfs", str(self.disk.path), str(self.path)], check=True)
            self.server = os.pidfd_open(server_pid(self.path))
        except BaseException:
            subprocess.run(["umount", str(self.path)], check=False)
            self.disk.unmount()
            raise
        self.dir_fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)

    def names(self) -> list[str]:
        return sorted(os.listdir(self.path))

    def close(self) -> None:
        os.close(self.dir_fd)
        subprocess.run(["umount", str(self.path)], check=True)
        try:
            # A mount namespace another process made meanwhile (ip netns exec: other tests)
            # holds a copy of the mount, and bindfs serves it while one does: it is stopped
            # (by its pid), and holds the disk until it has exited.
            signal.pidfd_send_signal(self.server, signal.SIGTERM)
            ready, _, _ = select.select([self.server], [], [], SERVER_EXIT_TIMEOUT)
            assert ready, f"bindfs did not exit {SERVER_EXIT_TIMEOUT:.0f} s after SIGTERM"
        finally:
            os.close(self.server)
            self.disk.unmount()


def server_pid(mount_point: Path) -> int:
    """The bindfs process serving `mount_point` (the one whose arguments end with it)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue  # exited meanwhile
            if argv[0].endswith(b"bindfs") and os.fsencode(mount_point) in argv:
                return int(entry.name)
    raise AssertionError(f"no bindfs process serves {mount_point}")


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[NoTmpfile]:
    fs = NoTmpfile(tmp_path, DISK_PAGES)
    try:
        # What the tests are about: this filesystem refuses O_TMPFILE as outfile expects.
        with pytest.raises(OSError) as info:
            os.close(os.open(".", os.O_WRONLY | os.O_TMPFILE, 0o644, dir_fd=fs.dir_fd))
        assert info.value.errno in outfile._NO_TMPFILE, os.strerror(info.value.errno)
        yield fs
    finally:
        fs.close()


def test_a_new_file_is_complete_under_its_name_and_never_replaces_one(fs: NoTmpfile) -> None:
    data = bytes(range(256)) * 9
    assert outfile.write_numbered(fs.dir_fd, "attack", data) == "attack"
    assert outfile.write_numbered(fs.dir_fd, "attack", b"again") == "attack.1"
    assert outfile.write_new(fs.dir_fd, ["attack", "attack.1", "other"], b"third") == "other"
    assert fs.names() == ["attack", "attack.1", "other"]  # no temporary name left
    assert (fs.path / "attack").read_bytes() == data
    assert (fs.path / "attack.1").read_bytes() == b"again"
    assert (fs.path / "other").read_bytes() == b"third"
    assert os.stat(fs.path / "attack").st_mode & 0o777 == outfile.SAVED_FILE_MODE
    with pytest.raises(FileExistsError):
        outfile.write_new(fs.dir_fd, ["attack", "other"], b"no room")
    assert fs.names() == ["attack", "attack.1", "other"]


def test_a_sample_is_published_once(fs: NoTmpfile) -> None:
    assert outfile.publish(fs.dir_fd, "d41d8cd9", b"sample") is True
    assert outfile.publish(fs.dir_fd, "d41d8cd9", b"sample") is False
    assert fs.names() == ["d41d8cd9"]
    assert (fs.path / "d41d8cd9").read_bytes() == b"sample"


def test_a_new_file_that_does_not_fit_leaves_nothing(fs: NoTmpfile) -> None:
    fs.disk.fill()
    for write in (lambda: outfile.write_numbered(fs.dir_fd, "final", b"x" * (3 * PAGE)),
                  lambda: outfile.publish(fs.dir_fd, "sample", b"y" * (3 * PAGE))):
        with pytest.raises(OSError) as info:
            write()
        assert info.value.errno == errno.ENOSPC
        assert fs.names() == ["filler"]  # neither a partial file nor a temporary name
    fs.disk.free()
    assert outfile.write_numbered(fs.dir_fd, "final", b"x" * (3 * PAGE)) == "final"
    assert fs.names() == ["final"]
    assert (fs.path / "final").read_bytes() == b"x" * (3 * PAGE)


def test_a_reader_never_sees_a_partial_file(fs: NoTmpfile) -> None:
    """A reader listing the directory while files are written finds each name it sees whole
    (the hidden temporary names are not the files' names)."""
    data = b"z" * READER_FILE_BYTES
    done = threading.Event()
    seen: dict[str, int] = {}

    def read() -> None:
        while True:
            finished = done.is_set()  # one more pass after the last file
            for name in os.listdir(fs.path):
                if not name.startswith(".") and name not in seen:
                    seen[name] = len((fs.path / name).read_bytes())
            if finished:
                return

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for n in range(READER_FILES):
            outfile.write_numbered(fs.dir_fd, f"from_port_{n}", data)
    finally:
        done.set()
        reader.join()
    assert len(seen) == READER_FILES
    assert set(seen.values()) == {READER_FILE_BYTES}
    assert len(fs.names()) == READER_FILES
