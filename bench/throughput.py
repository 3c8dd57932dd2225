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

one_port keeps one daemon for all its reps (its PSS after each rep shows whether memory grows
from rep to rep); sweep starts a fresh daemon per rep, so that each port's first connection
starts its server (a handover to a running server process, or every ports_per_process ports a
fork). The floors listen on ports of their own the whole phase.
"""

from __future__ import annotations

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
        for _ in range(bench.sizes.reps):
            rep = {loop: bench.measure_floor(floor, count) for loop, floor in floors.items()}
            ht = bench.honeytrap()
            try:
                rep["honeytrap"] = bench.measure_honeytrap(ht, SWEEP_BASE, ports, count)
            finally:
                outputs.append(bench.stop_honeytrap(ht))
            reps.append(rep)
    finally:
        records = {loop: floor.stop() for loop, floor in floors.items()}
    return {"reps": reps, "floor_records": records, "honeytrap_outputs": outputs}


def _series(reps: list[dict[str, Any]], target: str, key: str) -> list[float]:
    return [float(rep[target][key]) for rep in reps]


def rows(label: str, fresh_ports: bool = False) -> Any:
    """The phase's rows; `fresh_ports`: its connections go over sweep_ports ports first seen in
    the rep (a fresh daemon each), so the master's CPU is also given per port."""
    def make(r: dict[str, Any], bench: Bench, met: dict[str, bool]) -> list[Row]:
        reps = r["reps"]
        rate = {t: _series(reps, t, "rate") for t in (*FLOORS, "honeytrap")}
        cpu = {t: _series(reps, t, "cpu_us") for t in (*FLOORS, "honeytrap")}
        to_asyncio = ratios(rate["honeytrap"], rate["asyncio"])
        ok = median(to_asyncio) >= TARGET_THROUGHPUT
        met[f"throughput {label}"] = ok
        out = [
            row(f"connections/s, {label} (200 B, half-close; median (min-max) of {len(reps)})",
                spread(rate["asyncio"]), spread(rate["uvloop"]), spread(rate["honeytrap"]),
                ratio_text(to_asyncio), ratio_text(ratios(rate["honeytrap"], rate["uvloop"])),
                verdict(ok, f">= {TARGET_THROUGHPUT}x asyncio")),
            row(f"CPU per connection, {label} (us)",
                spread(cpu["asyncio"]), spread(cpu["uvloop"]), spread(cpu["honeytrap"]),
                ratio_text(ratios(cpu["honeytrap"], cpu["asyncio"])),
                ratio_text(ratios(cpu["honeytrap"], cpu["uvloop"]))),
        ]
        if FILE_FLOOR in reps[0]:
            out += _file_floor_rows(r, label, rate["honeytrap"], cpu["honeytrap"])
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
        completed = {t: sum(_series(reps, t, "completed")) for t in (*FLOORS, "honeytrap")}
        outputs = r["honeytrap_outputs"]
        written = {k: sum(o[k] for o in outputs) for k in ("json", "log", "files")}
        recorded = all(v == completed["honeytrap"] for v in written.values())
        met[f"records {label}"] = recorded
        crashes = sum(max(0, o["server_crashes"]) for o in outputs)
        met[f"clean exits {label}"] = crashes == 0 and all(o["exit"] == 0 for o in outputs)
        out.append(row(
            f"completed / records, {label} (honeytrap: JSON, log, files)",
            f"{completed['asyncio']:.0f} / {r['floor_records']['asyncio']}",
            f"{completed['uvloop']:.0f} / {r['floor_records']['uvloop']}",
            f"{completed['honeytrap']:.0f} / {written['json']}, {written['log']}, "
            f"{written['files']}",
            target=verdict(recorded, "equal"),
        ))
        if len(outputs) == 1 and len(reps) > 1:  # one daemon for every rep: memory per rep
            pss = [rep["honeytrap"]["pss_kib"] / 1024 for rep in reps]
            out.append(row(f"honeytrap's PSS after each rep, {label} (MiB)",
                           honeytrap=" -> ".join(f"{p:.0f}" for p in pss)))
        return out
    return make


def _file_floor_rows(r: dict[str, Any], label: str, rate: list[float],
                     cpu: list[float]) -> list[Row]:
    """The file floor against honeytrap, in the asyncio floor's columns (information only)."""
    reps = r["reps"]
    rate_files = _series(reps, FILE_FLOOR, "rate")
    cpu_files = _series(reps, FILE_FLOOR, "cpu_us")
    completed = sum(_series(reps, FILE_FLOOR, "completed"))
    return [
        row(f"connections/s, {label}, against the file floor (the asyncio floor saving one "
            "atomic file per connection, as SaveFile)", spread(rate_files), "", spread(rate),
            ratio_text(ratios(rate, rate_files))),
        row(f"CPU per connection, {label}, against the file floor (us)", spread(cpu_files), "",
            spread(cpu), ratio_text(ratios(cpu, cpu_files))),
        row(f"the file floor's completed / records, files, {label}",
            f"{completed:.0f} / {r['floor_records'][FILE_FLOOR]}, {r['floor_files']}"),
    ]


register(Phase("one_port", one_port, rows("one port")))
register(Phase("sweep", sweep, rows("1000-port sweep", fresh_ports=True)))
