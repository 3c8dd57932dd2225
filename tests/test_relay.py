"""The relay state machine (relaystate.Relay) and the mirror policy (mirror.py), without sockets:
bytes and a fake clock in, steps out."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from honeytrap.attack import Connection, Mode
from honeytrap.config import PortConf, ProxyTarget
from honeytrap.mirror import MirrorPolicy, PeerRateLimit, address_refusal
from honeytrap.relaystate import Relay, Side, Step, Target, chunks, target_of
from honeytrap.session import Closed


def relay(read_limit: int = 100, idle: float = 10.0, lifetime: float = 600.0) -> Relay:
    return Relay(read_limit=read_limit, idle_timeout=idle, lifetime=lifetime, now=0.0)


# --- relaying and recording -------------------------------------------------------------------


def test_client_bytes_go_to_the_target_and_are_the_attack_string() -> None:
    r = relay()
    assert r.on_data(Side.CLIENT, b"GET /", 1.0) == Step(to_target=b"GET /")
    assert r.on_data(Side.CLIENT, b" HTTP/1.0", 2.0) == Step(to_target=b" HTTP/1.0")
    assert r.payload(Side.CLIENT) == b"GET / HTTP/1.0"
    assert r.payload(Side.TARGET) == b""


def test_target_bytes_go_to_the_client_and_are_recorded_apart() -> None:
    r = relay()
    assert r.on_data(Side.TARGET, b"220 hi\r\n", 1.0) == Step(to_client=b"220 hi\r\n")
    assert r.payload(Side.TARGET) == b"220 hi\r\n"
    assert r.payload(Side.CLIENT) == b""


@pytest.mark.parametrize("side", list(Side))
def test_read_limit_truncates_that_side_forwards_the_kept_part_and_closes(side: Side) -> None:
    r = relay(read_limit=10)
    r.on_data(side, b"12345678", 1.0)
    step = r.on_data(side, b"ABCDEF", 2.0)
    assert step.close
    assert (step.to_target if side is Side.CLIENT else step.to_client) == b"AB"
    assert r.payload(side) == b"12345678AB"
    assert r.truncated == {side}
    assert r.closed is Closed.READ_LIMIT


def test_reaching_read_limit_exactly_closes_without_truncation() -> None:
    r = relay(read_limit=4)
    assert r.on_data(Side.CLIENT, b"abcd", 1.0) == Step(to_target=b"abcd", close=True)
    assert r.truncated == set()
    assert r.closed is Closed.READ_LIMIT


def test_read_limit_counts_each_direction_on_its_own() -> None:
    r = relay(read_limit=10)
    r.on_data(Side.CLIENT, b"123456789", 1.0)
    assert not r.on_data(Side.TARGET, b"123456789", 1.0).close
    assert r.closed is Closed.OPEN


def test_client_half_close_is_passed_to_the_target_and_its_answer_still_flows() -> None:
    r = relay()
    assert r.on_eof(Side.CLIENT) == Step(eof_target=True)
    assert r.on_data(Side.TARGET, b"answer", 1.0) == Step(to_client=b"answer")
    assert r.on_data(Side.CLIENT, b"late", 1.0) == Step()  # nothing after its own EOF


def test_both_half_closed_ends_the_relay() -> None:
    r = relay()
    assert r.on_eof(Side.TARGET) == Step(eof_client=True)
    assert r.on_eof(Side.CLIENT) == Step(close=True)
    assert r.closed is Closed.EOF


@pytest.mark.parametrize(("error", "why"), [(False, Closed.EOF), (True, Closed.RESET)])
def test_either_side_gone_ends_the_relay(error: bool, why: Closed) -> None:
    r = relay()
    assert r.on_lost(Side.TARGET, error) == Step(close=True)
    assert r.closed is why


def test_idle_both_ways_for_the_idle_timeout_ends_the_relay() -> None:
    r = relay(idle=5.0)
    assert r.deadline() == 5.0
    assert r.on_tick(4.9) == Step()
    assert r.on_tick(5.0) == Step(close=True)
    assert r.closed is Closed.IDLE


def test_data_either_way_postpones_the_idle_end() -> None:
    r = relay(idle=5.0)
    r.on_data(Side.TARGET, b"x", 4.0)
    assert r.deadline() == 9.0
    assert r.on_tick(8.0) == Step()
    assert r.closed is Closed.OPEN


def test_lifetime_caps_a_relay_that_keeps_trickling() -> None:
    r = relay(idle=5.0, lifetime=12.0)
    for now in (3.0, 6.0, 9.0, 11.0):
        r.on_data(Side.CLIENT, b".", now)
    assert r.deadline() == 12.0
    assert r.on_tick(12.0) == Step(close=True)
    assert r.closed is Closed.LIFETIME


def test_nothing_is_relayed_or_recorded_after_the_end() -> None:
    r = relay()
    r.abort(Closed.SHUTDOWN)
    assert r.on_data(Side.CLIENT, b"x", 1.0) == Step()
    assert r.on_eof(Side.TARGET) == Step()
    assert r.payload(Side.CLIENT) == b""
    assert r.closed is Closed.SHUTDOWN


events = st.lists(
    st.one_of(
        st.tuples(st.just("data"), st.sampled_from(list(Side)), st.binary(max_size=40)),
        st.tuples(st.just("eof"), st.sampled_from(list(Side)), st.just(b"")),
        st.tuples(st.just("tick"), st.just(Side.CLIENT), st.just(b"")),
    ),
    max_size=40,
)


@given(events, st.integers(min_value=1, max_value=120))
def test_any_event_sequence_records_exactly_what_was_forwarded_within_read_limit(
    sequence: list[tuple[str, Side, bytes]], read_limit: int
) -> None:
    r = relay(read_limit=read_limit, idle=3.0)
    forwarded = {Side.CLIENT: b"", Side.TARGET: b""}
    fed = {Side.CLIENT: b"", Side.TARGET: b""}
    closed_seen = False
    for now, (kind, side, data) in enumerate(sequence):
        if kind == "data":
            fed[side] += data
            step = r.on_data(side, data, float(now))
        elif kind == "eof":
            step = r.on_eof(side)
        else:
            step = r.on_tick(float(now))
        forwarded[Side.CLIENT] += step.to_target
        forwarded[Side.TARGET] += step.to_client
        if closed_seen:
            assert step.to_target == step.to_client == b""
        closed_seen = closed_seen or r.closed is not Closed.OPEN
    for side in Side:
        assert r.payload(side) == forwarded[side]
        assert len(r.payload(side)) <= read_limit
        assert fed[side].startswith(r.payload(side))


def test_chunks_cut_stream_data_into_datagrams() -> None:
    assert list(chunks(b"abcdefg", 3)) == [b"abc", b"def", b"g"]
    assert list(chunks(b"", 3)) == []


# --- targets ----------------------------------------------------------------------------------

ATTACK = Connection("tcp", "198.18.0.1", 2525, "198.18.0.2", 40000)


def test_mirror_target_is_this_connections_own_peer_on_the_attacked_port() -> None:
    conf = PortConf("tcp", 2525, Mode.MIRROR)
    assert target_of(conf, ATTACK) == Target("198.18.0.2", 2525, "tcp")


def test_proxy_target_is_the_configured_one() -> None:
    conf = PortConf("tcp", 2525, Mode.PROXY, ProxyTarget("backend.example", 25, "udp"))
    assert target_of(conf, ATTACK) == Target("backend.example", 25, "udp")
    assert str(Target("2001:db8::5", 25, "tcp")) == "[2001:db8::5]:25/tcp"


# --- the mirror policy ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.3.2.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("2002:7f00:1::1", "loopback"),  # 6to4 of 127.0.0.1
        ("2002:a9fe:a9fe::1", "link-local"),  # 6to4 of 169.254.169.254
        ("169.254.10.1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("224.0.0.251", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("example.com", "not an IP address"),
        ("", "not an IP address"),
    ],
)
def test_addresses_never_mirrored_to(address: str, reason: str) -> None:
    refusal = address_refusal(address)
    assert refusal is not None and reason in refusal


@pytest.mark.parametrize("address", ["198.18.0.2", "2001:db8::2", "192.0.2.7", "10.1.2.3"])
def test_routable_peers_may_be_mirrored_to(address: str) -> None:
    assert address_refusal(address) is None


@given(st.text(max_size=60))
def test_any_text_as_peer_address_gets_a_verdict(text: str) -> None:
    verdict = address_refusal(text)
    assert verdict is None or isinstance(verdict, str)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_rate_limit_allows_the_limit_per_window_and_then_refuses() -> None:
    clock = Clock()
    rate = PeerRateLimit(limit=3, window=60.0, clock=clock)
    assert [rate.take("198.18.0.2") for _ in range(4)] == [True, True, True, False]
    assert rate.take("198.18.0.3")  # another peer has its own count
    clock.now = 59.9
    assert not rate.take("198.18.0.2")
    clock.now = 60.0
    assert rate.take("198.18.0.2")  # the window slid past the first ones


def test_rate_limit_tracks_a_bounded_number_of_peers() -> None:
    clock = Clock()
    rate = PeerRateLimit(limit=3, window=60.0, max_peers=2, clock=clock)
    assert rate.take("a") and rate.take("b")
    assert not rate.take("c")  # full: normal mode for newcomers, not unbounded memory
    clock.now = 61.0
    assert rate.take("c")  # expired peers are forgotten
    assert len(rate.events) <= 2


def test_policy_refuses_our_own_addresses_and_the_attacked_one() -> None:
    policy = MirrorPolicy(own=lambda address: address == "198.18.0.9")
    assert policy.refusal("198.18.0.9", "198.18.0.1") == "one of our own addresses"
    assert policy.refusal("198.18.0.1", "198.18.0.1") == "one of our own addresses"
    assert policy.refusal("198.18.0.2", "198.18.0.1") is None


def test_policy_breaks_a_mirror_loop_between_two_honeypots() -> None:
    clock = Clock()
    policy = MirrorPolicy(PeerRateLimit(limit=2, window=60.0, clock=clock), own=lambda a: False)
    verdicts = [policy.refusal("198.18.0.2", "198.18.0.1") for _ in range(3)]
    assert verdicts[:2] == [None, None]
    assert verdicts[2] is not None and "mirror loop guard" in verdicts[2]
