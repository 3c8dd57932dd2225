"""FTP commands in attack strings -> download requests (pure; never raises).

Two forms, as bots send them:

- a Windows `ftp -s:<file>` script, assembled line by line with `echo ... >> file` (or sent as
  the script itself): `open host [port]`, `user name [password]` (with `ftp -n`), or the name
  and the password on the two lines after `open` (ftp's own prompts), `get`/`recv remote
  [local]`, `binary`/`ascii`, `bye`/`quit`;
- `ftp://[user[:password]@]host[:port]/path` URLs.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

from honeytrap.download.request import DownloadRequest, basename, host_for_uri
from honeytrap.download.text import (
    MAX_REQUESTS,
    as_text,
    parse_port,
    statements,
    valid_host,
    words,
)

FTP_PORT = 21  # RFC 959
# Windows ftp logs in as this when a script gives no user (and `ftp -A`).
ANONYMOUS = ("anonymous", "anonymous@")

_ECHO = re.compile(r"^echo[ .]?", re.IGNORECASE)
_REDIRECT = re.compile(r"\s*>>?\s*\S*\s*$")
_URL = re.compile(r"ftp://[^\s\"'<>`|^{}\\]+", re.IGNORECASE)


@dataclass
class _Session:
    """What the script has said so far on one connection."""

    host: str = ""
    port: int = FTP_PORT
    user: str = ""
    password: str = ""
    awaiting: list[str] = field(default_factory=list)  # "user", "password": prompt answers
    found: list[DownloadRequest] = field(default_factory=list)


def parse(payload: bytes) -> list[DownloadRequest]:
    """Every FTP download the payload asks for, in order, without duplicates."""
    text = as_text(payload)
    found = _scripts(text) + _urls(text)
    unique: list[DownloadRequest] = []
    for request in found:
        if request not in unique:
            unique.append(request)
    return unique[:MAX_REQUESTS]


def _scripts(text: str) -> list[DownloadRequest]:
    session = _Session()
    for statement in statements(text):
        line = _REDIRECT.sub("", _ECHO.sub("", statement)).strip()
        argv = words(line)
        if not argv:
            continue
        _step(session, argv)
        if len(session.found) >= MAX_REQUESTS:
            break
    return session.found


def _step(session: _Session, argv: list[str]) -> None:
    command = argv[0].lower()
    handler = _COMMANDS.get(command)
    if handler is not None:
        if command != "open":
            session.awaiting.clear()
        handler(session, argv[1:])
    elif session.awaiting and len(argv) == 1:
        # An answer to ftp's "User:" or "Password:" prompt, as a script line.
        setattr(session, session.awaiting.pop(0), argv[0])


def _open(session: _Session, args: list[str]) -> None:
    session.host = ""
    session.awaiting = []
    if not args or not valid_host(args[0]):
        return
    port = parse_port(args[1] if len(args) > 1 else "", FTP_PORT)
    if port is None:
        return
    session.host, session.port = args[0], port
    session.user, session.password = ANONYMOUS
    session.awaiting = ["user", "password"]


def _user(session: _Session, args: list[str]) -> None:
    if args:
        session.user = args[0]
        session.password = args[1] if len(args) > 1 else ""
        if len(args) == 1:
            session.awaiting = ["password"]


def _get(session: _Session, args: list[str]) -> None:
    if not session.host or not args:
        return
    remote = args[0]
    local = args[1] if len(args) > 1 else basename(remote)
    session.found.append(_request(session.host, session.port, remote, local,
                                  session.user, session.password))


def _close(session: _Session, args: list[str]) -> None:
    session.host = ""


def _nothing(session: _Session, args: list[str]) -> None:
    """Transfer type and similar: our client always transfers in binary."""


_COMMANDS: dict[str, Callable[[_Session, list[str]], None]] = {
    "open": _open,
    "user": _user,
    "get": _get,
    "recv": _get,
    "mget": _get,
    "binary": _nothing,
    "bin": _nothing,
    "ascii": _nothing,
    "type": _nothing,
    "passive": _nothing,
    "cd": _nothing,
    "lcd": _nothing,
    "bye": _close,
    "quit": _close,
    "close": _close,
    "disconnect": _close,
}


def _urls(text: str) -> list[DownloadRequest]:
    found: list[DownloadRequest] = []
    for match in _URL.finditer(text):
        request = _from_url(match.group(0).rstrip(".,;)&"))
        if request is not None:
            found.append(request)
            if len(found) >= MAX_REQUESTS:
                break
    return found


def _from_url(url: str) -> DownloadRequest | None:
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or FTP_PORT
        host = parts.hostname or ""
    except ValueError:
        return None
    path = urllib.parse.unquote(parts.path.lstrip("/"), encoding="latin-1")
    if not valid_host(host) or not path:
        return None
    user = urllib.parse.unquote(parts.username or "", encoding="latin-1")
    password = urllib.parse.unquote(parts.password or "", encoding="latin-1")
    if not user:
        user, password = ANONYMOUS
    return _request(host, port, path, basename(path), user, password)


def _request(
    host: str, port: int, remote: str, local: str, user: str, password: str
) -> DownloadRequest:
    shown = urllib.parse.quote(remote, safe="/")
    return DownloadRequest(
        type="ftp",
        host=host,
        port=port,
        path=remote,
        uri=f"ftp://{host_for_uri(host)}:{port}/{shown.lstrip('/')}",
        filename=basename(local),
        user=user,
        password=password,
    )
