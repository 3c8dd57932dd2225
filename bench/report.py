"""The benchmark's figures and table: medians with their min-max over paired reps, ratios of
each rep's pair (honeytrap / the floor measured next to it), and the markdown rows.

A row has one cell per column of COLUMNS; a phase module builds its rows with `row()`.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

COLUMNS = ("measurement", "asyncio floor", "uvloop floor", "honeytrap", "ratio to asyncio",
           "ratio to uvloop", "target")
Row = tuple[str, str, str, str, str, str, str]


def row(measurement: str, asyncio: str = "", uvloop: str = "", honeytrap: str = "",
        ratio: str = "", ratio_uv: str = "", target: str = "") -> Row:
    return (measurement, asyncio, uvloop, honeytrap, ratio, ratio_uv, target)


def percentile(samples: Sequence[float], q: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def median(samples: Sequence[float]) -> float:
    return statistics.median(samples) if samples else float("nan")


def spread(samples: Sequence[float], fmt: str = "{:.0f}") -> str:
    """'median (min-max)' of the reps; a single value alone."""
    if not samples:
        return "-"
    if len(samples) == 1:
        return fmt.format(samples[0])
    return (f"{fmt.format(median(samples))} "
            f"({fmt.format(min(samples))}-{fmt.format(max(samples))})")


def ratios(mine: Sequence[float], theirs: Sequence[float]) -> list[float]:
    """Each rep's ratio mine/theirs: the pair was measured back to back, under the same load."""
    return [m / t for m, t in zip(mine, theirs, strict=True) if t]


def ratio_text(values: Sequence[float]) -> str:
    return spread(values, "{:.2f}x") if values else "-"


def verdict(ok: bool, goal: str) -> str:
    return f"{goal}: {'met' if ok else 'MISSED'}"


def markdown(rows: Sequence[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"
