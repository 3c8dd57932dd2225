"""The file outputs' cost per attack: attacks/s through SaveFile + logJSON + logAttacker.

The recorder runs these three for every attack (issue 13: creating SaveFile's file was 34.5% of
its time). This measures them alone, in this process, on a fresh filesystem (bench/workdir.py),
against a baseline measured in the same run: one JSON line appended per attack, the asyncio
floor's own output (bench/baseline.py). Reps are interleaved (A B A B ...), each on a new
directory of the same filesystem; medians with min-max are printed, and the raw figures as JSON
with --json.

    .venv/bin/python bench/outputs.py [--attacks 5000] [--reps 5] [--workdir /var/tmp]

The attacks are built before the clock starts (building them is the server's and the wire's
work, not the outputs'). honeytrap is imported from PYTHONPATH (or the installed one), so the
same script measures another checkout: PYTHONPATH=/path/to/checkout, --plugin-dir its plugins.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from workdir import work_directory

from honeytrap.attack import Attack, Connection, Mode, Payload
from honeytrap.config import Config, PluginSpec
from honeytrap.plugin import Registry, load_plugins

REPO = Path(__file__).resolve().parent.parent
# The load bench/run.py sends: a 200-byte payload per connection.
PAYLOAD_BYTES = 200
DEFAULT_ATTACKS = 5000
DEFAULT_REPS = 5


def attacks(count: int) -> list[Attack]:
    start = time.time()
    made = []
    for n in range(count):
        payload = Payload(bytes((n + i) % 251 for i in range(PAYLOAD_BYTES)))
        conn = Connection("tcp", "192.0.2.1", 1024 + n % 1000, "198.51.100.7", 40000 + n % 20000,
                          payload)
        made.append(Attack(conn, mode=Mode.NORMAL, start_time=start + n * 1e-4,
                           end_time=start + n * 1e-4 + 0.01))
    return made


def outputs(directory: Path, plugin_dir: str) -> Registry:
    config = Config(plugin_dir=plugin_dir)
    config.plugins = [
        PluginSpec("SaveFile", {"attacks_dir": str(directory / "attacks"),
                                "downloads_dir": str(directory / "downloads")}),
        PluginSpec("logAttacker", {"logfile": str(directory / "attacker.log")}),
        PluginSpec("logJSON", {"logfile": str(directory / "attackers.json")}),
    ]
    return load_plugins(config)


def run_outputs(directory: Path, batch: list[Attack], plugin_dir: str) -> float:
    """Seconds of CPU (this process, user + system) for the batch through the three outputs."""
    registry = outputs(directory, plugin_dir)
    hooks = [call for hook in ("savedata", "postproc") for _, call in registry.hooks[hook]]
    try:
        began = time.process_time()
        for attack in batch:
            for call in hooks:
                call(attack)
        return time.process_time() - began
    finally:
        registry.close()


def run_baseline(directory: Path, batch: list[Attack], plugin_dir: str) -> float:
    """The floor: one JSON line per attack, as bench/baseline.py writes it."""
    fd = os.open(directory / "baseline.json", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        began = time.process_time()
        for attack in batch:
            conn = attack.attack_connection
            record = {
                "start_time": attack.start_time, "end_time": attack.end_time,
                "remote_ip": conn.remote_addr, "remote_port": conn.remote_port,
                "local_port": conn.local_port, "payload_hex": conn.payload.data.hex(),
            }
            os.write(fd, (json.dumps(record, separators=(",", ":")) + "\n").encode())
        return time.process_time() - began
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attacks", type=int, default=DEFAULT_ATTACKS)
    parser.add_argument("--reps", type=int, default=DEFAULT_REPS)
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--no-fresh-fs", action="store_true")
    parser.add_argument("--plugin-dir", default=str(REPO / "plugins"))
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON")
    args = parser.parse_args(argv)
    phases: dict[str, Callable[[Path, list[Attack], str], float]] = {
        "baseline": run_baseline, "outputs": run_outputs,
    }
    rates: dict[str, list[float]] = {name: [] for name in phases}
    with work_directory(args.workdir.resolve(), not args.no_fresh_fs) as wd:
        for rep in range(args.reps):
            for name, phase in phases.items():
                directory = wd.path / f"{name}-{rep}"
                directory.mkdir()
                batch = attacks(args.attacks)
                rates[name].append(args.attacks / phase(directory, batch, args.plugin_dir))
        fresh = "fresh filesystem" if wd.fresh_fs else f"not fresh: {wd.why}"
    ratios = [o / b for o, b in zip(rates["outputs"], rates["baseline"], strict=True)]
    print(f"# file outputs, {args.attacks} attacks x {args.reps} reps, interleaved ({fresh})")
    for name, values in (*rates.items(), ("ratio", ratios)):
        unit = "x" if name == "ratio" else " attacks/s (CPU)"
        print(f"{name:9} median {statistics.median(values):10.2f}{unit}  "
              f"min {min(values):.2f} max {max(values):.2f}")
    if args.json:
        print(json.dumps({"rates": rates, "ratios": ratios, "fresh_fs": wd.fresh_fs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
