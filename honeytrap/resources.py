"""The data honeytrap ships: plugins, templates, the default configuration, the man page, the
systemd unit and the logrotate snippet.

The repository keeps them at its top (plugins/, templates/, etc/, man/); setup.py maps them into
the package, so an installed honeytrap has them as honeytrap/data/<name>/. Run from a checkout
(or an editable install), the package directory has no data/ and the source tree's own are
used. A configuration without plugin_dir or response_dir uses these (config.py).
"""

from __future__ import annotations

from pathlib import Path

from honeytrap.errors import ConfigError

PACKAGE = Path(__file__).resolve().parent
# Names of the data directories, as in the repository and under honeytrap/data/.
PLUGINS, TEMPLATES, ETC, MAN = "plugins", "templates", "etc", "man"
DEFAULT_CONFIG = f"{ETC}/honeytrap.conf"


def data_path(name: str) -> Path:
    """The shipped file or directory `name` (e.g. "plugins", "etc/honeytrap.conf"): the
    installed package's own, else the source tree's; ConfigError if neither has it."""
    for root in (PACKAGE / "data", PACKAGE.parent):
        path = root / name
        if path.exists():
            return path
    raise ConfigError(f"honeytrap's shipped {name} is missing (looked in {PACKAGE / 'data'} "
                      f"and {PACKAGE.parent}): a broken installation")


def plugin_dir() -> str:
    return str(data_path(PLUGINS))


def template_dir() -> str:
    return str(data_path(TEMPLATES))


def default_config() -> bytes:
    """The shipped, commented configuration file (honeytrap --print-config)."""
    return data_path(DEFAULT_CONFIG).read_bytes()
