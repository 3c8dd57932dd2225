"""Per-source connection budgets (sans-IO): per address and per /24 or /64, released when a
connection ends, refusals counted and logged at most once per interval; fuzzed."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from honeytrap.budget import LOG_INTERVAL, SourceBudget, network_of


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_one_address_gets_its_budget_and_no_more() -> None:
    budget = SourceBudget(per_source=3, per_network=10, clock=Clock())
    assert [budget.admit("198.51.100.7") for _ in range(3)] == [None, None, None]
    why = budget.admit("198.51.100.7")
    assert why is not None and "max_connections_per_source" in why
    assert budget.counters.refused_source == 1
    assert budget.admit("198.51.100.8") is None  # another address of the network still fits
    budget.release("198.51.100.7")
    assert budget.admit("198.51.100.7") is None


def test_a_source_held_shares_one_address_string() -> None:
    budget = SourceBudget(per_source=3, per_network=10, clock=Clock())
    first = "".join(["198.51.100.", "7"])  # equal strings, distinct objects, as accept gives
    again = "".join(["198.51.100", ".7"])
    assert first == again and first is not again
    assert budget.shared(first) is first  # none held: itself
    assert budget.admit(first) is None and budget.admit(again) is None
    assert budget.shared(again) is first
    budget.release(first)
    assert budget.shared(again) is first  # still one held
    budget.release(again)
    assert budget.shared(again) is again


def test_a_network_shares_one_budget() -> None:
    budget = SourceBudget(per_source=10, per_network=4, clock=Clock())
    for last in range(4):
        assert budget.admit(f"198.51.100.{last}") is None
    why = budget.admit("198.51.100.200")
    assert why is not None and "max_connections_per_network" in why
    assert budget.admit("198.51.101.1") is None  # the next /24 is another network
    assert budget.counters.refused_network == 1


def test_ipv6_networks_are_slash_64() -> None:
    assert network_of("2001:db8:1:2::1") == network_of("2001:db8:1:2:ffff::9")
    assert network_of("2001:db8:1:2::1") != network_of("2001:db8:1:3::1")
    assert network_of("192.0.2.1") == network_of("192.0.2.254") != network_of("192.0.3.1")
    assert network_of("not an address") == b"not an address"


def test_released_addresses_are_forgotten() -> None:
    budget = SourceBudget(per_source=2, per_network=2, clock=Clock())
    budget.admit("192.0.2.1")
    budget.release("192.0.2.1")
    assert budget.held("192.0.2.1") == 0
    assert not budget._sources and not budget._networks


def test_refusals_are_logged_at_most_once_per_interval() -> None:
    clock = Clock()
    budget = SourceBudget(per_source=1, per_network=10, clock=clock)
    budget.admit("192.0.2.1")
    assert budget.log_due() == 0  # nothing refused yet
    for _ in range(5):
        budget.admit("192.0.2.1")
    assert budget.log_due() == 5
    budget.admit("192.0.2.1")
    assert budget.log_due() == 0  # within the interval
    clock.now += LOG_INTERVAL
    assert budget.log_due() == 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5), st.integers(0, 2)), max_size=300))
def test_fuzz_held_never_exceeds_the_budgets(script: list[tuple[bool, int, int]]) -> None:
    budget = SourceBudget(per_source=3, per_network=5, clock=Clock())
    held: dict[str, int] = {}
    for opening, host, net in script:
        address = f"10.0.{net}.{host}"
        if opening:
            if budget.admit(address) is None:
                held[address] = held.get(address, 0) + 1
        elif held.get(address):
            budget.release(address)
            held[address] -= 1
        assert all(n <= 3 for n in held.values())
        for n in range(3):
            assert sum(v for k, v in held.items() if k.startswith(f"10.0.{n}.")) <= 5
        assert budget.held(address) == held.get(address, 0)
