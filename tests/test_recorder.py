"""The recorder process (recorder.py), tested through the real daemon in namespaces: the plugins
run there, not in the dynamic servers, and no attack is lost when it dies."""

from __future__ import annotations

import array
import asyncio
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import termios
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import REPO, Honeytrap, metrics, nfq_rules
from netns import Lab, inside

from honeytrap import control, recorderlink, wire
from honeytrap import recorder as recorder_module
from honeytrap import server as server_module
from honeytrap.attack import Attack, Connection, Payload
from honeytrap.config import DEFAULT_PORTS_PER_PROCESS, Config
from honeytrap.limits import SPARE_HEADROOM
from honeytrap.pipeline import Pipeline
from honeytrap.plugin import LoadedPlugin, Registry
from honeytrap.privileges import Identity

# Bound on every wait here: far above what a step needs, so only a bug reaches it.
WAIT = 20.0
# The sustained load: this many connections (bench/loadgen.py, CONCURRENCY in flight) or this
# long, whichever ends first. The lost wake-up it guards against stalled acknowledgements within
# seconds at full load; on this machine the count takes 3 to 10 s.
LOAD_CONNECTIONS = 20000
LOAD_CONCURRENCY = 100
LOAD_SECONDS = 60.0
METRICS_PORT = 9109

# A plugin that holds the first attack whose payload is b"stall" in ANALYZE (after writing a
# marker, so the test knows), until the test removes the marker or WAIT passes. A second
# recorder finds the marker's twin ("seen") and lets the attack through at once.
STALL_PLUGIN = '''
import os, time

class Stall:
    def __init__(self, ctx):
        self.dir = ctx.option("dir")

    def analyze(self, attack):
        if attack.payload != b"stall":
            return None
        seen = os.path.join(self.dir, "seen")
        if os.path.exists(seen):
            return None
        open(seen, "w").close()
        open(os.path.join(self.dir, "stalled"), "w").write(str(os.getpid()))
        deadline = time.monotonic() + WAIT_SECONDS
        while os.path.exists(os.path.join(self.dir, "stalled")) and time.monotonic() < deadline:
            time.sleep(0.02)
        return None

def load(ctx):
    return Stall(ctx)
'''.replace("WAIT_SECONDS", repr(WAIT))


@pytest.fixture
def stalling(lab: Lab, tmp_path: Path) -> Iterator[tuple[Honeytrap, Path]]:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    for name in ("logJSON.py", "logAttacker.py"):
        shutil.copy(REPO / "plugins" / name, plugins / name)
    (plugins / "Stall.py").write_text(STALL_PLUGIN)
    # The recorder runs as nobody and writes here: outside pytest's private (0700) tree.
    state = Path(tempfile.mkdtemp(prefix="honeytrap-stall-"))
    os.chmod(state, 0o777)  # noqa: S103
    nfq_rules(lab.sensor)
    ht = Honeytrap(lab, tmp_path / "ht", args=["-u", "nobody", "-g", "nogroup", "-l", "5"],
                   plugin_dir=plugins)
    ht.plugins = f"""
plugin-Stall = {{ dir = "{state}" }}
plugin-logJSON = {{ logfile = "{ht.attackers_json}" }}
"""
    try:
        yield ht, state
    finally:
        if ht.proc is not None and ht.proc.poll() is None:
            ht.stop()
        shutil.rmtree(state, ignore_errors=True)


def send(lab: Lab, port: int, data: bytes) -> None:
    with inside(lab.attacker):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(5)
    try:
        sock.connect((lab.sensor.ip4, port))
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(4096):
            pass
    finally:
        sock.close()


