"""Malware downloads on the attacker's behalf, safe by construction.

The pieces, protocol logic apart from I/O:

- command parsers, pure `bytes -> list[DownloadRequest]` that never raise:
  `ftpcmd.parse` (Windows `ftp -s:` scripts, ftp:// URLs), `tftpcmd.parse` (`tftp -i host
  GET file`, busybox `tftp -g -r`), `httpcmd.parse` (http(s) URLs, wget/curl/PowerShell/certutil);
- clients on stdlib sockets, each a `Fetcher` `(request, FetchContext) -> Fetched`:
  `ftp.fetch` (active, then passive; EPRT/EPSV for IPv6), `tftp.fetch` (RFC 1350 RRQ),
  `http.fetch` (HTTP/1.1 and HTTPS, redirects through the policy);
- `policy.DownloadPolicy`, the one place for the rules (addresses.py says which addresses).

Public API for downloader plugins (vncDownload and others)::

    from honeytrap.download import DownloadPolicy, DownloadRequest, Downloader

    policy = DownloadPolicy.from_plugin(ctx)          # in load(ctx); options max_size, timeout,
                                                      # connect_timeout, max_per_attack
    policy.run(attack, request, fetch)                # check, fetch, record; never raises for
                                                      # remote trouble; Download | None
    policy.check(host, attack, deadline) -> list[IPAddress]   # or raises DownloadRefused or
                                                      # DownloadError
    ctx.connect(port) -> socket                       # inside a Fetcher: a checked connection
                                                      # whose every call is bounded by the
                                                      # download's deadline (deadline.py)
    ctx.deadline.new_socket(family), .adopt(sock)     # any other socket, bounded the same way
    read_capped(sock.recv, ctx.policy.max_size, ctx.deadline)

`Downloader(policy, parse, fetch)` is a ready plugin instance whose ANALYZE hook runs `parse`
over the attack string and `policy.run` for each request. Every try is recorded on the attack
(`download_tries`: ok / refused / failed with a reason), every sample as a `Download` on the
attack and the attacks it was derived from.
"""

from __future__ import annotations

from honeytrap.download.deadline import Deadline
from honeytrap.download.downloader import Downloader
from honeytrap.download.policy import (
    DEFAULT_MAX_SIZE,
    DEFAULT_TIMEOUT,
    DownloadPolicy,
    DownloadRefused,
    FetchContext,
    Fetched,
    Fetcher,
    read_capped,
)
from honeytrap.download.request import DownloadRequest

__all__ = [
    "DEFAULT_MAX_SIZE",
    "DEFAULT_TIMEOUT",
    "Deadline",
    "DownloadPolicy",
    "DownloadRefused",
    "DownloadRequest",
    "Downloader",
    "FetchContext",
    "Fetched",
    "Fetcher",
    "read_capped",
]
