"""The latency phase: one connection at a time to fresh ports, SYN sent to connect() complete,
p50/p99, honeytrap (the SYN goes through NFQUEUE and the master starts the port's server) beside
the asyncio floor (the ports already listening)."""

from __future__ import annotations

from harness import Bench
from phases import Phase, register
from report import Row, percentile, row

FRESH_BASE = 40000


def latency(bench: Bench) -> dict[str, list[float]]:
    n = bench.sizes.fresh_ports
    floor = bench.floor("asyncio", FRESH_BASE, n)
    try:
        base = bench.latency(FRESH_BASE, n)
    finally:
        floor.stop()
    ht = bench.honeytrap()
    try:
        mine = bench.latency(FRESH_BASE, n)
    finally:
        bench.stop_honeytrap(ht)
    return {"asyncio": base, "honeytrap": mine}


def latency_rows(lat: dict[str, list[float]], bench: Bench, met: dict[str, bool]) -> list[Row]:
    out = []
    for q, name in ((0.5, "p50"), (0.99, "p99")):
        a_ms, h_ms = percentile(lat["asyncio"], q), percentile(lat["honeytrap"], q)
        out.append(row(f"first SYN to accept, fresh port, {name} (ms; {len(lat['honeytrap'])} "
                       f"of {bench.sizes.fresh_ports})", f"{a_ms:.2f}", "", f"{h_ms:.2f}",
                       f"{h_ms / a_ms:.2f}x" if a_ms else "-"))
    return out


register(Phase("latency", latency, latency_rows))

