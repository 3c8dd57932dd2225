"""TFTP commands in attack strings -> download requests (pure; never raises).

Windows: `tftp [-i] host GET source [destination]` (the keyword in any case).
busybox: `tftp -g -r remote [-l local] host [port]` (options in any order, `-gr file`).
"""

from __future__ import annotations

from honeytrap.download.request import DownloadRequest, basename, host_for_uri
from honeytrap.download.text import (
    MAX_REQUESTS,
    as_text,
    parse_port,
    split_host_port,
    statements,
    valid_host,
    words,
)

TFTP_PORT = 69  # RFC 1350


def parse(payload: bytes) -> list[DownloadRequest]:
    """Every TFTP download the payload asks for, in order, without duplicates."""
    found: list[DownloadRequest] = []
    for statement in statements(as_text(payload)):
        argv = words(statement)
        for start, word in enumerate(argv):
            if basename(word).lower() in ("tftp", "tftp.exe"):
                request = _windows(argv[start + 1 :]) or _busybox(argv[start + 1 :])
                if request is not None and request not in found:
                    found.append(request)
                break
        if len(found) >= MAX_REQUESTS:
            break
    return found


def _windows(args: list[str]) -> DownloadRequest | None:
    lowered = [a.lower() for a in args]
    if "get" not in lowered:
        return None
    verb = lowered.index("get")
    positional = [a for a in args[:verb] if not a.startswith("-")]
    if len(positional) != 1 or verb + 1 >= len(args):
        return None
    remote = args[verb + 1]
    local = args[verb + 2] if verb + 2 < len(args) else remote
    return _request(positional[0], "", remote, local)


def _busybox(args: list[str]) -> DownloadRequest | None:
    remote = local = ""
    getting = False
    positional: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("-") and len(arg) > 1:
            flags = arg[1:]
            getting = getting or "g" in flags
            if flags[-1] in "rl" and i + 1 < len(args):
                i += 1
                if flags[-1] == "r":
                    remote = args[i]
                else:
                    local = args[i]
        else:
            positional.append(arg)
        i += 1
    if not getting or not remote or not positional:
        return None
    host, port = split_host_port(positional[0])
    if len(positional) > 1 and not port:
        port = positional[1]
    return _request(host, port, remote, local or remote)


def _request(host: str, port_text: str, remote: str, local: str) -> DownloadRequest | None:
    port = parse_port(port_text, TFTP_PORT)
    if port is None or not valid_host(host) or not remote or len(remote) > 255:
        # RFC 1350 file names are short netascii strings; longer is not a real command.
        return None
    return DownloadRequest(
        type="tftp",
        host=host,
        port=port,
        path=remote,
        uri=f"tftp://{host_for_uri(host)}:{port}/{remote.lstrip('/')}",
        filename=basename(local),
    )
