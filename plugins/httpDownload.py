"""httpDownload: fetch the http(s) URLs in attack strings (wget, curl, PowerShell, certutil
lines and bare URLs) with our own HTTP/1.1 client, through the download policy.

Options (all optional): max_size (bytes), timeout, connect_timeout (seconds), max_per_attack.
The original's `http_program` and `http_options` (it ran wget through a shell, with the
attacker's URL unquoted) are accepted and ignored with a warning: we never run a program.
Statistics: `downloads` (samples fetched), `download_failures` (tries refused or failed).
"""

from __future__ import annotations

from honeytrap.download import Downloader, DownloadPolicy, http, httpcmd
from honeytrap.plugin import PluginContext

MAX_SIZE = 16 * 1024 * 1024
TIMEOUT = 60.0
IGNORED_OPTIONS = ("http_program", "http_options")


def load(ctx: PluginContext) -> Downloader:
    for key in IGNORED_OPTIONS:
        if key in ctx.options:
            ctx.log.warning(
                "plugin %s: option %s is ignored: downloads use the built-in HTTP client, "
                "never an external program",
                ctx.name,
                key,
            )
    policy = DownloadPolicy.from_plugin(ctx, max_size=MAX_SIZE, timeout=TIMEOUT)
    return Downloader(policy, httpcmd.parse, http.fetch, ctx.name)
