"""SavePostgres: the name T-Pot's honeytrap.conf uses (`plugin-SavePostgres`) for submitPostgres.

The same plugin, options and behaviour; see submitPostgres.py.
"""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType
from typing import Any

from honeytrap.plugin import PluginContext


def _submit_postgres() -> ModuleType:
    # Plugins are loaded by path (plugin.load_module), not as a package: load our sibling so.
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "submitPostgres.py")
    spec = importlib.util.spec_from_file_location("honeytrap_plugins._submitPostgres_alias", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load(ctx: PluginContext) -> Any:
    return _submit_postgres().load(ctx)
