"""The analyzer plugins magicPE, SpamSum and ClamAV (a real clamd with our own signatures),
loaded by the real loader and run through the pipeline."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import signal
import socket
import struct
import subprocess
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pipeline_run import attack_of, process

from honeytrap.attack import Attack, Download, Payload
from honeytrap.background import Task
from honeytrap.config import Config, PluginSpec
from honeytrap.pipeline import DEFAULT_WORKERS, Pipeline
from honeytrap.plugin import LoadedPlugin, Registry, load_module, load_plugin, load_plugins

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN_DIR = os.path.join(ROOT, "plugins")
# Bound on every wait: far above what any step needs, so only a bug reaches it.
WAIT = 30.0
CLAMD = "/usr/sbin/clamd"
# Our own signatures: a body pattern (.ndb) and a whole-file MD5 (.hdb), nothing from the net.
MARKER = b"HONEYTRAP-CLAMAV-TEST-SIGNATURE"
SAMPLE = random.Random(4).randbytes(4096)


def pe_image(body: bytes = b"") -> bytes:
    """A minimal PE32 i386 header: DOS header, e_lfanew = 0x40, "PE\\0\\0", COFF, magic 0x10b."""
    dos = b"MZ" + b"\0" * 0x3A + struct.pack("<I", 0x40)
    coff = struct.pack("<HHIIIHH", 0x14C, 1, 0, 0, 0, 0xE0, 0x102)
    return dos + b"PE\0\0" + coff + struct.pack("<H", 0x10B) + b"\0" * 222 + body


class Fetch:
    """A stand-in downloader configured before the analyzers: attaches one sample."""

    def __init__(self, sample: bytes) -> None:
        self.sample = sample

    def analyze(self, attack: Attack) -> None:
        if not attack.is_virtual:
            attack.add_download(
                Download("http", "198.18.0.1", 80, "x.exe", "http://198.18.0.1/x.exe",
                         Payload(self.sample))
            )


class BackgroundFetch(Fetch):
    """A stand-in downloader as the real ones are: the sample arrives from the download pool,
    after the attack was recorded (the analyzers see it in FOLLOWUP)."""

    def analyze(self, attack: Attack) -> list[Task]:  # type: ignore[override]
        return [Task("fetch", lambda: Fetch.analyze(self, attack))]


def run(
    plugins: list[PluginSpec], payload: bytes, sample: bytes | None = None,
    background: bool = False, **config: object
) -> Attack:
    cfg = Config(plugin_dir=PLUGIN_DIR, plugins=plugins, **config)  # type: ignore[arg-type]
    registry = Registry()
    if sample is not None:
        fetch = BackgroundFetch(sample) if background else Fetch(sample)
        registry.register(LoadedPlugin("Fetch", types.ModuleType("fetch"), fetch))
    for plugin_spec in plugins:
        registry.register(load_plugin(plugin_spec, cfg))
    return process(registry, attack_of(payload))


def spec(name: str, **options: str) -> PluginSpec:
    return PluginSpec(name, dict(options))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# magicPE


def test_pe_payload_is_kept_as_raw_download() -> None:
    image = pe_image(b"\xcc" * 100)
    attack = run([spec("magicPE")], image)
    (download,) = attack.downloads
    assert (download.type, download.payload.data) == ("raw", image)
    assert (download.remote_addr, download.remote_port) == ("198.18.0.1", 40000)
    assert attack.analysis["magicPE"][download.payload.md5]["type"] == "PE32 (i386)"


def test_elf_inside_base64_lands_on_the_root() -> None:
    elf = Path("/bin/true").read_bytes()
    attack = run([spec("b64Decode"), spec("magicPE")], b"Negotiate " + base64.b64encode(elf))
    assert [d.payload.data for d in attack.downloads] == [elf]
    assert attack.to_json()["download_count"] == 1


def test_text_is_not_a_sample() -> None:
    attack = run([spec("magicPE")], b"MZ but just text " * 20)
    assert attack.downloads == [] and "magicPE" not in attack.analysis


# ---------------------------------------------------------------------------------------------
# SpamSum


def test_spamsum_records_the_payload_hash_without_options() -> None:
    attack = run([spec("SpamSum")], b"GET /a HTTP/1.0\r\n" * 50)
    (result,) = attack.analysis["SpamSum"].values()
    assert result["source"] == "payload" and result["ssdeep"].count(":") == 2


@pytest.mark.parametrize("background", [False, True], ids=["analyze", "followup"])
def test_spamsum_hashes_samples(background: bool) -> None:
    attack = run([spec("SpamSum")], b"x", sample=SAMPLE, background=background)
    assert attack.analysis["SpamSum"][hashlib.md5(SAMPLE).hexdigest()]["source"] == "download"


def test_spamsum_learns_md5_sums(tmp_path: Path) -> None:
    options = {"md5sum_sigfile": str(tmp_path / "md5"), "spamsum_sigfile": str(tmp_path / "ss")}
    payload = random.Random(1).randbytes(8192)
    first = run([spec("SpamSum", **options)], payload)
    second = run([spec("SpamSum", **options)], payload)
    md5 = hashlib.md5(payload).hexdigest()
    assert first.analysis["SpamSum"][md5]["md5_known"] is False
    assert second.analysis["SpamSum"][md5]["md5_known"] is True
    assert (tmp_path / "md5").read_text().splitlines() == [md5]


def test_spamsum_finds_similar_attacks(tmp_path: Path) -> None:
    options = {"md5sum_sigfile": str(tmp_path / "md5"), "spamsum_sigfile": str(tmp_path / "ss")}
    text = random.Random(2).randbytes(20000).hex().encode()
    run([spec("SpamSum", **options)], text)
    variant = text[:10000] + b"CHANGED" + text[10007:]
    result = run([spec("SpamSum", **options)], variant).analysis["SpamSum"]
    (entry,) = result.values()
    assert entry["similar"] and entry["best_score"] >= 90
    assert len((tmp_path / "ss").read_text().splitlines()) == 2


def test_spamsum_survives_a_garbled_signature_file(tmp_path: Path) -> None:
    sigs = tmp_path / "ss"
    sigs.write_bytes(b"3:abc\n3:a:b:c\n\xff\xfe:zz\n" + b"9" * 5000 + b"\n12:x")
    attack = run([spec("SpamSum", spamsum_sigfile=str(sigs))], b"GET /x HTTP/1.0\r\n" * 30)
    (entry,) = attack.analysis["SpamSum"].values()
    assert entry["best_score"] == 0 and not entry["similar"]


# ---------------------------------------------------------------------------------------------
# ClamAV, against a real clamd


def _wait_gone(pid: int) -> None:
    """Bounded wait for a process that is not our child to exit (or linger as a zombie)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return
        if state == "Z":
            return
        time.sleep(0.05)
    raise AssertionError(f"clamd {pid} did not exit")


