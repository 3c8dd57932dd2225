"""Real clients against the real daemon (nfq) for the SSH, PostgreSQL and SMB dialogues, on
ports without a template (the protocol detected from the client's first bytes): OpenSSH's
client reaches key exchange, psql and smbclient send their credentials, and the records keep
them."""

from __future__ import annotations

import subprocess

from daemon import Honeytrap, fields_by_port
from netns import Lab


def test_openssh_reaches_key_exchange(lab: Lab, dialogue_sensor: Honeytrap) -> None:
    """ssh -vvv gets our KEXINIT and waits for the key exchange reply (killed then); its
    version, KEXINIT and HASSH are in the record."""
    dialogue_sensor.start()
    proc = subprocess.Popen(
        lab.attacker.argv("ssh", "-vvv", "-F", "/dev/null", "-o", "BatchMode=yes",
                          "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                          "-p", "2022", f"root@{lab.sensor.ip4}", "true"),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    seen = []
    try:
        for raw in iter(proc.stderr.readline, b""):  # ends when ssh exits (it does not wait)
            seen.append(raw.decode(errors="replace"))
            if "expecting SSH2_MSG_KEX" in seen[-1]:
                break
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    text = "".join(seen)
    assert "SSH2_MSG_KEXINIT received" in text and "expecting SSH2_MSG_KEX_ECDH_REPLY" in text
    ssh = fields_by_port(dialogue_sensor.wait_records(1))[2022]["ssh"]
    assert isinstance(ssh, dict)
    assert str(ssh["client_version"]).startswith("SSH-2.0-OpenSSH_9.2p1")
    assert len(str(ssh["hassh"])) == 32


def test_psql_sends_credentials(lab: Lab, dialogue_sensor: Honeytrap) -> None:
    dialogue_sensor.start()
    ip = lab.sensor.ip4
    psql = subprocess.run(["env", "PGPASSWORD=postgres", "PGCONNECT_TIMEOUT=10",
                           *lab.attacker.argv("psql", "-h", ip, "-p", "5433", "-U", "postgres",
                                              "-d", "app",
                                              "-c", "select 1")],
                          capture_output=True, text=True, timeout=60)
    assert 'password authentication failed for user "postgres"' in psql.stderr
    pg = fields_by_port(dialogue_sensor.wait_records(1))[5433]["postgres"]
    assert isinstance(pg, dict) and (pg["user"], pg["database"]) == ("postgres", "app")


def test_smbclient_sends_credentials(lab: Lab, dialogue_sensor: Honeytrap) -> None:
    dialogue_sensor.start()
    out = subprocess.run(lab.attacker.argv("smbclient", "-L", f"//{lab.sensor.ip4}", "-p",
                                           "4450", "-U", "admin%Passw0rd"),
                         capture_output=True, text=True, timeout=60)
    assert "NT_STATUS_LOGON_FAILURE" in out.stdout + out.stderr
    smb = fields_by_port(dialogue_sensor.wait_records(1))[4450]["smb"]
    assert isinstance(smb, dict) and smb["user"] == "admin"
