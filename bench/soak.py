"""The soak phase: honeytrap under a steady load of SOAK_LOAD times the highest rate it recorded
(one_port's median rate until the last record is written: the issue's "measured maximum rate" is
what the daemon serves and records, not what it serves while its recorder falls behind) for
--soak-seconds (10 minutes by default), one port, 200 B, half-close. Its memory is sampled every
SAMPLE_SECONDS by role; at the end every attack must be recorded and acknowledged (the servers'
`unacknowledged` gauge, scraped from metrics_listen, at zero), SIGTERM must complete within
STOP_TARGET seconds and no server process may exit as crashed; and memory must stay flat: the
last window's mean within MEMORY_TOLERANCE of the second's (windows of a minute, a fifth of a
shorter soak)."""

from __future__ import annotations

import math
import os
import time
from typing import Any

from harness import (
    METRICS_PORT,
    Bench,
    LineCounter,
    by_role,
    descendants,
    pss_kib,
    role,
    scrape,
    wait_lines,
)
from phases import Phase, register
from report import Row, median, row, verdict

SOAK_PORT = 4444
SOAK_LOAD = 0.8
SAMPLE_SECONDS = 5.0
WINDOW_SECONDS = 60.0
MEMORY_TOLERANCE = 0.10
STOP_TARGET = 5.0
# The recorder keeps pace when it writes at least this share of the load's rate while it runs
# (the rest is sampling: a sample's line count lags the load by the records in flight).
PACE_TOLERANCE = 0.97
# After the load: the recorder's last records, then the servers' last report (each sends its
# figures within a second of a change, honeytrap/server.py STATS_DELAY), waited for this long.
SETTLE_SECONDS = 60.0


def soak(bench: Bench) -> dict[str, Any]:
    if bench.sizes.soak_rate > 0:  # --soak-rate
        rate = bench.sizes.soak_rate
    else:
        top = median([rep["honeytrap"]["recorded_rate"]
                      for rep in bench.results["one_port"]["reps"]])
        rate = SOAK_LOAD * top
    seconds = bench.sizes.soak_seconds
    ht = bench.honeytrap(extra=f'metrics_listen = "127.0.0.1:{METRICS_PORT}"\n')
    try:
        master = ht.master_pid()
        started = time.monotonic()
        # Started for `seconds` at most, then every connection in flight waited for (a server
        # holding back takes them from its listen backlog once the recorder caught up).
        procs = bench.start_burst(SOAK_PORT, 1, int(rate * seconds), rate,
                                  deadline=seconds + SETTLE_SECONDS, duration=seconds)
        samples: list[dict[str, float]] = []
        records = LineCounter(ht.attackers_json)  # reads only what was appended since
        every = min(SAMPLE_SECONDS, window(seconds) / 4)  # a few samples in every window
        threads_seen: dict[tuple[int, str], tuple[int, int]] = {}  # recorder_scheduling's
        while any(p.poll() is None for p in procs):
            roles = by_role(master, pss_kib)
            samples.append({"t": time.monotonic() - started, **roles,
                            "records": records(), **why(bench),
                            **recorder_scheduling(master, threads_seen)})
            time.sleep(every)
        load = bench.collect(procs, seconds + SETTLE_SECONDS)
        completed = int(load["completed"])
        load["records_wait"] = wait_lines(records, completed, SETTLE_SECONDS)
        figures: dict[str, float] = {}
        deadline = time.monotonic() + SETTLE_SECONDS
        while time.monotonic() < deadline:
            figures = scrape(bench.lab)
            if (figures.get("honeytrap_attacks_total") == completed
                    and figures.get("honeytrap_unacknowledged") == 0):
                break
            time.sleep(0.5)
    finally:
        outputs = bench.stop_honeytrap(ht)
    return {"rate_asked": rate, "seconds": seconds, "load": load, "samples": samples,
            "unacknowledged": figures.get("honeytrap_unacknowledged", -1),
            "attacks_reported": figures.get("honeytrap_attacks_total", -1), "outputs": outputs}


# What each sample also reads, to tell why the recorder fell behind when it does: the daemon's
# figures (its queue, its pauses, the servers' hold) and the kernel's dirty and writeback
# pages (KiB) (dirty-page throttling would show as Dirty near the dirty limit; the journal
# waits seen instead do not show here: bench/README.md).
SAMPLED_METRICS = {
    "pending": "honeytrap_pipeline_pending",
    "pauses": "honeytrap_recorder_pauses_total",
    "held_back": "honeytrap_held_back_total",
    "unacked_bytes": "honeytrap_unacknowledged_bytes",
}
SAMPLED_MEMINFO = {"dirty_kib": "Dirty", "writeback_kib": "Writeback"}


