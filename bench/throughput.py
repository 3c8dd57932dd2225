"""Throughput phases: connections/s with a 200-byte payload and a half-close, on one port and
over a port sweep, measured in reps: in each rep the asyncio floor, the uvloop floor and
honeytrap take the same burst back to back (A B C, A B C, ...), so a rep's ratios compare
targets under the same machine load; the table gives medians with min-max over the reps.
one_port also measures the file floor (the asyncio floor saving one atomic file per connection
the way SaveFile does) in the same reps: what is left of honeytrap's gap once the floor pays the
one cost per attack honeytrap's contract demands and the other floors skip. It is information
beside the target, which stays against the asyncio floor.
Beside the rates: CPU time per connection (honeytrap's by role, once the recorder has written
every record of the burst), and records written vs connections completed.

Each target's rate is given twice: served (connections completed over the burst's span) and
until recorded (over the span from the burst's start to its last record's write, the outputs'
modification times). The floors write each record before they close its connection, so the two
are one for them; honeytrap's recorder writes behind its servers, and a burst it has served but
not yet recorded is not yet caught. The throughput target is judged on the rate until recorded.

one_port keeps one daemon for all its reps (its PSS after each rep shows whether memory grows
from rep to rep); sweep starts a fresh daemon per rep, so that each port's first connection
starts its server (a handover to a running server process, or every ports_per_process ports a
fork). The floors listen on ports of their own the whole phase.

A sweep rep is short (5,000 connections: ~0.6 s for the asyncio floor, ~1 s for honeytrap) on a
machine whose speed moves by a fifth from one such burst to the next (two identical asyncio floor
bursts back to back: 122 and 156 us of CPU per connection; a fixed loop's CPU time 17-31 ms over
a minute under load), and the floor's rate is its CPU per connection (it is one process on one
core: rate x CPU ~0.95 in every rep of the runs that swung 5,607-9,304/s). So each sweep rep
measures the floors on both sides of honeytrap, in a palindrome (asyncio, uvloop, honeytrap,
uvloop, asyncio: each floor's two bursts are centred on honeytrap's), and honeytrap's ratio is to
the geometric mean of the floor's two rates (a drift across the rep cancels); and the sweep runs
SWEEP_REPS_PER_REP times --reps reps (its reps cost ~12 s each).
"""

from __future__ import annotations

import math
from typing import Any

from harness import FLOORS, Bench
from phases import Phase, register
from report import Row, median, ratio_text, ratios, row, spread, verdict

ONE_PORT = 4444  # no template: honeytrap answers a newline, so do the floors
SWEEP_BASE = 20000
FLOOR_PORTS = {"asyncio": 30000, "uvloop": 32000}  # .. + sweep_ports - 1 for the sweep
FILE_FLOOR_PORT = 34000
FILE_FLOOR = "asyncio_files"  # its key in a rep
# The targets of issue 13, as ratios to the asyncio floor measured in the same reps.
TARGET_THROUGHPUT = 0.9
# The recorder's CPU per attack against the servers': it keeps up with this much margin.
TARGET_RECORDER_HEADROOM = 1.5
# The sweep's reps per --reps: its ratio's noise is the machine's, over bursts of ~1 s (above).
SWEEP_REPS_PER_REP = 2
# A floor's second burst of a sweep rep (after honeytrap's): its key in the rep.
AFTER = "_after"


def _floors(bench: Bench, ports: int) -> dict[str, Any]:
    return {loop: bench.floor(loop, FLOOR_PORTS[loop], ports) for loop in FLOORS}


def one_port(bench: Bench) -> dict[str, Any]:
    count = bench.sizes.one_port
    floors = _floors(bench, 1)
    floors[FILE_FLOOR] = bench.floor("asyncio", FILE_FLOOR_PORT, 1, files=True)
    reps: list[dict[str, Any]] = []
    ht = bench.honeytrap()
    try:
        for _ in range(bench.sizes.reps):
            rep = {loop: bench.measure_floor(floor, count) for loop, floor in floors.items()}
            rep["honeytrap"] = bench.measure_honeytrap(ht, ONE_PORT, 1, count)
            reps.append(rep)
    finally:
        outputs = bench.stop_honeytrap(ht)
        records = {loop: floor.stop() for loop, floor in floors.items()}
        saved = floors[FILE_FLOOR].saved()
    return {"reps": reps, "floor_records": records, "floor_files": saved,
            "honeytrap_outputs": [outputs]}


