"""The pcap monitor, run inside the sensor namespace, sees real refused attempts from the attacker.

The monitor runs in a driver process (`ip netns exec <sensor> python -c DRIVER`) that prints one
JSON line when it is ready (or its ConfigError), then one per attempt. Where a test shows that
something is *not* reported, it sends that first and a reported attempt second: the reported one
arriving as the next line proves the first was filtered, without waiting on a timeout.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from netns import Host, Lab

from honeytrap.config import Config
from honeytrap.errors import ConfigError
from honeytrap.monitor import Attempt
from honeytrap.monitor.pcap import (
    MAX_RECENT,
    PcapMonitor,
    RecentAttempts,
    build_filter,
    check_expression,
    open_pcap_monitor,
)

PYTHON = sys.executable
LINE_TIMEOUT = 10.0  # seconds to wait for one line from the driver
ATTACKER_PORT = 40001  # the attacker binds this source port, so the attempt's remote_port is known

DRIVER = r"""
import dataclasses, json, os, select, sys, time
from honeytrap.config import Config
from honeytrap.errors import ConfigError
from honeytrap.monitor.pcap import PcapMonitor
args = json.loads(sys.argv[1])
try:
    monitor = PcapMonitor(args["interface"], args["addresses"], args["expression"], False)
except ConfigError as exc:
    print(json.dumps({"error": str(exc)}), flush=True)
    sys.exit(0)
print(json.dumps({"ready": monitor.interface, "addresses": monitor.addresses}), flush=True)
deadline = time.monotonic() + 60  # bounded even if the test forgets to close stdin
while time.monotonic() < deadline:
    readable, _, _ = select.select([monitor, sys.stdin], [], [], 1.0)
    if sys.stdin in readable and not os.read(sys.stdin.fileno(), 64):
        break
    if monitor in readable:
        for held in monitor.poll():
            print(json.dumps(dataclasses.asdict(held.attempt)), flush=True)
monitor.close()
"""

TCP_CLIENT = r"""
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
with socket.socket(family, socket.SOCK_STREAM) as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("", int(sys.argv[3])))
    try:
        s.connect((sys.argv[1], int(sys.argv[2])))
    except ConnectionRefusedError:
        sys.exit(0)
sys.exit("connection was not refused")
"""

UDP_CLIENT = r"""
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
with socket.socket(family, socket.SOCK_DGRAM) as s:
    s.bind(("", int(sys.argv[3])))
    s.connect((sys.argv[1], int(sys.argv[2])))
    s.send(b"probe")
    s.settimeout(5)
    try:
        s.recv(100)
    except ConnectionRefusedError:  # the ICMP port unreachable arrived
        sys.exit(0)
