"""A small real disk for full-disk tests: a tmpfs mounted (as root) on a test's directory."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")


class Disk:
    """A tmpfs of `pages` pages at `path`; fill() takes every free byte, free() gives it back."""

    def __init__(self, path: Path, pages: int) -> None:
        self.path = path
        path.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={pages * PAGE},mode=0755",
                        "tmpfs", str(path)], check=True)
        self.filler = path / "filler"

    def fill(self) -> None:
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while True:
                try:
                    os.write(fd, b"\0" * PAGE)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
            while True:  # the last bytes of a partly used page, if any
                try:
                    if os.write(fd, b"\0") == 0:
                        break
                except OSError:
                    break
        finally:
            os.close(fd)

    def free(self) -> None:
        self.filler.unlink()

    def unmount(self) -> None:
        subprocess.run(["umount", str(self.path)], check=True)
