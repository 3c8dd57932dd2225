"""The download policy: the one place that says whether, where, how much and how long.

Every downloader goes through `DownloadPolicy.run`: it checks the destination (`check`),
counts the download against the attack's quota, gives the client a `Deadline`, and records the
try on the attack whatever happens ("refused", "failed" or "ok", with its reason) and the
sample as a `Download` on success. It also counts the outcomes (`DownloadCounts`), which the
downloader plugins report as their statistics (`downloads`, `download_failures`).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from honeytrap.attack import Attack, Download, DownloadTry, Payload
from honeytrap.download.addresses import (
    IPAddress,
    IPNetwork,
    local_addresses,
    normalise,
    parse_ip,
    parse_networks,
    refusal,
)
from honeytrap.download.deadline import Deadline
from honeytrap.download.request import DownloadRequest
from honeytrap.errors import DownloadError, PluginError, RemoteError
from honeytrap.plugin import PluginContext

log = logging.getLogger("honeytrap.download")

# Named limits. Each says why.
# Malware droppers and bot binaries are kilobytes to a few megabytes; 16 MiB keeps nearly all
# of them and bounds memory (a sample is held in memory for hashing) and disk per download.
DEFAULT_MAX_SIZE = 16 * 1024 * 1024
# Overall time for one download, connect to last byte. Bounded well below the pipeline's
# plugin watchdog (pipeline.DEFAULT_PLUGIN_TIMEOUT = 300 s) so a download is never abandoned
# half-way, and short enough that a tarpit holds a worker only briefly.
DEFAULT_TIMEOUT = 60.0
# Connecting (and resolving a name) gets at most this long of the overall time: a dead host
# should fail fast, not eat the whole deadline.
DEFAULT_CONNECT_TIMEOUT = 10.0
# Downloads (tries that went to the network) per attack, over all downloaders: a payload
# naming a thousand URLs must not make a thousand fetches.
DEFAULT_MAX_PER_ATTACK = 8
# A hostname resolving to more addresses than this is refused (a rebinding or flooding trick).
MAX_RESOLVED = 32
# A URI in the log is cut to this many characters: enough to tell downloads apart.
MAX_LOGGED_URI = 200
# The sensor's interface addresses are re-read at most this often (interfaces rarely change;
# reading /proc per download would be waste on a busy sensor).
LOCAL_ADDRESS_TTL = 60.0


class DownloadRefused(DownloadError):
    """The policy refused the download (destination, quota); nothing was sent."""


@dataclass(frozen=True)
class Fetched:
    """What a client returns: the bytes and the endpoints they came over."""

    data: bytes
    remote_addr: str
    remote_port: int
    local_addr: str = ""
    local_port: int = 0


@dataclass
class FetchContext:
    """Handed to a client: the checked addresses, the deadline, and the policy for any
    further destination (an HTTP redirect) and for connecting."""

    policy: DownloadPolicy
    attack: Attack
    addresses: list[IPAddress]
    deadline: Deadline

    def connect(self, port: int, addresses: Iterable[IPAddress] | None = None) -> socket.socket:
        return self.policy.connect(list(addresses or self.addresses), port, self.deadline)


Fetcher = Callable[[DownloadRequest, FetchContext], Fetched]

# Per root attack, shared by every downloader in this process: downloads started, and the
# downloads tried. Weak: an attack's entries go when the attack does.
_lock = threading.Lock()
_counts: weakref.WeakKeyDictionary[Attack, int] = weakref.WeakKeyDictionary()
_seen: weakref.WeakKeyDictionary[Attack, set[tuple[str, str]]] = weakref.WeakKeyDictionary()


class DownloadCounts:
    """The outcomes of one policy's tries, for the plugin's statistics. Tries run on several
    pipeline workers at once: each count is taken under a lock (once per download, cheap)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.ok = 0
        self.failed = 0  # refused by the policy or failed remotely

    def count(self, outcome: str) -> None:
        with self._lock:
            if outcome == "ok":
                self.ok += 1
            else:
                self.failed += 1

    def stats(self) -> dict[str, int]:
        return {"downloads": self.ok, "download_failures": self.failed}


