"""Real clients against the real daemon (nfq) on the well-known ports of the binary
dialogues, where a raw template lies beside the code dialogue (the code dialogue answers):
mysql sends its credentials on 3306, nmap's own VNC and RDP scripts get through the handshake
on 5900 and 3389."""

from __future__ import annotations

import subprocess

from daemon import Honeytrap, fields_by_port
from netns import Lab


def test_mysql_client_sends_credentials_on_3306(lab: Lab, dialogue_sensor: Honeytrap) -> None:
    """mysql sends its credentials; Access denied names the client's address."""
    dialogue_sensor.start()
    for server, client in ((lab.sensor.ip4, lab.attacker.ip4), (lab.sensor.ip6, lab.attacker.ip6)):
        out = subprocess.run(lab.attacker.argv(
            "mysql", "--no-defaults", "-h", server, "-u", "root", "-ptoor",
            "--connect-timeout=10", "mysql", "-e", "select 1"),
            capture_output=True, text=True, timeout=60)
        # Named by the client's address, as a real server names it (not 'localhost').
        denied = f"Access denied for user 'root'@'{client}' (using password: YES)"
        assert f"ERROR 1045 (28000): {denied}" in out.stderr, out.stderr
    for record in dialogue_sensor.wait_records(2):
        rec = fields_by_port([record])[3306]["mysql"]
        assert isinstance(rec, dict) and (rec["user"], rec["database"]) == ("root", "mysql")


def test_nmap_vnc_and_rdp_scripts(lab: Lab, dialogue_sensor: Honeytrap) -> None:
    dialogue_sensor.start()
    out = lab.attacker.cmd("nmap", "-Pn", "-n", "-sT", "-p", "3389,5900", "--script",
                           "vnc-info,rdp-enum-encryption", lab.sensor.ip4)
    assert "VNC Authentication (2)" in out and "Protocol version: 3." in out
    assert "SSL: SUCCESS" in out
    records = dialogue_sensor.wait_records(2)
    rdp = [r["dialogue"]["fields"]["rdp"] for r in records  # type: ignore[index]
           if r["attack_connection"]["local_port"] == 3389]  # type: ignore[index]
    assert any(r["cookie"] == "mstshash=nmap" for r in rdp)


def test_sipsak_over_tcp_on_5060_and_on_a_detected_port(
    lab: Lab, dialogue_sensor: Honeytrap
) -> None:
    """SIP over TCP gets the stream dialogue (not the UDP one): sipsak's REGISTER, our 401, its
    REGISTER with the Digest response and our 401 again, on one connection, on 5060 and on a
    port without a template (detected); its OPTIONS gets 200 OK."""
    dialogue_sensor.start()
    for port in (5060, 5070):
        out = subprocess.run(lab.attacker.argv(
            "sipsak", "-vv", "-i", "-E", "tcp", "-U", "-a", "s3cret",
            "-s", f"sip:1001@{lab.sensor.ip4}:{port}"), capture_output=True, text=True, timeout=60)
        said = out.stdout + out.stderr
        assert "SIP/2.0 401 Unauthorized" in said and 'response="' in said, said
    options = lab.attacker.cmd("sipsak", "-vv", "-E", "tcp", "-s", f"sip:100@{lab.sensor.ip4}",
                               check=False)
    assert "SIP/2.0 200 OK" in options and "Server: " in options, options
    records = dialogue_sensor.wait_records(3)
    sip = [r["dialogue"] for r in records]  # type: ignore[index]
    assert sorted(d["fields"]["sip"]["answered"] for d in sip) == [1, 2, 2]  # type: ignore[index]
    for record in records:
        if record["attack_connection"]["local_port"] == 5070:  # type: ignore[index]
            assert record["dialogue"]["fields"]["detected"] == "sip"  # type: ignore[index]
    # The topmost Via names where the request came from (RFC 3261 18.2.1, RFC 3581: sipsak
    # asks for rport): its TCP connection's source port and address.
    [opts] = [r for r in records if r["dialogue"]["fields"]["sip"]["answered"] == 1]  # type: ignore[index]
    source_port = opts["attack_connection"]["remote_port"]  # type: ignore[index]
    assert f";rport={source_port};" in reply_via(options), options
    assert reply_via(options).endswith(f";received={lab.attacker.ip4}"), options
    # Over UDP as over TCP: the datagram's source port (not the one sipsak's Via names).
    udp = lab.attacker.cmd("sipsak", "-vv", "-s", f"sip:100@{lab.sensor.ip4}", check=False)
    [datagrams] = [r for r in dialogue_sensor.wait_records(4)
                   if r["attack_connection"]["protocol"] == "udp"]  # type: ignore[index]
    source_port = datagrams["attack_connection"]["remote_port"]  # type: ignore[index]
    assert f";rport={source_port};" in reply_via(udp), udp
    assert reply_via(udp).endswith(f";received={lab.attacker.ip4}"), udp


def reply_via(said: str) -> str:
    """The first Via of the response sipsak -vv printed (after its request's)."""
    response = said[said.index("SIP/2.0 200 OK"):]
    return next(line for line in response.splitlines() if line.startswith("Via: "))
