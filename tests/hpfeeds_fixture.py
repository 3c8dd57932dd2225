"""A real hpfeeds broker (the `hpfeeds` package's) in a process of its own, for the tests.

Run as a script, this module serves the broker on a listening socket it inherits (fd number in
argv: the test binds 127.0.0.1 port 0, so no port is guessed) with a JSON auth file, prints
"ready" once the broker accepts (its `when_started`), and prints one line per message the broker
receives: `<channel> <sha256 of payload> <attack id or ->`. That is what "arrived" means in
the tests, and it needs no subscriber racing the publisher.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

AUTH = {
    "sensor": {"owner": "t", "secret": "s3cret",
               "pubchans": ["honeytrap.events", "mwbinary.honeytrap.sensorunique"],
               "subchans": ["honeytrap.events", "mwbinary.honeytrap.sensorunique"]},
    "pubonly": {"owner": "t", "secret": "s3cret",
                "pubchans": ["honeytrap.events", "mwbinary.honeytrap.sensorunique"],
                "subchans": []},
}
READY_TIMEOUT = 60.0


@dataclass
class Broker:
    """The broker process; `received` accumulates over restarts."""

    auth_file: str
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    received: list[tuple[str, str, str]] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    reader: threading.Thread | None = None

    def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        self.port = sock.getsockname()[1]
        self.proc = subprocess.Popen(
            [sys.executable, __file__, str(sock.fileno()), self.auth_file],
            stdout=subprocess.PIPE, pass_fds=[sock.fileno()],
        )
        sock.close()  # the broker holds it now: stopping the broker frees the port
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # the explicit ready signal (or EOF if it died)
        if line.strip() != b"ready":
            self.stop()
            raise RuntimeError(f"hpfeeds broker did not start: {line!r}")
        self.reader = threading.Thread(target=self._read, args=(self.proc,), daemon=True)
        self.reader.start()

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            channel, digest, attack_id = raw.decode().split()
            with self.cond:
                self.received.append((channel, digest, attack_id))
                self.cond.notify_all()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        if self.reader is not None:
            self.reader.join(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()

    def wait_for(self, count: int, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.received) >= count, timeout)

    def wait_for_ids(
        self, ids: set[str], timeout: float, channel: str = "honeytrap.events"
    ) -> bool:
        """Every one of `ids` arrived on `channel` (a count is not enough where a record may
        arrive twice: the duplicate would stand in for one still in flight)."""
        with self.cond:
            return self.cond.wait_for(
                lambda: ids <= {i for c, _, i in self.received if c == channel}, timeout
            )

    def ids(self, channel: str = "honeytrap.events") -> Counter[str]:
        """Attack ids received on `channel`, with how often each came."""
        with self.cond:
            return Counter(i for c, _, i in self.received if c == channel)


def _serve(fd: int, auth_file: str) -> None:
    from hpfeeds.broker.auth.json import Authenticator
    from hpfeeds.broker.server import Server

    class RecordingServer(Server):  # type: ignore[misc]
        def publish(self, source: Any, chan: str, data: bytes) -> None:
            try:
                attack_id = json.loads(data)["id"]
            except (ValueError, KeyError, TypeError):
                attack_id = "-"
            digest = hashlib.sha256(data).hexdigest()
            sys.stdout.write(f"{chan} {digest} {attack_id}\n")
            sys.stdout.flush()
            super().publish(source, chan, data)

    async def main() -> None:
        # The broker always starts a Prometheus exporter; unset, it binds every address on port
        # 8080 of the host, which collides with anything else there (another broker of a
        # parallel run, a test's server): an ephemeral loopback port instead.
        server = RecordingServer(auth=Authenticator(auth_file), exporter="127.0.0.1:0")
        server.add_endpoint_test(socket.socket(fileno=fd))
        task = asyncio.ensure_future(server.serve_forever())
        # serve_forever logs a start-up failure and returns without setting when_started: wait
        # for either, so a broker that cannot start exits (the test sees EOF, not a hang).
        await asyncio.wait({task, server.when_started}, return_when=asyncio.FIRST_COMPLETED)
        if not server.when_started.done():
            sys.exit(1)
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        await task

    asyncio.run(main())


def write_auth(path: str) -> None:
    with open(path, "w") as fp:
        json.dump(AUTH, fp)
    os.chmod(path, 0o600)


if __name__ == "__main__":
    _serve(int(sys.argv[1]), sys.argv[2])
