"""Sweep reps under watch, as root:  python bench/stallwatch.py [--reps N] [--long S] --out DIR

The throughput phase's sweep rep (bench/throughput.py: a fresh daemon, 5,000 connections over
1,000 ports, the load generator's 200 in flight) run again and again against honeytrap alone, in
the lab bench/run.py makes (harness.prepare_lab). When a rep's burst runs past --long seconds
(one takes ~1 s) it captures, once, while the rep is still stuck, what each part is doing
(capture()): the sensor's listening sockets and their accept queues (Recv-Q of `ss -ltn`), the
sockets by state on both sides (a SYN never answered stays SYN-SENT on the attacker), the
kernel's NFQUEUE and connection tracking counters and its log's netfilter lines, the daemon's
/metrics (its port table, held-back and unacknowledged counters), and for every honeytrap
process its state, kernel wait channel and a py-spy dump of its Python stack. One JSON line per
rep on stdout (elapsed, completed, timed out, what the sensor's connection tracking dropped),
the captures in --out/rep-N/.

The one stall of issue 13 (a sweep rep of the full run: 360 connections never answered, 107 s)
was the lab's connection tracking table full (bench/README.md; harness.flush_conntrack and
CONNTRACK_TIME_WAIT now keep it from filling). To see it again: --fill R fills the table before
each rep with connections to an asyncio floor (as the bench's own bursts did) up to R entries
short of full, and the bench's flush before each load is left out (R < 5,000: the rep's last
5,000 - R connections find no room; ~250,000 connections); --time-wait S sets how long the sensor
tracks a closed connection (the kernel's 120 s needs the fill to run at more than
nf_conntrack_max / 120 = 2,185 connections/s to fill the table at all: --time-wait 900 fills it
on a busy machine); --burner N runs N CPU burners beside the reps (the full run's load).
Everything started here is stopped by PID at the end, the lab removed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "tests"))
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from daemon import metrics_text  # noqa: E402
from harness import (  # noqa: E402
    FULL,
    METRICS_PORT,
    RECORDS_WAIT,
    Bench,
    Floor,
    LineCounter,
    conntrack,
    conntrack_drops,
    descendants,
    prepare_lab,
    role,
    wait_lines,
)
from netns import Host, Lab  # noqa: E402
from throughput import SWEEP_BASE  # noqa: E402
from workdir import work_directory  # noqa: E402

# A rep's burst running longer than this is captured (one takes ~1 s, ~3 s on a loaded machine).
LONG_SECONDS = 8.0
# How often a running burst is looked at.
POLL_SECONDS = 0.1
# Each capture command is bounded (py-spy on a process stuck in the kernel may wait).
CAPTURE_TIMEOUT = 20.0
# --fill's connections go to the asyncio floor on this many ports from FILL_BASE (not the sweep's).
FILL_BASE = 30000
FILL_PORTS = 1000
# The kernel's own TIME_WAIT for tracked TCP connections (what the lab had before).
KERNEL_TIME_WAIT = 120


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=80, help="sweep reps (default 80)")
    parser.add_argument("--long", type=float, default=LONG_SECONDS,
                        help=f"capture a rep whose burst runs past this (s; {LONG_SECONDS})")
    parser.add_argument("--out", type=Path, required=True, help="where captures go")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--burner", type=int, default=0, help="CPU burner processes beside")
    parser.add_argument("--time-wait", type=int, default=None, metavar="S",
                        help="the sensor's conntrack TIME_WAIT instead of the bench's "
                             f"(the kernel's is {KERNEL_TIME_WAIT})")
    parser.add_argument("--fill", type=int, default=None, metavar="R",
                        help="before each rep, fill the sensor's conntrack table to R short "
                             "of full")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.stderr.write("bench/stallwatch.py must run as root: it creates network namespaces\n")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"],
                                start_new_session=True) for _ in range(args.burner)]
    try:
        with work_directory(args.workdir.resolve(), True) as wd:
            lab = Lab.create()
            try:
                prepare_lab(lab)
                if args.time_wait is not None:
                    lab.sensor.cmd("sysctl", "-qw", "net.netfilter."
                                   f"nf_conntrack_tcp_timeout_time_wait={args.time_wait}")
                bench = Bench(lab, wd.path, FULL)
                bench.flush_conntrack = args.fill is None  # what it filled stays
                floor = None if args.fill is None else bench.floor("asyncio", FILL_BASE,
                                                                     FILL_PORTS)
                for rep in range(args.reps):
                    if floor is not None:
                        fill(bench, floor, args.fill)
                    result = watched_rep(bench, args.out / f"rep-{rep}", args.long)
                    sys.stdout.write(json.dumps({"rep": rep, **result}) + "\n")
                    sys.stdout.flush()
            finally:
                lab.close()
    finally:
        for proc in burners:
            proc.kill()
            proc.wait()
    return 0


def watched_rep(bench: Bench, where: Path, long: float) -> dict[str, Any]:
    """One sweep rep against a fresh daemon; captured into `where` if it runs past `long`."""
    ht = bench.honeytrap(extra=f'metrics_listen = "127.0.0.1:{METRICS_PORT}"\n')
    captured = False
    try:
        records = LineCounter(ht.attackers_json)
        tracked = conntrack(bench.lab.sensor)
        sizes = bench.sizes
        started = time.monotonic()
        procs = bench.start_burst(SWEEP_BASE, sizes.sweep_ports, sizes.sweep_conns)
        while any(p.poll() is None for p in procs):
            if not captured and time.monotonic() - started > long:
                capture(bench, ht.master_pid(), where)
                captured = True
            time.sleep(POLL_SECONDS)
        result = bench.collect(procs)
        result["conntrack_drops"] = conntrack_drops(tracked, conntrack(bench.lab.sensor))
        result["records_wait"] = wait_lines(records, int(result["completed"]), RECORDS_WAIT)
    finally:
        stopped = bench.stop_honeytrap(ht)
    return {**result, "captured": str(where) if captured else None, "records": stopped["json"],
            "exit": stopped["exit"]}


def capture(bench: Bench, master: int, where: Path) -> None:
    """What every part is doing now, a file each in `where` (summary.txt first to read)."""
    where.mkdir(parents=True, exist_ok=True)
    lab = bench.lab
    summary = [f"captured at {time.strftime('%H:%M:%S')} UTC"]
    tracked = conntrack(lab.sensor)
    summary.append(f"sensor conntrack: {tracked}")
    listening = lab.sensor.cmd("ss", "-ltn", check=False)
    (where / "ss-listen.txt").write_text(listening)
    queued = [line for line in listening.splitlines()[1:] if line.split()[1:2] != ["0"]]
    summary.append(f"listening sockets with connections queued (Recv-Q > 0): {len(queued)}")
    for host, name in ((lab.sensor, "sensor"), (lab.attacker, "attacker")):
        states = states_of(host)
        summary.append(f"{name} sockets by state: {states}")
    (where / "nfqueue.txt").write_text(
        lab.sensor.cmd("cat", "/proc/net/netfilter/nfnetlink_queue", check=False))
    kernel = run(["dmesg", "-T"])
    (where / "dmesg.txt").write_text("\n".join(
        line for line in kernel.splitlines()[-2000:] if "nf_" in line or "conntrack" in line))
    try:
        (where / "metrics.txt").write_text(metrics_text(lab, METRICS_PORT))
    except OSError as exc:
        summary.append(f"metrics: {exc}")
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    for pid in descendants(master):
        name = role(pid, master)
        status = proc_line(pid, "status", "State:")
        wchan = proc_text(pid, "wchan")
        summary.append(f"pid {pid} {name}: {status} wchan {wchan}")
        (where / f"py-spy-{name}-{pid}.txt").write_text(
            run([py_spy, "dump", "--nonblocking", "--pid", str(pid)]))
    (where / "summary.txt").write_text("\n".join(summary) + "\n")


def states_of(host: Host) -> dict[str, int]:
    """The host's TCP sockets counted by state (`ss -tan`)."""
    counts: dict[str, int] = {}
    for line in host.cmd("ss", "-tan", check=False).splitlines()[1:]:
        state = line.split()[0] if line.split() else "?"
        counts[state] = counts.get(state, 0) + 1
    return counts


def fill(bench: Bench, floor: Floor, room: int) -> None:
    """Connections to the asyncio floor (its FILL_PORTS ports: fresh 4-tuples, as the bench's
    own bursts) until the sensor's conntrack table has `room` entries free: each stays there,
    closed (TIME_WAIT) and assured (never evicted for a new one), for the kernel's timeout."""
    tracked = conntrack(bench.lab.sensor)
    wanted = tracked["max"] - tracked["entries"] - room
    if wanted > 0:
        bench.burst(floor.port, floor.ports, wanted)


def run(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=CAPTURE_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{argv[0]}: {exc}\n"
    return proc.stdout + proc.stderr


def proc_text(pid: int, name: str) -> str:
    try:
        return Path(f"/proc/{pid}/{name}").read_text().strip()
    except OSError:
        return "?"


def proc_line(pid: int, name: str, prefix: str) -> str:
    for line in proc_text(pid, name).splitlines():
        if line.startswith(prefix):
            return line.removeprefix(prefix).strip()
    return "?"


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sys.exit(main())
