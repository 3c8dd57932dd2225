"""The idle phase: for each of the sizes' idle counts, that many connections held at once
(`-r IDLE_READ_TIMEOUT` so they stay open), how many got the banner, and the total PSS
(smaps_rollup) of each target's processes: a floor's one, honeytrap's master and children.
On IDLE_PORT, whose dialogue greets at once (a port without one answers a silent client with
silence); the floors send that template's bytes.

In `reps` paired reps (the asyncio floor, the uvloop floor and honeytrap back to back), medians
with min-max, the ratio per rep: the floor's own PSS at 5,000 idle is not one figure (four reps
in a row on one machine: 23.4 to 27.9 MiB of anonymous memory, what its connections left for
its collector), and one measurement of each made the ratio move by a tenth from run to run."""

from __future__ import annotations

from typing import Any

from harness import FLOORS, REPO, Bench
from phases import Phase, register
from report import Row, median, ratio_text, ratios, row, spread, verdict

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
    banner = (REPO / "templates" / f"{IDLE_PORT}_tcp").read_bytes()
    return {"reps": [one_rep(bench, count, banner) for _ in range(bench.sizes.reps)]}


def one_rep(bench: Bench, count: int, banner: bytes) -> dict[str, Any]:
    """One rep: each target holds `count` idle connections in turn."""
    out: dict[str, Any] = {}
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
    reps = r["reps"]
    targets = (*FLOORS, "honeytrap")
    served = {t: [float(rep[t]["served"]) for rep in reps] for t in targets}
    pss = {t: [rep[t]["pss_kib"] / 1024 for rep in reps] for t in targets}
    processes = {t: median([float(rep[t]["processes"]) for rep in reps]) for t in targets}
    to_asyncio = ratios(pss["honeytrap"], pss["asyncio"])
    all_served = all(s == count for s in served["honeytrap"])
    met[f"idle {count} served"] = all_served
    target = ""
    if first:  # the PSS target is about the smaller idle count
        ok = median(to_asyncio) <= TARGET_PSS
        met[f"PSS {count} idle"] = ok
        target = verdict(ok, f"<= {TARGET_PSS}x asyncio")
    roles = ", ".join(
        f"{k} {median([rep['honeytrap']['pss_roles'][k] / 1024 for rep in reps]):.0f}"
        for k in reps[0]["honeytrap"]["pss_roles"]
    )

    def mib(t: str) -> str:
        return f"{spread(pss[t], '{:.1f}')} ({processes[t]:.0f})"

    return [
        row(f"idle connections served, {count:,}", spread(served["asyncio"]),
            spread(served["uvloop"]), spread(served["honeytrap"]),
            target=verdict(all_served, "all")),
        row(f"PSS at {count:,} idle (MiB, median (min-max) of {len(reps)}; processes)",
            mib("asyncio"), mib("uvloop"), f"{mib('honeytrap')}: {roles}",
            ratio_text(to_asyncio), ratio_text(ratios(pss["honeytrap"], pss["uvloop"])),
            target),
    ]


register(Phase("idle", idle, idle_rows))
