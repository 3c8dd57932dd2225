"""The benchmark's work directory: where the daemon's files go, and the filesystem under them.

honeytrap's SaveFile creates one file per attack, so the cost of creating a file is part of
honeytrap's figure, and on a filesystem that has seen many deletions it depends on what the disk
did before the run (ext4's find_inode_bit -> recently_deleted, see bench/README.md). By default
the run therefore works on a filesystem of its own, made for it and gone after it: a sparse
image file in the --workdir parent, formatted ext4 with mke2fs's defaults (a journal: what a
sensor's /var would be), loop-mounted on the work directory. Where that cannot be done (no loop
device, no mkfs.ext4, a container without the loop module or the right to mount), the work
directory is a plain directory in the parent, and WorkDir.why says why.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from honeytrap import privileges

# The image's size. Sparse, it costs only the blocks written: the journal, then the run's
# files: the soak alone writes one 4 KiB attack file per connection (10 minutes at 1,000/s:
# 600,000 files, 2.4 GiB), and each daemon's directory is deleted once counted. 32 GiB with one
# inode per FRESH_FS_INODE_BYTES gives 8 million inodes: a soak at over 10,000/s fits.
FRESH_FS_BYTES = 32 * 1024**3
FRESH_FS_INODE_BYTES = 4096
# Free space the parent must have for the image to grow into: about twice what a full run
# writes at this machine's rates. A loop device whose backing file cannot grow turns the
# daemon's writes into I/O errors.
FRESH_FS_MIN_FREE = 6 * 1024**3
# mkfs.ext4, mount and umount each take well under a second; one that hangs means a broken
# loop setup, and the run falls back rather than wait.
FRESH_FS_COMMAND_TIMEOUT = 60.0
# umount can find the filesystem busy for a moment after the daemon's last process exits:
# this many tries, this far apart (seconds), before leaving it mounted and saying so.
UMOUNT_TRIES = 10
UMOUNT_PAUSE = 0.5
# The names of what the run makes in the parent (the directory, and the image beside it).
# Who the daemon's unprivileged processes run as in the benchmark (bench/run.py's -u/-g).
DAEMON_USER, DAEMON_GROUP = "nobody", "nogroup"
PREFIX = "honeytrap-bench-"
IMAGE_SUFFIX = ".img"
# The reason recorded when the fresh filesystem was turned off on the command line.
NOT_ASKED = "--no-fresh-fs"


@dataclass(frozen=True)
class WorkDir:
    path: Path
    fresh_fs: bool  # a filesystem of its own, loop-mounted on `path`
    why: str | None  # why not, when it is not
    image: Path | None  # the image file behind it, when it is


# --- where a path is ---------------------------------------------------------------------------


def problem(parent: Path) -> str | None:
    """Why --workdir cannot hold the run's work directory, if it cannot."""
    if not parent.is_dir():
        return f"{parent} is not a directory"
    closed = privileges.closed_to(str(parent), privileges.resolve(DAEMON_USER, DAEMON_GROUP))
    if closed is not None:
        return (f"nobody cannot enter {closed}, and the daemon's unprivileged processes "
                "(running as nobody) work below it")
    return None


def mount_of(path: Path) -> tuple[str, str, str]:
    """The mount point, filesystem type and source of the filesystem `path` is on (the longest
    mount point above it, from /proc/self/mountinfo; fields per proc(5): mount point 5th, then
    after the ' - ' the type and the source)."""
    best, kind, source = "", "unknown", ""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields, _, rest = line.partition(" - ")
        mount = fields.split()[4]
        inside = str(path) == mount or str(path).startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, (kind, source) = mount, rest.split()[:2]
    return best, kind, source


def filesystem(path: Path) -> str:
    """The type of the filesystem `path` is on."""
    return mount_of(path)[1]


def journal(path: Path) -> bool | None:
    """Whether the ext3/ext4 filesystem `path` is on has a journal: the kernel lists a data=
    mode among its options (/proc/fs/ext4/<device>/options) only then. None if not known."""
    _, kind, source = mount_of(path)
    if kind not in ("ext3", "ext4") or not source.startswith("/dev/"):
        return None
    device = os.path.basename(os.path.realpath(source))  # /dev/mapper/x -> dm-0
    try:
        options = Path(f"/proc/fs/ext4/{device}/options").read_text().split()
    except OSError:
        return None
    return any(option.startswith("data=") for option in options)


