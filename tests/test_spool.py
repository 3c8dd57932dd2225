"""The durable spool (order, durability, claims across processes, bounds) and the writer's use
of it when the sink is away."""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest

from honeytrap.outputs.writer import Record, SinkDown, Writer
from honeytrap.spool import REJECTED_DIR, Spool

WAIT = 30.0


def keys(claims: Sequence[object]) -> list[str]:
    return [c.key for c in claims]  # type: ignore[attr-defined]


def test_records_are_claimed_oldest_first_then_by_key(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path))
    spool.put("b", b"2", when=20.0)
    spool.put("c", b"3", when=10.0)
    spool.put("a", b"1", when=20.0)
    claims = spool.claim(10)
    assert keys(claims) == ["c", "a", "b"]
    assert [c.data for c in claims] == [b"3", b"1", b"2"]


def test_records_survive_a_new_spool_instance(tmp_path: Path) -> None:
    Spool(str(tmp_path)).put("a1", b"payload", when=1.0)
    claims = Spool(str(tmp_path)).claim(10)
    assert [(c.key, c.data) for c in claims] == [("a1", b"payload")]


def test_acked_record_is_gone_and_released_one_stays(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path))
    spool.put("a", b"1", when=1.0)
    spool.put("b", b"2", when=2.0)
    first, second = spool.claim(10)
    first.ack()
    second.release()
    assert keys(spool.claim(10)) == ["b"]


def test_a_claimed_record_is_not_claimed_again(tmp_path: Path) -> None:
    holder, other = Spool(str(tmp_path)), Spool(str(tmp_path))
    holder.put("a", b"1")
    claims = holder.claim(10)
    assert other.claim(10) == []
    claims[0].ack()
    assert other.claim(10) == []


def test_claims_of_a_crashed_process_are_recovered(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path))
    for n in range(3):
        spool.put(f"k{n}", b"x", when=float(n))
    claimed_r, claimed_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the claimer: takes everything, then dies without acknowledging
        try:
            Spool(str(tmp_path)).claim(10)
            os.write(claimed_w, b"1")
            os.read(go_r, 1)
        finally:
            os._exit(0)
    try:
        assert os.read(claimed_r, 1) == b"1"
        assert spool.claim(10) == []
    finally:
        os.write(go_w, b"1")
        os.waitpid(pid, 0)
        for fd in (claimed_r, claimed_w, go_r, go_w):
            os.close(fd)
    assert keys(spool.claim(10)) == ["k0", "k1", "k2"]


def test_two_processes_draining_one_spool_deliver_each_record_once(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    spool = Spool(str(spool_dir))
    for n in range(200):
        spool.put(f"r{n:03d}", b"x", when=float(n))
    out = str(tmp_path / "delivered")
    pids = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            try:
                mine = Spool(str(spool_dir))
                fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                for _round in range(1000):  # bounded: 200 records, at least one per round
                    claims = mine.claim(7)
                    if not claims:
                        break
                    for claim in claims:
                        os.write(fd, claim.key.encode() + b"\n")
                        claim.ack()
            finally:
                os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    delivered = Counter(Path(out).read_text().split())
    assert delivered == {f"r{n:03d}": 1 for n in range(200)}
    assert spool.names() == []


def test_overflow_refuses_new_records_and_keeps_the_old(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path), max_records=3)
    assert all(spool.put(f"k{n}", b"x", when=float(n)) for n in range(3))
    assert spool.put("k3", b"x", when=3.0) is False
    assert spool.counters.refused == 1
    assert keys(spool.claim(10)) == ["k0", "k1", "k2"]


def test_overflow_by_bytes_refuses_new_records(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path), max_bytes=10)
    assert spool.put("a", b"12345678")
    assert spool.put("b", b"123") is False
    assert spool.counters.refused == 1


def test_overflow_is_logged_with_the_key(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(str(tmp_path), max_records=1)
    spool.put("first", b"x")
    with caplog.at_level(logging.ERROR, "honeytrap.spool"):
        spool.put("second", b"x")
    assert "second refused" in caplog.text


def test_acknowledging_makes_room_again(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path), max_records=1)
    spool.put("a", b"x")
    spool.claim(1)[0].ack()
    assert spool.put("b", b"x")


def test_temp_files_of_dead_writers_are_removed(tmp_path: Path) -> None:
    dead = tmp_path / ".tmp-999999999-abc"
    alive = tmp_path / f".tmp-{os.getpid()}-abc"
    dead.write_bytes(b"half")
    alive.write_bytes(b"half")
    Spool(str(tmp_path))
    assert not dead.exists()
    assert alive.exists()


def test_rejected_record_is_kept_aside(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path))
    spool.put("bad", b"x")
    spool.claim(1)[0].reject("bad data")
    assert spool.names() == []
    assert len(os.listdir(tmp_path / REJECTED_DIR)) == 1
    assert spool.counters.rejected == 1


@pytest.mark.parametrize("key", ["", "../x", "a/b", "a b", "x" * 151, "é", "abc\n"])
def test_keys_that_could_leave_the_directory_are_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError):
        Spool(str(tmp_path)).put(key, b"x")


def test_prepare_creates_the_directory_for_the_given_owner(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "b"
    Spool.prepare(str(directory), 65534, 65534)
    assert directory.stat().st_uid == 65534
    assert (directory / REJECTED_DIR).stat().st_uid == 65534


# -- the writer when the sink is away ---------------------------------------------------------

class AwaySink:
    """A store that is never reachable: every record must end in the spool."""

    name = "away"

    def connect(self) -> None:
        raise SinkDown("connection refused")

    def send(self, records: Sequence[Record]) -> list[tuple[Record, str]]:
        raise SinkDown("not connected")

    def idle(self) -> None:
        return None

    def disconnect(self) -> None:
        return None


def test_writer_spools_everything_while_the_sink_is_away(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path))
    writer = Writer(AwaySink(), spool, log=logging.getLogger("test"))
    for n in range(10):
        writer.submit(Record(f"a{n}", float(n), b"x"))
    assert writer.wait_until(lambda c: c.spooled >= 10, WAIT)
    writer.close(WAIT)
    assert len(spool.names()) == 10


def test_writer_spools_directly_when_its_queue_is_full(tmp_path: Path) -> None:
    """The hooks never wait for the store: past the queue bound, records go to disk."""
    spool = Spool(str(tmp_path))
    writer = Writer(AwaySink(), spool, log=logging.getLogger("test"), queue_max=2)
    writer._thread = threading.Thread(target=lambda: None)  # a writer thread that never takes
    for n in range(5):
        writer.submit(Record(f"a{n}", float(n), b"x"))
    assert len(spool.names()) == 3
    assert writer.counters.spooled == 3


def test_writer_close_leaves_queued_records_in_the_spool(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path))
    writer = Writer(AwaySink(), spool, log=logging.getLogger("test"))
    for n in range(3):
        writer.submit(Record(f"a{n}", float(n), b"x"))
    writer.close(WAIT)
    assert len(spool.names()) == 3


def test_a_replay_batch_is_bounded_in_bytes(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path))
    for n in range(5):
        spool.put(f"k{n}", b"x" * 100, when=float(n))
    assert keys(spool.claim(10, max_bytes=250)) == ["k0", "k1", "k2"]
