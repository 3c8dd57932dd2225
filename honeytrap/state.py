"""The sensor's own state: `state_dir` (default /var/lib/honeytrap) and the sensor id in it.

A fleet's central store (PostgreSQL, hpfeeds, an ELK fed by many attackers.json) must tell its
sensors apart: every record names its sensor. The id is the `sensor_id` key when given, else one
made at first start (a random UUID) and kept in `<state_dir>/sensor-id`, so it survives restarts
and upgrades. Other per-sensor material (the TLS certificate) lives in the same directory.

The file is written to a temporary name and linked into place (link(2) fails if it exists), so
two starts at once agree on one id and nobody reads a half-written file. A state directory that
cannot be written (a read-only root without a volume for it) is not fatal: the id is then derived
from the host name (stable while the host name is), and the log says so.
"""

from __future__ import annotations

import errno
import logging
import os
import socket

from honeytrap.errors import ConfigError

log = logging.getLogger("honeytrap.state")

DEFAULT_STATE_DIR = "/var/lib/honeytrap"
SENSOR_ID_FILE = "sensor-id"
STATE_DIR_MODE = 0o755  # servers (running as -u) read per-sensor material by path
SENSOR_ID_MODE = 0o644
# A sensor id is a name in logs and databases: printable ASCII, bounded (sensors.name, Elastic).
MAX_SENSOR_ID = 128
# A namespace for ids derived from the host name (uuid5), so they never look like made ones.
_HOSTNAME_NAMESPACE = "6b1f0a52-2f3c-4d0e-9a47-2d7c4f6a9e11"


def check_sensor_id(text: str, where: str = "sensor_id") -> str:
    """`text` stripped, if it is a usable sensor id; ConfigError naming `where` otherwise."""
    value = text.strip()
    if not value or len(value) > MAX_SENSOR_ID or not all(" " < c < "\x7f" for c in value):
        raise ConfigError(
            f"a sensor id is 1 to {MAX_SENSOR_ID} printable ASCII characters without spaces, "
            f"not {text[:MAX_SENSOR_ID]!r}", key=where,
        )
    return value


def _read(path: str) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        data = os.read(fd, MAX_SENSOR_ID + 2)
    finally:
        os.close(fd)
    return check_sensor_id(data.decode("ascii", errors="replace"), path)


def _create(state_dir: str, path: str) -> str:
    """A new id, linked into place unless another start got there first (then theirs)."""
    # uuid imported here, in the master at start or reload only: at module level it (and the
    # platform module it imports) were in every process's memory for an id made once.
    import uuid

    os.makedirs(state_dir, STATE_DIR_MODE, exist_ok=True)
    made = str(uuid.uuid4())
    temporary = os.path.join(state_dir, f".{SENSOR_ID_FILE}.{os.getpid()}.{made[:8]}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, SENSOR_ID_MODE)
    try:
        os.write(fd, f"{made}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(temporary, path)
    except FileExistsError:
        pass
    finally:
        os.unlink(temporary)
    found = _read(path)
    return made if found is None else found


def sensor_id(configured: str, state_dir: str, warnings: list[str]) -> str:
    """The sensor id: `configured` (the key), else the kept one, else a new one kept now.
    What the operator should know is appended to `warnings` (logged once logging is up)."""
    if configured:
        return check_sensor_id(configured)
    path = os.path.join(state_dir, SENSOR_ID_FILE)
    try:
        found = _read(path)
        if found is not None:
            return found
        made = _create(state_dir, path)
    except OSError as exc:
        if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT):
            raise ConfigError(f"cannot keep the sensor id in {state_dir}: {exc.strerror}",
                              key="state_dir") from exc
        import uuid  # as in _create

        derived = str(uuid.uuid5(uuid.UUID(_HOSTNAME_NAMESPACE), socket.gethostname()))
        warnings.append(
            f"state_dir {state_dir} cannot be written ({errno.errorcode.get(exc.errno or 0)}): "
            f"sensor id {derived} derived from the host name, not kept; give state_dir a "
            "writable directory or set sensor_id"
        )
        return derived
    log.info("new sensor id %s, kept in %s", made, path)
    return made