sys.exit("no port unreachable")
"""


class Driver:
    """The monitor's driver process in the sensor namespace."""

    def __init__(
        self, lab: Lab, interface: str | None, addresses: list[str], expression: str | None
    ):
        args = json.dumps(
            {"interface": interface, "addresses": addresses, "expression": expression}
        )
        self.proc = lab.spawn(
            lab.sensor,
            [PYTHON, "-c", DRIVER, args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._buffer = b""

    def line(self, timeout: float = LINE_TIMEOUT) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail("the monitor reported nothing in time")
            readable, _, _ = select.select([self.proc.stdout], [], [], left)
            if readable:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    pytest.fail(f"the monitor driver exited ({self.proc.wait(5)})")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        result: dict[str, Any] = json.loads(line)
        return result

    def ready(self) -> dict[str, Any]:
        first = self.line()
        assert "ready" in first, first
        return first

    def attempt(self) -> Attempt:
        return Attempt(**self.line())

    def close(self) -> None:
        """Closing stdin ends the driver; then its pipes are closed."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        self.proc.wait(10)
        self.proc.stdout.close()


@pytest.fixture
def monitor(lab: Lab) -> Iterator[Any]:
    """A factory: start a driver in the sensor namespace and wait for its ready line."""
    drivers: list[Driver] = []

    def start(
        addresses: list[str] | None = None,
        expression: str | None = None,
        interface: str | None = None,
    ) -> Driver:
        driver = Driver(lab, interface, addresses or [], expression)
        drivers.append(driver)
        return driver

    yield start
    for driver in drivers:
        driver.close()


def syn(attacker: Host, target: str, port: int, source_port: int = ATTACKER_PORT) -> None:
    attacker.cmd(PYTHON, "-c", TCP_CLIENT, target, str(port), str(source_port))


def datagram(attacker: Host, target: str, port: int, source_port: int = ATTACKER_PORT) -> None:
    attacker.cmd(PYTHON, "-c", UDP_CLIENT, target, str(port), str(source_port))


def family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


@pytest.mark.netns
@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize(("protocol", "port"), [("tcp", 2323), ("udp", 1434)])
def test_refused_attempt_is_reported(
    lab: Lab, monitor: Any, version: int, protocol: str, port: int
) -> None:
    """A SYN answered by a RST, a datagram answered by a port-unreachable."""
    sensor = lab.sensor.ip4 if version == 4 else lab.sensor.ip6
    attacker = lab.attacker.ip4 if version == 4 else lab.attacker.ip6
    driver = monitor()
    driver.ready()
    send = syn if protocol == "tcp" else datagram
    send(lab.attacker, sensor, port)
    assert driver.attempt() == Attempt(protocol, family(sensor), sensor, port, attacker,
                                       ATTACKER_PORT)


@pytest.mark.netns
@pytest.mark.parametrize("version", [4, 6])
def test_any_device_reports_through_linux_cooked_capture(
    lab: Lab, monitor: Any, version: int
) -> None:
    """-i any: pcap's pseudo-device (link type SLL), every interface's addresses."""
    sensor = lab.sensor.ip4 if version == 4 else lab.sensor.ip6
    driver = monitor(interface="any")
    driver.ready()
    datagram(lab.attacker, sensor, 69)
    attempt = driver.attempt()
    assert (attempt.protocol, attempt.local_addr, attempt.local_port) == ("udp", sensor, 69)


@pytest.mark.netns
def test_default_interface_and_addresses_are_the_sensors(lab: Lab, monitor: Any) -> None:
    """Without -i and -a: the first interface up that is not loopback, and all its addresses."""
    ready = monitor().ready()
    assert ready["ready"] == lab.sensor.dev
    assert lab.sensor.ip4 in ready["addresses"]
    assert lab.sensor.ip6 in ready["addresses"]
    assert "127.0.0.1" not in ready["addresses"]


@pytest.mark.netns
def test_secondary_addresses_are_watched_too(lab: Lab, monitor: Any) -> None:
    other = lab.add_address(lab.sensor, 9)
    ready = monitor().ready()
    assert {lab.sensor.ip4, other.ip4, lab.sensor.ip6, other.ip6} <= set(ready["addresses"])


@pytest.mark.netns
def test_user_expression_filters_attempts(lab: Lab, monitor: Any) -> None:
    driver = monitor(expression="not port 7777")
    driver.ready()
    syn(lab.attacker, lab.sensor.ip4, 7777)
    syn(lab.attacker, lab.sensor.ip4, 7778)
    assert driver.attempt().local_port == 7778


@pytest.mark.netns
@pytest.mark.parametrize("version", [4, 6])
def test_address_option_restricts_to_that_address(lab: Lab, monitor: Any, version: int) -> None:
    """-a: an attempt on another address of the sensor is not reported."""
    other = lab.add_address(lab.sensor, 9)
    sensor = lab.sensor.ip4 if version == 4 else lab.sensor.ip6
    elsewhere = other.ip4 if version == 4 else other.ip6
    driver = monitor(addresses=[sensor])
    driver.ready()
    syn(lab.attacker, elsewhere, 8081)
    datagram(lab.attacker, elsewhere, 8081)
    syn(lab.attacker, sensor, 8082)
    attempt = driver.attempt()
    assert (attempt.local_addr, attempt.local_port) == (sensor, 8082)


@pytest.mark.netns
def test_repeated_refusals_are_reported_once(lab: Lab, monitor: Any) -> None:
    """Within the dedup window, the same protocol/port/attacker is one attempt."""
    driver = monitor()
    driver.ready()
    datagram(lab.attacker, lab.sensor.ip4, 5060)
    datagram(lab.attacker, lab.sensor.ip4, 5060, source_port=ATTACKER_PORT + 1)
    datagram(lab.attacker, lab.sensor.ip4, 5061)
    assert driver.attempt().local_port == 5060
    assert driver.attempt().local_port == 5061


@pytest.mark.netns
def test_bad_expression_is_a_config_error_at_start(lab: Lab, monitor: Any) -> None:
    first = monitor(expression="port and and").line()
    assert "bad BPF expression" in first["error"]


@pytest.mark.netns
def test_unknown_interface_is_a_config_error(lab: Lab, monitor: Any) -> None:
    first = monitor(interface="nosuch0").line()
    assert "nosuch0" in first["error"]


def test_check_expression_rejects_a_syntax_error() -> None:
    with pytest.raises(ConfigError, match="bad BPF expression"):
        check_expression("tcp port ((")


def test_check_expression_accepts_a_valid_expression() -> None:
    check_expression("not port 22 and not net 10.0.0.0/8")


def test_monitor_with_bad_expression_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="bad BPF expression"):
        PcapMonitor("lo", ["127.0.0.1"], "frobnicate 7")


def test_open_pcap_monitor_takes_interface_address_and_expression() -> None:
    config = Config(interface="lo", address="127.0.0.1", bpf_expression="not port 22")
    monitor = open_pcap_monitor(config)
    try:
        assert (monitor.interface, monitor.addresses) == ("lo", ["127.0.0.1"])
        assert monitor.filter.endswith(" and (not port 22)")
    finally:
        monitor.close()


def test_filter_names_each_address_by_family() -> None:
    program = build_filter(["198.18.0.1", "2001:db8::1"])
    assert "src host 198.18.0.1" in program
    assert "src host 2001:db8::1" in program
    check_expression(program)


def test_filter_ands_the_user_expression_in_parentheses() -> None:
    program = build_filter(["198.18.0.1"], "port 1 or port 2")
    assert program.endswith(" and (port 1 or port 2)")
    check_expression(program)


def test_filter_without_addresses_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="-a"):
        build_filter([])


def test_filter_with_a_bad_address_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not an IP address"):
        build_filter(["198.18.0.1 or 1=1"])


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def attempt(port: int = 80, remote: str = "198.18.0.2") -> Attempt:
    return Attempt("tcp", socket.AF_INET, "198.18.0.1", port, remote, 40000)


def test_dedup_reports_an_attempt_again_after_the_window() -> None:
    clock = FakeClock()
    recent = RecentAttempts(window=0.5, clock=clock)
    assert recent.first(attempt())
    clock.now += 0.4
    assert not recent.first(attempt())
    clock.now += 0.2
    assert recent.first(attempt())


def test_dedup_tells_ports_and_attackers_apart() -> None:
    recent = RecentAttempts(window=0.5, clock=FakeClock())
    assert recent.first(attempt(80))
    assert recent.first(attempt(81))
    assert recent.first(attempt(80, remote="198.18.0.3"))


def test_dedup_memory_is_bounded() -> None:
    recent = RecentAttempts(window=60, limit=MAX_RECENT, clock=FakeClock())
    for port in range(1, MAX_RECENT * 2):
        recent.first(attempt(port))
    assert len(recent._reported) <= MAX_RECENT
