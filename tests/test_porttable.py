"""The master's port table (porttable.py) as a unit: attempts and process messages in, actions
out, on a fake clock. No sockets, no processes."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from honeytrap import control
from honeytrap.config import Config
from honeytrap.limits import FD_RESERVE, SPARE_HEADROOM, Limits, process_fd_budget
from honeytrap.porttable import Action, Fork, PortTable, Retire, Start, Stop, Verdict


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


LIMITS = Limits(
    max_servers=4, ports_per_process=2, max_server_rate=1000, max_processes=5,
    fd_budget=10_000, port_fds=100, spare_processes=2, max_pending_per_port=2, max_pending=3,
    pending_timeout=2.0,
)


def table(**changes: float) -> tuple[PortTable, Clock]:
    clock = Clock()
    return PortTable(replace(LIMITS, **changes), clock), clock


def kinds(actions: list[Action]) -> list[str]:
    return [type(a).__name__ for a in actions]


def tcp(port: int) -> tuple[str, int]:
    return ("tcp", port)


def serve(t: PortTable, port: int, token: object = None) -> list[Action]:
    """An attempt, with its Fork carried out by a pid of the table's counting, and every Start
    reported as carried out."""
    actions = t.attempt(tcp(port), token if token is not None else f"syn-{port}")
    done: list[Action] = []
    while actions:
        action = actions.pop(0)
        done.append(action)
        if isinstance(action, Fork):
            actions = t.forked(100 + len(t.processes), action) + actions
        elif isinstance(action, Start):
            t.started(action.key, action.pid)
    return done


# --- table-driven: one attempt, its actions -------------------------------------------------


def test_the_first_attempt_forks_then_starts_then_gives_the_verdict() -> None:
    t, _ = table()
    actions = serve(t, 80, "syn")
    assert kinds(actions) == ["Fork", "Start", "Verdict"]
    assert actions[1] == Start(tcp(80), 100, "syn") and actions[2] == Verdict("syn", tcp(80))
    assert t.stats.forks_on_path == 1 and t.stats.servers_started == 1


def test_a_spare_takes_the_first_port_without_a_fork() -> None:
    t, _ = table()
    assert t.spares_wanted() == 2
    t.forked(7)
    t.forked(8)
    assert t.spares_wanted() == 0
    assert kinds(serve(t, 80)) == ["Start", "Verdict"]
    # The process serving 80 has room for another port: the one spare left is enough.
    assert t.stats.forks_on_path == 0 and t.spares_wanted() == 0
    first = t.serving[tcp(80)].pid
    assert kinds(serve(t, 81)) == ["Start", "Verdict"]
    assert t.serving[tcp(81)].pid == first  # the fullest with room, not the spare
    # It is full: the next new port takes the last spare, so both are wanted again.
    assert t.stats.forks_on_path == 0 and t.spares_wanted() == 1


def test_no_spare_waits_beside_a_process_with_spare_headroom() -> None:
    """With ports_per_process at SPARE_HEADROOM or more, one spare waits for the first port; the
    process serving it has the headroom, so none is forked beside it until it is down to less."""
    t, _ = table(ports_per_process=SPARE_HEADROOM + 2, max_servers=SPARE_HEADROOM + 4,
                 fd_budget=10 * SPARE_HEADROOM, port_fds=1)
    assert t.spares_wanted() == 2  # none yet: as many as may be wanted
    t.forked(7)
    assert t.spares_wanted() == 0  # the one spare will have the headroom once it serves
    assert kinds(serve(t, 80)) == ["Start", "Verdict"]
    assert t.serving[tcp(80)].pid == 7 and t.spares_wanted() == 0
    serve(t, 81)
    assert t.spares_wanted() == 0  # room for SPARE_HEADROOM more ports
    serve(t, 82)
    assert t.spares_wanted() == 1  # down to less: one is forked ahead of need
    assert t.stats.forks_on_path == 0 and t.serving[tcp(82)].pid == 7
    # ... and none is ready: the master forks it after this round's verdicts, not only when its
    # loop is idle (a sweep may never leave it idle, and the process would fill first).
    assert t.spares() == (0, 1)
    t.forked(8)
    assert t.spares() == (1, 0)


@pytest.mark.parametrize(
    ("setup", "port", "expected", "counter"),
    [
        ([80], 80, ["Verdict"], ""),  # already served: just the verdict
        ([80], 81, ["Start", "Verdict"], ""),  # the same process has room for a second port
        ([80, 81], 82, ["Fork", "Start", "Verdict"], ""),  # full: a new process
        ([80, 81, 82, 83], 84, ["Stop", "Start", "Verdict"], "servers_evicted"),
    ],
)
def test_attempt_decisions(setup: list[int], port: int, expected: list[str], counter: str) -> None:
    t, clock = table()
    for p in setup:
        serve(t, p)
        clock.now += 1
    assert kinds(serve(t, port)) == expected
    if counter:
        assert getattr(t.stats, counter) == 1


def test_the_least_recently_used_idle_port_is_evicted() -> None:
    t, clock = table()
    for p in (80, 81, 82, 83):
        serve(t, p)
        clock.now += 1
    t.attempt(tcp(80), "again")  # 80 is used again: 81 is now the oldest
    t.busy(100, tcp(81))  # busy: never evicted
    stop = [a for a in serve(t, 84) if isinstance(a, Stop)]
    assert stop == [Stop(tcp(82), 101, "evicted")]


def test_one_report_names_several_ports_and_keeps_their_order_of_use() -> None:
    """A process's report (portstate.py): one busy and one idle message for all its ports; the
    idle ones move to the end of the order of use in the order named."""
    t, clock = table()
    for p in (80, 81, 82, 83):
        serve(t, p)
    clock.now += 1
    t.message(100, control.Busy((tcp(80), tcp(81))))  # both busy: never evicted
    t.message(101, control.Idle((tcp(83), tcp(82))))  # 83 used before 82: 83 is the oldest
    stop = [a for a in serve(t, 84) if isinstance(a, Stop)]
    assert stop == [Stop(tcp(83), 101, "evicted")]


def test_no_idle_port_to_evict_refuses() -> None:
    t, _ = table()
    for p in (80, 81, 82, 83):
        serve(t, p)
    for pid, p in ((100, 80), (100, 81), (101, 82), (101, 83)):
        t.busy(pid, tcp(p))
    assert t.attempt(tcp(84), "syn") == [Verdict("syn", tcp(84), "refused_no_room")]
    assert t.stats.refused_no_room == 1


def test_the_rate_limit_refuses_and_recovers_with_time() -> None:
    t, clock = table(max_server_rate=2)
    t.forked(1)
    t.forked(2)
    assert kinds(serve(t, 80)) == ["Start", "Verdict"]
    assert kinds(serve(t, 81)) == ["Start", "Verdict"]
    assert serve(t, 82) == [Verdict("syn-82", tcp(82), "refused_rate")]
    clock.now += 0.5
    assert kinds(serve(t, 82)) == ["Start", "Verdict"]


def test_no_process_may_be_forked_refuses_as_draining() -> None:
    t, _ = table(max_processes=1)
    serve(t, 80)
    serve(t, 81)
    assert t.attempt(tcp(82), "syn") == [Verdict("syn", tcp(82), "refused_draining")]
    assert t.spares_wanted() == 0  # the bound holds for spares too


def test_ignored_ports_get_the_verdict_only() -> None:
    t, _ = table()
    assert t.attempt(tcp(80), "syn", ignore=True) == [Verdict("syn", tcp(80))]
    assert t.stats.ignored == 1 and not t.processes


def test_attempts_wait_while_the_port_is_released_then_start_again() -> None:
    t, _ = table()
    serve(t, 80)
    assert t.expire(100, tcp(80)) == [Stop(tcp(80), 100)]
    assert t.attempt(tcp(80), "a") == [] and t.attempt(tcp(80), "b") == []
    assert t.attempt(tcp(80), "c") == [Verdict("c", tcp(80), "refused_draining")]  # 2 per port
    actions = t.released(100, tcp(80))
    # The process lost its last port: retired; the port starts again in a new one.
    assert kinds(actions) == ["Retire", "Fork"]
    assert isinstance(actions[1], Fork) and actions[1].tokens == ("a", "b")
    more = t.forked(200, actions[1])
    assert more == [Start(tcp(80), 200, "a"), Verdict("a", tcp(80)), Verdict("b", tcp(80))]


def test_held_attempts_get_their_verdict_at_the_deadline() -> None:
    t, clock = table()
    serve(t, 80)
    t.expire(100, tcp(80))
    t.attempt(tcp(80), "a")
    clock.now += 1.0
    t.attempt(tcp(80), "b")
    assert t.tick() == []
    clock.now += 1.0
    assert t.tick() == [Verdict("a", tcp(80), "refused_pending")]
    clock.now += 1.0
    assert t.tick() == [Verdict("b", tcp(80), "refused_pending")]
    assert t.released(100, tcp(80)) == [Retire(100)]  # nothing left to start


def test_pending_is_bounded_in_all() -> None:
    t, _ = table(max_servers=10)
    for p in (80, 81, 82):
        serve(t, p)
        t.expire(t.serving[tcp(p)].pid, tcp(p))
    t.attempt(tcp(80), "a")
    t.attempt(tcp(80), "b")
    t.attempt(tcp(81), "c")
    assert t.attempt(tcp(82), "d") == [Verdict("d", tcp(82), "refused_draining")]


def test_a_busy_port_does_not_expire() -> None:
    t, _ = table()
    serve(t, 80)
    t.busy(100, tcp(80))
    assert t.expire(100, tcp(80)) == []
    t.idle_again(100, tcp(80))
    assert t.expire(100, tcp(80)) == [Stop(tcp(80), 100)]


def test_messages_from_the_wrong_process_are_ignored() -> None:
    t, _ = table()
    serve(t, 80)
    assert t.released(999, tcp(80)) == [] and t.expire(999, tcp(80)) == []
    assert tcp(80) in t.serving


def test_a_failed_start_forgets_the_port_and_keeps_the_process() -> None:
    t, _ = table()
    t.forked(1)
    (start, _verdict) = t.attempt(tcp(80), "syn")
    assert isinstance(start, Start)
    assert t.start_failed(start.key, start.pid, "ports_in_use") == []
    assert t.stats.ports_in_use == 1 and tcp(80) not in t.serving
    assert not t.processes[1].retired


def test_a_start_refused_for_the_masters_handovers_is_counted_and_forgotten() -> None:
    """The master refuses before binding when its descriptors are full of handovers not yet
    delivered (handovers.py): the start fails under refused_handovers, the process keeps its
    room; an attempt it refuses at once is counted there too, and gets its verdict."""
    t, _ = table()
    t.forked(1)
    (start, verdict) = t.attempt(tcp(80), "syn")
    assert isinstance(start, Start) and verdict == Verdict("syn", tcp(80))
    assert t.start_failed(start.key, start.pid, "refused_handovers") == []
    assert t.stats.refused_handovers == 1 and tcp(80) not in t.serving
    assert t.processes[1].serving == 0 and not t.processes[1].retired
    assert t.attempt(tcp(81), "next", refuse="refused_handovers") == [
        Verdict("next", tcp(81), "refused_handovers")]
    assert t.stats.refused_handovers == 2 and t.stats.servers_started == 0


def test_a_stop_dropped_with_its_serve_frees_the_port_at_once() -> None:
    """The master dropped the Stop with the port's Serve still undelivered (handovers.stop) and
    reports the port released at once: the attempts held meanwhile start it again."""
    t, _ = table()
    serve(t, 80)
    serve(t, 81)
    (stop,) = t.expire(100, tcp(80))
    assert isinstance(stop, Stop)
    assert t.attempt(tcp(80), "held") == []
    actions = t.released(stop.pid, stop.key)
    assert kinds(actions) == ["Start", "Verdict"] and tcp(80) in t.serving
    assert t.releasing == {}


def test_a_gone_process_frees_its_ports_and_starts_held_attempts() -> None:
    t, _ = table()
    serve(t, 80)
    serve(t, 81)
    t.expire(100, tcp(80))
    t.attempt(tcp(80), "held")
    actions = t.gone(100)
    assert tcp(81) not in t.serving and 100 not in t.processes
    assert kinds(actions) == ["Fork"]


def test_a_process_without_descriptors_to_spare_gets_no_new_port() -> None:
    t, _ = table(fd_budget=250, port_fds=100)
    t.forked(1)
    t.forked(2)
    serve(t, 80)  # to process 1 or 2
    first = t.serving[tcp(80)].pid
    t.load(first, 150)  # 150 + 1 listener + 100 for a new port > 250
    assert t.serving.get(tcp(80)).pid == first  # type: ignore[union-attr]
    serve(t, 81)
    assert t.serving[tcp(81)].pid != first
    t.load(first, 0)
    serve(t, 82)  # the other one while it has room (ports_per_process 2)
    serve(t, 83)
    assert t.serving[tcp(83)].pid == first  # descriptors to spare again


def test_reload_stops_every_port_and_retires_every_process() -> None:
    t, _ = table()
    serve(t, 80)
    t.forked(7)
    actions = t.reload(LIMITS)
    assert sorted(map(str, actions)) == sorted(map(str, [Stop(tcp(80), 100, "reload"), Retire(100),
                                                         Retire(7)]))
    assert t.spares_wanted() == 2


def test_shutdown_gives_every_held_attempt_its_verdict_and_starts_nothing() -> None:
    t, _ = table()
    serve(t, 80)
    t.expire(100, tcp(80))
    t.attempt(tcp(80), "held")
    assert t.shutdown() == [Verdict("held", tcp(80))]
    assert t.released(100, tcp(80)) == [Retire(100)]
    assert t.attempt(tcp(81), "late") == [Verdict("late", tcp(81), "refused_draining")]
    assert t.spares_wanted() == 0


def test_the_descriptor_budget_is_ports_per_process_times_what_a_port_holds() -> None:
    config = Config(ports_per_process=8, max_connections=100)
    assert process_fd_budget(config) == FD_RESERVE + 8 * (1 + 2 * 100)
    assert process_fd_budget(Config(), nr_open=5000) == 5000  # the kernel's ceiling
    limits = Limits.from_config(Config(max_servers=1000, ports_per_process=100))
    assert limits.max_processes == 2 * 10 + limits.spare_processes
    # A limit capped below the budget: a new port needs its even share free, not all of it.
    capped = Limits.from_config(Config(ports_per_process=1024, max_connections=20000),
                                nr_open=20000)
    assert capped.fd_budget == 20000 - FD_RESERVE
    assert capped.port_fds == (20000 - FD_RESERVE) // 1024


# --- the state machine: any sequence keeps the invariants ----------------------------------


PORTS = st.integers(1, 6)
PIDS = st.integers(0, 5)


class TableMachine(RuleBasedStateMachine):
    """Attempts, process messages, forks and time in any order: never two servers for a port,
    every bound kept, and every attempt gets exactly one verdict."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.table = PortTable(replace(LIMITS, max_servers=3, max_processes=4), self.clock)
        self.verdicts: dict[int, int] = {}
        self.tokens = 0
        self.next_pid = 1
        self.forks: list[Fork] = []
        self.stopped = False

    def carry_out(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Verdict):
                assert isinstance(action.token, int)
                self.verdicts[action.token] = self.verdicts.get(action.token, 0) + 1
            elif isinstance(action, Fork):
                self.forks.append(action)
            elif isinstance(action, Start):
                assert action.pid in self.table.processes
                self.table.started(action.key, action.pid)

    @rule(port=PORTS, ignore=st.booleans())
    def attempt(self, port: int, ignore: bool) -> None:
        self.tokens += 1
        self.verdicts[self.tokens] = 0
        self.carry_out(self.table.attempt(tcp(port), self.tokens, ignore=ignore))

    @precondition(lambda self: bool(self.forks))
    @rule(ok=st.booleans())
    def fork_done(self, ok: bool) -> None:
        fork = self.forks.pop(0)
        if ok:
            self.next_pid += 1
            self.carry_out(self.table.forked(self.next_pid, fork))
        else:
            self.carry_out(self.table.fork_failed(fork))

    @rule()
    def spare(self) -> None:
        if self.table.spares_wanted():
            self.next_pid += 1
            self.table.forked(self.next_pid)

    @rule(data=st.data(), message=st.sampled_from(["busy", "idle", "expire", "released"]))
    def message(self, data: st.DataObject, message: str) -> None:
        ports = [(pid, key) for pid, p in self.table.processes.items() for key in p.ports]
        if not ports:
            return
        pid, key = data.draw(st.sampled_from(ports))
        if message == "busy":
            self.table.busy(pid, key)
        elif message == "idle":
            self.table.idle_again(pid, key)
        elif message == "expire":
            self.carry_out(self.table.expire(pid, key))
        else:
            self.carry_out(self.table.released(pid, key))

    @rule(data=st.data())
    def gone(self, data: st.DataObject) -> None:
        if self.table.processes:
            self.carry_out(self.table.gone(data.draw(st.sampled_from(list(self.table.processes)))))

    @rule(pid=PIDS, descriptors=st.integers(0, 12_000))
    def load(self, pid: int, descriptors: int) -> None:
        self.table.load(pid, descriptors)

    @rule(seconds=st.floats(0, 3))
    def time_passes(self, seconds: float) -> None:
        self.clock.now += seconds
        self.carry_out(self.table.tick())

    @rule()
    def reload(self) -> None:
        self.carry_out(self.table.reload(self.table.limits))

    @precondition(lambda self: not self.stopped)
    @rule()
    def shutdown(self) -> None:
        self.stopped = True
        self.carry_out(self.table.shutdown())

    @invariant()
    def one_server_per_port(self) -> None:
        t = self.table
        owners: dict[tuple[str, int], int] = {}
        for pid, process in t.processes.items():
            for key in process.ports:
                assert key not in owners, f"{key} in {owners[key]} and {pid}"
                owners[key] = pid
        assert set(t.serving) | set(t.releasing) == set(owners)
        assert not set(t.serving) & set(t.releasing)

    @invariant()
    def bounds_hold(self) -> None:
        t, limits = self.table, self.table.limits
        assert len(t.serving) <= limits.max_servers
        assert len(t.processes) <= limits.max_processes
        for process in t.processes.values():
            assert 0 <= process.serving <= limits.ports_per_process
            assert process.serving == sum(1 for k in process.ports if k in t.serving)
        assert t.pending_count == sum(len(w) for w in t.pending.values()) <= limits.max_pending
        assert all(len(w) <= limits.max_pending_per_port for w in t.pending.values())
        assert set(t.pending) <= set(t.releasing)
        assert set(t.idle) <= set(t.serving)

    @invariant()
    def every_attempt_has_at_most_one_verdict_and_the_rest_are_held(self) -> None:
        held = {h.token for waiting in self.table.pending.values() for h in waiting}
        forking = {token for fork in self.forks for token in fork.tokens}
        for token, count in self.verdicts.items():
            assert count <= 1
            assert (count == 1) != (token in held or token in forking), token

    def teardown(self) -> None:
        """At the end, shutting down and carrying out the forks gives every attempt its one
        verdict."""
        self.carry_out(self.table.shutdown())
        while self.forks:
            self.carry_out(self.table.fork_failed(self.forks.pop(0)))
        assert all(count == 1 for count in self.verdicts.values())


# The machine is shared by 8 developers: generation may be slow, never a reason to fail.
TableMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_table_state_machine = TableMachine.TestCase
