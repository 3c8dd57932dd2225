"""Our HTTP/1.1 client: http.client over a socket the policy connected, so the caps and the
address checks hold for every hop. HTTPS without certificate verification (malware hosts use
self-signed certificates; we want the sample, not the host's identity). Redirects are followed
only through the policy, at most MAX_REDIRECTS of them.
"""

from __future__ import annotations

import http.client
import ssl
import urllib.parse

from honeytrap.download import httpcmd
from honeytrap.download.addresses import IPAddress, parse_ip
from honeytrap.download.policy import DownloadRefused, FetchContext, Fetched, read_capped
from honeytrap.download.request import DownloadRequest
from honeytrap.errors import DownloadError

# wget follows 20, curl -L 50; droppers use one or two. Five bounds the work per download.
MAX_REDIRECTS = 5
# Bots' servers often serve the binary only to the tools bots use; look like wget.
USER_AGENT = "Wget/1.21.3"
_REDIRECTS = (301, 302, 303, 307, 308)
_Peer = tuple[str, int]


def fetch(request: DownloadRequest, ctx: FetchContext) -> Fetched:
    addresses = ctx.addresses
    for _ in range(MAX_REDIRECTS + 1):
        response, conn, (remote, local) = _get(request, addresses, ctx)
        try:
            if response.status in _REDIRECTS:
                location = response.getheader("Location") or ""
                request, addresses = _follow(request, location, ctx)
                continue
            if response.status != 200:
                raise DownloadError(f"HTTP {response.status} {response.reason[:60]}")
            length = response.getheader("Content-Length") or ""
            if length.isdigit() and int(length) > ctx.policy.max_size:
                raise DownloadRefused(f"larger than {ctx.policy.max_size} bytes")
            data = read_capped(response.read1, ctx.policy.max_size, ctx.deadline)
            if response.length:
                # read1 takes an early end of file for the end: the sample would be truncated.
                raise DownloadError(f"HTTP body ended {response.length} bytes short of its "
                                    "Content-Length")
            return Fetched(data, str(remote[0]), int(remote[1]), str(local[0]), int(local[1]))
        except http.client.HTTPException as exc:
            raise DownloadError(f"HTTP: {exc!r}") from exc
        finally:
            conn.close()
    raise DownloadError(f"more than {MAX_REDIRECTS} redirects")


def _get(
    request: DownloadRequest, addresses: list[IPAddress], ctx: FetchContext
) -> tuple[http.client.HTTPResponse, http.client.HTTPConnection, tuple[_Peer, _Peer]]:
    """Send the GET; the response, the connection (to close), and the socket's endpoints
    (http.client lets go of the socket once a `Connection: close` response arrives)."""
    conn = _connection(request, addresses, ctx)
    try:
        conn.connect()
        assert conn.sock is not None
        ends = (conn.sock.getpeername(), conn.sock.getsockname())
        conn.putrequest("GET", request.path, skip_accept_encoding=True)
        conn.putheader("User-Agent", USER_AGENT)
        conn.putheader("Accept", "*/*")
        conn.putheader("Connection", "close")
        conn.endheaders()
        return conn.getresponse(), conn, ends
    except http.client.HTTPException as exc:
        conn.close()
        raise DownloadError(f"HTTP: {exc!r}") from exc
    except BaseException:
        conn.close()
        raise


def _follow(
    request: DownloadRequest, location: str, ctx: FetchContext
) -> tuple[DownloadRequest, list[IPAddress]]:
    target = urllib.parse.urljoin(request.uri, location.strip())
    follow = httpcmd.from_url(target)
    if follow is None:
        raise DownloadError(f"redirect to an unusable location {location[:100]!r}")
    try:
        addresses = ctx.policy.check(follow.host, ctx.attack, ctx.deadline)
    except DownloadRefused as exc:
        raise DownloadRefused(f"redirect to {follow.uri}: {exc}") from exc
    return follow, addresses


def _connection(
    request: DownloadRequest, addresses: list[IPAddress], ctx: FetchContext
) -> http.client.HTTPConnection:
    timeout = ctx.deadline.timeout()
    if request.scheme == "https":
        return _PolicyHTTPS(request.host, request.port, timeout=timeout, ctx=ctx,
                            addresses=addresses)
    return _PolicyHTTP(request.host, request.port, timeout=timeout, ctx=ctx,
                       addresses=addresses)


class _PolicyHTTP(http.client.HTTPConnection):
    """Connects to the checked addresses, never resolving the host name again."""

    def __init__(self, host: str, port: int, *, timeout: float, ctx: FetchContext,
                 addresses: list[IPAddress]) -> None:
        super().__init__(host, port, timeout=timeout)
        self._ctx = ctx
        self._addresses = addresses

    def connect(self) -> None:
        self.sock = self._ctx.connect(self.port, self._addresses)


class _PolicyHTTPS(_PolicyHTTP):
    def connect(self) -> None:
        raw = self._ctx.connect(self.port, self._addresses)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # noqa: S323 - see the module docstring
        name = None if parse_ip(self.host) is not None else self.host
        try:
            # The handshake and every read after it under the download's deadline.
            self.sock = self._ctx.deadline.wrap_tls(context, raw, name)
        except (ssl.SSLError, OSError, DownloadError):
            raw.close()
            raise