@pytest.fixture(scope="module")
def clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """clamd with only our signatures, on a unix socket in a temp dir. Ready when the command
    returns: clamd binds its socket before it daemonizes, and the parent exits then."""
    if not os.path.exists(CLAMD):
        pytest.fail("clamd is missing: apt-get install -y clamav-daemon")
    tmp = tmp_path_factory.mktemp("clamd")
    (tmp / "db").mkdir()
    (tmp / "db" / "test.ndb").write_text(f"Honeytrap.Test.Marker:0:*:{MARKER.hex()}\n")
    md5 = hashlib.md5(SAMPLE).hexdigest()
    (tmp / "db" / "test.hdb").write_text(f"{md5}:{len(SAMPLE)}:Honeytrap.Test.Sample\n")
    sock = tmp / "clamd.sock"
    conf = tmp / "clamd.conf"
    conf.write_text(
        f"LocalSocket {sock}\nDatabaseDirectory {tmp / 'db'}\nPidFile {tmp / 'clamd.pid'}\n"
        f"TemporaryDirectory {tmp}\nLogFile {tmp / 'clamd.log'}\nForeground no\n"
    )
    subprocess.run([CLAMD, "-c", str(conf)], check=True, timeout=WAIT, capture_output=True)
    pid = int((tmp / "clamd.pid").read_text())
    try:
        yield str(sock)
    finally:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        _wait_gone(pid)


def test_clamav_flags_an_infected_payload(clamd: str) -> None:
    attack = run([spec("ClamAV", clamd_socket=clamd)], b"xx " + MARKER + b" yy")
    (result,) = attack.analysis["ClamAV"].values()
    assert result["status"] == "infected"
    assert result["signature"].startswith("Honeytrap.Test.Marker")


@pytest.mark.parametrize("background", [False, True], ids=["analyze", "followup"])
def test_clamav_scans_samples_after_the_downloader(clamd: str, background: bool) -> None:
    attack = run([spec("ClamAV", clamd_socket=clamd)], b"GET / HTTP/1.0\r\n", sample=SAMPLE,
                 background=background)
    results = attack.analysis["ClamAV"]
    assert results[hashlib.md5(SAMPLE).hexdigest()]["signature"].startswith("Honeytrap.Test.Sample")
    assert results[hashlib.md5(b"GET / HTTP/1.0\r\n").hexdigest()]["status"] == "clean"


def test_clamav_scans_decoded_payloads(clamd: str) -> None:
    payload = b"Negotiate " + base64.b64encode(MARKER)
    attack = run([spec("b64Decode"), spec("ClamAV", clamd_socket=clamd)], payload)
    statuses = {r["source"]: r["status"] for r in attack.analysis["ClamAV"].values()}
    assert statuses == {"payload": "clean", "virtual payload": "infected"}


