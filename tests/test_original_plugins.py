"""A configuration written for the original loads as it is: its plugin lines for plugins we do
not implement (cpuEmu, cspm, submitMWserv, submitNebula) are warned about and skipped, `htm_`
module names mean the plugin, and the PostgreSQL plugin takes the original's option names; the
daemon on such a file serves and records."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import Honeytrap, nfq_rules
from netns import Lab, inside

from honeytrap.config import load_config
from honeytrap.plugin import load_plugins

# The original's plugin section, in its syntax (every line uncommented), paths under {work}.
ORIGINAL_PLUGINS = """
plugin-ftpDownload = ""
plugin-tftpDownload = ""
plugin-htm_b64Decode = ""
plugin-deUnicode = ""
plugin-SaveFile = {{
	attacks_dir	= "{work}/attacks"
	downloads_dir	= "{work}/downloads"
}}
plugin-cpuEmu = {{
	execute_shellcode = "no"
	createprocess_cmd = "/bin/sh -c \\"cd /nowhere; wine cmd.exe\\""
}}
plugin-cspm = {{ sigfile = "/opt/honeytrap/etc/honeytrap/cspm.sig" }}
plugin-SavePostgres = {{
	sensor_id = "original-sensor"
	db_host	= "{work}/no-database"
	db_name	= "some_db"
	db_user	= "some_user"
	db_pass	= "some_pass"
	db_port = "5432"
	spool_dir = "{work}/spool"
}}
plugin-httpDownload = {{
	http_program = "/usr/bin/wget"
	http_options = "-q -t1 -T1 -O-"
}}
plugin-submitMWserv = {{
	mwserv_url      = "https://submission-url/"
	guid            = "your-guid"
	maintainer      = "your-maintainer"
	secret          = "your-secret"
	timeout		= "120"
}}
plugin-submitNebula = {{ host = "nebula.example" port = "4711" secret = "s" }}
plugin-logAttacker = {{ logfile = "{work}/attacker.log" }}
plugin-logJSON = {{ logfile = "{work}/attackers.json" }}
"""
SKIPPED = ("cpuEmu", "cspm", "submitMWserv", "submitNebula")
LOADED = ["ftpDownload", "tftpDownload", "b64Decode", "deUnicode", "SaveFile", "SavePostgres",
          "httpDownload", "logAttacker", "logJSON"]


def write(tmp_path: Path) -> Path:
    path = tmp_path / "original.conf"
    plugins = ORIGINAL_PLUGINS.format(work=tmp_path)
    path.write_text(f'plugin_dir = "{Path(__file__).resolve().parent.parent / "plugins"}"\n'
                    + plugins)
    return path


def test_unimplemented_plugins_are_warned_about_and_skipped(tmp_path: Path) -> None:
    config = load_config(str(write(tmp_path)))
    assert [spec.name for spec in config.plugins] == LOADED
    for name in SKIPPED:
        assert any(f"plugin {name} (" in w and "not implemented: line skipped" in w
                   and f"plugin-{name}" in w for w in config.warnings), config.warnings
    assert any("plugin-htm_b64Decode" in w and "loading plugin b64Decode" in w
               for w in config.warnings)
    registry = load_plugins(config)  # the original's option names load too
    try:
        assert [p.name for p in registry.plugins] == LOADED
    finally:
        registry.close()


@pytest.fixture
def sensor(lab: Lab) -> Iterator[Honeytrap]:
    # Not under tmp_path: pytest's base directory is 0700, closed to the recorder (nobody),
    # which opens the PostgreSQL plugin's spool by path.
    with tempfile.TemporaryDirectory(dir="/tmp") as base:
        os.chmod(base, 0o755)  # noqa: S103 - nobody passes through
        work = Path(base) / "ht"
        ht = Honeytrap(lab, work, plugins=ORIGINAL_PLUGINS.format(work=work),
                       args=["-u", "nobody", "-g", "nogroup"])
        yield ht
        if ht.proc is not None and ht.proc.poll() is None:
            ht.stop()


def test_daemon_on_the_originals_file_serves(lab: Lab, sensor: Honeytrap) -> None:
    nfq_rules(lab.sensor)
    sensor.start()
    with inside(lab.attacker):
        sock = socket.create_connection((lab.sensor.ip4, 31337), timeout=5)
    with sock:
        sock.sendall(b"original-config-token")
        sock.settimeout(5)
        assert sock.recv(1)
    records = sensor.wait_records(1)
    assert len(records) == 1
    stderr = sensor.stderr()
    assert "plugin cpuEmu (" in stderr and "plugin submitNebula (" in stderr
    assert sensor.stop() == 0
