"""Test plugin whose load() raises a PluginError that does not name the plugin."""

from __future__ import annotations

from typing import Any

from honeytrap.errors import PluginError


def load(ctx: Any) -> object:
    raise PluginError("option frobnicate is wrong")
