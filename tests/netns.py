"""Test hosts in network namespaces of our own (the only places tests send traffic to).

`Lab` makes an attacker and a sensor namespace joined by a veth pair, IPv4 from 198.18.0.0/15
(RFC 2544 benchmarking space) and IPv6 from 2001:db8::/32 (documentation space), and removes
them, with every process it started, on close. Names carry a random suffix so that several test
runs (or several developers) can share one machine.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field


def run(*argv: str, check: bool = True, input: bytes | None = None) -> str:
    proc = subprocess.run(argv, capture_output=True, input=input, timeout=60)
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}"
        )
    return proc.stdout.decode(errors="replace")


_subnet_counter = 0


def _next_subnet() -> int:
    """A /24 index within 198.18.0.0/15 for this lab: pid-based so parallel runs differ."""
    global _subnet_counter
    _subnet_counter += 1
    return (os.getpid() * 7 + _subnet_counter) % 500 + 1


@dataclass
class Host:
    name: str  # namespace name
    ip4: str
    ip6: str
    dev: str

    def cmd(self, *argv: str, check: bool = True, input: bytes | None = None) -> str:
        return run("ip", "netns", "exec", self.name, *argv, check=check, input=input)

    def argv(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def enter(self) -> int:
        """Open this namespace's handle, for `setns` in a thread or child."""
        return os.open(f"/run/netns/{self.name}", os.O_RDONLY)


@dataclass
class Lab:
    attacker: Host
    sensor: Host
    extra: list[Host] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @classmethod
    def create(cls, extra_attackers: int = 0) -> Lab:
        tag = secrets.token_hex(3)
        net = _next_subnet()
        octet2 = 18 + net // 250  # 198.18.x.0/24 or 198.19.x.0/24
        octet3 = net % 250 + 1
        prefix4 = f"198.{octet2}.{octet3}"
        prefix6 = f"2001:db8:{net:x}"
        sensor = Host(f"ht-s-{tag}", f"{prefix4}.1", f"{prefix6}::1", "veth-s")
        attacker = Host(f"ht-a-{tag}", f"{prefix4}.2", f"{prefix6}::2", "veth-a")
        lab = cls(attacker, sensor)
        try:
            for host in (sensor, attacker):
                run("ip", "netns", "add", host.name)
                host.cmd("ip", "link", "set", "lo", "up")
            run("ip", "link", "add", f"v{tag}s", "type", "veth", "peer", "name", f"v{tag}a")
            run("ip", "link", "set", f"v{tag}s", "netns", sensor.name)
            run("ip", "link", "set", f"v{tag}a", "netns", attacker.name)
            sensor.cmd("ip", "link", "set", f"v{tag}s", "name", sensor.dev)
            attacker.cmd("ip", "link", "set", f"v{tag}a", "name", attacker.dev)
            for host in (sensor, attacker):
                host.cmd("sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0")
                host.cmd("sysctl", "-qw", f"net.ipv6.conf.{host.dev}.accept_dad=0")
                host.cmd("ip", "addr", "add", f"{host.ip4}/24", "dev", host.dev)
                host.cmd("ip", "-6", "addr", "add", f"{host.ip6}/64", "dev", host.dev, "nodad")
                host.cmd("ip", "link", "set", host.dev, "up")
            for i in range(extra_attackers):
                lab.extra.append(lab.add_address(attacker, i + 3))
        except BaseException:
            lab.close()
            raise
        return lab

    def add_address(self, host: Host, last: int) -> Host:
        """A second address on a host (a second attacker, as far as the sensor can tell)."""
        ip4 = host.ip4.rsplit(".", 1)[0] + f".{last}"
        ip6 = host.ip6.rsplit(":", 1)[0] + f":{last:x}"
        host.cmd("ip", "addr", "add", f"{ip4}/24", "dev", host.dev)
        host.cmd("ip", "-6", "addr", "add", f"{ip6}/64", "dev", host.dev, "nodad")
        return Host(host.name, ip4, ip6, host.dev)

    def spawn(self, host: Host, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        """Start a process inside a namespace; it is killed (by PID) on close."""
        proc: subprocess.Popen[bytes] = subprocess.Popen(  # type: ignore[call-overload]
            host.argv(*argv), start_new_session=True, **kwargs
        )
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(5)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        for host in (self.sensor, self.attacker):
            # Anything still running in the namespace was started by this test: end it.
            pids = run("ip", "netns", "pids", host.name, check=False).split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            run("ip", "netns", "del", host.name, check=False)


_libc = None
CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    global _libc
    import ctypes

    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class inside:  # noqa: N801 - used as a context manager: `with inside(lab.attacker): ...`
    """Run the block with this thread in the host's network namespace. Sockets made inside stay
    in that namespace after the block, so a test can open them there and use them anywhere."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self._home = -1

    def __enter__(self) -> Host:
        self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = self.host.enter()
        try:
            _setns(target)
        finally:
            os.close(target)
        return self.host

    def __exit__(self, *exc: object) -> None:
        try:
            _setns(self._home)
        finally:
            os.close(self._home)
