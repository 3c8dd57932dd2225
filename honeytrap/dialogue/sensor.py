"""Per-sensor choices (a version string, a certificate subject) made from lists in data files.

A list file in templates/ holds one choice per line (blank lines and lines starting with "#"
are skipped). A sensor always makes the same choice (seeded by its host name), so one sensor
looks like one stable server, while two sensors differ.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from honeytrap import resources
from honeytrap.errors import ConfigError

# A list file is a few lines; a bigger one is not ours.
MAX_LIST_FILE = 64 * 1024


def shipped(name: str) -> Path:
    """The list file `name` honeytrap ships in its templates (resources.py)."""
    return resources.data_path(f"{resources.TEMPLATES}/{name}")


@functools.cache
def choices(name: str) -> tuple[str, ...]:
    """The lines of the shipped list file `name` (read once per process)."""
    path = shipped(name)
    with path.open("rb") as f:
        data = f.read(MAX_LIST_FILE + 1)
    if len(data) > MAX_LIST_FILE:
        raise ConfigError(f"over {MAX_LIST_FILE} bytes", file=str(path))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8: {exc}", file=str(path)) from exc
    lines = tuple(line.strip() for line in text.splitlines())
    picked = tuple(line for line in lines if line and not line.startswith("#"))
    if not picked:
        raise ConfigError("no choice in the file", file=str(path))
    return picked


def pick(name: str, hostname: str) -> str:
    """This sensor's choice from the list file `name` (stable per host name)."""
    options = choices(name)
    seed = hashlib.sha256(f"{name}\0{hostname}".encode()).digest()
    return options[int.from_bytes(seed[:8], "big") % len(options)]
