"""The master's handovers in flight (handovers.py, control.Channel's tally and cancel_serve), on
real socketpairs and real bound ports: the descriptors held in handovers not yet delivered are
counted until the process has them, a new port past the bound is refused before it is bound,
and a port stopped while its serve still waits is dropped in the master at once (its socket
closed: the port can be bound again), unless a connection waits on it."""

from __future__ import annotations

import os
import socket

from honeytrap import control
from honeytrap.attack import Mode
from honeytrap.config import Config, PortConf
from honeytrap.control import Channel, Serve
from honeytrap.handovers import DROP_AFTER, MASTER_FD_RESERVE, Handovers, handover_fd_limit
from honeytrap.handovers import log as handover_log
from honeytrap.refusals import RefusalLog

FILL_LIMIT = 100_000  # serves handed before the socket's buffer must have filled


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


INODES: dict[int, int] = {}  # a pipe's inode -> the index it was handed with


def pipe_reading(index: int) -> int:
    """A descriptor with nothing to read (a listening socket with no connection waiting, to
    cancel_serve), known by its inode as the one handed with `index`."""
    r, w = os.pipe()
    os.close(w)
    INODES[os.fstat(r).st_ino] = index
    return r


def received(process: Channel) -> dict[int, int]:
    """Every serve the process got: port -> the index its descriptor was handed with."""
    got: dict[int, int] = {}
    for data in process.receive_raw():
        message = control.decode(data)
        assert isinstance(message, Serve)
        [fd] = process.take_fds(1)
        got[message.key[1]] = INODES[os.fstat(fd).st_ino]
        os.close(fd)
    return got


def fill(master: Channel) -> int:
    """Serves handed (one round, uncorked) until some wait in the master's queue: their count."""
    master.cork()
    handed = 0
    while master.backlog == 0 or master.corked and handed % control.HANDOVER_BATCH:
        master.hand(Serve(("tcp", 1 + handed), 1), [pipe_reading(handed)])
        handed += 1
        assert handed < FILL_LIMIT, "the socket never filled"
    master.uncork()
    return handed


def test_the_tally_counts_the_descriptors_until_the_process_has_them() -> None:
    before = open_fds()
    ours, theirs = control.channel_pair()
    tally = control.FdTally()
    master, process = Channel(ours, tally=tally), Channel(theirs)
    master.cork()
    master.hand(Serve(("tcp", 1), 1), [pipe_reading(0)])
    assert tally.held == 1  # corked: still ours
    master.uncork()
    assert tally.held == 0  # sent: the process's
    handed = fill(master)
    assert tally.held == len(master.queued_fds()) > 0
    assert open_fds() - before >= tally.held  # they are the master's descriptors
    got: dict[int, int] = {}
    while len(got) < handed:
        got |= received(process)
        master.flush()
    assert tally.held == 0 and master.backlog == 0
    assert got == {1 + i: i for i in range(handed)}
    master.close()
    process.close()
    assert open_fds() == before


def test_a_closed_channel_gives_its_held_descriptors_back_to_the_tally() -> None:
    ours, theirs = control.channel_pair()
    tally = control.FdTally()
    master = Channel(ours, tally=tally)
    fill(master)
    master.cork()
    master.hand(Serve(("tcp", 60000), 1), [pipe_reading(0)])
    assert tally.held > 0
    master.close()
    theirs.close()
    assert tally.held == 0


def test_a_corked_serve_is_taken_back_with_its_descriptor_and_the_rest_arrive() -> None:
    before = open_fds()
    ours, theirs = control.channel_pair()
    master, process = Channel(ours), Channel(theirs)
    master.cork()
    for i in range(5):
        master.hand(Serve(("tcp", 100 + i), 1), [pipe_reading(i)])
    assert master.cancel_serve(("tcp", 102))
    assert not master.cancel_serve(("tcp", 102))  # once
    assert not master.cancel_serve(("tcp", 10))  # "serve tcp 10" is not "serve tcp 100"
    assert master.tally.held == 4
    master.uncork()
    assert received(process) == {100: 0, 101: 1, 103: 3, 104: 4}
    assert not master.cancel_serve(("tcp", 101))  # delivered: the process stops it
    master.close()
    process.close()
    assert open_fds() == before


