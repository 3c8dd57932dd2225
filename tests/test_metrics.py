"""Prometheus exposition (honeytrap/metrics.py): the text format from totals(), the HTTP answer,
and real scrapes over loopback and, end to end, of the daemon in a sensor namespace."""

from __future__ import annotations

import selectors
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import Honeytrap, metrics_text, nfq_rules
from hypothesis import given
from hypothesis import strategies as st
from netns import Lab, inside
from prometheus_client.parser import text_string_to_metric_families

from honeytrap import metrics
from honeytrap.errors import ConfigError

TOTALS = {"attempts": 7, "attacks": 5, "servers_running": 2, "Bad-Name": 1, "final": 1}


def families(text: str) -> dict[str, tuple[str, float]]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name] = (family.type, sample.value)
    return out


def test_counters_and_gauges_from_totals() -> None:
    got = families(metrics.render(lambda: TOTALS).decode())
    assert got["honeytrap_attempts_total"] == ("counter", 7)
    assert got["honeytrap_attacks_total"] == ("counter", 5)
    assert got["honeytrap_servers_running"] == ("gauge", 2)


def test_plugin_statistics_are_a_gauge_and_counters_with_their_help() -> None:
    """What the plugins report through the recorder (Registry.stats): spool_depth goes up and
    down, downloads only up."""
    text = metrics.render(lambda: {"spool_depth": 4, "downloads": 3, "download_failures": 1})
    got = families(text.decode())
    assert got["honeytrap_spool_depth"] == ("gauge", 4)
    assert got["honeytrap_downloads_total"] == ("counter", 3)
    assert got["honeytrap_download_failures_total"] == ("counter", 1)
    assert b"# HELP honeytrap_downloads_total Samples downloaded by the download plugins" in text


def promtool(text: str) -> tuple[int, str]:
    proc = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60,
    )
    return proc.returncode, proc.stdout + proc.stderr


def test_every_documented_statistic_passes_promtool() -> None:
    """All of METRICS at once (the real daemon's scrape below has those it reported)."""
    text = metrics.render(lambda: dict.fromkeys(metrics.METRICS, 1)).decode()
    assert promtool(text) == (0, "")
    assert len(list(text_string_to_metric_families(text))) == len(metrics.METRICS)


def test_renamed_statistics_follow_prometheus_naming() -> None:
    got = families(metrics.render(lambda: {"servers_total": 3, "bytes_in": 10}).decode())
    assert got == {"honeytrap_servers_alive": ("gauge", 3),
                   "honeytrap_attack_payload_bytes_total": ("counter", 10)}


def test_a_plugins_undocumented_statistic_is_a_counter_saying_so() -> None:
    text = metrics.render(lambda: {"lookups_total": 2}).decode()
    assert families(text) == {"honeytrap_lookups_total": ("counter", 2)}
    assert "not documented" in text
    assert promtool(text) == (0, "")


def test_names_not_of_our_shape_are_left_out() -> None:
    text = metrics.render(lambda: TOTALS).decode()
    assert "Bad" not in text


@pytest.mark.parametrize(
    ("request_head", "status"),
    [
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", b"200"),
        (b"GET /metrics?x=1 HTTP/1.0\r\n\r\n", b"200"),
        (b"GET /other HTTP/1.0\r\n\r\n", b"404"),
        (b"POST /metrics HTTP/1.0\r\n\r\n", b"405"),
    ],
)
def test_http_answer_status(request_head: bytes, status: bytes) -> None:
    assert metrics.respond(request_head, lambda: b"x").split(b" ")[1] == status


@given(st.binary(max_size=300))
def test_any_request_gets_an_http_answer(request_head: bytes) -> None:
    answer = metrics.respond(request_head, lambda: b"body")
    assert answer.startswith(b"HTTP/1.0 ")


@pytest.mark.parametrize("text", ["", "9108", "host:", "host:70000", ":9108", "h:x"])
def test_bad_listen_address_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError):
        metrics.parse_listen(text)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("127.0.0.1:9108", ("127.0.0.1", 9108)), ("[::1]:9108", ("::1", 9108))],
)
def test_listen_address_parsed(text: str, parsed: tuple[str, int]) -> None:
    assert metrics.parse_listen(text) == parsed


