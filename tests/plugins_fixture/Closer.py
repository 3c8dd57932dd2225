"""Test plugin: writes "closed" to the file named by option `marker` when closed."""

from __future__ import annotations

from typing import Any


class Closer:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def close(self) -> None:
        with open(self.marker, "a") as out:
            out.write("closed\n")


def load(ctx: Any) -> Closer:
    return Closer(ctx.option("marker"))
