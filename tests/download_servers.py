"""Test helpers for the downloaders: real servers in the attacker namespace, and a driver that
runs downloader plugins in the sensor namespace.

Run as a script inside a namespace (`ip netns exec ... python download_servers.py <what>`):

    ftp  <root> <ip> <user> <password> [passive-only]   pyftpdlib, port chosen by the kernel
    tftp <root> <ip>                       tftpd-hpa (in.tftpd, inetd style on a bound socket)
    http <root> <ip> <mode> <log>          http.server; mode: plain | tls | slow | redirect:<url>
    attack                                 reads a JSON job on stdin, prints the attack's JSON
                                           and the plugins' statistics (Registry.stats)
    hostile <kind> <ip>                    a hostile server of hostile_servers.py (dripping,
                                           endless); many clients at once

Each server prints `ready <port>` once its socket is bound: the explicit ready signal.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# The interpreter running the tests (the project venv), for the servers and the driver too.
PYTHON = sys.executable
PLUGIN_DIR = os.path.join(ROOT, "plugins")
READY_TIMEOUT = 30.0  # a server that is not bound after this long has failed
ATTACK_TIMEOUT = 120.0  # one driver run: the plugins' own caps are far below this
TFTPD = "/usr/sbin/in.tftpd"  # Debian package tftpd-hpa
SLOW_INTERVAL = 0.5  # seconds between bytes of the slow HTTP server


# -- helpers used by the tests (outside the namespaces) ------------------------------------


def start(lab: Any, host: Any, *args: str) -> int:
    """Start a server in `host`'s namespace; its port once it says it is ready."""
    proc = lab.spawn(host, [PYTHON, __file__, *args], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], READY_TIMEOUT)
    line = proc.stdout.readline().decode() if ready else ""
    if not line.startswith("ready "):
        raise RuntimeError(f"server {args[0]} did not start: {line!r}")
    return int(line.split()[1])


def run_attack(
    lab: Any, payload: bytes, plugins: dict[str, dict[str, str]], **options: Any
) -> dict[str, Any]:
    """Run the named downloader plugins on an attack with this payload, in the sensor
    namespace, and return the attack's JSON (options: run_attack_with_stats's)."""
    return run_attack_with_stats(lab, payload, plugins, **options)[0]


def run_attack_with_stats(
    lab: Any,
    payload: bytes,
    plugins: dict[str, dict[str, str]],
    *,
    allow: list[str] | None = None,
    replace_private_ips: bool = False,
    remote: str | None = None,
) -> tuple[dict[str, Any], dict[str, int]]:
    """run_attack, and the plugins' statistics after it (Registry.stats)."""
    job = {
        "plugins": plugins,
        "allow": ["198.18.0.0/15", "2001:db8::/32"] if allow is None else allow,
        "replace_private_ips": replace_private_ips,
        "payload_hex": payload.hex(),
        "local": [lab.sensor.ip4, 445],
        "remote": [remote or lab.attacker.ip4, 40000],
    }
    out = lab.sensor.cmd(PYTHON, __file__, "attack", input=json.dumps(job).encode())
    result: dict[str, Any] = json.loads(out)
    return result["attack"], result["stats"]


# -- what runs inside the namespaces --------------------------------------------------------


def _ready(port: int) -> None:
    sys.stdout.write(f"ready {port}\n")
    sys.stdout.flush()


def _ftp(root: str, ip: str, user: str, password: str, mode: str = "any") -> None:
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler
    from pyftpdlib.servers import FTPServer

    authorizer = DummyAuthorizer()
    authorizer.add_user(user, password, root, perm="elr")
    handler = type("Handler", (FTPHandler,), {"authorizer": authorizer})
    if mode == "passive-only":
        # A server behind NAT: active mode refused, so the client must fall back to passive.
        def refuse(self: FTPHandler, line: str) -> None:
            self.respond("502 Active mode not allowed.")

        handler.ftp_PORT = handler.ftp_EPRT = refuse
    server = FTPServer((ip, 0), handler)
    _ready(server.address[1])
    server.serve_forever(timeout=1.0)


def _tftp(root: str, ip: str) -> None:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((ip, 69))
    os.dup2(sock.fileno(), 0)
    _ready(69)
    # inetd "wait" mode: in.tftpd serves requests on fd 0 and exits after -t idle seconds.
    os.execv(TFTPD, [TFTPD, "-t", "60", "-u", "root", "-s", root])  # noqa: S606 - fixed argv


def _http(root: str, ip: str, mode: str, log: str) -> None:
    import functools
    import http.server

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            with open(log, "a") as handle:
                handle.write(self.path + "\n")
            if mode.startswith("redirect:"):
                self.send_response(302)
                self.send_header("Location", mode.split(":", 1)[1])
                self.end_headers()
            elif mode == "slow":
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                for _ in range(1000):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(SLOW_INTERVAL)
            else:
                super().do_GET()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server_class = http.server.ThreadingHTTPServer
    if ":" in ip:
        server_class = type("V6", (server_class,), {"address_family": socket.AF_INET6})
    server = server_class((ip, 0), functools.partial(Handler, directory=root))
    if mode == "tls":
        # A self-signed certificate, as malware hosts use: the client must not verify it.
        import ssl

        cert = os.path.join(root, "..", "cert.pem")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=evil",
             "-days", "1", "-keyout", cert, "-out", cert],
            check=True, capture_output=True, timeout=60,
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    _ready(server.server_address[1])
    server.serve_forever()


def _attack() -> None:
    sys.path.insert(0, ROOT)
    from honeytrap.attack import Attack, Connection, Payload
    from honeytrap.background import Task
    from honeytrap.config import Config, PluginSpec
    from honeytrap.plugin import load_plugins

    job = json.load(sys.stdin)
    config = Config(
        plugin_dir=PLUGIN_DIR,
        plugins=[PluginSpec(name, dict(options)) for name, options in job["plugins"].items()],
        download_allow=job["allow"],
        replace_private_ips=job["replace_private_ips"],
    )
    registry = load_plugins(config)
    (local, lport), (remote, rport) = job["local"], job["remote"]
    payload = Payload(bytes.fromhex(job["payload_hex"]))
    conn = Connection("tcp", local, lport, remote, rport, payload)
    attack = Attack(conn)
    for _, hook in registry.hooks["analyze"]:
        for task in hook(attack) or ():
            if isinstance(task, Task):
                task.run()  # what the download pool does once the attack is recorded
    stats = registry.stats()
    registry.close()
    json.dump({"attack": attack.to_json(inline_samples=True), "stats": stats}, sys.stdout)


if __name__ == "__main__":
    command, arguments = sys.argv[1], sys.argv[2:]
    if command == "ftp":
        _ftp(*arguments)
    elif command == "tftp":
        _tftp(*arguments)
    elif command == "http":
        _http(*arguments)
    elif command == "attack":
        _attack()
    elif command == "hostile":
        import asyncio

        import hostile_servers

        asyncio.run(hostile_servers.serve(*arguments))
    else:
        raise SystemExit(f"unknown command {command!r}")
