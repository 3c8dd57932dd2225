"""The installed documentation and system files: man/honeytrap.8, etc/honeytrap.service,
etc/logrotate.d/honeytrap. Each is checked with the tool that reads it (groff and man,
systemd-analyze, logrotate) and against the defaults in honeytrap.config."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from honeytrap import config

ROOT = Path(__file__).resolve().parent.parent
MANPAGE = ROOT / "man" / "honeytrap.8"
UNIT = ROOT / "etc" / "honeytrap.service"
LOGROTATE = ROOT / "etc" / "logrotate.d" / "honeytrap"
# Every external tool gets this long: each takes well under a second.
TOOL_TIMEOUT = 60
# The options of the original's man page plus -u, -g and -h.
SYNOPSIS_FLAGS = set("DpmvhialrtLPCug")
REQUIRED_SECTIONS = [
    "NAME",
    "SYNOPSIS",
    "DESCRIPTION",
    "OPTIONS",
    "CONNECTION MONITORS",
    "MODES",
    "CONFIGURATION",
    "PLUGINS",
    "SIGNALS",
    "FILES",
    "EXIT STATUS",
    "EXAMPLE",
    "NOTES",
    "SEE ALSO",
    "AUTHORS",
    "BUGS",
]


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        # run-tests.sh installs every tool of debian-packages.txt: missing is a setup error.
        pytest.fail(f"{tool} is not installed (see debian-packages.txt)")
    return path


def run(argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
        check=False,
        env={**os.environ, **env},
    )


def rendered() -> str:
    """The page as man(1) shows it, 200 columns wide so that no sentence is broken."""
    result = run([need("man"), "-l", str(MANPAGE)], MANWIDTH="200", MAN_KEEP_FORMATTING="")
    assert result.returncode == 0, result.stderr
    # Plain text: no bold/underline overstrikes, no hyphenation marks.
    text = re.sub(r".\x08", "", result.stdout)
    return text.replace("\u2010", "-")


def section(text: str, name: str) -> str:
    """The body of one top-level section of the rendered page."""
    match = re.search(rf"^{re.escape(name)}\n(.*?)(?=^[A-Z][A-Z ]+\n|\Z)", text, re.M | re.S)
    assert match, f"no section {name}"
    return match.group(1)


def option_items(text: str) -> dict[str, str]:
    """OPTIONS as {flag letter: its paragraph}."""
    items: dict[str, str] = {}
    flag = ""
    for line in section(text, "OPTIONS").splitlines():
        match = re.match(r"^ {7}-([A-Za-z])\b", line)
        if match:
            flag = match.group(1)
            items[flag] = line
        elif flag:
            items[flag] += "\n" + line
    return items


# ----------------------------------------------------------------------------- the man page


def test_groff_reports_no_warnings() -> None:
    result = run([need("groff"), "-man", "-Tutf8", "-ww", "-z", str(MANPAGE)])
    assert result.returncode == 0 and result.stderr == ""


def test_man_renders_the_page() -> None:
    text = rendered()
    assert text.startswith("HONEYTRAP(8)")
    assert "honeytrap - trap attacks against TCP and UDP services" in text


def test_every_required_section_is_present() -> None:
    headings = re.findall(r"^([A-Z][A-Z ]+)$", rendered(), re.M)
    for name in REQUIRED_SECTIONS:
        assert name in headings, name


def test_synopsis_lists_the_original_options() -> None:
    synopsis = " ".join(section(rendered(), "SYNOPSIS").split())
    flags = set(re.findall(r"\[-([A-Za-z])\b", synopsis))
    flags |= set(re.search(r"\[-([A-Za-z]+)\]", synopsis).group(1))  # type: ignore[union-attr]
    assert flags == SYNOPSIS_FLAGS
    assert synopsis.endswith("[expression]")


def test_every_synopsis_flag_is_documented_in_options() -> None:
    assert set(option_items(rendered())) >= SYNOPSIS_FLAGS
    assert re.search(r"^ {7}expression$", section(rendered(), "OPTIONS"), re.M)


def default_of(paragraph: str) -> str:
    match = re.search(r"Default is (\d+)\.", " ".join(paragraph.split()))
    assert match, paragraph
    return match.group(1)


def test_documented_option_defaults_match_the_code() -> None:
    items = option_items(rendered())
    assert float(default_of(items["l"])) == config.DEFAULT_LISTEN_TIMEOUT == 30
    assert float(default_of(items["r"])) == config.DEFAULT_READ_TIMEOUT == 1
    assert int(default_of(items["t"])) == config.DEFAULT_LOGLEVEL == 3
    assert config.DEFAULT_CONFIG_FILE in items["C"]


def test_log_levels_are_named() -> None:
    text = " ".join(option_items(rendered())["t"].split())
    assert "0 off, 1 error, 2 warning, 3 notice, 4 info, 5 noisy, 6 debug" in text


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_servers", config.DEFAULT_MAX_SERVERS),
        ("ports_per_process", config.DEFAULT_PORTS_PER_PROCESS),
        ("max_connections", config.DEFAULT_MAX_CONNECTIONS),
        ("max_server_rate", config.DEFAULT_MAX_SERVER_RATE),
        ("template_repeat", config.DEFAULT_TEMPLATE_REPEAT),
        ("max_connections_per_source", config.DEFAULT_MAX_CONNECTIONS_PER_SOURCE),
        ("max_connections_per_network", config.DEFAULT_MAX_CONNECTIONS_PER_NETWORK),
        ("udp_replies_per_source", config.DEFAULT_UDP_REPLIES_PER_SOURCE),
        ("udp_replies_per_sensor", config.DEFAULT_UDP_REPLIES_PER_SENSOR),
    ],
)
def test_documented_extension_defaults_match_the_code(key: str, value: int) -> None:
    text = " ".join(section(rendered(), "CONFIGURATION").split())
    match = re.search(rf"\b{key} .*? Default: (\d+)\.", text)
    assert match and int(match.group(1)) == value


def test_master_nice_default_is_documented() -> None:
    text = " ".join(section(rendered(), "CONFIGURATION").split())
    match = re.search(r"\bmaster_nice .*? Default: (-?\d+)\.", text.replace("\u2212", "-"))
    assert match and int(match.group(1)) == config.Config().master_nice


def test_every_plugin_hook_is_named() -> None:
    text = section(rendered(), "PLUGINS")
    for hook in ("PERREAD", "PREPROC", "ANALYZE", "SAVEDATA", "POSTPROC"):
        assert hook in text


def test_every_shipped_plugin_is_documented() -> None:
    text = section(rendered(), "PLUGINS")
    for plugin in sorted((ROOT / "plugins").glob("*.py")):
        if not plugin.name.startswith("_"):
            assert re.search(rf"\b{plugin.stem}\b", text), plugin.stem


# ----------------------------------------------------------------------------- systemd unit


def unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text(encoding="utf-8"))
    return parser


def test_systemd_analyze_accepts_the_unit(tmp_path: Path) -> None:
    """systemd-analyze verify prints nothing: every key known, every value valid. The daemon is
    not installed here, so its path is replaced by an executable that exists."""
    analyze = need("systemd-analyze")
    copy = tmp_path / "honeytrap.service"
    copy.write_text(UNIT.read_text().replace("/opt/honeytrap/bin/honeytrap", "/bin/true"))
    result = run([analyze, "verify", "--man=no", str(copy)])
    assert result.returncode == 0 and result.stderr == "" and result.stdout == ""


def test_unit_runs_the_daemon_in_the_foreground_as_notify_service() -> None:
    service = unit()["Service"]
    assert service["Type"] == "notify"
    assert service["ExecStart"].split() == [
        "/opt/honeytrap/bin/honeytrap",
        "-D",
        "-C",
        config.DEFAULT_CONFIG_FILE,
        "-u",
        "honeytrap",
        "-g",
        "honeytrap",
    ]
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"


def test_unit_stops_the_master_first_and_kills_leftovers() -> None:
    service = unit()["Service"]
    assert service["KillMode"] == "mixed"
    assert service["TimeoutStopSec"] == "60"
    assert service["Restart"] == "on-failure"


def test_unit_keeps_the_capabilities_the_daemon_needs() -> None:
    caps = set(unit()["Service"]["CapabilityBoundingSet"].split())
    assert caps >= {"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_NET_BIND_SERVICE", "CAP_SETUID"}
    assert "CAP_SYS_ADMIN" not in caps and "CAP_SYS_MODULE" not in caps


def test_unit_lets_the_daemon_write_where_the_configuration_writes() -> None:
    writable = unit()["Service"]["ReadWritePaths"].split()
    shipped = (ROOT / "etc" / "honeytrap.conf").read_text(encoding="utf-8")
    paths = re.findall(
        r'^\s*(?:logfile|pidfile|attacks_dir|downloads_dir)\s*=\s*"([^"]+)"', shipped, re.M
    )
    assert paths
    for path in paths:
        assert any(path.startswith(root.rstrip("/") + "/") for root in writable), path


# ----------------------------------------------------------------------------- logrotate


def test_logrotate_accepts_the_snippet(tmp_path: Path) -> None:
    logrotate = need("logrotate")
    result = run([logrotate, "-d", "-s", str(tmp_path / "state"), str(LOGROTATE)])
    assert result.returncode == 0, result.stderr
    assert "error" not in (result.stdout + result.stderr).lower()


def test_logrotate_rotates_every_shipped_log() -> None:
    text = LOGROTATE.read_text(encoding="utf-8")
    patterns = text.split("{", 1)[0].split()
    shipped = (ROOT / "etc" / "honeytrap.conf").read_text(encoding="utf-8")
    logs = re.findall(r'^\s*logfile\s*=\s*"([^"]+)"', shipped, re.M)
    assert logs
    for log in logs:
        assert any(Path(log).match(pattern) for pattern in patterns), log


def test_logrotate_signals_the_daemon_to_reopen(tmp_path: Path) -> None:
    """The postrotate script sends SIGHUP to the pid in /run/honeytrap.pid: a real child process
    with a HUP handler stands in for the daemon, the pid file path is the only change."""
    text = LOGROTATE.read_text(encoding="utf-8")
    script = re.search(r"postrotate\n(.*?)\n\s*endscript", text, re.S)
    assert script and "/run/honeytrap.pid" in script.group(1)
    pidfile = tmp_path / "honeytrap.pid"
    with subprocess.Popen(
        # Bounded: the stand-in exits by itself after 60 s; `wait` returns at once on SIGHUP.
        ["sh", "-c", "trap 'kill $!; echo hup; exit 0' HUP; sleep 60 & echo ready; wait $!"],
        stdout=subprocess.PIPE,
        text=True,
        # A shell cannot trap a signal ignored when it started (POSIX 2.11): under nohup the
        # stand-in would ignore the HUP, so it starts with the default disposition.
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL),  # noqa: PLW1509
    ) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline() == "ready\n"
            pidfile.write_text(f"{child.pid}\n")
            body = script.group(1).replace("/run/honeytrap.pid", str(pidfile))
            subprocess.run(["sh", "-c", body], check=True, timeout=TOOL_TIMEOUT)
            assert child.stdout.readline() == "hup\n"
            assert child.wait(timeout=TOOL_TIMEOUT) == 0
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(timeout=TOOL_TIMEOUT)


def test_logrotate_postrotate_survives_a_missing_pid_file(tmp_path: Path) -> None:
    text = LOGROTATE.read_text(encoding="utf-8")
    script = re.search(r"postrotate\n(.*?)\n\s*endscript", text, re.S)
    assert script
    body = script.group(1).replace("/run/honeytrap.pid", str(tmp_path / "absent.pid"))
    assert subprocess.run(["sh", "-c", body], timeout=TOOL_TIMEOUT, check=False).returncode == 0


# Every option each shipped plugin reads (itself, or through the download policy, the central
# stores' Output, the log files' LineLog), and the original's options it accepts and ignores.
DOWNLOAD_OPTIONS = {"max_size", "max_per_attack", "timeout", "connect_timeout"}
SPOOL_OPTIONS = {"spool_dir", "spool_max_records", "spool_max_bytes", "retry_max"}
PLUGIN_OPTIONS: dict[str, set[str]] = {
    "SaveFile": {"attacks_dir", "downloads_dir"},
    "logAttacker": {"logfile"},
    "logJSON": {"logfile"},
    "ftpDownload": DOWNLOAD_OPTIONS,
    "tftpDownload": DOWNLOAD_OPTIONS,
    "httpDownload": DOWNLOAD_OPTIONS | {"http_program", "http_options"},
    "b64Decode": set(),
    "deUnicode": set(),
    "magicPE": set(),
    "vncDownload": set(),
    "SpamSum": {"md5sum_sigfile", "spamsum_sigfile", "threshold"},
    "ClamAV": {"clamd_socket", "timeout", "max_scans", "clamdb_path", "temp_dir"},
    "xmatch": {"xpattern_file", "pattern"},
    "submitPostgres": {"db_host", "db_port", "db_name", "db_user", "db_pass", "sensor_id"}
    | SPOOL_OPTIONS,
    "SavePostgres": set(),  # submitPostgres under T-Pot's name
    "hpfeeds": {"host", "port", "ident", "secret", "channels", "confirm"} | SPOOL_OPTIONS,
}
_OPTION_READ = re.compile(
    r"""option(?:_int|_list)?\(\s*"(\w+)"|options\.get\("(\w+)"|\bfor \w+ in \(([^)]*)\)"""
)


def options_read(source: str) -> set[str]:
    found = set()
    for match in _OPTION_READ.finditer(source):
        if match.group(3) is not None:  # `for key in ("a", "b")`: names checked in ctx.options
            found |= set(re.findall(r'"(\w+)"', match.group(3)))
        else:
            found.add(match.group(1) or match.group(2))
    return found


@pytest.mark.parametrize("plugin", sorted(p.stem for p in (ROOT / "plugins").glob("*.py")))
def test_every_plugin_option_is_in_the_plugins_section(plugin: str) -> None:
    """The options a plugin's source reads are those listed here, and the man page's PLUGINS
    section names each of them (as .B text)."""
    source = (ROOT / "plugins" / f"{plugin}.py").read_text()
    ignored = set(re.findall(r'IGNORED_OPTIONS = \(([^)]*)\)', source))
    read = options_read(source) | {n for group in ignored for n in re.findall(r'"(\w+)"', group)}
    assert read <= PLUGIN_OPTIONS[plugin]
    page = (ROOT / "man" / "honeytrap.8").read_text()
    section = page[page.index(".SH PLUGINS"):page.index(".SH SIGNALS")]
    named = set(re.findall(r"^\.BR? (\w+)", section, re.M))
    assert PLUGIN_OPTIONS[plugin] - named == set()


def test_the_option_scan_finds_what_a_plugin_reads() -> None:
    source = (ROOT / "plugins" / "ClamAV.py").read_text()
    assert options_read(source) == {"clamd_socket", "timeout", "max_scans", "clamdb_path",
                                    "temp_dir"}


def firewall_rules(text: str) -> list[str]:
    """The iptables loop and the nft table of a document, one statement a line: continuation
    lines joined, comments and spacing dropped, groff's \\- and \\e undone."""
    text = text.replace("\\-", "-").replace("\\e", "\\").replace("\\\n", " ")
    lines = [" ".join(line.split("#", 1)[0].split()) for line in text.splitlines()]
    start = lines.index("for ipt in iptables ip6tables; do")
    rules = lines[start:lines.index("done", start) + 1]
    table = lines.index("table inet honeytrap {")
    depth, end = 0, table
    for end in range(table, len(lines)):
        depth += lines[end].count("{") - lines[end].count("}")
        if depth == 0:
            break
    return rules + lines[table:end + 1]


def test_readme_install_and_man_page_show_one_set_of_firewall_rules() -> None:
    readme, install, page = (firewall_rules((ROOT / name).read_text())
                             for name in ("README.md", "INSTALL", "man/honeytrap.8"))
    assert readme == install == page
    assert sum("NFQUEUE --queue-num 0 --queue-bypass" in rule for rule in readme) == 2