@dataclass
class DownloadPolicy:
    max_size: int = DEFAULT_MAX_SIZE
    timeout: float = DEFAULT_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    max_per_attack: int = DEFAULT_MAX_PER_ATTACK
    allow: list[IPNetwork] = field(default_factory=list)
    replace_private_ips: bool = False
    # Extra sensor addresses (tests, or hosts whose /proc is not readable).
    own: set[IPAddress] = field(default_factory=set)
    _local: set[IPAddress] = field(default_factory=set, repr=False)
    _local_read: float = field(default=-LOCAL_ADDRESS_TTL, repr=False)
    counts: DownloadCounts = field(default_factory=DownloadCounts, repr=False, compare=False)

    @classmethod
    def from_plugin(
        cls,
        ctx: PluginContext,
        *,
        max_size: int = DEFAULT_MAX_SIZE,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> DownloadPolicy:
        """The policy for a plugin: `download_allow` and `replace_private_ips` from the
        configuration, the plugin's options `max_size` (bytes), `timeout` (seconds),
        `connect_timeout` and `max_per_attack` over the given defaults."""
        try:
            allow = parse_networks(ctx.config.download_allow)
        except ValueError as exc:
            raise PluginError(f"plugin {ctx.name}: {exc}") from exc
        policy = cls(
            max_size=ctx.option_int("max_size", max_size),
            timeout=_seconds(ctx, "timeout", timeout),
            connect_timeout=_seconds(ctx, "connect_timeout", DEFAULT_CONNECT_TIMEOUT),
            max_per_attack=ctx.option_int("max_per_attack", DEFAULT_MAX_PER_ATTACK),
            allow=allow,
            replace_private_ips=ctx.config.replace_private_ips,
        )
        if policy.max_size <= 0 or policy.max_per_attack < 0:
            raise PluginError(f"plugin {ctx.name}: max_size and max_per_attack must be positive")
        return policy

    # -- destinations -------------------------------------------------------------------

    def own_addresses(self, attack: Attack | None = None) -> set[IPAddress]:
        now = time.monotonic()
        if now - self._local_read >= LOCAL_ADDRESS_TTL:
            self._local = local_addresses()
            self._local_read = now
        own = set(self._local) | self.own
        if attack is not None:
            local = parse_ip(attack.attack_connection.local_addr)
            if local is not None:
                own.add(normalise(local))
        return own

    def refusal(self, addr: IPAddress, attack: Attack | None = None) -> str | None:
        """Why `addr` is refused, or None."""
        return refusal(addr, own=self.own_addresses(attack), allow=self.allow)

    def check(
        self, host: str, attack: Attack, deadline: Deadline | None = None
    ) -> list[IPAddress]:
        """The addresses a download from `host` may connect to, every one checked; raises
        DownloadRefused. A name is resolved here, once: the client connects to these
        addresses, never to the name again (no DNS-rebinding window). With
        `replace_private_ips` a refused host is replaced by the attacker's address (the
        original's behaviour: bots often name their own NATed address), itself checked."""
        addresses = self.resolve(host, deadline)
        reasons = [r for r in (self.refusal(a, attack) for a in addresses) if r]
        if not reasons:
            return addresses
        if self.replace_private_ips:
            attacker = parse_ip(attack.attack_connection.remote_addr)
            if attacker is not None:
                why = self.refusal(attacker, attack)
                if why is None:
                    return [normalise(attacker)]
                reasons.append(f"replacement {why}")
        raise DownloadRefused("; ".join(reasons))

    def resolve(self, host: str, deadline: Deadline | None = None) -> list[IPAddress]:
        """The addresses of `host`; a name is resolved within connect_timeout (and what is
        left of the download's deadline)."""
        literal = parse_ip(host)
        if literal is not None:
            return [normalise(literal)]
        if not host or len(host) > 253:
            raise DownloadRefused(f"not a host name: {host!r}")
        try:
            limit = self.connect_timeout if deadline is None else deadline.timeout(
                self.connect_timeout)
            infos = _getaddrinfo(host, limit)
        except (OSError, UnicodeError) as exc:
            raise DownloadError(f"cannot resolve {host!r}: {exc}") from exc
        found: list[IPAddress] = []
        for info in infos:
            addr = parse_ip(str(info[4][0]))
            if addr is not None and normalise(addr) not in found:
                found.append(normalise(addr))
        if not found:
            raise DownloadError(f"{host!r} has no address")
        if len(found) > MAX_RESOLVED:
            raise DownloadRefused(f"{host!r} resolves to {len(found)} addresses")
        return found

    # -- connecting ----------------------------------------------------------------------

    def connect(self, addresses: list[IPAddress], port: int, deadline: Deadline) -> socket.socket:
        """A TCP connection to the first reachable checked address, timeouts set from the
        deadline. `addresses` must come from `check`."""
        if not 0 < port < 65536:
            raise DownloadRefused(f"port {port} out of range")
        last: Exception | None = None
        for addr in addresses:
            family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
            sock = deadline.new_socket(family)
            try:
                deadline.call(sock, socket.socket.connect, sock, (str(addr), port),
                              cap=self.connect_timeout)
                return sock
            except OSError as exc:
                sock.close()
                last = exc
            except DownloadError:
                sock.close()
                raise
        raise DownloadError(f"cannot connect to port {port}: {last}")

    def deadline(self) -> Deadline:
        return Deadline(self.timeout)

    # -- the whole try -------------------------------------------------------------------

    def reserve(self, attack: Attack) -> None:
        """Count one download against the root attack's quota; DownloadRefused when spent."""
        root = attack.root
        with _lock:
            used = _counts.get(root, 0)
            if used >= self.max_per_attack:
                raise DownloadRefused(f"at most {self.max_per_attack} downloads per attack")
            _counts[root] = used + 1

    def first_time(self, attack: Attack, request: DownloadRequest) -> bool:
        """False if this attack (or one derived from the same root: a decoded copy of the
        payload names the same URL again) already tried this download."""
        root = attack.root
        key = (request.type, request.uri)
        with _lock:
            seen = _seen.setdefault(root, set())
            if key in seen:
                return False
            seen.add(key)
            return True

    def run(
        self, attack: Attack, request: DownloadRequest, fetch: Fetcher,
        deadline: Deadline | None = None,
    ) -> Download | None:
        """Check, fetch and record one download under one deadline (`deadline`, or a new one
        of `timeout` seconds). Never raises for remote trouble; a download this attack
        already tried is skipped (None, nothing recorded)."""
        if not self.first_time(attack, request):
            return None
        return self.attempt(attack, request, fetch, deadline)

    def refuse(self, attack: Attack, request: DownloadRequest, reason: str) -> None:
        """Record (and count) a download refused before it started (the download pool had no
        room for it)."""
        self._record(attack, request, "refused", reason)

    def attempt(
        self, attack: Attack, request: DownloadRequest, fetch: Fetcher,
        deadline: Deadline | None = None,
    ) -> Download | None:
        """`run` without the check for a download tried already (the caller made it)."""
        # One deadline from the first step (resolving the name) to the last byte.
        deadline = self.deadline() if deadline is None else deadline
        try:
            addresses = self.check(request.host, attack, deadline)
            self.reserve(attack)
        except DownloadRefused as exc:
            self._record(attack, request, "refused", str(exc))
            return None
        except RemoteError as exc:
            self._record(attack, request, "failed", str(exc))
            return None
        context = FetchContext(self, attack, addresses, deadline)
        try:
            fetched = fetch(request, context)
        except DownloadRefused as exc:
            self._record(attack, request, "refused", str(exc))
            return None
        except (RemoteError, OSError, ValueError) as exc:
            self._record(attack, request, "failed", str(exc) or type(exc).__name__)
            return None
        if len(fetched.data) > self.max_size:
            self._record(attack, request, "refused", f"larger than {self.max_size} bytes")
            return None
        download = Download(
            type=request.type,
            remote_addr=fetched.remote_addr,
            remote_port=fetched.remote_port,
            filename=request.filename,
            uri=request.uri,
            payload=Payload(fetched.data),
            user=request.user,
            password=request.password,
            protocol="udp" if request.type == "tftp" else "tcp",
            local_addr=fetched.local_addr,
            local_port=fetched.local_port,
        )
        self._record(
            attack, request, "ok", f"{len(fetched.data)} bytes from {fetched.remote_addr}"
        )
        attack.add_download(download)
        return download

    def _record(self, attack: Attack, request: DownloadRequest, outcome: str, reason: str) -> None:
        """Record the try on the attack, count its outcome, log a refusal or a failure
        (the URI is the attacker's: logged as a quoted, shortened literal)."""
        _record(attack, request, outcome, reason)
        if outcome != "ok":
            log.info("attack %s: download %s %r: %s", attack.root.id, outcome,
                     request.uri[:MAX_LOGGED_URI], reason)
        self.counts.count(outcome)


def read_capped(read: Callable[[int], bytes], limit: int, deadline: Deadline) -> bytes:
    """Read until EOF through `read(n)`; DownloadRefused past `limit` bytes."""
    chunks: list[bytes] = []
    total = 0
    while True:
        deadline.remaining()
        chunk = read(_CHUNK)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > limit:
            raise DownloadRefused(f"larger than {limit} bytes")
        chunks.append(chunk)


# Socket read size: a page multiple, small enough that the size cap is enforced closely.
_CHUNK = 64 * 1024


def _record(attack: Attack, request: DownloadRequest, outcome: str, reason: str) -> None:
    attack.add_download_try(
        DownloadTry(
            type=request.type,
            uri=request.uri,
            host=request.host,
            port=request.port,
            outcome=outcome,
            reason=reason,
        )
    )


def _seconds(ctx: PluginContext, key: str, default: float) -> float:
    raw = ctx.option(key, str(default))
    try:
        value = float(raw)
    except ValueError as exc:
        raise PluginError(f"plugin {ctx.name}: option {key!r}: not a number: {raw!r}") from exc
    if not 0 < value <= 3600:
        raise PluginError(f"plugin {ctx.name}: option {key!r} must be in (0, 3600] seconds")
    return value


_AddrInfo = tuple[object, object, object, object, tuple[object, ...]]


def _getaddrinfo(host: str, timeout: float) -> list[_AddrInfo]:
    """getaddrinfo with a time cap: the resolver's own timeouts can add up to half a minute,
    so it runs in a daemon thread we stop waiting for."""
    result: list[object] = []
    done = threading.Event()

    def resolve() -> None:
        try:
            result.append(socket.getaddrinfo(host, None, type=socket.SOCK_STREAM))
        except Exception as exc:  # handed to the waiting thread
            result.append(exc)
        done.set()

    threading.Thread(target=resolve, name="download-resolve", daemon=True).start()
    if not done.wait(timeout):
        raise DownloadError(f"resolving {host!r} took over {timeout:.0f} s")
    value = result[0]
    if isinstance(value, Exception):
        if isinstance(value, OSError | UnicodeError):
            raise value
        raise DownloadError(f"cannot resolve {host!r}: {value!r}")
    return value  # type: ignore[return-value]