def sweep(bench: Bench) -> dict[str, Any]:
    ports, count = bench.sizes.sweep_ports, bench.sizes.sweep_conns
    floors = _floors(bench, ports)
    reps: list[dict[str, Any]] = []
    outputs: list[dict[str, Any]] = []
    try:
        for _ in range(bench.sizes.reps * SWEEP_REPS_PER_REP):
            rep = {loop: bench.measure_floor(floor, count) for loop, floor in floors.items()}
            ht = bench.honeytrap()
            try:
                rep["honeytrap"] = bench.measure_honeytrap(ht, SWEEP_BASE, ports, count)
                # The palindrome's second half, while the daemon is up and idle (its stop's
                # work would fall in the first floor's burst otherwise, not in the next rep's).
                for loop in reversed(FLOORS):
                    rep[loop + AFTER] = bench.measure_floor(floors[loop], count)
            finally:
                outputs.append(bench.stop_honeytrap(ht))
            reps.append(rep)
    finally:
        records = {loop: floor.stop() for loop, floor in floors.items()}
    return {"reps": reps, "floor_records": records, "honeytrap_outputs": outputs}


def _series(reps: list[dict[str, Any]], target: str, key: str) -> list[float]:
    """A figure of `target` in each rep; a floor measured on both sides of honeytrap (the
    sweep): the geometric mean of its two bursts' figures."""
    return [_bracketed(rep, target, key) for rep in reps]


def _bracketed(rep: dict[str, Any], target: str, key: str) -> float:
    value = float(rep[target][key])
    after = rep.get(target + AFTER)
    return value if after is None else math.sqrt(value * float(after[key]))


def _completed(reps: list[dict[str, Any]], target: str) -> float:
    """The connections `target` completed over the reps, in every burst (a floor's records
    count both of a sweep rep's)."""
    return sum(float(rep[name]["completed"]) for rep in reps
               for name in (target, target + AFTER) if name in rep)


def _unserved(reps: list[dict[str, Any]], target: str) -> tuple[int, int]:
    """A target's connections timed out (or still in flight at the load generator's deadline)
    and failed, over every rep (both of a floor's bursts)."""
    bursts = [rep[key] for rep in reps for key in (target, target + AFTER) if key in rep]
    return (sum(int(b.get("timeout", 0)) + int(b.get("unfinished", 0)) for b in bursts),
            sum(int(b.get("failed", 0)) for b in bursts))


def _conntrack_drops(reps: list[dict[str, Any]], target: str) -> int:
    """Packets the sensor's connection tracking dropped during a target's bursts (a full table,
    harness.CONNTRACK_TIME_WAIT), over every rep: connections the lab turned away, not the
    target."""
    return sum(int(rep[key].get("conntrack_drops", 0)) for rep in reps
               for key in (target, target + AFTER) if key in rep)


def _drift(reps: list[dict[str, Any]], loop: str) -> list[float]:
    """The floor's rate after honeytrap against before it, in each sweep rep: how much the
    machine moved within a rep (the ratio's own noise)."""
    return [rep[loop + AFTER]["rate"] / rep[loop]["rate"] for rep in reps
            if loop + AFTER in rep and rep[loop]["rate"]]


