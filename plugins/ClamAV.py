"""ClamAV (ANALYZE): scan the payload and the samples with clamd, result into the record.

The original linked libclamav, loaded the whole signature database into every honeytrap
process and scanned temp files. We talk to a running clamd over its socket (the INSTREAM
command of clamd(8): the data in length-prefixed chunks, no files), so the database is loaded
once, by clamd, and updated by freshclam without us. Configure it after the downloaders (in
ANALYZE, config order) so their samples are scanned, and before the loggers.

Options:
    clamd_socket = "/var/run/clamav/clamd.ctl"   a unix socket path, or "host:port" for TCP
    timeout      = "30"                          seconds per scan
    max_scans    = "2"                           scans waiting on clamd at once; more are skipped
    clamdb_path, temp_dir                        the original's libclamav options: accepted and
                                                 ignored with a warning (clamd has its own)

The record, on the root attack: analysis["ClamAV"][<md5>] = {"source", "status" ("clean" |
"infected" | "error" | "skipped"), "signature", "reply"}.

A scan runs on the attack's recording path (ANALYZE: logJSON records its result), and a slow
clamd (up to `timeout`) holds that attack. The pipeline lets another worker go on beside each
slow hook, but its workers are few (pipeline.DEFAULT_WORKERS): a clamd that answers slowly to
every scan would hold them all, and every later attack's recording with them. So at most
`max_scans` scans wait on clamd at once; an attack that comes while they all wait is not
scanned: "skipped", counted (`clamav_skipped`), logged once per busy spell, and recorded at
once. Counters for stats(): `clamav_scans`, `clamav_skipped`, `clamav_errors`.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from honeytrap.attack import Attack, Payload
from honeytrap.errors import PluginError, ProtocolError
from honeytrap.plugin import PluginContext

DEFAULT_SOCKET = "/var/run/clamav/clamd.ctl"  # Debian's clamav-daemon LocalSocket
DEFAULT_TIMEOUT = 30
# Scans waiting on clamd at once: past it attacks are recorded unscanned ("skipped") rather
# than queued behind a slow clamd; two lets a big sample's scan not starve the payloads'.
DEFAULT_MAX_SCANS = 2
# clamd's StreamMaxLength defaults to 25 MiB; it refuses longer streams, so we send no more.
MAX_SCAN_BYTES = 25 * 1024 * 1024
# INSTREAM chunk size (any size below StreamMaxLength works; 64 KiB keeps writes cheap).
CHUNK = 64 * 1024
# A clamd reply is one short line; more than this is not clamd.
MAX_REPLY = 4096


@dataclass(frozen=True)
class ScanResult:
    status: str  # "clean", "infected", "error"
    signature: str
    reply: str


def instream_request(data: bytes) -> Iterator[bytes]:
    """The INSTREAM command for `data` (clamd(8)): zINSTREAM\\0, <u32 length><chunk>...,
    then a zero length."""
    yield b"zINSTREAM\0"
    for start in range(0, len(data), CHUNK):
        chunk = data[start : start + CHUNK]
        yield struct.pack(">I", len(chunk)) + chunk
    yield struct.pack(">I", 0)


def parse_reply(reply: bytes) -> ScanResult:
    """`stream: OK`, `stream: <name> FOUND`, or `<message> ERROR` (NUL-terminated)."""
    text = reply.split(b"\0", 1)[0].decode("utf-8", errors="replace").strip()
    body = text[len("stream:") :].strip() if text.startswith("stream:") else text
    if body == "OK":
        return ScanResult("clean", "", text)
    if body.endswith(" FOUND"):
        return ScanResult("infected", body[: -len(" FOUND")].strip(), text)
    return ScanResult("error", "", text)


def parse_address(value: str) -> tuple[int, Any]:
    """("/path" or "host:port" / "[v6]:port") -> (address family, address)."""
    if value.startswith("/"):
        return socket.AF_UNIX, value
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"not a socket path or host:port: {value!r}")
    if host.startswith("[") and host.endswith("]"):
        return socket.AF_INET6, (host[1:-1], int(port))
    return socket.AF_INET6 if ":" in host else socket.AF_INET, (host, int(port))


class Clamd:
    """A small clamd client: one connection per command."""

    def __init__(self, address: str, timeout: float) -> None:
        self.family, self.address = parse_address(address)
        self.timeout = timeout

    def _command(self, parts: Iterator[bytes]) -> bytes:
        with socket.socket(self.family, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout)
            sock.connect(self.address)
            for part in parts:
                sock.sendall(part)
            reply = b""
            while b"\0" not in reply and len(reply) < MAX_REPLY:
                chunk = sock.recv(MAX_REPLY)
                if not chunk:
                    break
                reply += chunk
        if b"\0" not in reply:
            raise ProtocolError(f"clamd sent no complete reply: {reply[:80]!r}")
        return reply

    def ping(self) -> bool:
        return self._command(iter([b"zPING\0"])).startswith(b"PONG")

    def scan(self, data: bytes) -> ScanResult:
        return parse_reply(self._command(instream_request(data[:MAX_SCAN_BYTES])))


class ClamAV:
    def __init__(self, ctx: PluginContext) -> None:
        self.log = ctx.log
        for key in ("clamdb_path", "temp_dir"):
            if key in ctx.options:
                self.log.warning("option %s is the original's libclamav option: ignored, "
                                 "clamd (clamd_socket) uses its own database", key)
        timeout = ctx.option_int("timeout", DEFAULT_TIMEOUT)
        max_scans = ctx.option_int("max_scans", DEFAULT_MAX_SCANS)
        if max_scans < 1:
            raise PluginError(f"plugin {ctx.name}: max_scans must be at least 1, not {max_scans}")
        self._slots = threading.BoundedSemaphore(max_scans)
        self._lock = threading.Lock()
        self._busy_logged = False
        self.counters = {"clamav_scans": 0, "clamav_skipped": 0, "clamav_errors": 0}
        try:
            self.clamd = Clamd(ctx.option("clamd_socket", DEFAULT_SOCKET), float(timeout))
        except ValueError as exc:
            raise PluginError(f"plugin {ctx.name}: clamd_socket: {exc}") from exc
        try:
            if not self.clamd.ping():
                self.log.warning("clamd at %s does not answer PING", self.clamd.address)
        except (OSError, ProtocolError) as exc:
            # clamd may start after us: scans are tried anyway and errors recorded.
            self.log.warning("clamd at %s not reachable now: %s", self.clamd.address, exc)

    def analyze(self, attack: Attack) -> None:
        root = attack.root
        results: dict[str, Any] = dict(root.analysis.get("ClamAV", {}))
        items = [("virtual payload" if attack.is_virtual else "payload", attack.payload)]
        items += [("download", d.payload.data) for d in attack.downloads]
        for source, data in items:
            md5 = Payload(data).md5
            if not data or md5 in results:
                continue
            results[md5] = self._scan(source, data, root.id)
        root.set_analysis("ClamAV", results)

    def followup(self, attack: Attack) -> None:
        """The samples downloaded after the attack was recorded (the download pool)."""
        results: dict[str, Any] = dict(attack.analysis.get("ClamAV", {}))
        for download in list(attack.downloads):
            if download.payload.size and download.payload.md5 not in results:
                results[download.payload.md5] = self._scan("download", download.payload.data,
                                                           attack.id)
        attack.set_analysis("ClamAV", results)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counters)

    def _scan(self, source: str, data: bytes, attack_id: str) -> dict[str, Any]:
        if not self._slots.acquire(blocking=False):
            with self._lock:
                self.counters["clamav_skipped"] += 1
                first, self._busy_logged = not self._busy_logged, True
            if first:
                self.log.warning("clamd at %s is slow: every scan slot (max_scans) waits on it; "
                                 "attacks are recorded unscanned meanwhile (clamav_skipped)",
                                 self.clamd.address)
            return {"source": source, "status": "skipped", "signature": "",
                    "reply": "clamd busy: max_scans scans waiting on it"}
        try:
            result = self.clamd.scan(data)
        except (OSError, ProtocolError) as exc:
            self.log.warning("attack %s: clamd scan failed: %s", attack_id, exc)
            result = ScanResult("error", "", str(exc))
        finally:
            self._slots.release()
        with self._lock:
            self.counters["clamav_errors" if result.status == "error" else "clamav_scans"] += 1
            if self._busy_logged:
                self._busy_logged = False
                self.log.info("clamd at %s: a scan slot is free again", self.clamd.address)
        if result.status == "infected":
            self.log.info("attack %s: %s is infected with %s", attack_id, source, result.signature)
        return {"source": source, "status": result.status, "signature": result.signature,
                "reply": result.reply}


def load(ctx: PluginContext) -> ClamAV:
    return ClamAV(ctx)