def why(bench: Bench) -> dict[str, float]:
    try:
        figures = scrape(bench.lab)
    except (OSError, ValueError):  # the exporter busy or restarting: this sample without them
        figures = {}
    out = {key: figures.get(name, -1.0) for key, name in SAMPLED_METRICS.items()}
    meminfo = dict(line.split(":", 1) for line in open("/proc/meminfo").read().splitlines())
    out.update({key: float(meminfo[name].split()[0]) for key, name in SAMPLED_MEMINFO.items()})
    return out


def recorder_scheduling(master: int, seen: dict[tuple[int, str], tuple[int, int]] | None = None
                        ) -> dict[str, float]:
    """The recorder's threads' schedstat (/proc/PID/task/*/schedstat) summed, in seconds:
    `recorder_cpu_s` its time on a CPU, `recorder_runq_s` its time runnable, waiting on a run
    queue for one. One walk of the daemon's processes, each thread's file read once. With
    `seen` (kept by the caller from sample to sample), a thread that ended still counts what
    it had at its last reading: the pipeline's extra workers end once idle (pipeline.WORKER_IDLE),
    and a sum of the living alone fell by theirs (a 150-s soak read 0.05 / 0.10 cores)."""
    seen = {} if seen is None else seen
    for pid in descendants(master):
        if role(pid, master) != "recorder":
            continue
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                    fields = f.read().split()
                seen[(pid, task)] = (int(fields[0]), int(fields[1]))
            except (OSError, ValueError, IndexError):
                pass
    running = sum(cpu for cpu, _runq in seen.values())
    waiting = sum(runq for _cpu, runq in seen.values())
    return {"recorder_cpu_s": running / 1e9, "recorder_runq_s": waiting / 1e9}


def window(seconds: float) -> float:
    return min(WINDOW_SECONDS, seconds / 5)


def window_mean(samples: list[dict[str, float]], key: str, start: float, end: float) -> float:
    values = [s[key] for s in samples if start <= s["t"] < end]
    return sum(values) / len(values) if values else float("nan")


def soak_rows(r: dict[str, Any], bench: Bench, met: dict[str, bool]) -> list[Row]:
    seconds, load, outputs = r["seconds"], r["load"], r["outputs"]
    span = window(seconds)
    asked = (f"{r['rate_asked']:.0f}/s asked (--soak-rate)" if bench.sizes.soak_rate > 0 else
             f"{SOAK_LOAD:.0%} of one port's median recorded rate ({r['rate_asked']:.0f}/s "
             "asked)")
    # What the load generators started, and how each connection ended (bench/loadgen.py):
    # refused or reset, not finished in 30 s, in flight still at their deadline.
    ended = (f"{load['failed']:.0f} failed, {load['timeout']:.0f} timed out, "
             f"{load.get('unfinished', 0):.0f} unfinished")
    served = load["failed"] + load["timeout"] + load.get("unfinished", 0) == 0
    met["soak every connection served"] = served
    out = [row(f"soak: {seconds:.0f} s at {asked}",
               honeytrap=f"{load['rate']:.0f}/s, {load.get('started', 0):.0f} started, "
                         f"{load['completed']:.0f} completed; {ended}",
               target=verdict(served, "0 failed, timed out, unfinished"))]
    for key in ("servers", "recorder"):
        second = window_mean(r["samples"], key, span, 2 * span)
        last = window_mean(r["samples"], key, seconds - span, seconds + 1)
        flat = last <= (1 + MEMORY_TOLERANCE) * second
        met[f"soak {key} memory flat"] = flat
        out.append(row(f"soak: {key} PSS, second -> last {span:.0f} s (MiB)",
                       honeytrap=f"{second / 1024:.1f} -> {last / 1024:.1f}",
                       ratio=f"{last / second:.2f}x" if second else "-",
                       target=verdict(flat, f"within {MEMORY_TOLERANCE:.0%}")))
    out.append(held_row(r, span, seconds))
    out.append(pace_row(r, span, met))
    out.append(scheduling_row(r, span))
    recorded = outputs["json"] == load["completed"] and outputs["files"] == load["completed"]
    met["soak records"] = recorded
    out.append(row("soak: completed / records (JSON, files)",
                   honeytrap=f"{load['completed']:.0f} / {outputs['json']}, {outputs['files']}",
                   target=verdict(recorded, "equal")))
    acked = r["unacknowledged"] == 0 and r["attacks_reported"] == load["completed"]
    met["soak unacknowledged zero"] = acked
    out.append(row("soak: unacknowledged at the end (servers' gauge)",
                   honeytrap=f"{r['unacknowledged']:.0f}", target=verdict(acked, "0")))
    clean = (outputs["stop_seconds"] < STOP_TARGET and outputs["exit"] == 0
             and outputs["server_crashes"] == 0)
    met["soak SIGTERM"] = clean
    out.append(row("soak: SIGTERM to exit (s); exit status; servers crashed",
                   honeytrap=f"{outputs['stop_seconds']:.2f}; {outputs['exit']}; "
                             f"{outputs['server_crashes']}",
                   target=verdict(clean, f"< {STOP_TARGET:.0f} s, 0, 0")))
    return out