@pytest.fixture
def exporter() -> Iterator[metrics.Exporter]:
    """An exporter on loopback port 0, served by a selector loop of its own (as the master's)."""
    selector = selectors.DefaultSelector()
    counter = {"n": 0}

    def totals() -> dict[str, int]:
        counter["n"] += 1
        return {"attempts": counter["n"]}

    exp = metrics.Exporter("127.0.0.1:0", totals, selector)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            for key, _ in selector.select(timeout=0.05):
                key.data.callback()
            exp.tick()

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        yield exp
    finally:
        stop.set()
        thread.join(5)
        exp.close()
        selector.close()


def test_scrape_over_loopback_reads_totals_at_scrape_time(exporter: metrics.Exporter) -> None:
    host, port = exporter.address
    for expected in (1, 2):
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:  # noqa: S310
            got = families(response.read().decode())
        assert got["honeytrap_attempts_total"] == ("counter", expected)


def test_stalled_scraper_does_not_block_others(exporter: metrics.Exporter) -> None:
    host, port = exporter.address
    stalled = socket.create_connection((host, port), timeout=5)
    try:
        stalled.sendall(b"GET /met")  # never finishes its request
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:  # noqa: S310
            assert response.status == 200
    finally:
        stalled.close()


def test_exporter_descriptors_are_listed_for_children(exporter: metrics.Exporter) -> None:
    host, port = exporter.address
    held = socket.create_connection((host, port), timeout=5)
    try:
        held.sendall(b"GET")
        for _ in range(100):  # bounded: the loop thread accepts within a few iterations
            if len(exporter.fds()) == 2:
                break
            threading.Event().wait(0.02)
        assert len(exporter.fds()) == 2 and exporter.sock.fileno() in exporter.fds()
    finally:
        held.close()


@pytest.fixture
def daemon_metrics(lab: Lab, tmp_path: Path) -> Iterator[str]:
    """The real daemon in a sensor namespace (its usual plugins, downloads and a decoder
    too, so that their statistics are there), after one attack: its /metrics text."""
    nfq_rules(lab.sensor)
    ht = Honeytrap(lab, tmp_path / "ht", args=["-u", "nobody", "-g", "nogroup"],
                   extra_config='metrics_listen = "127.0.0.1:9108"')
    ht.plugins = f"""
plugin-b64Decode = ""
plugin-httpDownload = ""
plugin-SaveFile = {{ attacks_dir = "{ht.attacks_dir}" downloads_dir = "{ht.downloads_dir}" }}
plugin-logJSON = {{ logfile = "{ht.attackers_json}" }}
"""
    ht.start()
    try:
        with inside(lab.attacker):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(5)
        sock.connect((lab.sensor.ip4, 4444))
        sock.sendall(b"hello")
        sock.shutdown(socket.SHUT_WR)
        sock.recv(100)
        sock.close()
        assert len(ht.wait_records(1)) == 1
        # The server process reports its figures within STATS_DELAY of a change: scrape
        # (bounded) until its attack is counted.
        deadline = time.monotonic() + 20
        while True:
            text = metrics_text(lab, 9108)
            if "honeytrap_attacks_total 1.0" in text or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        yield text
    finally:
        assert ht.stop() == 0


def test_daemon_serves_metrics_with_its_counters(daemon_metrics: str) -> None:
    """The real daemon in a sensor namespace: one attack, then a scrape shows it."""
    got = families(daemon_metrics)
    assert got["honeytrap_attempts_total"][1] >= 1
    assert got["honeytrap_servers_started_total"][1] >= 1
    assert got["honeytrap_attacks_total"][1] == 1
    assert got["honeytrap_attack_payload_bytes_total"][1] == len(b"hello")


def test_daemon_metrics_pass_promtool_with_help_on_every_metric(daemon_metrics: str) -> None:
    """promtool (Debian's prometheus package) checks the real /metrics: Prometheus naming
    (_total on counters only, base units before the suffix) and a HELP line on each."""
    assert promtool(daemon_metrics) == (0, "")
    helps = {family.name: family.documentation
             for family in text_string_to_metric_families(daemon_metrics)}
    assert len(helps) > 20
    assert {name for name, doc in helps.items() if doc not in metrics.DOCUMENTED} == set()
