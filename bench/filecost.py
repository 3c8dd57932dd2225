"""The kernel's CPU per attack file: ways of writing a small new file, side by side.

SaveFile writes one file per attack (outfile.write_numbered: O_TMPFILE, write, linkat
AT_EMPTY_PATH, close). This writes --files files of --size bytes each way in turn (round
robin, --rounds rounds: A B C ... A B C ...), each way in a directory of its own on a fresh
filesystem (bench/workdir.py), and prints each way's CPU time per file (user + system of this
process, getrusage) as the median over the rounds, with min-max, and its system part. Some
ways are references only, not atomic (marked): what the atomic ones are measured against.

    .venv/bin/python bench/filecost.py [--files 2000] [--rounds 7] [--ways tmpfile,excl]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

from workdir import work_directory

from honeytrap import outfile

DEFAULT_FILES = 2000
DEFAULT_ROUNDS = 7
# The load bench/run.py sends: a 200-byte payload per connection, one file each.
DEFAULT_SIZE = 200
_AT_EMPTY_PATH = 0x1000
_RENAME_NOREPLACE = 1
_libc = ctypes.CDLL(None, use_errno=True)
_libc.linkat.restype = ctypes.c_int
_libc.renameat2.restype = ctypes.c_int
TMPFILE = os.O_WRONLY | os.O_TMPFILE | os.O_CLOEXEC
CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW

Way = Callable[[int, str, bytes], None]
# The reference ways that keep no file (what is left after each round is checked).
KEEP_NOTHING = frozenset({"tmpfile_nolink"})


def way_write_numbered(dir_fd: int, name: str, data: bytes) -> None:
    """outfile.write_numbered: a file alone, settled (sync_file_range) before its link."""
    outfile.write_numbered(dir_fd, name, data)


def way_tmpfile_link(dir_fd: int, name: str, data: bytes) -> None:
    """O_TMPFILE, write, linkat(AT_EMPTY_PATH), close: the syscalls alone."""
    fd = os.open(".", TMPFILE, 0o644, dir_fd=dir_fd)
    os.write(fd, data)
    if _libc.linkat(fd, b"", dir_fd, name.encode(), _AT_EMPTY_PATH) != 0:
        raise OSError(ctypes.get_errno(), "linkat")
    os.close(fd)


def way_tmpfile_proc_link(dir_fd: int, name: str, data: bytes) -> None:
    """As tmpfile_link, linked through /proc/self/fd (the kernel before 6.10)."""
    fd = os.open(".", TMPFILE, 0o644, dir_fd=dir_fd)
    os.write(fd, data)
    os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dir_fd)
    os.close(fd)


def way_temp_rename(dir_fd: int, name: str, data: bytes) -> None:
    """A temporary name, write, close, renameat2(RENAME_NOREPLACE) to the name (a crash may
    leave the temporary name behind)."""
    temp = f".tmp-{name}"
    fd = os.open(temp, CREATE, 0o644, dir_fd=dir_fd)
    os.write(fd, data)
    os.close(fd)
    if _libc.renameat2(dir_fd, temp.encode(), dir_fd, name.encode(), _RENAME_NOREPLACE) != 0:
        raise OSError(ctypes.get_errno(), "renameat2")


def way_temp_link_unlink(dir_fd: int, name: str, data: bytes) -> None:
    """outfile's way without O_TMPFILE: a temporary name, link, unlink."""
    temp = f".tmp-{name}"
    fd = os.open(temp, CREATE, 0o644, dir_fd=dir_fd)
    os.write(fd, data)
    os.close(fd)
    os.link(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    os.unlink(temp, dir_fd=dir_fd)


def way_excl(dir_fd: int, name: str, data: bytes) -> None:
    """Reference, not atomic: O_CREAT|O_EXCL under the name, write, close."""
    fd = os.open(name, CREATE, 0o644, dir_fd=dir_fd)
    os.write(fd, data)
    os.close(fd)


def way_tmpfile_nolink(dir_fd: int, name: str, data: bytes) -> None:
    """Reference, no file kept: O_TMPFILE, write, close."""
    fd = os.open(".", TMPFILE, 0o644, dir_fd=dir_fd)
    os.write(fd, data)
    os.close(fd)


def way_empty(dir_fd: int, name: str, data: bytes) -> None:
    """Reference, not atomic: an empty file created and closed."""
    os.close(os.open(name, CREATE, 0o644, dir_fd=dir_fd))


WAYS: dict[str, Way] = {
    "write_numbered": way_write_numbered,
    "tmpfile_link": way_tmpfile_link,
    "tmpfile_proc_link": way_tmpfile_proc_link,
    "temp_rename": way_temp_rename,
    "temp_link_unlink": way_temp_link_unlink,
    "excl": way_excl,
    "tmpfile_nolink": way_tmpfile_nolink,
    "empty": way_empty,
}


def cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def run_round(way: Way, dir_fd: int, tag: str, files: int, data: bytes) -> tuple[float, float]:
    """CPU seconds (user, system) for `files` files written `way`."""
    names = [f"from_port_{1024 + n % 1000}-tcp_2026-12-02T052000_{tag}{n:08d}"
             for n in range(files)]
    user0, system0 = cpu()
    for name in names:
        way(dir_fd, name, data)
    user1, system1 = cpu()
    return user1 - user0, system1 - system0


def check(directory: Path, way: str, files: int, size: int) -> str | None:
    """What is wrong with what `way` left in its directory after `files` files, if anything:
    every file under its name, `size` bytes each, no temporary name left."""
    names = os.listdir(directory)
    hidden = [n for n in names if n.startswith(".")]
    if hidden:
        return f"{way}: {len(hidden)} temporary names left, e.g. {hidden[0]}"
    expected = 0 if way in KEEP_NOTHING else files
    if len(names) != expected:
        return f"{way}: {len(names)} files, {expected} expected"
    wrong = [n for n in names if (directory / n).stat().st_size != (0 if way == "empty" else size)]
    return f"{way}: {len(wrong)} files of the wrong size, e.g. {wrong[0]}" if wrong else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=DEFAULT_FILES)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE)
    parser.add_argument("--ways", default=",".join(WAYS))
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--no-fresh-fs", action="store_true")
    args = parser.parse_args(argv)
    ways = args.ways.split(",")
    unknown = [w for w in ways if w not in WAYS]
    if unknown:
        parser.error(f"unknown ways: {', '.join(unknown)} (known: {', '.join(WAYS)})")
    data = bytes(n % 251 for n in range(args.size))
    per_file: dict[str, list[float]] = {w: [] for w in ways}
    system: dict[str, list[float]] = {w: [] for w in ways}
    load = os.getloadavg()[0]
    with work_directory(args.workdir.resolve(), not args.no_fresh_fs) as wd:
        fds = {}
        for w in ways:
            (wd.path / w).mkdir()
            fds[w] = os.open(wd.path / w, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for r in range(args.rounds):
                for w in ways:
                    u, s = run_round(WAYS[w], fds[w], f"r{r}", args.files, data)
                    per_file[w].append((u + s) / args.files * 1e6)
                    system[w].append(s / args.files * 1e6)
            problems = [p for w in ways
                        if (p := check(wd.path / w, w, args.files * args.rounds, args.size))]
        finally:
            for fd in fds.values():
                os.close(fd)
        where = "fresh ext4" if wd.fresh_fs else f"not fresh: {wd.why}"
    print(f"# {args.files} files of {args.size} B x {args.rounds} rounds, round robin "
          f"({where}; load {load:.2f} -> {os.getloadavg()[0]:.2f}); CPU us per file")
    for w in ways:
        values = per_file[w]
        print(f"{w:20s} median {statistics.median(values):6.1f}  min {min(values):6.1f}  "
              f"max {max(values):6.1f}  (system {statistics.median(system[w]):5.1f})")
    for problem in problems:
        print(f"bench/filecost.py: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
