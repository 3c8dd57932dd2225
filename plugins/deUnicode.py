"""deUnicode (PREPROC): UTF-16LE text in the payload, narrowed, becomes a virtual attack.

Windows exploits carry commands and URLs as UTF-16 ("c\\0m\\0d\\0"), which the command parsers
of the downloaders would not see. Every run of at least honeytrap.decode.MIN_UTF16_CHARS
UTF-16LE characters is narrowed to one byte a character; the rest of the payload is kept, and
the result runs through every hook as a virtual attack. No options.
"""

from __future__ import annotations

from honeytrap.attack import Attack
from honeytrap.decode import derive_all, narrow_utf16
from honeytrap.plugin import PluginContext


class DeUnicode:
    def __init__(self, ctx: PluginContext) -> None:
        self.log = ctx.log

    def preproc(self, attack: Attack) -> list[Attack]:
        return derive_all(attack, narrow_utf16(attack.payload), "deUnicode", self.log)


def load(ctx: PluginContext) -> DeUnicode:
    return DeUnicode(ctx)