def test_clamav_scans_a_large_payload_in_chunks(clamd: str) -> None:
    payload = b"\0" * 300_000 + MARKER
    attack = run([spec("ClamAV", clamd_socket=clamd)], payload)
    assert [r["status"] for r in attack.analysis["ClamAV"].values()] == ["infected"]


def test_clamd_down_is_recorded_not_raised(tmp_path: Path) -> None:
    attack = run([spec("ClamAV", clamd_socket=str(tmp_path / "none.sock"))], b"data")
    (result,) = attack.analysis["ClamAV"].values()
    assert result["status"] == "error"


def test_original_libclamav_options_are_accepted(tmp_path: Path) -> None:
    options = {"clamd_socket": str(tmp_path / "none.sock"), "clamdb_path": "/var/lib/clamav",
               "temp_dir": "/tmp"}
    registry = load_plugins(Config(plugin_dir=PLUGIN_DIR, plugins=[spec("ClamAV", **options)]))
    registry.close()


def test_clamd_addresses() -> None:
    assert CLAMAV.parse_address("/run/clamd.ctl")[1] == "/run/clamd.ctl"
    assert CLAMAV.parse_address("127.0.0.1:3310")[1] == ("127.0.0.1", 3310)
    assert CLAMAV.parse_address("[::1]:3310")[1] == ("::1", 3310)
    with pytest.raises(ValueError):
        CLAMAV.parse_address("clamd")


@given(reply=st.binary(max_size=300))
@settings(max_examples=200, deadline=None)
def test_clamd_reply_parser_never_raises(reply: bytes) -> None:
    assert CLAMAV.parse_reply(reply).status in ("clean", "infected", "error")


CLAMAV = load_module(PLUGIN_DIR, "ClamAV")


class SlowClamd:
    """A stand-in clamd on a unix socket that speaks INSTREAM and answers `stream: OK` only
    once the test lets it (`release`): the peer of the plugin under test, as slow as wanted."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(64)
        self.release = threading.Event()
        self.received = threading.Semaphore(0)  # one per whole INSTREAM request read
        self.threads: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as stream:
            command = b""
            while not command.endswith(b"\0") and len(command) < 16:
                command += stream.read(1)
            if command == b"zPING\0":
                conn.sendall(b"PONG\0")
                return
            assert command == b"zINSTREAM\0"
            while (size := struct.unpack(">I", stream.read(4))[0]) != 0:
                stream.read(size)
            self.received.release()
            self.release.wait(2 * WAIT)  # past the test's own waits: only close() ends it early
            conn.sendall(b"stream: OK\0")

    def close(self) -> None:
        self.release.set()
        self.listener.close()
        for thread in self.threads:
            thread.join(WAIT)


MAX_SCANS = 2


def test_a_slow_clamd_holds_only_max_scans_attacks_the_others_are_recorded_at_once(
    tmp_path: Path,
) -> None:
    """Every scan waits on clamd: without a bound, they would take every pipeline worker and
    hold every later attack's recording until clamd answers (up to its timeout)."""
    clamd = SlowClamd(tmp_path / "clamd.sock")
    log_path = tmp_path / "attacks.json"
    cfg = Config(plugin_dir=PLUGIN_DIR)
    registry = Registry()
    registry.register(load_plugin(spec("ClamAV", clamd_socket=clamd.path, max_scans=str(MAX_SCANS)),
                                  cfg))
    registry.register(load_plugin(spec("logJSON", logfile=str(log_path)), cfg))
    pipeline = Pipeline(registry)  # its default workers, more than max_scans
    count = DEFAULT_WORKERS + 4
    quick_done = threading.Semaphore(0)
    try:
        for n in range(count):
            pipeline.submit(attack_of(b"payload %d" % n), on_done=quick_done.release)
        for _ in range(MAX_SCANS):
            assert clamd.received.acquire(timeout=WAIT)  # these scans now wait on clamd
        for _ in range(count - MAX_SCANS):
            assert quick_done.acquire(timeout=WAIT), "attacks held behind the slow scans"
        lines = [json.loads(line) for line in log_path.read_bytes().splitlines()]
        assert len(lines) == count - MAX_SCANS
        assert all([r["status"] for r in line["analysis"]["ClamAV"].values()] == ["skipped"]
                   for line in lines)
        clamd.release.set()
        assert pipeline.drain(WAIT)
    finally:
        clamd.close()
        pipeline.close(WAIT)
        registry.close()
    lines = [json.loads(line) for line in log_path.read_bytes().splitlines()]
    statuses = [r["status"] for line in lines for r in line["analysis"]["ClamAV"].values()]
    assert sorted(statuses) == ["clean"] * MAX_SCANS + ["skipped"] * (count - MAX_SCANS)
    assert registry.stats()["clamav_skipped"] == count - MAX_SCANS
