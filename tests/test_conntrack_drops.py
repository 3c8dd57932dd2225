"""The master tells an operator when the kernel's connection tracking table is full
(conntrackdrops.py): the SYNs it then drops reach neither a socket nor the monitor, so nothing
else in honeytrap can see them (issue 13's benchmark stall). A real full table in the sensor's
namespace (bench/conntrack.py fill), a real client, the real daemon."""

from __future__ import annotations

import errno
import importlib
import re
import select
import signal
import socket
import sys
import time
from pathlib import Path

from daemon import Honeytrap
from hypothesis import given
from hypothesis import strategies as st
from netns import Lab, inside

from honeytrap import conntrackdrops
from honeytrap.conntrackdrops import ConntrackDrops, dropped

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
conntrack = importlib.import_module("conntrack")

PORT = 8080
# The warning comes with the master's next check: CHECK_INTERVAL, and room for a loaded machine.
LOG_WAIT = conntrackdrops.CHECK_INTERVAL + 15.0
POLL = 0.2
WARNING = re.compile(r"connection tracking table is full: (\d+) packets dropped .* \((\d+) since")

HEADER = ("entries  clashres found new invalid ignore delete chainlength insert insert_failed drop "
          "early_drop icmp_error  expect_new expect_create expect_delete search_restart")


def stat_text(*drops: int) -> str:
    """/proc/net/stat/nf_conntrack as the kernel writes it: one row per CPU."""
    rows = [" ".join(["00000000"] * 10 + [f"{d:08x}"] + ["00000000"] * 6) for d in drops]
    return "\n".join([HEADER, *rows]) + "\n"


def test_the_drops_are_summed_over_the_cpus() -> None:
    assert dropped(stat_text(0, 0)) == 0
    assert dropped(stat_text(0x1f, 3)) == 34
    assert dropped("") is None
    assert dropped("entries found\n00000001 00000002\n") is None  # no drop column
    assert dropped(HEADER + "\n00000001\n") is None  # a row cut short
    assert dropped(stat_text(1).replace("00000000", "zz", 1)) == 1  # another column's garbage
    assert dropped(stat_text(1).replace("00000001", "zzzzzzzz")) is None


@given(st.text())
def test_any_text_is_a_count_or_none(text: str) -> None:
    result = dropped(text)
    assert result is None or isinstance(result, int)


def test_only_new_drops_are_counted_and_a_missing_table_is_nothing(tmp_path: Path) -> None:
    path = tmp_path / "nf_conntrack"
    path.write_text(stat_text(5, 2))  # before the master started: not its
    drops = ConntrackDrops(str(path))
    assert drops.check() == 0 and drops.total == 0
    path.write_text(stat_text(9, 2))
    assert drops.check() == 4 and drops.total == 4
    assert drops.check() == 0 and drops.total == 4
    path.unlink()  # no connection tracking (any more)
    assert drops.check() == 0 and drops.total == 4
    path.write_text(stat_text(1))
    assert drops.check() == 0  # from here on
    path.write_text(stat_text(3))
    assert drops.check() == 2 and drops.total == 6


def statistic(ht: Honeytrap, name: str) -> int:
    """`name` in the statistics line SIGUSR1 makes the master log (it logs it at once)."""
    before = ht.logfile.read_text(errors="replace").count("statistics: ")
    ht.signal(signal.SIGUSR1)
    deadline = time.monotonic() + LOG_WAIT
    while True:
        lines = [line for line in ht.logfile.read_text(errors="replace").splitlines()
                 if "statistics: " in line]
        if len(lines) > before:
            fields = dict(f.partition("=")[::2] for f in lines[-1].split("statistics: ")[1].split())
            return int(fields[name])
        assert time.monotonic() < deadline, "no statistics line"
        time.sleep(POLL)


def test_a_full_table_is_logged_and_counted(lab: Lab, ht: Honeytrap) -> None:
    """The table filled after the start: an attacker's SYN is dropped by the kernel (nothing of
    it reaches honeytrap), the master logs the drops with the keys to raise and counts them in
    conntrack_drops; after a flush the same attacker is served."""
    ht.start()
    conntrack.fill(lab.sensor, 0)
    before = conntrack.counters(lab.sensor)
    with inside(lab.attacker):
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with client:
        client.setblocking(False)
        assert client.connect_ex((lab.sensor.ip4, PORT)) == errno.EINPROGRESS
        deadline = time.monotonic() + LOG_WAIT
        while not (found := WARNING.search(ht.logfile.read_text(errors="replace"))):
            assert time.monotonic() < deadline, "no warning of the full table"
            time.sleep(POLL)
        new, total = int(found[1]), int(found[2])
        kernel = conntrack.dropped(before, conntrack.counters(lab.sensor))
        assert 1 <= new == total <= kernel
        assert "nf_conntrack_max" in found.string[found.start():].splitlines()[0]
        assert statistic(ht, "conntrack_drops") >= total
        conntrack.flush(lab.sensor)
        _, writable, _ = select.select([], [client], [], LOG_WAIT)  # its next retransmission
        assert writable and client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        client.setblocking(True)
        client.settimeout(LOG_WAIT)
        client.sendall(b"hello\r\n")
        client.shutdown(socket.SHUT_WR)
        while client.recv(65536):
            pass
    ht.wait_records(1)
