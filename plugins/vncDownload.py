"""vncDownload (ANALYZE): what an attacker typed into a VNC session, as a virtual attack.

Bots that find an open VNC server log in, press Win+R and type a command line that downloads
their malware. The original scraped the printable bytes of a session starting with
`RFB 003.008` into a string and ran the analyzers on it, so that the download plugins found
the URL; it downloads nothing itself. We do the same with a real reading of the client's RFB
messages (honeytrap.decode.vnc_keystrokes: key presses, modifiers, backspace, pasted text), and
the typed text runs through every hook as a virtual attack: httpDownload, ftpDownload and
tftpDownload fetch what it names, under the download policy, and attach it here. No options,
and no statistics of its own: those plugins count the downloads it leads to.
"""

from __future__ import annotations

from honeytrap.attack import Attack
from honeytrap.decode import derive_all, vnc_keystrokes
from honeytrap.plugin import PluginContext


class VncDownload:
    def __init__(self, ctx: PluginContext) -> None:
        self.log = ctx.log

    def analyze(self, attack: Attack) -> list[Attack]:
        return derive_all(attack, vnc_keystrokes(attack.payload), "vncDownload", self.log)


def load(ctx: PluginContext) -> VncDownload:
    return VncDownload(ctx)