def wait_until(condition: object, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def payloads(ht: Honeytrap) -> list[bytes]:
    return [
        bytes.fromhex(r["attack_connection"]["payload"]["data_hex"])  # type: ignore[index]
        for r in ht.records()
    ]


def test_the_plugins_run_in_one_recorder_not_in_the_servers(
    stalling: tuple[Honeytrap, Path], lab: Lab
) -> None:
    ht, state = stalling
    ht.start()
    for port in (2101, 2102, 2103):
        send(lab, port, b"stall" if port == 2101 else b"quick")
    wait_until(lambda: (state / "stalled").exists(), "the stalled attack")
    (recorder,) = ht.recorders()
    assert (state / "stalled").read_text() == str(recorder)  # in the recorder, not a server
    assert len(ht.children()) == 1  # three ports, one server process
    # The stalled attack holds up no server and no other attack (the pipeline lets another
    # worker run beside a slow hook).
    wait_until(lambda: payloads(ht).count(b"quick") == 2, "the two quick attacks")
    (state / "stalled").unlink()
    wait_until(lambda: b"stall" in payloads(ht), "the stalled attack's record")
    assert sorted(payloads(ht)) == [b"quick", b"quick", b"stall"]


def test_an_attack_is_not_lost_when_the_recorder_dies_with_it(
    stalling: tuple[Honeytrap, Path], lab: Lab
) -> None:
    """SIGKILL the recorder while an attack is inside a plugin: the master starts another and
    relinks the server, which sends the unacknowledged attack again; it is recorded once."""
    ht, state = stalling
    ht.start()
    send(lab, 2201, b"before")
    wait_until(lambda: payloads(ht) == [b"before"], "the first record")
    send(lab, 2201, b"stall")
    wait_until(lambda: (state / "stalled").exists(), "the stalled attack")
    (first,) = ht.recorders()
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: ht.recorders() not in ([], [first]), "a new recorder")
    wait_until(lambda: b"stall" in payloads(ht), "the stalled attack, recorded by the new one")
    send(lab, 2201, b"after")  # the same server, on its new link
    wait_until(lambda: b"after" in payloads(ht), "an attack after the relink")
    assert sorted(payloads(ht)) == [b"after", b"before", b"stall"]
    log = ht.logfile.read_text()
    # Every server process is relinked: the one serving 2201, alone (it has room for
    # porttable.SPARE_HEADROOM more ports: no spare beside it).
    relinked = 1 if DEFAULT_PORTS_PER_PROCESS >= SPARE_HEADROOM else 2
    assert f"recorder (pid {first}) exited with status -9; {relinked} server processes" in log
    assert "relinked to the recorder: 1 attacks sent again" in log
    assert ht.stop() == 0


def test_sigterm_waits_for_the_recorder_to_finish_what_servers_handed_it(
    stalling: tuple[Honeytrap, Path], lab: Lab
) -> None:
    ht, state = stalling
    ht.start()
    send(lab, 2301, b"stall")
    wait_until(lambda: (state / "stalled").exists(), "the stalled attack")
    ht.signal(signal.SIGTERM)
    time.sleep(0.5)
    assert ht.proc is not None and ht.proc.poll() is None  # still finishing
    (state / "stalled").unlink()
    assert ht.stop() == 0
    assert payloads(ht) == [b"stall"]


