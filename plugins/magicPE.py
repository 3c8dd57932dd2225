"""magicPE (ANALYZE): a payload that is itself an executable is kept as a "raw" download.

Some worms push their binary straight into the connection. The original asked libmagic whether
the attack string was an "MS-DOS executable"; we check the headers ourselves (honeytrap.decode.
executable_kind: "MZ" with a valid "PE\\0\\0" header, or an ELF identification), so a DOS stub
or a text starting with "MZ" is not a sample, and ELF binaries of IoT bots are. It also runs on
virtual attacks, so an executable decoded from base64 is kept too. python-magic, if installed,
adds libmagic's description to the record. No options.

The record: the download (type "raw", the attacker's address and port), a note, and
analysis["magicPE"][<md5>] = {"type": ..., "magic": ...} on the root attack.
"""

from __future__ import annotations

import threading
from typing import Any

from honeytrap.attack import Attack, Download, Payload
from honeytrap.decode import executable_kind
from honeytrap.plugin import PluginContext

# libmagic reads a prefix of the data anyway; we hand it no more than this.
MAGIC_PREFIX = 64 * 1024


class MagicPE:
    def __init__(self, ctx: PluginContext) -> None:
        self.log = ctx.log
        self._magic: Any = None
        self._lock = threading.Lock()  # a libmagic cookie is not thread-safe
        try:
            import magic

            self._magic = magic.Magic()
        except Exception as exc:  # optional: missing module or magic database
            self.log.info("python-magic unavailable (%s): no libmagic descriptions", exc)

    def _describe(self, data: bytes) -> str:
        if self._magic is None:
            return ""
        try:
            with self._lock:
                return str(self._magic.from_buffer(data[:MAGIC_PREFIX]))
        except Exception:
            return ""

    def analyze(self, attack: Attack) -> None:
        data = attack.payload
        kind = executable_kind(data)
        if kind is None:
            return
        payload = Payload(data)
        root = attack.root
        if any(d.payload.md5 == payload.md5 for d in root.downloads):
            return  # already kept (the same bytes seen through another virtual attack)
        conn = attack.attack_connection
        attack.add_download(
            Download(
                type="raw",
                remote_addr=conn.remote_addr,
                remote_port=conn.remote_port,
                filename="",
                uri="",
                payload=payload,
                protocol=conn.protocol,
                local_addr=conn.local_addr,
                local_port=conn.local_port,
            )
        )
        attack.add_note(f"magicPE: payload is {kind}, kept as download {payload.md5}")
        found = dict(root.analysis.get("magicPE", {}))
        found[payload.md5] = {"type": kind, "magic": self._describe(data)}
        root.set_analysis("magicPE", found)
        self.log.info("attack %s: payload is %s, kept as %s", root.id, kind, payload.md5)


def load(ctx: PluginContext) -> MagicPE:
    return MagicPE(ctx)
