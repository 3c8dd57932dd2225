"""TlsDialogue: handshakes with the standard library's client in memory (no sockets), with
curl and openssl s_client over loopback, the certificate kept under the state directory, and
fuzzing (nothing but DialogueError escapes)."""

from __future__ import annotations

import datetime
import hashlib
import os
import ssl
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from dialogue_adapter import serve
from hypothesis import given, settings
from hypothesis import strategies as st
from tls_hello import client_hello

from honeytrap.dialogue import certificate, tls
from honeytrap.dialogue.base import Context, Reply

HOST = "files.example.test"


class Inner:
    """A recording inner dialogue: a banner when chosen for silence, a fixed answer."""

    name = "inner"

    def __init__(self, first: bytes, answer: bytes = b"pong\n", close: bool = False) -> None:
        self.first = first
        self.got = b""
        self.answer = answer
        self.close = close

    def start(self) -> bytes:
        return b"* OK ready\r\n" if not self.first else b""

    def receive(self, data: bytes) -> Reply:
        self.got += data
        return Reply(self.answer, self.close)

    def idle(self) -> Reply:
        return Reply()

    def record(self) -> dict[str, Any]:
        return {"inner_got": self.got}


@pytest.fixture(scope="module")
def server_ctx() -> ssl.SSLContext:
    return tls.server_context("", HOST)


def make(server_ctx: ssl.SSLContext, read_limit: int = 1 << 20, **kw: Any) -> tls.TlsDialogue:
    ctx = Context("tcp", 8443, read_limit, hostname=HOST, extra={tls.CONTEXT_KEY: server_ctx})
    return tls.TlsDialogue(ctx, lambda first: Inner(first, **kw))


class Client:
    """The standard library's TLS client over memory BIOs, pumped against a dialogue."""

    def __init__(self, dialogue: tls.TlsDialogue, maximum: ssl.TLSVersion | None = None,
                 verify: bool = False, alpn: list[str] | None = None) -> None:
        cctx = ssl.create_default_context()
        if not verify:
            cctx.check_hostname = False
            cctx.verify_mode = ssl.CERT_NONE
        if maximum:
            cctx.maximum_version = maximum
        cctx.set_alpn_protocols(alpn or ["h2", "http/1.1"])
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = cctx.wrap_bio(self.inc, self.out, server_hostname=HOST)
        self.dialogue = dialogue
        self.closed = False

    def pump(self) -> None:
        data = self.out.read()
        if data:
            reply = self.dialogue.receive(data)
            self.inc.write(reply.send)
            self.closed = self.closed or reply.close

    def handshake(self) -> None:
        for _ in range(10):
            try:
                self.obj.do_handshake()
                self.pump()  # the client's Finished
                return
            except ssl.SSLWantReadError:
                self.pump()
        raise AssertionError("handshake did not complete")

    def read(self) -> bytes:
        try:
            return self.obj.read(65536)
        except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
            return b""


def test_handshake_then_inner_dialogue(server_ctx: ssl.SSLContext) -> None:
    """TLS 1.3: the decrypted request reaches the inner dialogue chosen by it, its reply comes
    back encrypted; the record has fingerprint, SNI, offered ALPN, version, cipher."""
    d = make(server_ctx)
    c = Client(d)
    c.handshake()
    assert c.obj.selected_alpn_protocol() == "http/1.1"  # h2 is never offered
    c.obj.write(b"ping\n")
    c.pump()
    assert c.read() == b"pong\n"
    rec = d.record()
    assert rec["decrypted"] == b"ping\n" and rec["inner_got"] == b"ping\n"
    t = rec["tls"]
    assert (t["sni"], t["alpn"], t["version"]) == (HOST, ["h2", "http/1.1"], "TLSv1.3")
    assert t["cipher"].startswith("TLS_AES_") and t["ja4"].startswith("t13d")
    assert len(t["ja3_hash"]) == 32 and t["ja3"].startswith("771,")
    assert d.name == "tls"


