"""The honeytrap benchmark, one command, as root:  python bench/run.py [--quick]

Makes its own attacker and sensor network namespaces (tests/netns.py), queues new SYNs to NFQUEUE
in the sensor as the README says, and measures honeytrap (the real daemon, `python -m honeytrap`,
nfq monitor, SaveFile, logAttacker and logJSON on) beside two floors measured in the same run in
the same sensor namespace (bench/baseline.py: banner, read, one JSON line per connection, on
plain asyncio and on uvloop). The phases (bench/phases.py: a registry; each phase is a module
listed in PHASE_MODULES) run in order; --only picks some:

  one_port, sweep  connections/s (200-byte payload, half-close) on one port and across a port
                   sweep, in --reps paired reps (each rep: asyncio floor, uvloop floor,
                   honeytrap, back to back; the sweep: twice the reps, each a palindrome with
                   the floors after honeytrap too), medians with min-max, served and until
                   the last record is written, CPU per connection, records written vs
                   connections completed (bench/throughput.py);
  idle             idle connections held at once, in --reps paired reps: how many were served,
                   the PSS (bench/idle.py);
  latency          first SYN to a fresh port until connect() completes, p50/p99
                   (bench/latency.py);
  soak             --soak-seconds at 80% of one_port's median recorded rate: memory flat,
                   everything recorded and acknowledged, SIGTERM quick and clean
                   (bench/soak.py);
  syn_sweep,       all 65,535 ports with the default configuration: an nmap SYN sweep at 5,000
  connect_sweep    SYN/s (SYNs answered with a SYN-ACK) and a connect sweep with 200 in flight
                   (completed, recorded), peak processes, descriptors and PSS, another attacker
                   served during and after (bench/sweep.py).

The load generator (bench/loadgen.py) runs in the attacker namespace, in the same number of
processes against every target. Results: a markdown table printed and written to bench/results/
(with the raw figures as JSON).

The daemon's files (one per attack: SaveFile) go in a work directory made in --workdir (default
/var/tmp, not /tmp: see bench/README.md) and removed at the end. By default it is a filesystem of
its own, so that what the machine's disk did before (deletions by earlier runs and tests) does not
weigh on the figures: a sparse FRESH_FS_BYTES image file in --workdir, formatted ext4 with its
journal and loop-mounted (bench/workdir.py), unmounted and deleted at the end, also on errors,
Ctrl-C and SIGTERM. --no-fresh-fs makes a plain directory instead; where the loop mount cannot be
made, the run says why on stderr and does the same. Before the phases, the run times creating,
writing and closing CALIBRATION_FILES small files there and reports the mean, the filesystem and
whether it was fresh: what one attack's file costs there, which the floors never pay. The run
also reports the machine's load average at its start and end (it is often shared).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import NoReturn

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from harness import FULL, QUICK, Bench, Sizes, prepare_lab  # noqa: E402
from netns import Lab  # noqa: E402
from phases import PHASES  # noqa: E402
from report import Row, markdown, percentile, row  # noqa: E402
from workdir import (  # noqa: E402
    FRESH_FS_BYTES,
    WorkDir,
    filesystem,
    journal,
    problem,
    work_directory,
)

from honeytrap import outfile  # noqa: E402

# The phase modules, imported in this order (each registers its phases: bench/phases.py). A new
# phase is a module of its own added here.
PHASE_MODULES = ("throughput", "idle", "latency", "soak", "sweep")
for _module in PHASE_MODULES:
    importlib.import_module(_module)
PHASE_NAMES = tuple(PHASES)
# Where the work directory is made by default. Not /tmp: test runs create and delete many files
# there, and an ext4 without a journal then spends up to ~1 ms per file creation skipping the
# recently deleted inodes (find_inode_bit -> recently_deleted), a machine-state cost the
# baseline (no files) never pays. bench/README.md has the figures.
DEFAULT_WORKDIR_PARENT = Path("/var/tmp")
# The filesystem calibration: this many files of this size (the throughput phases' payload),
# created, written and closed as SaveFile does, in a scratch directory of the work directory.
# 2,000 gives a stable mean in well under a second on a fresh ext4 directory.
CALIBRATION_FILES = 2000
CALIBRATION_BYTES = 200


# --- the filesystem calibration ---------------------------------------------------------------


def calibrate(wd: WorkDir) -> dict[str, object]:
    """Time creating, writing and closing CALIBRATION_FILES files of CALIBRATION_BYTES in a
    scratch directory of the work directory, and say what filesystem that was. The files stay
    until the work directory goes at the end of the run: deleting them now would leave recently
    deleted inodes beside the daemon's files, the very cost this keeps out of the figures."""
    workdir = wd.path
    scratch = workdir / "calibration"
    scratch.mkdir()
    data = b"x" * CALIBRATION_BYTES
    samples = []
    dir_fd = os.open(scratch, os.O_RDONLY | os.O_DIRECTORY)
    cpu_start = time.thread_time()
    try:
        for i in range(CALIBRATION_FILES):
            start = time.perf_counter()
            # As SaveFile writes an attack file: unnamed, then linked into place.
            outfile.write_new(dir_fd, (f"f{i}",), data)
            samples.append((time.perf_counter() - start) * 1e6)
    finally:
        cpu = time.thread_time() - cpu_start
        os.close(dir_fd)
    return {
        "dir": str(workdir), "filesystem": filesystem(workdir), "journal": journal(workdir),
        "fresh_fs": wd.fresh_fs, "why": wd.why, "image": str(wd.image) if wd.image else None,
        "files": CALIBRATION_FILES, "bytes": CALIBRATION_BYTES,
        # CPU time (mostly the kernel's) is what weighs on a CPU-bound daemon, and unlike the
        # wall clock it does not count other processes' turns on a busy machine.
        "cpu_us": cpu * 1e6 / CALIBRATION_FILES,
        "mean_us": sum(samples) / len(samples),
        "p99_us": percentile(samples, 0.99),
    }


