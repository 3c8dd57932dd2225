"""The idle phase: for each of the sizes' idle counts, that many connections held at once
(`-r IDLE_READ_TIMEOUT` so they stay open), how many got the banner, and the total PSS
(smaps_rollup) of each target's processes: a floor's one, honeytrap's master and children.
On IDLE_PORT, whose dialogue greets at once (a port without one answers a silent client with
silence); the floors send that template's bytes."""

from __future__ import annotations

from typing import Any

from harness import FLOORS, REPO, Bench
from phases import Phase, register
from report import Row, row, verdict

IDLE_PORT = 21  # FTP: "220 ..." on connect
FLOOR_PORTS = {"asyncio": 2121, "uvloop": 2122}
# Read timeout of the idle test (-r): the banner goes out after one read timeout and idle
# connections close after 11, so this keeps them open while they are counted and measured.
IDLE_READ_TIMEOUT = 5.0
# PSS at the first (smaller) idle count against the asyncio floor's (issue 13).
TARGET_PSS = 1.5


def idle(bench: Bench) -> dict[str, Any]:
    return {str(count): idle_count(bench, count) for count in bench.sizes.idle}


def idle_count(bench: Bench, count: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    banner = (REPO / "templates" / f"{IDLE_PORT}_tcp").read_bytes()
    for loop in FLOORS:
        floor = bench.floor(loop, FLOOR_PORTS[loop], 1, banner)
        try:
            out[loop] = bench.idle(floor.port, count, floor.proc.pid)
        finally:
            floor.stop()
    ht = bench.honeytrap(read_timeout=IDLE_READ_TIMEOUT)
    try:
        out["honeytrap"] = bench.idle(IDLE_PORT, count, ht.master_pid())
    finally:
        bench.stop_honeytrap(ht)
    return out


def idle_rows(figures: dict[str, Any], bench: Bench, met: dict[str, bool]) -> list[Row]:
    out: list[Row] = []
    for i, count in enumerate(bench.sizes.idle):
        if str(count) in figures:
            out += count_rows(figures[str(count)], count, i == 0, met)
    return out


def count_rows(r: dict[str, Any], count: int, first: bool, met: dict[str, bool]) -> list[Row]:
    a, u, h = r["asyncio"], r["uvloop"], r["honeytrap"]
    all_served = h["served"] == count
    met[f"idle {count} served"] = all_served
    target = ""
    if first:  # the PSS target is about the smaller idle count
        ok = h["pss_kib"] <= TARGET_PSS * a["pss_kib"]
        met[f"PSS {count} idle"] = ok
        target = verdict(ok, f"<= {TARGET_PSS}x asyncio")
    roles = ", ".join(f"{k} {v / 1024:.0f}" for k, v in h["pss_roles"].items())

    def mib(x: dict[str, Any]) -> str:
        return f"{x['pss_kib'] / 1024:.1f} ({x['processes']:.0f})"

    return [
        row(f"idle connections served, {count:,}", f"{a['served']:.0f}", f"{u['served']:.0f}",
            f"{h['served']:.0f}", target=verdict(all_served, "all")),
        row(f"PSS at {count:,} idle (MiB; processes)", mib(a), mib(u),
            f"{mib(h)}: {roles}",
            f"{h['pss_kib'] / a['pss_kib']:.2f}x" if a["pss_kib"] else "-",
            f"{h['pss_kib'] / u['pss_kib']:.2f}x" if u["pss_kib"] else "-", target),
    ]


register(Phase("idle", idle, idle_rows))
