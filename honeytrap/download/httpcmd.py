"""HTTP downloads in attack strings -> download requests (pure; never raises).

Anything that is an http(s) URL counts, wherever it stands: in `wget`/`curl` lines, in
PowerShell's `(New-Object Net.WebClient).DownloadFile('...')` and `Invoke-WebRequest`, in
`certutil -urlcache -split -f ...`, in exploit request bodies. `wget`/`curl` also take a URL
without scheme (`wget 1.2.3.4/x.sh`), which they fetch over http.

A URL ends at white space, quotes, angle brackets, a backtick, a pipe, or `&&`; trailing
`;&),.` are dropped (shell punctuation after the URL). Whatever remains is a URL and nothing
else: `http://h/x;touch /tmp/p` asks for the path `/x;touch`, which is all we ever do with it.
"""

from __future__ import annotations

import re
import urllib.parse

from honeytrap.download.request import DownloadRequest, basename, host_for_uri
from honeytrap.download.text import MAX_REQUESTS, as_text, statements, valid_host, words

HTTP_PORTS = {"http": 80, "https": 443}

_URL = re.compile(r"https?://[^\s\"'<>`|^{}\\]+", re.IGNORECASE)
_TRAILING = ";&),."
_FETCHERS = ("wget", "curl", "wget.exe", "curl.exe")
# Characters sent as they are in a request target (RFC 3986 reserved and unreserved, and
# '%' for escapes already present); anything else is percent-encoded.
_PATH_SAFE = "/;:@&=+$,%?!~*'()-._[]"


def parse(payload: bytes) -> list[DownloadRequest]:
    """Every HTTP(S) download the payload asks for, in order, without duplicates."""
    text = as_text(payload)
    found: list[DownloadRequest] = []
    for url in _scheme_urls(text) + _bare_urls(text):
        request = from_url(url)
        if request is not None and request not in found:
            found.append(request)
            if len(found) >= MAX_REQUESTS:
                break
    return found


def _scheme_urls(text: str) -> list[str]:
    urls: list[str] = []
    for match in _URL.finditer(text):
        urls.append(match.group(0).split("&&", 1)[0].rstrip(_TRAILING))
        if len(urls) >= MAX_REQUESTS:
            break
    return urls


def _bare_urls(text: str) -> list[str]:
    """`wget host/path`, `curl -O host:port/path`: the first non-option word with a slash."""
    urls: list[str] = []
    for statement in statements(text):
        argv = words(statement)
        for start, word in enumerate(argv):
            if basename(word).lower() in _FETCHERS:
                for arg in argv[start + 1 :]:
                    if arg.startswith("-") or "://" in arg:
                        continue
                    if "/" in arg and valid_host(arg.split("/", 1)[0]):
                        urls.append("http://" + arg.rstrip(_TRAILING))
                    break
                break
        if len(urls) >= MAX_REQUESTS:
            break
    return urls


def from_url(url: str) -> DownloadRequest | None:
    """A request for one http(s) URL, None if it is not one we could fetch."""
    try:
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        host = parts.hostname or ""
        port = parts.port or HTTP_PORTS.get(scheme, 0)
    except ValueError:
        return None
    if scheme not in HTTP_PORTS or not valid_host(host) or not port:
        return None
    # Latin-1 gives back the attacker's bytes, which are then percent-encoded as they were.
    path = urllib.parse.quote(parts.path or "/", safe=_PATH_SAFE, encoding="latin-1")
    if parts.query:
        path += "?" + urllib.parse.quote(parts.query, safe=_PATH_SAFE, encoding="latin-1")
    return DownloadRequest(
        type="http",
        host=host,
        port=port,
        path=path,
        uri=f"{scheme}://{host_for_uri(host)}:{port}{path}",
        filename=basename(urllib.parse.unquote(parts.path, errors="replace")),
        user=urllib.parse.unquote(parts.username or "", errors="replace"),
        password=urllib.parse.unquote(parts.password or "", errors="replace"),
        scheme=scheme,
    )
