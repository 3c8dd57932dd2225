"""TLS on any port: the standard library's ssl over memory BIOs (sans-IO, no crypto of ours).

`TlsDialogue` completes the handshake with the sensor's certificate, then hands the decrypted
stream to an inner dialogue chosen by its first plaintext (`choose_inner`), and encrypts the
inner's replies. A client that stays silent after the handshake (IMAPS, SMTPS, FTPS wait for
the server) gets the inner dialogue chosen for b"" after one read timeout, and its banner.

The record carries the client's fingerprint (JA3, JA4, from our own ClientHello parser), SNI,
offered ALPN, the negotiated version and cipher, and the decrypted client bytes. A hello that
does not parse, a failed handshake or an alert only ends the connection: the adapter keeps the
raw bytes, and the fingerprint stays when the hello parsed.

ALPN: only http/1.1 is offered. h2 would be accepted by curl and browsers, which would then
speak HTTP/2 frames that no inner dialogue of ours answers; without h2 they fall back to
HTTP/1.1, which the HTTP dialogue follows.
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
from collections.abc import Callable
from typing import Any

from honeytrap.dialogue import certificate
from honeytrap.dialogue.base import Context, Dialogue, Reply
from honeytrap.errors import ConfigError
from honeytrap.fingerprint import clienthello, ja3, ja4

log = logging.getLogger("honeytrap.dialogue.tls")

# Context.extra key of the SSLContext made once in the master (server_context).
CONTEXT_KEY = "tls_context"
ALPN = ["http/1.1"]
READ_CHUNK = 16 * 1024  # one TLS record's plaintext at most (RFC 8446 5.1)
# RFC 5246 6.2.1 / RFC 8446 5.1: content type 22 handshake, legacy_record_version 3.x (x <= 4
# covers SSL 3.0 to TLS 1.3's 0x0301/0x0303 record versions), handshake type 1 client_hello.
_MAX_MINOR = 4


def is_client_hello(data: bytes) -> bool:
    """Whether `data`, the client's first bytes (at least 3: a partial first chunk will do),
    starts like a TLS ClientHello: a handshake record header and, once there, a record length
    of a handshake and handshake type 1."""
    if len(data) < 3 or data[0] != clienthello.RECORD_HANDSHAKE or data[1] != 3:
        return False
    if data[2] > _MAX_MINOR:
        return False
    if len(data) >= 5:
        length = int.from_bytes(data[3:5], "big")
        if length < 4 or length > clienthello.MAX_RECORD:
            return False
    return len(data) < 6 or data[5] == clienthello.HANDSHAKE_CLIENT_HELLO


def server_context(state_dir: str, hostname: str) -> ssl.SSLContext:
    """The sensor's server SSLContext (TLS 1.2 and 1.3, ALPN http/1.1): made once in the master
    at start, inherited by the forked server processes. The certificate is generated under
    `state_dir` at the first start and reused later; `state_dir` "" (tests) or one that
    cannot be written makes a throw-away one."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(ALPN)
    if state_dir:
        try:
            key_path, cert_path = certificate.ensure(state_dir, hostname)
        except ConfigError as exc:
            # a read-only state_dir is not fatal (state.py): a certificate for this run only
            log.warning("%s; TLS uses a certificate made for this run only", exc)
        else:
            ctx.load_cert_chain(cert_path, key_path)
            return ctx
    with tempfile.TemporaryDirectory(prefix="honeytrap-tls-") as tmp:
        key_path, cert_path = certificate.ensure(tmp, hostname)
        ctx.load_cert_chain(cert_path, key_path)
        for path in (key_path, cert_path):
            os.unlink(path)
    return ctx


_fallback: dict[tuple[str, str], ssl.SSLContext] = {}


def _context_of(ctx: Context) -> ssl.SSLContext:
    made = ctx.extra.get(CONTEXT_KEY)
    if isinstance(made, ssl.SSLContext):
        return made
    # No master-made context (a unit test, a tool): make one per process and keep it.
    key = (ctx.state_dir, ctx.hostname)
    if key not in _fallback:
        _fallback[key] = server_context(*key)
    return _fallback[key]


