"""The benchmark's phase registry. A phase module (throughput.py, idle.py, latency.py, soak.py,
and any new one listed in run.py's PHASE_MODULES) registers its phases at import:

    register(Phase("name", run, rows))

`run(bench)` measures (bench: harness.Bench, with its lab, sizes and servers) and returns its
figures as JSON-able data; `rows(figures, bench, met)` turns them into report.row()s and notes
each target in `met` (name -> met or not). Phases run in registration order; `--only` picks
some by name. `after` names phases whose figures this one reads (the soak's rate comes from
one_port's); they run first even when not asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from report import Row

Figures = Any


@dataclass(frozen=True)
class Phase:
    name: str
    run: Callable[[Any], Figures]
    rows: Callable[[Figures, Any, dict[str, bool]], list[Row]]
    after: tuple[str, ...] = ()


PHASES: dict[str, Phase] = {}


def register(phase: Phase) -> Phase:
    if phase.name in PHASES:
        raise ValueError(f"bench phase {phase.name!r} registered twice")
    PHASES[phase.name] = phase
    return phase
