"""b64Decode (PREPROC): base64 in the payload becomes a virtual attack.

The original looked only after `Negotiate ` (SPNEGO tokens in HTTP and SMB authentication);
we also decode the carriers today's bots use: powershell -EncodedCommand (UTF-16LE text),
`echo <b64> | base64 -d`, data: URIs, FromBase64String()/atob(). Each decoded token becomes a
virtual attack that the pipeline runs through every hook before this attack goes on, so a
download found in it is attached here (honeytrap.decode.find_base64 bounds count and size).
No options.
"""

from __future__ import annotations

from honeytrap.attack import Attack
from honeytrap.decode import derive_all, find_base64
from honeytrap.plugin import PluginContext


class B64Decode:
    def __init__(self, ctx: PluginContext) -> None:
        self.log = ctx.log

    def preproc(self, attack: Attack) -> list[Attack]:
        return derive_all(attack, find_base64(attack.payload), "b64Decode", self.log)


def load(ctx: PluginContext) -> B64Decode:
    return B64Decode(ctx)
