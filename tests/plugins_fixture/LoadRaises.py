"""Test plugin whose load() fails."""

from __future__ import annotations

from typing import Any


def load(ctx: Any) -> object:
    raise RuntimeError("cannot start")