def test_inner_delay_kept(server_ctx: ssl.SSLContext) -> None:
    """The inner reply's delay (a served reply's jitter) reaches the adapter with the bytes."""

    class Slow(Inner):
        def receive(self, data: bytes) -> Reply:
            return Reply(b"late\n", delay=0.25)

    ctx = Context("tcp", 443, 1 << 20, extra={tls.CONTEXT_KEY: server_ctx})
    d = tls.TlsDialogue(ctx, lambda first: Slow(first))
    c = Client(d)
    c.handshake()
    c.obj.write(b"x")
    reply = d.receive(c.out.read())
    assert reply.delay == 0.25
    c.inc.write(reply.send)
    assert c.read() == b"late\n"


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(1, 400), min_size=1, max_size=8))
def test_any_chunking_of_the_client_bytes(server_ctx: ssl.SSLContext, cuts: list[int]) -> None:
    """The client's hello and request split anywhere (TCP may): the same handshake, the same
    fingerprint, the request decrypted whole."""
    d = make(server_ctx)
    c = Client(d)
    pending = b""
    for _ in range(10):
        try:
            c.obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            pending = c.out.read()
            sizes = iter(cuts)
            while pending:
                size = next(sizes, len(pending))
                c.inc.write(d.receive(pending[:size]).send)
                pending = pending[size:]
    c.obj.write(b"GET / HTTP/1.1\r\n\r\n")
    data = c.out.read()
    for i in range(0, len(data), cuts[0]):
        d.receive(data[i : i + cuts[0]])
    rec = d.record()
    assert rec["decrypted"] == b"GET / HTTP/1.1\r\n\r\n"
    assert rec["tls"]["ja4"].startswith("t13d") and rec["tls"]["sni"] == HOST


def test_tls12(server_ctx: ssl.SSLContext) -> None:
    d = make(server_ctx)
    c = Client(d, maximum=ssl.TLSVersion.TLSv1_2)
    c.handshake()
    c.obj.write(b"x")
    c.pump()
    assert c.read() == b"pong\n"
    assert d.record()["tls"]["version"] == "TLSv1.2"
    assert d.record()["tls"]["ja4"].startswith("t12d")


def test_silent_client_gets_the_inner_banner(server_ctx: ssl.SSLContext) -> None:
    """After the handshake, a read timeout without data: inner chosen for b"", its banner sent
    encrypted (IMAPS-style)."""
    d = make(server_ctx)
    c = Client(d)
    c.handshake()
    assert d.inner is None
    reply = d.idle()
    assert d.inner is not None and d.inner.name == "inner"
    c.inc.write(reply.send)
    assert c.read() == b"* OK ready\r\n"
    assert not reply.close
    assert d.record()["inner_got"] == b"" and d.record()["decrypted"] == b""


def test_inner_close_sends_close_notify(server_ctx: ssl.SSLContext) -> None:
    d = make(server_ctx, close=True)
    c = Client(d)
    c.handshake()
    c.obj.write(b"QUIT\r\n")
    c.pump()
    assert c.closed
    assert c.read() == b"pong\n"
    # without a close_notify in the BIO this read would raise SSLWantReadError
    assert c.obj.read(10) == b""  # Python's read() of a close_notify


def test_client_close_notify_ends(server_ctx: ssl.SSLContext) -> None:
    d = make(server_ctx)
    c = Client(d)
    c.handshake()
    c.obj.write(b"last words")
    with pytest.raises(ssl.SSLWantReadError):
        c.obj.unwrap()
    c.pump()
    assert c.closed
    assert d.record()["decrypted"] == b"last words"