def rows(label: str, fresh_ports: bool = False) -> Any:
    """The phase's rows; `fresh_ports`: its connections go over sweep_ports ports first seen in
    the rep (a fresh daemon each), so the master's CPU is also given per port."""
    def make(r: dict[str, Any], bench: Bench, met: dict[str, bool]) -> list[Row]:
        reps = r["reps"]
        rate = {t: _series(reps, t, "rate") for t in (*FLOORS, "honeytrap")}
        until = {t: _series(reps, t, "recorded_rate") for t in (*FLOORS, "honeytrap")}
        cpu = {t: _series(reps, t, "cpu_us") for t in (*FLOORS, "honeytrap")}
        to_asyncio = ratios(until["honeytrap"], until["asyncio"])
        ok = median(to_asyncio) >= TARGET_THROUGHPUT
        met[f"throughput {label}"] = ok
        out = [
            row(f"connections/s served, {label} (200 B, half-close; median (min-max) of "
                f"{len(reps)})",
                spread(rate["asyncio"]), spread(rate["uvloop"]), spread(rate["honeytrap"]),
                ratio_text(ratios(rate["honeytrap"], rate["asyncio"])),
                ratio_text(ratios(rate["honeytrap"], rate["uvloop"]))),
            row(f"connections/s until the last record is written, {label}",
                spread(until["asyncio"]), spread(until["uvloop"]), spread(until["honeytrap"]),
                ratio_text(to_asyncio), ratio_text(ratios(until["honeytrap"], until["uvloop"])),
                verdict(ok, f">= {TARGET_THROUGHPUT}x asyncio")),
            row(f"CPU per connection, {label} (us)",
                spread(cpu["asyncio"]), spread(cpu["uvloop"]), spread(cpu["honeytrap"]),
                ratio_text(ratios(cpu["honeytrap"], cpu["asyncio"])),
                ratio_text(ratios(cpu["honeytrap"], cpu["uvloop"]))),
        ]
        if any(loop + AFTER in reps[0] for loop in FLOORS):
            out.append(row(f"floor's rate after honeytrap / before it, in each rep, {label}",
                           *(ratio_text(_drift(reps, loop)) for loop in FLOORS)))
        if FILE_FLOOR in reps[0]:
            out += _file_floor_rows(r, label, rate["honeytrap"], until["honeytrap"],
                                    cpu["honeytrap"])
        roles = {k: [rep["honeytrap"]["cpu_roles_us"][k] for rep in reps]
                 for k in ("servers", "recorder", "master")}
        out.append(row(f"honeytrap's CPU per connection by process, {label} (us)",
                       honeytrap=", ".join(f"{k} {spread(v)}" for k, v in roles.items())))
        if fresh_ports:
            # The master does nothing for a connection to a port already served (the kernel
            # answers it): its CPU is the ports' (bind, hand-over, verdict) and their busy/idle
            # reports (portstate.py).
            per_port = bench.sizes.sweep_conns / bench.sizes.sweep_ports
            out.append(row(f"master's CPU per fresh port, {label} (us)",
                           honeytrap=spread([v * per_port for v in roles["master"]])))
        headroom = ratios(roles["servers"], roles["recorder"])
        ok = median(headroom) >= TARGET_RECORDER_HEADROOM
        met[f"recorder headroom {label}"] = ok
        out.append(row(f"recorder's speed / the servers' (their CPU per attack), {label}",
                       honeytrap=ratio_text(headroom),
                       target=verdict(ok, f">= {TARGET_RECORDER_HEADROOM}x")))
        completed = {t: _completed(reps, t) for t in (*FLOORS, "honeytrap")}
        outputs = r["honeytrap_outputs"]
        written = {k: sum(o[k] for o in outputs) for k in ("json", "log", "files")}
        all_recorded = all(v == completed["honeytrap"] for v in written.values())
        met[f"records {label}"] = all_recorded
        crashes = sum(max(0, o["server_crashes"]) for o in outputs)
        met[f"clean exits {label}"] = crashes == 0 and all(o["exit"] == 0 for o in outputs)
        out.append(row(
            f"completed / records, {label} (honeytrap: JSON, log, files)",
            f"{completed['asyncio']:.0f} / {r['floor_records']['asyncio']}",
            f"{completed['uvloop']:.0f} / {r['floor_records']['uvloop']}",
            f"{completed['honeytrap']:.0f} / {written['json']}, {written['log']}, "
            f"{written['files']}",
            target=verdict(all_recorded, "equal"),
        ))
        # Every connection answered: one that timed out or failed is an attacker turned away
        # (and none of it recorded), whatever the rates and records say.
        lost = {t: _unserved(reps, t) for t in (*FLOORS, "honeytrap")}
        served = lost["honeytrap"] == (0, 0)
        met[f"all served {label}"] = served
        out.append(row(
            f"connections timed out (30 s) / failed, {label}",
            *(f"{lost[t][0]} / {lost[t][1]}" for t in (*FLOORS, "honeytrap")),
            target=verdict(served, "0 / 0"),
        ))
        # A timeout with drops here is the lab's (the kernel's table was full), not the target's.
        drops = {t: _conntrack_drops(reps, t) for t in (*FLOORS, "honeytrap")}
        met[f"lab had room {label}"] = not any(drops.values())
        out.append(row(
            f"packets the sensor's connection tracking dropped (a full table), {label}",
            *(str(drops[t]) for t in (*FLOORS, "honeytrap")),
            target=verdict(not any(drops.values()), "0"),
        ))
        if len(outputs) == 1 and len(reps) > 1:  # one daemon for every rep: memory per rep
            pss = [rep["honeytrap"]["pss_kib"] / 1024 for rep in reps]
            out.append(row(f"honeytrap's PSS after each rep, {label} (MiB)",
                           honeytrap=" -> ".join(f"{p:.0f}" for p in pss)))
        return out
    return make


def _file_floor_rows(r: dict[str, Any], label: str, rate: list[float], until: list[float],
                     cpu: list[float]) -> list[Row]:
    """The file floor against honeytrap, in the asyncio floor's columns (information only)."""
    reps = r["reps"]
    rate_files = _series(reps, FILE_FLOOR, "rate")
    until_files = _series(reps, FILE_FLOOR, "recorded_rate")
    cpu_files = _series(reps, FILE_FLOOR, "cpu_us")
    completed = _completed(reps, FILE_FLOOR)
    return [
        row(f"connections/s, {label}, against the file floor (the asyncio floor saving one "
            "atomic file per connection, as SaveFile)", spread(rate_files), "", spread(rate),
            ratio_text(ratios(rate, rate_files))),
        row(f"connections/s until the last record is written, {label}, against the file floor",
            spread(until_files), "", spread(until), ratio_text(ratios(until, until_files))),
        row(f"CPU per connection, {label}, against the file floor (us)", spread(cpu_files), "",
            spread(cpu), ratio_text(ratios(cpu, cpu_files))),
        row(f"the file floor's completed / records, files, {label}",
            f"{completed:.0f} / {r['floor_records'][FILE_FLOOR]}, {r['floor_files']}"),
    ]


register(Phase("one_port", one_port, rows("one port")))
register(Phase("sweep", sweep, rows("1000-port sweep", fresh_ports=True)))
