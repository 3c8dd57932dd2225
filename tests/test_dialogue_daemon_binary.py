"""Real clients against the real daemon (nfq) for the TLS and UDP dialogues: curl and
openssl s_client complete TLS on 443 and on ports without a template, with the decrypted
request and JA4 recorded and the certificate made at start under state_dir; dig and snmpget
get answers that echo their ids."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from daemon import Honeytrap, fields_by_port
from netns import Lab

from honeytrap.dialogue import certificate


def as_bytes(value: object) -> bytes:
    """A record's bytes field (the outputs store bytes as hex)."""
    return bytes.fromhex(value) if isinstance(value, str) else bytes(value)  # type: ignore


def test_tls_on_443_and_on_a_port_without_template(lab: Lab, dialogue_sensor: Honeytrap,
                                                   tmp_path: Path) -> None:
    dialogue_sensor.start()
    key, _cert = certificate.paths(str(tmp_path / "state"))
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600  # made at start, as root
    ip = lab.sensor.ip4
    for port in (443, 7443):
        out = lab.attacker.cmd("curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}",
                               "--resolve", f"shop.example.test:{port}:{ip}",
                               f"https://shop.example.test:{port}/wp-login.php")
        assert out == "404"
    s_client = lab.attacker.cmd("openssl", "s_client", "-connect", f"{ip}:8443",
                                "-servername", "api.example.test", "-ign_eof",
                                input=b"GET /v1 HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n")
    assert "TLSv1.3" in s_client and "HTTP/1.1 404" in s_client
    records = fields_by_port(dialogue_sensor.wait_records(3))
    for port, sni, path in ((443, "shop.example.test", b"/wp-login.php"),
                            (7443, "shop.example.test", b"/wp-login.php"),
                            (8443, "api.example.test", b"/v1")):
        rec = records[port]
        tls = rec["tls"]
        assert isinstance(tls, dict)
        assert tls["sni"] == sni and str(tls["ja4"]).startswith("t13d")
        assert as_bytes(rec["decrypted"]).startswith(b"GET " + path)


def test_udp_replies_echo_ids(lab: Lab, dialogue_sensor: Honeytrap) -> None:
    dialogue_sensor.start()
    ip = lab.sensor.ip4
    dig = lab.attacker.cmd("dig", f"@{ip}", "+tries=1", "+time=5", "example.test", "A",
                           check=False)
    assert "status: REFUSED" in dig
    snmp = lab.attacker.cmd("snmpget", "-On", "-v2c", "-c", "public", "-r", "0", "-t", "5",
                            ip, "1.3.6.1.2.1.1.5.0", check=False)
    assert '.1.3.6.1.2.1.1.5.0 = STRING: "' in snmp
