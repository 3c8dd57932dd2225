"""The download policy: quotas, deadlines, records of every try (no network needed)."""

from __future__ import annotations

import ipaddress

import pytest

from honeytrap.attack import Attack, Connection, Payload
from honeytrap.config import Config, PluginSpec
from honeytrap.download import Deadline, DownloadPolicy, DownloadRequest, FetchContext, Fetched
from honeytrap.download.addresses import parse_networks
from honeytrap.errors import DownloadError, PluginError
from honeytrap.plugin import PluginContext, load_plugins

ALLOW = parse_networks(["198.18.0.0/15"])


def _attack(payload: bytes = b"") -> Attack:
    return Attack(Connection("tcp", "198.18.0.1", 445, "198.18.0.2", 4000, Payload(payload)))


def _request(n: int = 0, host: str = "198.18.0.9") -> DownloadRequest:
    return DownloadRequest("http", host, 80, f"/{n}", f"http://{host}:80/{n}")


def _ok(request: DownloadRequest, ctx: FetchContext) -> Fetched:
    return Fetched(b"MZ" + request.path.encode(), str(ctx.addresses[0]), request.port)


def test_success_is_a_download_and_an_ok_try() -> None:
    attack = _attack()
    DownloadPolicy(allow=ALLOW).run(attack, _request(), _ok)
    assert [d.payload.data for d in attack.downloads] == [b"MZ/0"]
    assert [t.outcome for t in attack.download_tries] == ["ok"]


def test_refusal_is_recorded_with_its_reason_and_nothing_is_fetched() -> None:
    attack = _attack()
    called: list[DownloadRequest] = []
    DownloadPolicy().run(attack, _request(host="10.0.0.1"), lambda r, c: called.append(r))  # type: ignore[arg-type,func-returns-value]
    assert called == []
    assert attack.download_tries[0].outcome == "refused"
    assert attack.download_tries[0].reason == "10.0.0.1 is private"


def test_failure_is_recorded() -> None:
    def fail(request: DownloadRequest, ctx: FetchContext) -> Fetched:
        raise DownloadError("HTTP 404 Not Found")

    attack = _attack()
    DownloadPolicy(allow=ALLOW).run(attack, _request(), fail)
    assert (attack.download_tries[0].outcome, attack.download_tries[0].reason) == (
        "failed", "HTTP 404 Not Found")


def test_downloads_per_attack_are_capped_across_virtual_attacks() -> None:
    root = _attack()
    policy = DownloadPolicy(allow=ALLOW, max_per_attack=2)
    for n in range(3):
        policy.run(root.derive(b"", "decoded"), _request(n), _ok)
    assert [t.outcome for t in root.download_tries] == ["ok", "ok", "refused"]


def test_the_same_download_in_a_decoded_copy_is_not_fetched_again() -> None:
    root = _attack()
    policy = DownloadPolicy(allow=ALLOW)
    policy.run(root, _request(), _ok)
    policy.run(root.derive(b"", "decoded"), _request(), _ok)
    assert len(root.downloads) == 1 and len(root.download_tries) == 1


def test_replace_private_ips_uses_the_attackers_address() -> None:
    policy = DownloadPolicy(allow=ALLOW, replace_private_ips=True)
    assert policy.check("192.168.0.10", _attack()) == [ipaddress.ip_address("198.18.0.2")]


def test_the_attacked_address_is_the_sensors_own() -> None:
    with pytest.raises(DownloadError, match="sensor address"):
        DownloadPolicy(allow=ALLOW).check("198.18.0.1", _attack())


def test_a_name_resolving_to_loopback_is_refused() -> None:
    with pytest.raises(DownloadError, match="loopback"):
        DownloadPolicy().check("localhost", _attack())


def test_deadline_runs_out_on_a_fake_clock() -> None:
    now = [100.0]
    deadline = Deadline(5.0, clock=lambda: now[0])
    assert deadline.timeout(2.0) == 2.0
    now[0] = 104.0
    assert deadline.timeout(2.0) == 1.0
    now[0] = 105.0
    with pytest.raises(DownloadError, match="time cap"):
        deadline.remaining()


def _ctx(options: dict[str, str], **config: object) -> PluginContext:
    import logging

    return PluginContext("httpDownload", options, Config(**config),  # type: ignore[arg-type]
                         logging.getLogger("t"))


def test_plugin_options_override_the_defaults() -> None:
    policy = DownloadPolicy.from_plugin(
        _ctx({"max_size": "1000", "timeout": "5"}, download_allow=["198.18.0.0/15"]))
    assert (policy.max_size, policy.timeout, policy.allow) == (1000, 5.0, ALLOW)


def test_bad_timeout_option_is_a_plugin_error() -> None:
    with pytest.raises(PluginError, match="timeout"):
        DownloadPolicy.from_plugin(_ctx({"timeout": "soon"}))


def test_http_program_option_is_accepted_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    import os

    plugin_dir = os.path.join(os.path.dirname(os.path.dirname(__file__)), "plugins")
    spec = PluginSpec("httpDownload", {"http_program": "/usr/bin/wget", "http_options": "-q"})
    registry = load_plugins(Config(plugin_dir=plugin_dir, plugins=[spec]))
    assert len(registry.hooks["analyze"]) == 1
    assert "http_program is ignored" in caplog.text


def test_cancel_shuts_a_download_socket_blocked_in_recv() -> None:
    """An abandoned download holds no connection: cancel() from another thread wakes the
    recv, which fails (the end of file the shutdown makes is not the server's: it must not
    pass for a complete file), and so does every later call."""
    import socket
    import threading

    deadline = Deadline(60.0)
    ours, theirs = socket.socketpair()
    sock = deadline.adopt(ours)
    got: list[BaseException] = []

    def read() -> None:
        try:
            sock.recv(10)
        except DownloadError as exc:
            got.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    deadline.cancel()
    reader.join(10)
    try:
        assert not reader.is_alive() and [str(e) for e in got] == ["cancelled by the download pool"]
        with pytest.raises(DownloadError, match="cancelled"):
            sock.recv(10)
    finally:
        sock.close()
        theirs.close()


def test_a_deadline_socket_timeout_at_the_deadline_is_the_time_cap() -> None:
    import socket

    deadline = Deadline(0.2)
    ours, theirs = socket.socketpair()
    sock = deadline.adopt(ours)
    try:
        with pytest.raises(DownloadError, match="time cap of 0.2 s reached"):
            sock.recv(10)
    finally:
        sock.close()
        theirs.close()
