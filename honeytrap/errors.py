"""The exception tree, split by blame.

- ConfigError: the operator's fault; a clear message naming file, line and key.
- RemoteError: the attacker's or a remote peer's fault; logged and survived.
- PluginError: a plugin failed to load or misbehaved; logged and isolated.
Anything else escaping is a bug.
"""

from __future__ import annotations


class HoneytrapError(Exception):
    """Base of every error honeytrap raises on purpose."""


class ConfigError(HoneytrapError):
    """Bad configuration or command line: reported with file, line and key."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        key: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.key = key
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = self.file
            if self.line is not None:
                where += f":{self.line}"
            where += ": "
        key = f"{self.key}: " if self.key else ""
        return f"{where}{key}{self.message}"


class RemoteError(HoneytrapError):
    """A remote peer (attacker, download server, mirror target) misbehaved."""


class ProtocolError(RemoteError):
    """Bytes from the network that do not parse."""


class DownloadError(RemoteError):
    """A download failed or was refused by policy."""


class PluginError(HoneytrapError):
    """A plugin could not be loaded or failed in a hook."""
