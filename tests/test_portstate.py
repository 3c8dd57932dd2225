"""A server process's busy/idle reports to the master, gathered (portstate.PortStates): what the
port table hears, at each report, of the ports' crossings of zero connections since the last."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from honeytrap import control
from honeytrap.portstate import REPORT_PORTS, PortStates

A, B, C = ("tcp", 20001), ("udp", 53), ("tcp", 20002)


def test_a_connection_that_came_and_went_is_one_idle_which_moves_the_port_last() -> None:
    states = PortStates()
    assert states.note(A, True)  # the first change: the caller schedules a report
    assert not states.note(A, False)
    assert states.due() == [control.Idle((A,))]
    assert not states.pending
    assert states.due() == []


def test_a_port_busy_across_reports_is_said_busy_once_then_idle() -> None:
    states = PortStates()
    states.note(A, True)
    assert states.due() == [control.Busy((A,))]
    states.note(A, False)
    states.note(A, True)  # idle and busy again meanwhile: the master already says busy
    assert states.due() == []
    states.note(A, False)
    assert states.due() == [control.Idle((A,))]


def test_a_report_is_one_idle_in_the_order_the_ports_first_changed_in_and_one_busy() -> None:
    states = PortStates()
    states.note(B, True)
    states.note(A, True)
    states.note(C, True)
    states.note(B, False)
    states.note(A, False)
    assert states.due() == [control.Idle((B, A)), control.Busy((C,))]


def test_a_report_of_more_ports_than_a_message_names_is_split_and_each_fits_a_message() -> None:
    states = PortStates()
    keys = [("udp", 65535 - i) for i in range(REPORT_PORTS + 1)]
    for key in keys:
        states.note(key, False)
    messages = states.due()
    assert messages == [control.Idle(tuple(keys[:REPORT_PORTS])), control.Idle((keys[-1],))]
    assert all(len(control.encode(m)) <= control.MAX_MESSAGE for m in messages)
    assert control.decode(control.encode(messages[0])) == messages[0]


def test_a_port_let_go_is_forgotten_and_a_new_one_on_it_starts_idle() -> None:
    states = PortStates()
    states.note(A, True)
    assert states.due() == [control.Busy((A,))]
    states.note(A, False)
    states.forget(A)
    assert states.due() == []
    states.note(A, True)  # the port handed over again: the table starts it idle
    assert states.due() == [control.Busy((A,))]


@given(st.lists(st.tuples(st.sampled_from([A, B]), st.booleans(), st.booleans()), max_size=60))
def test_the_master_always_ends_with_each_ports_state(
    steps: list[tuple[tuple[str, int], bool, bool]],
) -> None:
    """Whatever the crossings and wherever the reports fall, what the master was told last of a
    port is its state at the last report (a port never told anything is idle, as a new one)."""
    states = PortStates()
    now: dict[tuple[str, int], bool] = {}
    told: dict[tuple[str, int], bool] = {}
    for key, busy, report in steps:
        states.note(key, busy)
        now[key] = busy
        if report:
            for message in states.due():
                assert isinstance(message, (control.Busy, control.Idle))
                for reported in message.keys:
                    told[reported] = isinstance(message, control.Busy)
            assert {k: v for k, v in told.items() if v} == {k: v for k, v in now.items() if v}
