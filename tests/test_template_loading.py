"""Loading a port's template (honeytrap/templates.py): by path before a server process drops
privileges, or from a descriptor the master opened for a process that runs unprivileged. A
missing or unusable template means a single newline, never a server that does not start."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from honeytrap import templates


def test_a_regular_template_is_read_whole(tmp_path: Path) -> None:
    (tmp_path / "21_tcp").write_bytes(b"220 ready\r\n")
    assert templates.load_template(str(tmp_path), "tcp", 21) == b"220 ready\r\n"
    fd = templates.open_template(str(tmp_path), "tcp", 21)
    assert fd is not None
    assert templates.read_template(fd, "21_tcp") == b"220 ready\r\n"
    with pytest.raises(OSError):
        os.fstat(fd)  # read_template closed it


def test_no_template_is_a_newline_without_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert templates.open_template(str(tmp_path), "udp", 53) is None
    assert templates.load_template(str(tmp_path), "udp", 53) is None
    assert caplog.records == []


def test_a_fifo_is_refused_without_blocking(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Opening a FIFO for reading blocks until a writer comes: the master must never wait."""
    os.mkfifo(tmp_path / "80_tcp")
    assert templates.open_template(str(tmp_path), "tcp", 80) is None
    assert templates.load_template(str(tmp_path), "tcp", 80) is None
    assert "not a regular file" in caplog.text


def test_a_directory_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "25_tcp").mkdir()
    assert templates.load_template(str(tmp_path), "tcp", 25) is None
    assert "not a regular file" in caplog.text


def test_an_oversized_template_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "110_tcp").write_bytes(b"x" * (templates.MAX_TEMPLATE_SIZE + 1))
    assert templates.load_template(str(tmp_path), "tcp", 110) is None
    assert "is over" in caplog.text
    (tmp_path / "110_tcp").write_bytes(b"x" * templates.MAX_TEMPLATE_SIZE)
    assert len(templates.load_template(str(tmp_path), "tcp", 110)) == templates.MAX_TEMPLATE_SIZE


def test_an_unreadable_template_is_a_newline(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A symlink loop stands in for any open() failure (root reads any mode bits)."""
    (tmp_path / "23_tcp").symlink_to(tmp_path / "23_tcp")
    assert templates.load_template(str(tmp_path), "tcp", 23) is None
    assert "unreadable" in caplog.text
