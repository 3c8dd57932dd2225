"""Test plugin, a second one for ordering: Alpha's code, loaded as a module of its own (the
registry tests need two plugin files; one source keeps them the same)."""

from pathlib import Path

_SOURCE = Path(__file__).with_name("Alpha.py")
exec(compile(_SOURCE.read_text(), str(_SOURCE), "exec"))  # noqa: S102