def test_client_alert_keeps_fingerprint(server_ctx: ssl.SSLContext) -> None:
    """A verifying client rejects the self-signed certificate with an alert: the connection
    closes, the hello's fingerprint stays, no version or cipher."""
    d = make(server_ctx)
    c = Client(d, verify=True)
    with pytest.raises(ssl.SSLCertVerificationError):
        for _ in range(5):
            try:
                c.obj.do_handshake()
            except ssl.SSLWantReadError:
                c.pump()
    c.pump()
    assert c.closed
    t = d.record()["tls"]
    assert t["ja4"].startswith("t13d") and t["sni"] == HOST
    assert (t["version"], t["cipher"]) == ("", "")
    assert d.receive(b"more").close


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\n\r\n",
    b"\x16\x03\x01\x00\x06\x01\x00\x00\x02\x03\x03",
    client_hello([0x9999], None),  # a hello OpenSSL refuses: no cipher in common
])
def test_bad_hello_closes(server_ctx: ssl.SSLContext, data: bytes) -> None:
    d = make(server_ctx)
    reply = d.receive(data)
    assert reply.close
    assert d.record()["tls"]["version"] == ""


def test_fingerprint_of_a_refused_hello(server_ctx: ssl.SSLContext) -> None:
    d = make(server_ctx)
    assert d.receive(client_hello([0x9999], None)).close
    b = hashlib.sha256(b"9999").hexdigest()[:12]
    assert d.record()["tls"]["ja4"] == f"t12i010000_{b}_000000000000"
    assert d.record()["tls"]["ja3"] == "771,39321,,,"


def test_decrypted_bounded_by_read_limit(server_ctx: ssl.SSLContext) -> None:
    d = make(server_ctx, read_limit=10)
    c = Client(d)
    c.handshake()
    c.obj.write(b"0123456789abcdef")
    c.pump()
    assert d.record()["decrypted"] == b"0123456789"


@pytest.mark.parametrize("data", [b"\x16\x03\x01\x02\x00\x01", b"\x16\x03\x03", b"\x16\x03\x04"])
def test_is_client_hello(data: bytes) -> None:
    assert tls.is_client_hello(data)


@pytest.mark.parametrize("data", [
    b"", b"\x16", b"\x16\x03", b"GET /", b"SSH-2.0-x", b"\x16\x03\x05", b"\x16\x02\x01",
    b"\x16\x03\x01\x00\x01", b"\x16\x03\x01\x02\x00\x02", b"\x15\x03\x01\x00\x02",
])
def test_is_not_client_hello(data: bytes) -> None:
    assert not tls.is_client_hello(data)


def test_real_hello_detected() -> None:
    hello = client_hello([0x1301], None)
    assert all(tls.is_client_hello(hello[:n]) for n in range(3, len(hello) + 1))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=5), st.booleans())
def test_fuzz(server_ctx: ssl.SSLContext, chunks: list[bytes], as_tls: bool) -> None:
    """Any chunks (optionally behind a real hello's start) and idles: replies or a close,
    never an exception; the record is always JSON-shaped."""
    d = make(server_ctx)
    prefix = client_hello([0x1301, 0xC02F], None)[:20] if as_tls else b""
    for i, chunk in enumerate(chunks):
        reply = d.receive((prefix if i == 0 else b"") + chunk)
        d.idle()
        if reply.close:
            break
    rec = d.record()
    assert set(rec["tls"]) == {"ja3", "ja3_hash", "ja4", "sni", "alpn", "version", "cipher"}
    tls.is_client_hello(b"".join(chunks))


def test_certificate_kept_under_state_dir(tmp_path: Any) -> None:
    """First start: key 0600 and certificate under state_dir; later starts reuse them; the
    subject is plausible (CN and SAN = host name), the validity window began in the past."""
    state = str(tmp_path / "state")
    tls.server_context(state, HOST)
    key_path, cert_path = certificate.paths(state)
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    first = Path(cert_path).read_bytes()
    tls.server_context(state, HOST)
    assert Path(cert_path).read_bytes() == first
    cert = x509.load_pem_x509_certificate(first)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == HOST
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [HOST]
    now = datetime.datetime.now(datetime.UTC)
    assert now - datetime.timedelta(days=401) < cert.not_valid_before_utc < now
    assert cert.not_valid_after_utc > now + datetime.timedelta(days=certificate.MIN_LEFT_DAYS - 1)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc in [
        datetime.timedelta(days=d) for d in certificate.LIFETIMES_DAYS]