def filesystem_words(cal: dict[str, object]) -> str:
    """'ext4 with journal, fresh: ...' or 'ext4 without journal, not fresh: <why>'."""
    has_journal = ""
    if cal["journal"] is not None:
        has_journal = " with journal" if cal["journal"] else " without journal"
    if cal["fresh_fs"]:
        where = f"fresh: a loop-mounted image on {Path(str(cal['image'])).parent}"
    else:
        where = f"not fresh: {cal['why']}"
    return f"{cal['filesystem']}{has_journal}, {where}"


def calibration_line(cal: dict[str, object]) -> str:
    return (
        f"Work directory {cal['dir']} ({filesystem_words(cal)}): creating, writing "
        f"({cal['bytes']} B) and closing one file there cost {cal['cpu_us']:.0f} us of CPU on "
        f"average (wall clock: mean {cal['mean_us']:.0f} us, p99 {cal['p99_us']:.0f} us; "
        f"{cal['files']:,} files). honeytrap's SaveFile does this once per attack, the baseline "
        "never.\n"
    )


# --- the table ---------------------------------------------------------------------------------


def table(bench: Bench, phases: Sequence[str]) -> tuple[str, dict[str, bool]]:
    """The markdown table of the phases that ran, and whether each target was met."""
    rows: list[Row] = []
    met: dict[str, bool] = {}
    for name in phases:
        if name in bench.results:
            rows += PHASES[name].rows(bench.results[name], bench, met)
        elif name in bench.failed:
            met[f"{name} ran"] = False
            rows.append(row(f"phase {name}", target=f"FAILED: {bench.failed[name]}"))
    return markdown(rows), met


# --- the command -------------------------------------------------------------------------------


def phase_list(text: str) -> tuple[str, ...]:
    """--only's value: phase names, comma-separated, run in registration order."""
    names = {name.strip() for name in text.split(",") if name.strip()}
    unknown = names - set(PHASES)
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"phases are {', '.join(PHASES)}; not {', '.join(sorted(unknown)) or 'none'}"
        )
    return tuple(p for p in PHASES if p in names)


def with_prerequisites(phases: Sequence[str], soak_rate: float = 0.0) -> tuple[str, ...]:
    """The phases asked for and those whose figures they read (Phase.after), in order; the
    soak reads one_port's rate only when --soak-rate does not give it one."""
    wanted = set(phases)
    for name in phases:
        if name == "soak" and soak_rate > 0:
            continue
        wanted.update(PHASES[name].after)
    return tuple(p for p in PHASES if p in wanted)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small counts (the CI mode)")
    parser.add_argument("--out", default=str(BENCH / "results"), help="where results go")
    parser.add_argument(
        "--workdir", metavar="DIR", type=Path, default=DEFAULT_WORKDIR_PARENT,
        help="make the run's work directory (the daemon's attack files and logs) in DIR, and "
             "remove it at the end; DIR and its parents must be enterable by nobody "
             f"(default: {DEFAULT_WORKDIR_PARENT})",
    )
    parser.add_argument(
        "--no-fresh-fs", dest="fresh_fs", action="store_false",
        help="make the work directory a plain directory in DIR, on DIR's filesystem, instead of "
             f"a fresh ext4 of its own (a {FRESH_FS_BYTES // 1024**3} GiB sparse image in DIR, "
             "loop-mounted)",
    )
    parser.add_argument("--only", metavar="PHASE[,PHASE]", type=phase_list,
                        default=PHASE_NAMES, help=f"run only these phases ({', '.join(PHASES)})")
    parser.add_argument("--reps", type=int, default=None,
                        help=f"paired reps of the throughput and idle phases (default {FULL.reps}, "
                             f"--quick {QUICK.reps})")
    parser.add_argument("--soak-seconds", type=float, default=None,
                        help=f"length of the soak (default {FULL.soak_seconds:.0f}, "
                             f"--quick {QUICK.soak_seconds:.0f})")
    parser.add_argument("--soak-rate", type=float, default=None, metavar="N",
                        help="the soak's load in connections/s, instead of 80%% of one_port's "
                             "median recorded rate (one_port is then not run for it): soaks "
                             "of different runs at one rate on a machine whose load drifts")
    return parser.parse_args()