def test_a_full_pipeline_pauses_the_links_then_reads_again_and_acks_everything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Backpressure inside the recorder (no daemon: the Recorder's steps driven by hand): past
    MAX_QUEUED_ATTACKS it stops reading its links, at the low mark it reads again, and every
    attack it took is acknowledged."""
    monkeypatch.setattr(recorder_module, "MAX_QUEUED_ATTACKS", 3)
    monkeypatch.setattr(recorder_module, "QUEUED_LOW_MARK", 1)
    gate = threading.Event()

    class Gate:
        def analyze(self, attack: Attack) -> None:
            gate.wait(WAIT)

    registry = Registry()
    registry.register(LoadedPlugin("Gate", types.ModuleType("Gate"), Gate()))
    master_end, control_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server_end, link_end = socket.socketpair()
    pipeline = Pipeline(registry, workers=1)
    spec = recorder_module.RecorderSpec(Config(), registry, Identity(None, None), control_end)
    rec = recorder_module.Recorder(spec, pipeline)
    try:
        rec._add_link(link_end)
        link = rec.links[link_end.fileno()]
        frames = b"".join(wire.encode_attack(seq, Attack(
            Connection("tcp", "192.0.2.1", 80, "198.51.100.7", 40000 + seq, Payload(b"x"))
        )) for seq in range(1, 6))
        server_end.sendall(frames)
        # A unix socket queues what was sent on the peer before sendall returns: one read
        # takes all five frames.
        queued = array.array("i", [0])
        fcntl.ioctl(link_end, termios.FIONREAD, queued)
        assert queued[0] == len(frames)
        rec._on_link(link)
        assert rec.received == 5
        rec._submit()
        rec._pace()
        assert not rec.reading and not link.registered  # paused: nothing read meanwhile
        gate.set()
        assert pipeline.drain(WAIT)
        rec._pace()
        assert rec.reading and link.registered
        rec._on_wake()
        reader = wire.FrameReader()
        acks: list[int] = []
        server_end.settimeout(WAIT)
        while len(acks) < 5:
            acks += [seq for kind, seq, _ in reader.feed(server_end.recv(4096)) if kind == "ack"]
        assert sorted(acks) == [1, 2, 3, 4, 5]
    finally:
        gate.set()
        pipeline.close(WAIT)
        for sock in (master_end, control_end, server_end, link_end):
            sock.close()


def attack_frame(seq: int) -> bytes:
    return wire.encode_attack(seq, Attack(
        Connection("tcp", "192.0.2.1", 80, "198.51.100.7", 40000 + seq, Payload(b"x"))
    ))


def read_acks(sock: socket.socket, count: int) -> list[int]:
    reader = wire.FrameReader()
    acks: list[int] = []
    sock.settimeout(WAIT)
    while len(acks) < count:
        data = sock.recv(4096)
        assert data, "the link closed before every attack was acknowledged"
        acks += [seq for kind, seq, _ in reader.feed(data) if kind == "ack"]
    return sorted(acks)


@pytest.fixture
def running() -> Iterator[tuple[recorder_module.Recorder, control.Channel,
                                list[socket.socket]]]:
    """A Recorder's loop in a thread (no daemon, no plugins: the pipeline's counters are what
    is looked at), two links; yields it, the master's end of its control and the servers' ends
    of the links. At the end: stop, the servers' ends closed, the loop must exit."""
    registry = Registry()
    master_end, control_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pairs = [socket.socketpair() for _ in range(2)]
    pipeline = Pipeline(registry, workers=1)
    spec = recorder_module.RecorderSpec(Config(), registry, Identity(None, None), control_end)
    rec = recorder_module.Recorder(spec, pipeline)
    for _, link_end in pairs:
        rec._add_link(link_end)
    master = control.Channel(master_end)
    loop = threading.Thread(target=rec.run, daemon=True)
    loop.start()
    try:
        yield rec, master, [server_end for server_end, _ in pairs]
    finally:
        master.send("stop")
        for server_end, _ in pairs:
            server_end.close()
        loop.join(WAIT)
        pipeline.close(WAIT)
        master_end.close()
        control_end.close()
    assert not loop.is_alive()


def test_small_sends_within_the_gather_delay_go_through_the_pipeline_as_one_batch(
    monkeypatch: pytest.MonkeyPatch,
    running: tuple[recorder_module.Recorder, control.Channel, list[socket.socket]],
) -> None:
    """Two servers' small sends (a server's flush below full load) read while the pipeline is
    idle wait GATHER_DELAY for more: one batch of the pipeline, one round of acknowledgements,
    every attack acknowledged. The delay is raised so that the test's second send falls
    within it on a loaded machine, and LOOP_TIMEOUT far past WAIT, so that an attack left past
    the delay (until the loop's next timeout) is not acknowledged within WAIT."""
    monkeypatch.setattr(recorder_module, "GATHER_DELAY", 2.0)
    monkeypatch.setattr(recorder_module, "LOOP_TIMEOUT", 10 * WAIT)
    rec, _master, (first, second) = running
    first.sendall(attack_frame(1) + attack_frame(2))
    wait_until(lambda: rec.received == 2, "the first link's attacks read")
    assert rec.pipeline.counters.attacks == 0  # read, held for more
    second.sendall(attack_frame(3))
    assert read_acks(first, 2) == [1, 2]
    assert read_acks(second, 1) == [3]
    counters = rec.pipeline.counters
    assert (counters.attacks, counters.finished, counters.batches) == (3, 3, 1)


