"""The real daemon writing its file outputs to a 1 MiB tmpfs that fills up and empties again
while attacks arrive: every line of attackers.json parses, every attack is in every output after
recovery, no partial file under a final name, one counted log line per output, no traceback."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import Honeytrap
from netns import Lab
from test_daemon import connect, payload_of
from tmpfs import Disk

# 1 MiB: the disk. Attacks: enough before, during and after the outage.
DISK_PAGES = 256
BEFORE, DURING, AFTER = 5, 20, 5
# A payload fills most of a page in its attack file and ~2 KiB of hex in its JSON line.
PADDING = b"p" * 900
# Bound on each wait for the daemon (a loaded machine): not a speed assertion.
WAIT = 30.0
OUTPUTS = ("SaveFile", "logJSON", "logAttacker")


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    disk = Disk(tmp_path / "disk", DISK_PAGES)
    try:
        yield disk
    finally:
        disk.unmount()


def attack(lab: Lab, address: str, n: int) -> bytes:
    payload = b"attack-%04d " % n + PADDING
    sock = connect(lab.attacker, address, 80)  # HTTP: the client speaks first
    try:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(4096):
            pass
    finally:
        sock.close()
    return payload


def wait_in_log(ht: Honeytrap, text: str, count: int) -> int:
    """The daemon's log is what is under test here: wait (bounded) for `count` lines with
    `text`; return how many there are."""
    deadline = time.monotonic() + WAIT
    while True:
        found = ht.logfile.read_text(errors="replace").count(text)
        if found >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_a_full_disk_loses_and_corrupts_nothing(lab: Lab, disk: Disk, ht: Honeytrap) -> None:
    ht.args += ["-l", "30"]
    ht.attacks_dir = disk.path / "attacks"
    ht.downloads_dir = disk.path / "downloads"
    ht.attackers_json = disk.path / "attackers.json"
    ht.attacker_log = disk.path / "attacker.log"
    ht.start()
    address = lab.sensor.ip4
    sent = [attack(lab, address, n) for n in range(BEFORE)]
    assert len(ht.wait_records(BEFORE)) == BEFORE

    disk.fill()
    # Attacks keep arriving from another thread while the disk is full and after it is freed.
    arriving: list[bytes] = []
    errors: list[BaseException] = []

    def attacker() -> None:
        try:
            for n in range(BEFORE, BEFORE + DURING + AFTER):
                arriving.append(attack(lab, address, n))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    thread = threading.Thread(target=attacker)
    thread.start()
    try:
        # Every output has met the full disk (its one line), then room comes back meanwhile.
        assert wait_in_log(ht, "cannot write", len(OUTPUTS)) == len(OUTPUTS)
        while len(arriving) < DURING and thread.is_alive():
            time.sleep(0.01)
        disk.free()
    finally:
        thread.join(WAIT * 4)
    assert not errors
    sent += arriving
    total = BEFORE + DURING + AFTER
    assert len(sent) == total

    records = ht.wait_records(total, timeout=WAIT)
    assert wait_in_log(ht, "again after", len(OUTPUTS)) == len(OUTPUTS)
    assert ht.stop() == 0

    lines = ht.attackers_json.read_text().splitlines()
    assert len(lines) == total
    assert all(isinstance(json.loads(line), dict) for line in lines)  # every line parses
    assert sorted(payload_of(r) for r in records) == sorted(sent)
    assert len(ht.attacker_log.read_text().splitlines()) == total
    saved = {p.name: p.read_bytes() for p in ht.attacks_dir.iterdir()}
    assert not [name for name in saved if name.startswith(".")]  # no temporary file left
    assert sorted(saved.values()) == sorted(sent)  # each file whole, none missing
    for record in records:
        path = Path(record["analysis"]["SaveFile"]["attack_file"])  # type: ignore[index]
        assert saved[path.name] == payload_of(record)

    log = ht.logfile.read_text(errors="replace")
    assert log.count("cannot write") == len(OUTPUTS)  # one line per output, not per attack
    assert "Traceback" not in log and "Traceback" not in ht.stderr()