@given(st.randoms(use_true_random=False))
def test_validity_window(rng: Any) -> None:
    """Whatever the draw: begun 7 to 400 days ago, at least MIN_LEFT_DAYS left."""
    start, end = certificate.validity(rng)
    now = datetime.datetime.now(datetime.UTC)
    assert now - datetime.timedelta(days=401) < start < now - datetime.timedelta(days=6)
    assert end > now + datetime.timedelta(days=certificate.MIN_LEFT_DAYS - 1)


def test_unwritable_state_dir_is_not_fatal(tmp_path: Any) -> None:
    """A state_dir that cannot be written (a read-only root): a certificate for this run."""
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    ctx = tls.server_context(str(blocker / "state"), HOST)  # a path under a regular file
    d = tls.TlsDialogue(Context("tcp", 443, 1 << 20, extra={tls.CONTEXT_KEY: ctx}),
                        lambda first: Inner(first))
    c = Client(d)
    c.handshake()
    assert d.record()["tls"]["version"] == "TLSv1.3"


def test_sensors_differ(tmp_path: Any) -> None:
    """Two sensors: different keys and serials; subjects chosen by host name."""
    a = x509.load_pem_x509_certificate(certificate.generate("a.example.test")[1])
    b = x509.load_pem_x509_certificate(certificate.generate("b.example.test")[1])
    assert a.serial_number != b.serial_number
    assert a.public_key().public_numbers() != b.public_key().public_numbers()  # type: ignore


def _inner_http(first: bytes) -> Inner:
    return Inner(first, answer=b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")


def test_curl_over_loopback(server_ctx: ssl.SSLContext) -> None:
    """curl -k completes TLS, gets the inner dialogue's 404; the request is recorded
    decrypted with curl's JA4 and SNI."""
    ctx = Context("tcp", 8443, 1 << 20, hostname=HOST, extra={tls.CONTEXT_KEY: server_ctx})
    with serve(lambda: tls.TlsDialogue(ctx, _inner_http)) as (port, records, ended):
        out = subprocess.run(
            ["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code} %{ssl_verify_result}",
             "--resolve", f"{HOST}:{port}:127.0.0.1", f"https://{HOST}:{port}/nothing"],
            capture_output=True, text=True, timeout=30)
        assert ended.wait(10)
    assert out.stdout.split()[0] == "404"
    rec = records[0]
    assert rec["decrypted"].startswith(b"GET /nothing HTTP/1.1\r\n")
    assert rec["tls"]["sni"] == HOST and rec["tls"]["alpn"] == ["h2", "http/1.1"]
    assert rec["tls"]["ja4"].startswith("t13d")


def test_openssl_s_client_over_loopback(server_ctx: ssl.SSLContext) -> None:
    """openssl s_client sees the sensor's certificate subject and TLS 1.3, and its line
    reaches the inner dialogue."""
    ctx = Context("tcp", 993, 1 << 20, hostname=HOST, extra={tls.CONTEXT_KEY: server_ctx})
    with serve(lambda: tls.TlsDialogue(ctx, lambda f: Inner(f, close=True))) as (
            port, records, ended):
        out = subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", HOST,
             "-ign_eof"], input=b"a1 LOGIN root toor\r\n", capture_output=True, timeout=30)
        assert ended.wait(10)
    text = out.stdout.decode(errors="replace")
    assert f"CN = {HOST}" in text and "TLSv1.3" in text
    assert records[0]["decrypted"] == b"a1 LOGIN root toor\r\n"
