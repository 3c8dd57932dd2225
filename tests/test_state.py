"""The sensor id (honeytrap.state): made once, kept in state_dir, the same for every start."""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

import pytest

from honeytrap.errors import ConfigError
from honeytrap.state import SENSOR_ID_FILE, sensor_id


def test_made_at_first_start_and_kept(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    warnings: list[str] = []
    first = sensor_id("", str(state_dir), warnings)
    assert (state_dir / SENSOR_ID_FILE).read_text() == first + "\n"
    assert sensor_id("", str(state_dir), warnings) == first
    assert warnings == []
    assert [p.name for p in state_dir.iterdir()] == [SENSOR_ID_FILE]  # no temporary left


def test_the_key_overrides_the_kept_one(tmp_path: Path) -> None:
    kept = sensor_id("", str(tmp_path), [])
    assert sensor_id("berlin-01", str(tmp_path), []) == "berlin-01" != kept


def test_starts_at_once_agree_on_one_id(tmp_path: Path) -> None:
    results: list[str] = []
    barrier = threading.Barrier(8)

    def start() -> None:
        barrier.wait()
        results.append(sensor_id("", str(tmp_path), []))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1 and len(results) == 8


@pytest.mark.parametrize("content", [b"", b"two words\n", b"x" * 200, b"\x00\x01"])
def test_a_damaged_file_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    (tmp_path / SENSOR_ID_FILE).write_bytes(content)
    with pytest.raises(ConfigError, match="sensor id"):
        sensor_id("", str(tmp_path), [])


def test_bad_key_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sensor_id"):
        sensor_id("has space", str(tmp_path), [])


def test_unwritable_state_dir_derives_a_stable_id_and_says_so() -> None:
    """A read-only root without a volume for state_dir (T-Pot's container as it is): not fatal,
    the id is derived from the host name (the same on every start), and a warning says so."""
    # Not under tmp_path: pytest's base directory is 0700, closed to nobody itself.
    with tempfile.TemporaryDirectory(dir="/tmp") as base:
        closed = Path(base) / "closed"
        closed.mkdir()
        os.chmod(base, 0o755)  # noqa: S103 - nobody passes through, writes nothing
        os.chmod(closed, 0o555)  # noqa: S103 - read-only to everyone: the point
        assert _as_nobody_derives(closed / "state")


def _as_nobody_derives(state_dir: Path) -> bool:
    pid = os.fork()
    if pid == 0:  # as nobody: the directory is root's, not writable to it
        try:
            os.setgid(65534)
            os.setuid(65534)
            warnings: list[str] = []
            first = sensor_id("", str(state_dir), warnings)
            again = sensor_id("", str(state_dir), [])
            ok = first == again and len(warnings) == 1 and "cannot be written" in warnings[0]
            os._exit(0 if ok and "Permission denied" not in warnings[0] else 1)
        finally:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0
