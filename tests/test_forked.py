"""How the master's children end: the crash line names LOG_PORTS ports at most."""

from __future__ import annotations

from honeytrap import forked


def test_port_list_capped_with_the_count_of_the_rest() -> None:
    ports = [("tcp", 31000 + n) for n in range(1024)]
    line = forked.port_list(ports)
    assert line.split()[: forked.LOG_PORTS] == [f"{31000 + n}/tcp" for n in range(forked.LOG_PORTS)]
    assert line.endswith(f" and {1024 - forked.LOG_PORTS} more")
    assert len(line.split()) == forked.LOG_PORTS + 3
    exact = ports[: forked.LOG_PORTS]
    assert forked.port_list(exact) == " ".join(f"{p}/tcp" for _, p in exact)
    assert forked.port_list([("udp", 53)]) == "53/udp" and forked.port_list([]) == "none"