def test_a_queued_serve_is_taken_back_and_the_queue_stays_in_order() -> None:
    before = open_fds()
    ours, theirs = control.channel_pair()
    master, process = Channel(ours), Channel(theirs)
    handed = fill(master)
    last = handed  # its port: 1 + index, the last one surely queued
    queued = master.backlog
    assert master.cancel_serve(("tcp", last))
    assert master.backlog == queued - 1
    got: dict[int, int] = {}
    while master.backlog or len(got) < handed - 1:
        got |= received(process)
        master.flush()
    assert got == {1 + i: i for i in range(handed - 1)}
    master.close()
    process.close()
    assert open_fds() == before


def test_a_batch_partly_sent_is_not_searched() -> None:
    """Its descriptors went with its first byte: what is left of it owns none."""
    key = ("tcp", 80)
    assert control._find_serve([b"serve tcp 80 1"], 1, key) == (0, 0, 1)
    assert control._find_serve([b"serve tcp 80 1"], 0, key) is None
    assert control._find_serve([b"p 81", b"serve tcp 81 2", b"serve tcp 80 1"], 3, key) == (2, 2, 1)


def test_the_bound_keeps_the_masters_reserve() -> None:
    assert handover_fd_limit(20_000, 18) == 20_000 - MASTER_FD_RESERVE - 18
    assert handover_fd_limit(600, 18) == 150  # a tiny limit: a quarter still serves


def handovers(limit: int) -> Handovers:
    return Handovers(limit, RefusalLog(handover_log))


def free_ports() -> tuple[int, int]:
    """Two distinct free loopback ports."""
    with socket.socket() as one, socket.socket() as two:
        one.bind(("127.0.0.1", 0))
        two.bind(("127.0.0.1", 0))
        return int(one.getsockname()[1]), int(two.getsockname()[1])


def bindable(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_past_the_bound_a_port_is_refused_before_it_is_bound() -> None:
    config = Config(bind_address="127.0.0.1")
    ours, theirs = control.channel_pair()
    h = handovers(limit=2)
    channel = h.channel(ours)
    first, second = free_ports()
    assert h.start(config, PortConf("tcp", first, Mode.NORMAL), socket.AF_INET, channel,
                   frozenset()) == ""
    assert h.tally.held == 1 and not bindable(first)
    assert h.full()  # one more port may need two
    assert h.start(config, PortConf("tcp", second, Mode.NORMAL), socket.AF_INET, channel,
                   frozenset()) == "refused_handovers"
    assert bindable(second)  # never bound
    h.uncork()
    assert h.tally.held == 0 and not h.full()
    channel.close()
    theirs.close()


def test_a_port_stopped_before_its_serve_left_is_closed_in_the_master_at_once() -> None:
    config = Config(bind_address="127.0.0.1")
    ours, theirs = control.channel_pair()
    h = handovers(limit=1000)
    channel, process = h.channel(ours), Channel(theirs)
    port, kept = free_ports()
    young, _other = free_ports()
    for p in (port, kept, young):
        assert h.start(config, PortConf("tcp", p, Mode.NORMAL), socket.AF_INET, channel,
                       frozenset()) == ""
    assert not bindable(port)
    assert h.stop(channel, ("tcp", port), DROP_AFTER)  # dropped: no stop to send
    assert bindable(port) and h.tally.held == 2
    # A connection waits on the other: it is an attack, the process must get it (then the stop).
    client = socket.create_connection(("127.0.0.1", kept))
    assert not h.stop(channel, ("tcp", kept), DROP_AFTER)
    # One started a moment ago may have a handshake on its way (its connect() returned): kept.
    assert not h.stop(channel, ("tcp", young), DROP_AFTER / 2)
    h.uncork()
    messages = [control.decode(data) for data in process.receive_raw()]
    assert messages == [Serve(("tcp", kept), 1), Serve(("tcp", young), 1),
                        control.Stop(("tcp", kept)), control.Stop(("tcp", young))]
    [listener, young_listener] = process.take_fds(2)
    os.close(young_listener)
    with socket.socket(fileno=listener) as sock:
        conn, _addr = sock.accept()
        conn.close()
    client.close()
    channel.close()
    process.close()