def held_row(r: dict[str, Any], span: float, seconds: float) -> Row:
    """The servers' PSS less the attacks they hold for the recorder (unacknowledged_bytes,
    bounded by unacknowledged_limit), second -> last window: what they keep beside a backlog.
    Flat while the PSS row is not, the growth is the backlog itself (the recorder behind), not
    memory the servers kept once a backlog had needed it (framestore.py)."""
    samples = [{"t": s["t"], "rest": s["servers"] - s["unacked_bytes"] / 1024}
               for s in r["samples"] if s.get("unacked_bytes", -1) >= 0]
    second = window_mean(samples, "rest", span, 2 * span)
    last = window_mean(samples, "rest", seconds - span, seconds + 1)
    label = f"soak: servers PSS less their unacknowledged bytes, second -> last {span:.0f} s (MiB)"
    if math.isnan(second) or math.isnan(last) or second <= 0:
        return row(label, honeytrap="no figures (metrics not read)")
    return row(label, honeytrap=f"{second / 1024:.1f} -> {last / 1024:.1f}",
               ratio=f"{last / second:.2f}x")


def pace_row(r: dict[str, Any], span: float, met: dict[str, bool]) -> Row:
    """Whether the recorder kept pace during the load, not only by the end: attackers.json lines
    written per second from the end of the first window to the last sample taken under load,
    against the load's rate, and the attacks completed but not yet recorded then (held by the
    servers, unacknowledged: their memory is what grows when the recorder falls behind)."""
    samples = [s for s in r["samples"] if s["t"] >= span]
    load = r["load"]
    if len(samples) < 2:
        return row("soak: recorded per second under load; not yet recorded at its end",
                   honeytrap="too few samples")
    first, last = samples[0], samples[-1]
    pace = (last["records"] - first["records"]) / max(last["t"] - first["t"], 1e-9)
    behind = max(0, round(load["rate"] * min(last["t"], load["elapsed"]) - last["records"]))
    kept = pace >= PACE_TOLERANCE * load["rate"]
    met["soak recorder kept pace"] = kept
    return row("soak: recorded per second under load; not yet recorded at its end",
               honeytrap=f"{pace:.0f}/s ({pace / load['rate']:.2f}x the load); ~{behind:,}",
               target=verdict(kept, f">= {PACE_TOLERANCE:.0%} of the load"))


def scheduling_row(r: dict[str, Any], span: float) -> Row:
    """Why the recorder fell behind, when it did: the cores it ran on, and those it waited for
    while runnable (its threads' schedstat, from the end of the first window to the last sample).
    Waiting about as long as it runs is a recorder starved of CPU (the machine full: on this
    2-core machine the daemon's processes share one session's autogroup against the load
    generator's), not one asleep on the disk or short of work."""
    samples = [s for s in r["samples"] if s["t"] >= span and "recorder_cpu_s" in s]
    label = "soak: the recorder's cores running / runnable and waiting for a core, under load"
    if len(samples) < 2:
        return row(label, honeytrap="too few samples")
    first, last = samples[0], samples[-1]
    elapsed = last["t"] - first["t"]
    running = (last["recorder_cpu_s"] - first["recorder_cpu_s"]) / elapsed
    waiting = (last["recorder_runq_s"] - first["recorder_runq_s"]) / elapsed
    return row(label, honeytrap=f"{running:.2f} / {waiting:.2f}")


register(Phase("soak", soak, soak_rows, after=("one_port",)))
