"""ftpDownload: fetch what Windows `ftp -s:` scripts and ftp:// URLs in attack strings name,
with our own FTP client (active mode, passive as fallback), through the download policy.

Options (all optional): max_size (bytes), timeout, connect_timeout (seconds), max_per_attack.
Statistics: `downloads` (samples fetched), `download_failures` (tries refused or failed).
"""

from __future__ import annotations

from honeytrap.download import Downloader, DownloadPolicy, ftp, ftpcmd
from honeytrap.plugin import PluginContext

# An FTP dropper session (login, PORT, RETR) takes a few round trips more than HTTP; the
# policy's defaults suit it.
MAX_SIZE = 16 * 1024 * 1024
TIMEOUT = 60.0


def load(ctx: PluginContext) -> Downloader:
    policy = DownloadPolicy.from_plugin(ctx, max_size=MAX_SIZE, timeout=TIMEOUT)
    return Downloader(policy, ftpcmd.parse, ftp.fetch, ctx.name)
