"""logJSON: every attack as one JSON line (T-Pot's attackers.json).

Option: `logfile`. At POSTPROC, so the downloads found by the ANALYZE plugins are listed (T-Pot's
fork logged before the download plugins ran and never listed any). One line per attack that is
not virtual: a virtual attack's downloads are already on its root attack. The shape is
`Attack.to_json()`, the one serialisation every output shares; the payload is hex in it.
"""

from __future__ import annotations

import json

from honeytrap import outfile
from honeytrap.attack import Attack
from honeytrap.plugin import PluginContext


class LogJSON:
    def __init__(self, ctx: PluginContext) -> None:
        self.fd: int | None = outfile.open_append(ctx.option("logfile"), ctx.name)

    def postproc(self, attack: Attack) -> None:
        if attack.is_virtual:
            return
        assert self.fd is not None, "postproc after close"
        line = json.dumps(attack.to_json(), separators=(",", ":")) + "\n"
        outfile.append_record(self.fd, line.encode("utf-8"))

    def close(self) -> None:
        outfile.close_fd(self.fd)
        self.fd = None


def load(ctx: PluginContext) -> LogJSON:
    return LogJSON(ctx)
