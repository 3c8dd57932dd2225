"""What a command parser found: one file the attacker told the victim to fetch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DownloadRequest:
    """A download as the attacker described it; nothing here has been checked yet.

    `host` is the host as written (name or address literal, IPv6 without brackets), `path` the
    remote file (FTP/TFTP) or the request target (HTTP, starting with "/"), `uri` a readable
    form for the record, `filename` the base name the victim would have stored it as.
    """

    type: str  # "ftp", "tftp", "http"
    host: str
    port: int
    path: str
    uri: str
    filename: str = ""
    user: str = ""
    password: str = ""
    scheme: str = ""  # "http" or "https" for HTTP; empty otherwise


def basename(path: str) -> str:
    """The last path component, for the record only (never used as a file name on disk:
    samples are stored under their MD5)."""
    path = path.split("?", 1)[0].split("#", 1)[0]
    for sep in ("/", "\\"):
        path = path.rsplit(sep, 1)[-1]
    return path


def host_for_uri(host: str) -> str:
    return f"[{host}]" if ":" in host else host