def mounted(path: Path) -> bool:
    """Whether `path` is a mount point in this mount namespace (/proc/self/mountinfo)."""
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return any(line.split()[4] == str(path) for line in lines)


# --- the fresh filesystem ----------------------------------------------------------------------


def run_tool(argv: list[str]) -> str | None:
    """Run mkfs.ext4, mount or umount; what went wrong, if something did."""
    tool = shutil.which(argv[0])
    if tool is None:
        return f"{argv[0]} is not installed"
    try:
        proc = subprocess.run([tool, *argv[1:]], capture_output=True, text=True, check=False,
                              timeout=FRESH_FS_COMMAND_TIMEOUT)
    except subprocess.TimeoutExpired:
        return f"{argv[0]} did not finish in {FRESH_FS_COMMAND_TIMEOUT:.0f} s"
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return f"{argv[0]} failed: {lines[-1] if lines else f'exit status {proc.returncode}'}"
    return None


def new_image(parent: Path) -> Path:
    """An empty sparse file of FRESH_FS_BYTES in `parent`."""
    fd, name = tempfile.mkstemp(prefix=PREFIX, suffix=IMAGE_SUFFIX, dir=parent)
    try:
        os.ftruncate(fd, FRESH_FS_BYTES)
    finally:
        os.close(fd)
    return Path(name)


def format_and_mount(image: Path, mount_point: Path) -> str | None:
    """mkfs.ext4 with the defaults but the inode ratio, then loop-mount on `mount_point`; what
    failed, if any."""
    return (run_tool(["mkfs.ext4", "-q", "-F", "-i", str(FRESH_FS_INODE_BYTES), str(image)])
            or run_tool(["mount", "-o", "loop", str(image), str(mount_point)]))


def unmount(mount_point: Path) -> bool:
    """Unmount `mount_point`, trying again while it is busy; whether it is unmounted. The loop
    device that `mount -o loop` set up is released with it (autoclear)."""
    for attempt in range(UMOUNT_TRIES):
        if not mounted(mount_point):
            return True
        if attempt:
            time.sleep(UMOUNT_PAUSE)
        run_tool(["umount", str(mount_point)])
    return not mounted(mount_point)


def release(path: Path, image: Path | None) -> bool:
    """Undo whatever of the fresh filesystem exists; whether `path` may now be removed."""
    if mounted(path) and not unmount(path):
        sys.stderr.write(f"bench/run.py: {path} stays mounted (busy); its image is {image}\n")
        return False
    if image is not None:
        image.unlink(missing_ok=True)
    return True


def fresh_fs_problem(parent: Path) -> str | None:
    """Why no image can go in `parent`, before trying: too little room for it to grow."""
    free = shutil.disk_usage(parent).free
    if free < FRESH_FS_MIN_FREE:
        return (f"{parent} has {free // 1024**2} MiB free, the image needs "
                f"{FRESH_FS_MIN_FREE // 1024**2}")
    return None


@contextlib.contextmanager
def work_directory(parent: Path, fresh: bool) -> Iterator[WorkDir]:
    """A new work directory in `parent`, mode 0755 (the dynamic servers run as nobody and create
    files there): on a fresh loop-mounted ext4 if `fresh` and it can be made, else a plain one.
    Removed at the end, the filesystem unmounted and its image deleted, also on errors and
    Ctrl-C."""
    path = Path(tempfile.mkdtemp(prefix=PREFIX, dir=parent))
    image: Path | None = None
    why: str | None = NOT_ASKED
    try:
        if fresh:
            why = fresh_fs_problem(parent)
            if why is None:
                image = new_image(parent)
                why = format_and_mount(image, path)
            if why is not None:
                if not release(path, image):
                    raise RuntimeError(f"{path} could not be unmounted after: {why}")
                image = None
                sys.stderr.write(f"bench/run.py: no fresh filesystem ({why}); the work "
                                 f"directory is a plain directory in {parent}\n")
        os.chmod(path, 0o755)  # noqa: S103 - the dynamic servers run as nobody
        yield WorkDir(path, image is not None, why, image)
    finally:
        if release(path, image):
            shutil.rmtree(path, ignore_errors=True)
