"""tftpDownload: fetch what `tftp [-i] host GET file` (and busybox `tftp -g -r file host`)
commands in attack strings name, with our own RFC 1350 client, through the download policy.

Options (all optional): max_size (bytes), timeout, connect_timeout (seconds), max_per_attack.
Statistics: `downloads` (samples fetched), `download_failures` (tries refused or failed).
"""

from __future__ import annotations

from honeytrap.download import Downloader, DownloadPolicy, tftp, tftpcmd
from honeytrap.plugin import PluginContext

# TFTP moves 512 bytes per round trip: 16 MiB is 32768 round trips, which over a slow link
# exceeds any sane time cap. Samples fetched by TFTP are small Windows droppers; 8 MiB
# keeps them all.
MAX_SIZE = 8 * 1024 * 1024
TIMEOUT = 120.0


def load(ctx: PluginContext) -> Downloader:
    policy = DownloadPolicy.from_plugin(ctx, max_size=MAX_SIZE, timeout=TIMEOUT)
    return Downloader(policy, tftpcmd.parse, tftp.fetch, ctx.name)
