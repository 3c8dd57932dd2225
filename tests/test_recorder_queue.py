"""The recorder's queue (recorder.py MAX_QUEUED_ATTACKS): what a full one takes in memory, and
how its pauses are counted and logged. The Recorder's steps are driven by hand over a real
pipeline whose one plugin holds the attacks until the test lets them go."""

from __future__ import annotations

import contextlib
import gc
import logging
import socket
import threading
import time
import tracemalloc
import types
from collections.abc import Iterator

import pytest

from honeytrap import control, wire
from honeytrap import recorder as recorder_module
from honeytrap.attack import Attack, Connection, DialogueRecord, Mode, Payload
from honeytrap.config import Config
from honeytrap.pipeline import Pipeline
from honeytrap.plugin import LoadedPlugin, Registry
from honeytrap.privileges import Identity

# Bound on every wait here: far above what a step needs, so only a bug reaches it.
WAIT = 20.0
# bench/'s attack (bench/recorder.py frames): a 200-byte payload and a raw dialogue's record.
PAYLOAD_BYTES = 200
# What a full queue may add to the recorder's memory: a tenth of its ~17 MiB of PSS at rest
# under the soak's load (bench/README.md), the soak's "memory flat" tolerance. The deepest queue
# comes when it comes (an ext4 journal stall minutes into the load), so it must fit in that.
SOAK_BUDGET = 17 * 1024 * 1024 // 10


def bench_frames(count: int) -> bytes:
    start = time.time()
    frames = []
    for n in range(count):
        conn = Connection("tcp", "192.0.2.1", 4444, "198.51.100.7", 40000 + n % 20000,
                          Payload(bytes((n + i) % 251 for i in range(PAYLOAD_BYTES))))
        dialogue = DialogueRecord("raw", (PAYLOAD_BYTES, -1), Payload(b"\n"), {"sends": 1})
        frames.append(wire.encode_attack(n + 1, Attack(
            conn, mode=Mode.NORMAL, start_time=start + n * 1e-4,
            end_time=start + n * 1e-4 + 0.01, dialogue=dialogue)))
    return b"".join(frames)


class Gate:
    """A plugin that holds every attack in ANALYZE until `opened` is set."""

    def __init__(self) -> None:
        self.opened = threading.Event()

    def analyze(self, attack: Attack) -> None:
        self.opened.wait(WAIT)


@pytest.fixture
def gated() -> Iterator[tuple[Pipeline, Gate]]:
    gate = Gate()
    registry = Registry()
    registry.register(LoadedPlugin("Gate", types.ModuleType("Gate"), gate))
    pipeline = Pipeline(registry, workers=1)
    try:
        yield pipeline, gate
    finally:
        gate.opened.set()
        pipeline.close(WAIT)


def test_a_full_queue_of_attacks_stays_within_its_memory_bound(
    gated: tuple[Pipeline, Gate],
) -> None:
    """The recorder reads a link that has far more of bench's attacks than its queue takes, as
    its loop does (select, read READ_SIZE, decode, submit, pace), until it pauses: what it then
    holds decoded (the queue, MAX_QUEUED_ATTACKS and the last read's overshoot) takes at most
    QUEUED_MEMORY (tracemalloc), and that is within SOAK_BUDGET. The heap keeps what the
    deepest queue took, so this is how much the recorder's memory may grow under load; a queue
    of 4,096 with reads of 256 KiB held ~12 MB, and the soak's recorder grew by ~9 MiB at its
    first journal stall, and stayed there."""
    pipeline, gate = gated
    master_end, control_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server_end, link_end = socket.socketpair()
    spec = recorder_module.RecorderSpec(Config(), Registry(), Identity(None, None), control_end)
    rec = recorder_module.Recorder(spec, pipeline)
    data = memoryview(bench_frames(4 * recorder_module.MAX_QUEUED_ATTACKS))
    server_end.setblocking(False)
    try:
        rec._add_link(link_end)
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            deadline = time.monotonic() + WAIT
            while rec.reading and time.monotonic() < deadline:
                if data:  # what the link's socket takes: the rest waits "in the server"
                    with contextlib.suppress(BlockingIOError):
                        data = data[server_end.send(data):]
                rec._dispatch(rec.selector.select(timeout=WAIT))
                rec._submit()
                rec._pace()
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert not rec.reading and data, "the recorder paused with attacks still to read"
        assert pipeline.pending() >= recorder_module.MAX_QUEUED_ATTACKS
        assert held <= recorder_module.QUEUED_MEMORY <= SOAK_BUDGET, (
            f"{held:,} bytes held for {pipeline.pending()} attacks")
    finally:
        gate.opened.set()
        assert pipeline.drain(WAIT)
        for sock in (master_end, control_end, server_end, link_end):
            sock.close()


def test_every_pause_is_counted_and_logged_at_most_once_an_interval(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    gated: tuple[Pipeline, Gate],
) -> None:
    """Past MAX_QUEUED_ATTACKS the recorder pauses its links; each pause is counted
    (recorder_pauses, in its statistics) and the line saying so comes at most once every
    PAUSE_LOG_INTERVAL, with the pauses since: an overload that pauses it several times a
    second does not flood the log, and none goes unseen."""
    monkeypatch.setattr(recorder_module, "MAX_QUEUED_ATTACKS", 3)
    monkeypatch.setattr(recorder_module, "QUEUED_LOW_MARK", 1)
    monkeypatch.setattr(recorder_module, "PAUSE_LOG_INTERVAL", 10 * WAIT)
    pipeline, gate = gated
    master_end, control_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    spec = recorder_module.RecorderSpec(Config(), Registry(), Identity(None, None), control_end)
    rec = recorder_module.Recorder(spec, pipeline)
    caplog.set_level(logging.WARNING, logger="honeytrap.recorder")
    try:
        for _ in range(3):
            gate.opened.clear()
            for n in range(5):
                pipeline.submit(Attack(Connection(
                    "tcp", "192.0.2.1", 80, "198.51.100.7", 40000 + n, Payload(b"x"))))
            rec._pace()
            assert not rec.reading
            gate.opened.set()
            assert pipeline.drain(WAIT)
            rec._pace()
            assert rec.reading
        assert rec.pauses == 3
        lines = [r.getMessage() for r in caplog.records if "pausing" in r.getMessage()]
        assert len(lines) == 1 and "(1 pauses since the last such line" in lines[0]
        monkeypatch.setattr(recorder_module, "PAUSE_LOG_INTERVAL", 0.0)
        gate.opened.clear()
        for n in range(5):
            pipeline.submit(Attack(Connection(
                "tcp", "192.0.2.1", 80, "198.51.100.7", 40000 + n, Payload(b"x"))))
        rec._pace()
        gate.opened.set()
        lines = [r.getMessage() for r in caplog.records if "pausing" in r.getMessage()]
        assert len(lines) == 2 and "(3 pauses since the last such line" in lines[1]
        rec.send_stats()
        master_end.setblocking(False)  # sent already: read what is there, wait for nothing
        master = control.Channel(master_end)
        stats = [control.parse_stats(m) for m in master.receive()]
        assert [s["recorder_pauses"] for s in stats if s is not None] == [4]
    finally:
        gate.opened.set()
        for sock in (master_end, control_end):
            sock.close()