class TlsDialogue:
    name = "tls"

    def __init__(self, ctx: Context, choose_inner: Callable[[bytes], Dialogue]) -> None:
        self.ctx = ctx
        self.choose_inner = choose_inner
        self.inner: Dialogue | None = None
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._ssl = _context_of(ctx).wrap_bio(self._in, self._out, server_side=True)
        self._handshaken = False
        self._closed = False
        self._hello_bytes = bytearray()
        self._hello: clienthello.ClientHello | None = None
        self._hello_done = False  # parsed, or known not to parse
        self._decrypted = bytearray()
        self._version = ""
        self._cipher = ""
        self._delay = 0.0  # the inner reply's delay (a served reply's jitter), kept for it

    def start(self) -> bytes:
        return b""  # TLS: the client speaks first

    def receive(self, data: bytes) -> Reply:
        if self._closed:
            return Reply(close=True)
        self._fingerprint(data)
        self._in.write(data)
        if not self._handshaken and not self._handshake():
            return self._flush(close=self._closed)
        return self._flush(close=self._plaintext())

    def idle(self) -> Reply:
        if self._closed or not self._handshaken:
            return Reply()
        if self.inner is None:
            return self._flush(close=self._to_inner(b""))
        return self._flush(close=self._encrypt(self.inner.idle()))

    def record(self) -> dict[str, Any]:
        hello = self._hello
        ja3_text = ja3.ja3(hello) if hello else ""
        fields: dict[str, Any] = {
            "tls": {
                "ja3": ja3_text,
                "ja3_hash": ja3.ja3_hash(ja3_text) if hello else "",
                "ja4": ja4.ja4(hello) if hello else "",
                "sni": hello.sni if hello else "",
                "alpn": [p.decode("ascii", "replace") for p in hello.alpn] if hello else [],
                "version": self._version,
                "cipher": self._cipher,
            },
            "decrypted": bytes(self._decrypted),
        }
        if self.inner is not None:
            fields.update(self.inner.record())
        return fields

    def _fingerprint(self, data: bytes) -> None:
        if self._hello_done:
            return
        self._hello_bytes += data[: clienthello.MAX_HELLO_STREAM - len(self._hello_bytes)]
        try:
            self._hello = clienthello.parse_client_hello(bytes(self._hello_bytes))
        except clienthello.HelloError as exc:
            log.debug("no fingerprint: %s", exc)
            self._hello_done = True
        else:
            self._hello_done = self._hello is not None
        if self._hello_done:
            self._hello_bytes = bytearray()

    def _handshake(self) -> bool:
        """Go on with the handshake; whether it is complete (a failure closes)."""
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            return False
        except (ssl.SSLError, ValueError) as exc:
            # RFC 8446 6: a bad hello or the client's alert; OpenSSL has queued our alert
            log.debug("TLS handshake failed: %s", exc)
            self._closed = True
            return False
        self._handshaken = True
        self._version = self._ssl.version() or ""
        cipher = self._ssl.cipher()
        self._cipher = cipher[0] if cipher else ""
        return True

    def _plaintext(self) -> bool:
        """Decrypt what arrived and pass it on; whether to close."""
        chunks = []
        peer_closed = False
        while True:
            try:
                chunk = self._ssl.read(READ_CHUNK)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLError as exc:  # a bad record, an alert
                log.debug("TLS read failed: %s", exc)
                peer_closed = True
                break
            if not chunk:  # Python's read() gives b"" for the client's close_notify
                peer_closed = True
                break
            chunks.append(chunk)
        close = self._to_inner(b"".join(chunks)) if chunks else False
        return close or peer_closed

    def _to_inner(self, plain: bytes) -> bool:
        """Hand decrypted bytes (b"": the client stayed silent) to the inner dialogue, chosen
        by the first of them; encrypt its reply. Whether to close."""
        room = self.ctx.read_limit - len(self._decrypted)
        self._decrypted += plain[: max(room, 0)]
        banner = b""
        if self.inner is None:
            self.inner = self.choose_inner(plain)
            banner = self.inner.start()
        reply = self.inner.receive(plain) if plain else Reply()
        return self._encrypt(Reply(banner + reply.send, reply.close, reply.delay))

    def _encrypt(self, reply: Reply) -> bool:
        self._delay = max(self._delay, reply.delay)
        if reply.send and not self._closed:
            try:
                self._ssl.write(reply.send)
            except ssl.SSLError as exc:
                log.debug("TLS write failed: %s", exc)
                return True
        return reply.close

    def _flush(self, close: bool) -> Reply:
        """What OpenSSL wrote for the client; on close, with our close_notify after a
        handshake (or the alert OpenSSL queued when the handshake failed)."""
        if close and self._handshaken and not self._closed:
            try:
                self._ssl.unwrap()
            except (ssl.SSLError, ValueError):
                pass  # close_notify is written; the client's never comes (memory BIO)
        self._closed = self._closed or close
        delay, self._delay = self._delay, 0.0
        return Reply(send=self._out.read(), close=self._closed, delay=delay)