def measure(sizes: Sizes, wd: WorkDir, phases: Sequence[str],
            captures: Path) -> tuple[dict[str, object], Bench]:
    """The calibration, then the phases, in a lab of their own; a honeytrap burst that runs
    long is captured in `captures` (Bench.watched)."""
    calibration = calibrate(wd)
    lab = Lab.create()
    try:
        prepare_lab(lab)
        bench = Bench(lab, wd.path, sizes)
        bench.captures = captures  # a honeytrap burst that runs long is captured there
        for name in phases:
            try:
                bench.results[name] = PHASES[name].run(bench)
            except Exception as exc:  # noqa: BLE001 - one phase's failure must not lose the rest
                traceback.print_exc()
                bench.failed[name] = f"{type(exc).__name__}: {exc}"
    finally:
        lab.close()
    return calibration, bench


def write_results(out: Path, name: str, header: str, text: str, data: dict[str, object]) -> None:
    stamp = str(data["started"])
    out.mkdir(parents=True, exist_ok=True)
    (out / f"bench-{name}-{stamp}.md").write_text(header + text)
    (out / f"bench-{name}-{stamp}.json").write_text(json.dumps(data, indent=1))
    (out / f"latest-{name}.json").write_text(json.dumps(data, indent=1))


def title(mode: str, phases: Sequence[str], started: str) -> str:
    only = "" if tuple(phases) == PHASE_NAMES else f"{', '.join(phases)} only, "
    return f"# honeytrap benchmark ({mode} mode, {only}{started}, {os.cpu_count()} cores)\n\n"


def terminated(signum: int, frame: FrameType | None) -> NoReturn:
    """SIGTERM ends the run as Ctrl-C does: through the `finally`s, which unmount and delete the
    work directory's filesystem and remove the namespaces."""
    raise SystemExit(128 + signum)


def load_line(start: tuple[float, float, float], end: tuple[float, float, float]) -> str:
    """The machine's load while the run ran: it is shared, and the floors measured beside
    honeytrap in every rep are what make the ratios meaningful under that load."""
    return (f"Machine load average (1, 5, 15 min): {start[0]:.2f} {start[1]:.2f} {start[2]:.2f} "
            f"at the start, {end[0]:.2f} {end[1]:.2f} {end[2]:.2f} at the end, "
            f"{os.cpu_count()} cores.\n")


def main() -> int:
    args = parse_args()
    if os.geteuid() != 0:
        sys.stderr.write("bench/run.py must run as root: it creates network namespaces\n")
        return 2
    parent = args.workdir.resolve()
    why_not = problem(parent)
    if why_not is not None:
        sys.stderr.write(f"bench/run.py: --workdir: {why_not}\n")
        return 2
    sizes = QUICK if args.quick else FULL
    if args.reps is not None:
        sizes = dataclasses.replace(sizes, reps=max(1, args.reps))
    if args.soak_seconds is not None:
        sizes = dataclasses.replace(sizes, soak_seconds=max(1.0, args.soak_seconds))
    if args.soak_rate is not None:
        sizes = dataclasses.replace(sizes, soak_rate=max(1.0, args.soak_rate))
    mode = "quick" if args.quick else "full"
    phases = with_prerequisites(args.only, sizes.soak_rate)
    started = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    load_start = os.getloadavg()
    signal.signal(signal.SIGTERM, terminated)
    with work_directory(parent, args.fresh_fs) as wd:
        calibration, bench = measure(sizes, wd, phases,
                                     Path(args.out) / f"captures-{started}")
    load_end = os.getloadavg()
    text, met = table(bench, phases)
    header = (title(mode, phases, started)
              + "Floors: bench/baseline.py on asyncio and on uvloop, on ports of their own in the "
                "same sensor namespace, measured in the same reps as honeytrap.\n"
              + load_line(load_start, load_end)
              + calibration_line(calibration) + "\n")
    data: dict[str, object] = {
        "mode": mode, "phases": list(phases), "started": started,
        "sizes": dataclasses.asdict(sizes), "load_average": [load_start, load_end],
        "calibration": calibration, "results": bench.results, "failed": bench.failed,
        "targets_met": met,
    }
    # A partial run gets files of its own, so that it never stands in for a whole one.
    name = mode if phases == PHASE_NAMES else f"{mode}-{'+'.join(phases)}"
    write_results(Path(args.out), name, header, text, data)
    sys.stdout.write(header + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