def test_a_stop_ends_the_gathering_at_once_and_every_attack_is_acknowledged(
    monkeypatch: pytest.MonkeyPatch,
    running: tuple[recorder_module.Recorder, control.Channel, list[socket.socket]],
) -> None:
    """A stop (the master's, or SIGTERM's) while the recorder waits for more: what it read
    goes through the pipeline and is acknowledged at once, not after the delay (here far
    past WAIT)."""
    monkeypatch.setattr(recorder_module, "GATHER_DELAY", 10 * WAIT)
    monkeypatch.setattr(recorder_module, "LOOP_TIMEOUT", 10 * WAIT)
    rec, master, (first, _second) = running
    first.sendall(attack_frame(1))
    wait_until(lambda: rec.received == 1, "the attack read")
    master.send("stop")
    assert read_acks(first, 1) == [1]
    assert rec.pipeline.counters.batches == 1


def test_a_server_hands_over_an_attack_as_large_as_its_read_limit_allows() -> None:
    """An attack bigger than wire.MAX_FRAME (read_limit raised) still goes over the link whole:
    both ends size their frames from the configuration."""
    read_limit = wire.MAX_FRAME + 1024
    config = Config(read_limit=read_limit)
    server_end, recorder_end = socket.socketpair()
    received: list[Attack] = []

    async def hand_over() -> None:
        client = recorderlink.RecorderClient(server_end, config, lambda full: None)
        client.start(asyncio.get_running_loop())
        client.submit(Attack(Connection(
            "tcp", "192.0.2.1", 80, "198.51.100.7", 40001, Payload(b"A" * read_limit)
        )))
        reader = wire.FrameReader(max_frame=recorderlink.max_frame(config))
        recorder_end.setblocking(False)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while not received and loop.time() < deadline:
            try:
                data = recorder_end.recv(1 << 20)
            except BlockingIOError:
                await asyncio.sleep(0.001)
                continue
            received.extend(a for _, _, a in reader.feed(data) if a is not None)
        assert len(client.unacked) == 1
        client._detach()

    try:
        asyncio.run(hand_over())
    finally:
        recorder_end.close()
    assert [len(a.payload) for a in received] == [read_limit]




@pytest.mark.slow
def test_sustained_load_is_acknowledged_to_the_last_attack(lab: Lab, tmp_path: Path) -> None:
    """Full load through the real recorder (SaveFile, logAttacker, logJSON): every attack
    recorded, the servers' unacknowledged attacks drained to zero, and at SIGTERM no server exit
    counted as a crash. (A wake-up lost in the recorder once stopped acknowledgements for good:
    servers then held every attack, grew, and each waited 30 s at exit and failed.)"""
    nfq_rules(lab.sensor)
    ht = Honeytrap(lab, tmp_path / "ht", args=["-u", "nobody", "-g", "nogroup", "-t", "5"],
                   extra_config=f'metrics_listen = "127.0.0.1:{METRICS_PORT}"')
    ht.start()
    load = lab.spawn(lab.attacker, [
        sys.executable, str(REPO / "bench" / "loadgen.py"), "burst", "--address", lab.sensor.ip4,
        "--port", "4444", "--count", str(LOAD_CONNECTIONS),
        "--concurrency", str(LOAD_CONCURRENCY), "--deadline", str(LOAD_SECONDS),
    ], stdout=subprocess.PIPE)
    completed = json.loads(load.communicate(timeout=LOAD_SECONDS + WAIT)[0])["completed"]
    assert completed > LOAD_CONNECTIONS // 2
    # The servers report within server.STATS_DELAY of a change. Once the load is over, wait
    # (bounded) for two reports in a row with the same attack count (a connection the load
    # generator gave up on is recorded too) and nothing unacknowledged.
    figures: dict[str, float] = {}
    previous = -1.0
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        figures = metrics(lab, METRICS_PORT)
        attacks = figures.get("honeytrap_attacks_total", -1.0)
        if attacks == previous and figures.get("honeytrap_unacknowledged") == 0:
            break
        previous = attacks
        time.sleep(2 * server_module.STATS_DELAY)
    assert figures.get("honeytrap_unacknowledged") == 0
    attacks = int(figures["honeytrap_attacks_total"])
    assert attacks >= completed
    assert len(ht.wait_records(attacks)) == attacks
    assert ht.stop() == 0
    log = ht.logfile.read_text()
    assert "not acknowledged by the recorder at exit" not in log
    assert "server_crashes=0" in log.rsplit("statistics:", 1)[1]
