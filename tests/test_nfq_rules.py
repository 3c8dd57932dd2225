"""The NFQUEUE rules README.md tells operators to install, installed verbatim in a sensor
namespace: a packet for a port something already listens on (a real service, or one of
honeytrap's dynamic servers, bound to the wildcard address) must not reach the queue, where the
master would spend a verdict on it; a packet for an unserved port must.

The queue rules carry the README's `--queue-bypass` / `bypass`, so with no reader on the queue
the kernel lets queued packets through: nothing hangs, and the NFQUEUE rule's packet counter
tells whether the packet went that way. The README's nft rules have no `counter` (an operator
does not need one); the test adds one in front of `queue` and changes nothing else.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from netns import Host, Lab, inside

REPO = Path(__file__).resolve().parent.parent
SECTION = "### The NFQUEUE monitor's firewall rules"
SERVED_PORT = 8080  # the wildcard listener's port, outside the README's excluded 22
UNSERVED_PORT = 8081  # nothing listens here
IO_TIMEOUT = 5.0  # seconds for one connect/recv inside the lab; the veth answers in microseconds
PAYLOAD = b"probe"
QUEUE_VERDICT = re.compile(r"\bqueue num \d+ bypass\b")  # the README's nft queue verdicts


def readme_blocks() -> tuple[str, str]:
    """The iptables (sh) and nft blocks of README.md's firewall-rules section, verbatim."""
    text = (REPO / "README.md").read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start)
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```$", text[start:end], flags=re.M | re.S)
    shell = next(b for b in blocks if "NFQUEUE" in b)
    nft = next(b for b in blocks if b.lstrip().startswith("table "))
    return shell, nft


def install_iptables(host: Host) -> None:
    shell, _ = readme_blocks()
    host.cmd("sh", "-euc", shell)


NFT_QUEUE_PROBE = """table inet probe {
  chain c {
    type filter hook input priority 0;
    queue num 0 bypass
  }
}
"""


def nft_has_queue(host: Host) -> bool:
    """Whether the kernel has nft's own queue statement (CONFIG_NFT_QUEUE; iptables' NFQUEUE
    target is another module, CONFIG_NETFILTER_XT_TARGET_NFQUEUE, and may be there without it).
    Without it the kernel refuses the rule with ENOENT; any other failure is the test's."""
    try:
        host.cmd("nft", "-f", "-", input=NFT_QUEUE_PROBE.encode())
    except RuntimeError as exc:
        if "No such file or directory" in str(exc):
            return False
        raise
    host.cmd("nft", "delete", "table", "inet", "probe")
    return True


def install_nft(host: Host) -> None:
    """The README's nft rules, each queue rule counted. On a kernel without nft's queue
    statement the queue rules' verdict becomes `accept`: what is tested, whether a packet gets
    past the socket rule to the queue rule, does not depend on that rule's verdict."""
    _, nft = readme_blocks()
    nft = nft.replace(" queue ", " counter queue ")
    if not nft_has_queue(host):
        nft = QUEUE_VERDICT.sub("accept", nft)
    host.cmd("nft", "-f", "-", input=nft.encode())


def _proto_of(prot: str) -> str:
    return {"6": "tcp", "17": "udp"}.get(prot, prot)


def queued_iptables(host: Host, proto: str, family: int) -> int:
    """Packets the NFQUEUE rule for `proto` has taken, from `iptables -L INPUT -v -x -n`."""
    tool = "iptables" if family == socket.AF_INET else "ip6tables"
    total = None
    for line in host.cmd(tool, "-L", "INPUT", "-v", "-x", "-n").splitlines():
        cols = line.split()
        if len(cols) > 3 and cols[2] == "NFQUEUE" and _proto_of(cols[3]) == proto:
            total = (total or 0) + int(cols[0])
    assert total is not None, f"no {proto} NFQUEUE rule in {tool}"
    return total


def queued_nft(host: Host, proto: str, family: int) -> int:
    """Packets the queue rule for `proto` has counted, from `nft -j list ruleset`: the counted
    rules are the queue rules, as install_nft counts only those (the inet table serves both
    families, so `family` does not select a rule)."""
    del family
    total = None
    for item in json.loads(host.cmd("nft", "-j", "list", "ruleset"))["nftables"]:
        exprs = item.get("rule", {}).get("expr", [])
        rule_proto = "udp" if '"udp"' in json.dumps(exprs) else "tcp"
        counters = [e["counter"]["packets"] for e in exprs if "counter" in e]
        if rule_proto == proto and counters:
            total = (total or 0) + int(counters[0])
    assert total is not None, f"no counted {proto} queue rule in the nft ruleset"
    return total


Variant = tuple[Callable[[Host], None], Callable[[Host, str, int], int]]
VARIANTS: dict[str, Variant] = {
    "iptables": (install_iptables, queued_iptables),
    "nft": (install_nft, queued_nft),
}
FAMILIES = {"ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}


def sensor_address(lab: Lab, family: int) -> str:
    return lab.sensor.ip4 if family == socket.AF_INET else lab.sensor.ip6


def wildcard_listener(lab: Lab, family: int, proto: str) -> socket.socket:
    """A plain socket on the wildcard address of the sensor, as a dynamic server binds."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with inside(lab.sensor):
        sock = socket.socket(family, kind)
    sock.settimeout(IO_TIMEOUT)
    sock.bind(("0.0.0.0" if family == socket.AF_INET else "::", SERVED_PORT))
    if proto == "tcp":
        sock.listen(8)
    return sock


def reach_served(lab: Lab, family: int, proto: str, server: socket.socket) -> None:
    """One connection (TCP) or datagram (UDP) from the attacker that the server receives."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with inside(lab.attacker):
        client = socket.socket(family, kind)
    with client:
        client.settimeout(IO_TIMEOUT)
        client.connect((sensor_address(lab, family), SERVED_PORT))
        client.send(PAYLOAD)
        if proto == "tcp":
            conn, _ = server.accept()
            with conn:
                conn.settimeout(IO_TIMEOUT)
                assert conn.recv(len(PAYLOAD)) == PAYLOAD
        else:
            assert server.recv(len(PAYLOAD)) == PAYLOAD


def reach_unserved(lab: Lab, family: int, proto: str) -> None:
    """One SYN (TCP) or datagram (UDP) to a port nobody serves; returns once the sensor's
    kernel has refused it (RST, or ICMP port unreachable), i.e. once the packet went by."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with inside(lab.attacker):
        client = socket.socket(family, kind)
    with client:
        client.settimeout(IO_TIMEOUT)
        client.connect((sensor_address(lab, family), UNSERVED_PORT))  # TCP: refused here
        client.send(PAYLOAD)
        client.recv(1)  # UDP: the ICMP error is reported here


@pytest.mark.parametrize("proto", ["tcp", "udp"])
@pytest.mark.parametrize("family_name", list(FAMILIES))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_served_ports_bypass_the_queue_unserved_ports_reach_it(
    lab: Lab, variant: str, family_name: str, proto: str
) -> None:
    """A wildcard-bound listener's packets skip NFQUEUE; an unserved port's packets are queued."""
    install, queued = VARIANTS[variant]
    family = FAMILIES[family_name]
    install(lab.sensor)
    assert queued(lab.sensor, proto, family) == 0
    with wildcard_listener(lab, family, proto) as server:
        reach_served(lab, family, proto, server)
    assert queued(lab.sensor, proto, family) == 0, "a served port's packet went to the queue"
    with pytest.raises(ConnectionRefusedError):
        reach_unserved(lab, family, proto)
    assert queued(lab.sensor, proto, family) >= 1, "an unserved port's packet skipped the queue"


def test_the_readme_installs_the_socket_rule_with_nowildcard() -> None:
    """xt_socket skips wildcard-bound sockets unless told --nowildcard (iptables-extensions(8))."""
    shell, _ = readme_blocks()
    socket_rules = [line for line in shell.splitlines() if "-m socket" in line]
    assert len(socket_rules) == 2
    assert all("--nowildcard" in line for line in socket_rules)
