"""The benchmark's short mode (bench/run.py --quick), run for real once: it must record every
completed connection, serve every idle connection, and produce its table. Wall-clock figures are
reported, never asserted (the machine is shared)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
QUICK_TIMEOUT = 110.0  # the quick mode takes ~15 s; CI must stay well under 2 minutes


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    if os.geteuid() != 0:
        pytest.fail("the benchmark runs as root: it creates network namespaces")
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=QUICK_TIMEOUT, cwd=str(REPO),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "latest-quick.json").read_text()), out


@pytest.mark.parametrize("phase", ["one_port", "sweep"])
def test_every_completed_connection_is_recorded(quick: tuple[dict[str, Any], Path],
                                                phase: str) -> None:
    honeytrap = quick[0]["results"][phase]["honeytrap"]
    assert honeytrap["completed"] > 0
    assert honeytrap["records_json"] == honeytrap["completed"]
    assert honeytrap["records_log"] == honeytrap["completed"]
    assert honeytrap["records_files"] == honeytrap["completed"]  # 200-byte payloads saved


def test_all_idle_connections_are_served(quick: tuple[dict[str, Any], Path]) -> None:
    idle = quick[0]["results"]["idle_300"]
    assert idle["honeytrap"]["served"] == 300
    assert idle["baseline"]["served"] == 300


def test_the_table_is_written(quick: tuple[dict[str, Any], Path]) -> None:
    tables = list(quick[1].glob("bench-quick-*.md"))
    assert len(tables) == 1
    text = tables[0].read_text()
    assert "| measurement | baseline | honeytrap | ratio | target |" in text
    assert "first SYN to accept" in text and "PSS at 300 idle" in text
