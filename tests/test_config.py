"""Loading and checking the configuration file into a Config."""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from honeytrap.attack import Mode
from honeytrap.config import (
    DEFAULT_LISTEN_TIMEOUT,
    DEFAULT_READ_LIMIT,
    Config,
    PortConf,
    ProxyTarget,
    apply_options,
    apply_overrides,
    build_config,
    load_config,
)
from honeytrap.confparse import parse
from honeytrap.errors import ConfigError

ROOT = Path(__file__).parent.parent
DATA = Path(__file__).parent / "data" / "conf"


def conf(text: str) -> Config:
    return build_config(parse(text, "t.conf"), "t.conf")


def conf_error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        conf(text)
    return info.value


# -- shipped and T-Pot files ------------------------------------------------------------------


def test_tpot_style_file_loads_without_warnings() -> None:
    config = load_config(str(DATA / "tpot.conf"))
    assert config.warnings == []
    assert config.user == config.group == "honeytrap"
    assert config.read_limit == 20971520
    assert config.replace_private_ips is False
    assert config.portconf_default is Mode.NORMAL
    assert config.ports == {}


def test_tpot_style_file_keeps_plugin_order_and_options() -> None:
    config = load_config(str(DATA / "tpot.conf"))
    assert [spec.name for spec in config.plugins] == [
        "ftpDownload", "tftpDownload", "b64Decode", "deUnicode", "vncDownload",
        "SaveFile", "logAttacker", "logJSON",
    ]
    save = config.plugins[5]
    assert save.options == {"attacks_dir": "/opt/honeytrap/var/attacks",
                            "downloads_dir": "/opt/honeytrap/var/downloads"}
    assert save.file.endswith("tpot.conf") and save.line == 54
    assert config.plugins[0].options == {}


def test_original_ports_file_loads_every_mode() -> None:
    ports = load_config(str(DATA / "ports.conf")).ports
    assert ports[("tcp", 25)] == PortConf("tcp", 25, Mode.IGNORE)
    assert ports[("udp", 53)].mode is Mode.NORMAL and ports[("tcp", 53)].mode is Mode.NORMAL
    assert ports[("tcp", 23)].mode is Mode.MIRROR
    assert ports[("tcp", 8080)] == PortConf(
        "tcp", 8080, Mode.PROXY, ProxyTarget("192.0.2.80", 8080, "tcp"), "web-relay")
    assert ports[("udp", 69)].proxy == ProxyTarget("tftp.example", 69, "udp")
    assert len(ports) == 8


def test_shipped_configuration_loads() -> None:
    config = load_config(str(ROOT / "etc" / "honeytrap.conf"))
    assert config.warnings == []
    assert config.logfile == "/var/log/honeytrap/honeytrap.log"
    assert config.pidfile == "/run/honeytrap.pid"
    # Not named in the shipped file: the package's own (here, the source tree's).
    assert config.response_dir == str(ROOT.resolve() / "templates")
    assert config.plugin_dir == str(ROOT.resolve() / "plugins")
    assert config.read_limit == 20971520
    assert config.monitor == "auto"
    assert config.portconf_default is Mode.NORMAL
    assert [spec.name for spec in config.plugins] == [
        "b64Decode", "deUnicode", "ftpDownload", "tftpDownload", "httpDownload", "magicPE",
        "SaveFile", "logAttacker", "logJSON",
    ]
    savefile = next(spec for spec in config.plugins if spec.name == "SaveFile")
    assert savefile.options == {"attacks_dir": "/var/lib/honeytrap/attacks",
                                "downloads_dir": "/var/lib/honeytrap/downloads"}


def test_shipped_configuration_examples_load_when_uncommented() -> None:
    """Every `//key = ...` example line of the shipped file is valid once uncommented."""
    text = (ROOT / "etc" / "honeytrap.conf").read_text()
    examples = re.findall(r"^//([a-z][\w-]*\s*=.*)$", text, re.MULTILINE)
    assert len(examples) > 10
    uncommented = "\n".join(line for line in examples if not line.startswith("include"))
    config = conf(uncommented)
    assert config.warnings == []
    assert {"xmatch", "vncDownload", "SpamSum", "ClamAV"} <= {
        spec.name for spec in config.plugins}


def test_include_brings_ports_of_another_file() -> None:
    config = load_config(str(DATA / "main-with-include.conf"))
    assert ("tcp", 1433) in config.ports
    assert config.logfile == "honeytrap.log"  # relative paths stay as given
    assert config.source == str(DATA / "main-with-include.conf")


# -- top-level keys ------------------------------------------------------------------------


def test_defaults_without_keys() -> None:
    config = conf("")
    assert config.read_limit == DEFAULT_READ_LIMIT
    assert config.listen_timeout == DEFAULT_LISTEN_TIMEOUT
    assert config.monitor == "auto" and config.plugins == [] and config.ports == {}


def test_paths_and_names_are_taken_as_given() -> None:
    config = conf('logfile = "ht.log" pidfile = "run/ht.pid" response_dir = "t" '
                  'plugin_dir = "p" user = "nobody" group = "nogroup" interface = "eth1"')
    assert (config.logfile, config.pidfile, config.response_dir, config.plugin_dir) == (
        "ht.log", "run/ht.pid", "t", "p")
    assert (config.user, config.group, config.interface) == ("nobody", "nogroup", "eth1")


@pytest.mark.parametrize(
    ("text", "field", "value"),
    [
        ('replace_private_ips = "yes"', "replace_private_ips", True),
        ('replace_private_ips = "no"', "replace_private_ips", False),
        ('promisc = "on"', "promisc", True),
        ('promisc = "off"', "promisc", False),
        ('bind_address = "192.0.2.1"', "bind_address", "192.0.2.1"),
        ('bind_address = "2001:db8::1"', "bind_address", "2001:db8::1"),
        ('read_limit = "1024"', "read_limit", 1024),
        ('portconf_default = "ignore"', "portconf_default", Mode.IGNORE),
        ('portconf_default = "mirror"', "portconf_default", Mode.MIRROR),
        ('monitor = "nfq"', "monitor", "nfq"),
        ('event_loop = "asyncio"', "event_loop", "asyncio"),
        ('event_loop = "uvloop"', "event_loop", "uvloop"),
        ('nfq_queue = "7"', "nfq_queue", 7),
        ('max_servers = "10"', "max_servers", 10),
        ('ports_per_process = "1"', "ports_per_process", 1),
        ('max_connections = "5"', "max_connections", 5),
        ('max_server_rate = "50"', "max_server_rate", 50),
        ('template_repeat = "0"', "template_repeat", 0),
        ('listen_timeout = "2.5"', "listen_timeout", 2.5),
        ('read_timeout = "3"', "read_timeout", 3.0),
        ('loglevel = "6"', "loglevel", 6),
        ('mirror_all = "yes"', "mirror_all", True),
        ('bpf_expression = "not port 22"', "bpf_expression", "not port 22"),
        ('download_allow = ["10.0.0.0/8", "fd00::/8", "192.0.2.7"]', "download_allow",
         ["10.0.0.0/8", "fd00::/8", "192.0.2.7/32"]),
        ('download_allow = "198.51.100.0/24"', "download_allow", ["198.51.100.0/24"]),
    ],
)
def test_key_sets_field(text: str, field: str, value: object) -> None:
    assert getattr(conf(text), field) == value


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ('read_limit = "0"', "read_limit", "between"),
        ('read_limit = "-5"', "read_limit", "between"),
        ('read_limit = "20MB"', "read_limit", "whole number"),
        ('loglevel = "7"', "loglevel", "between"),
        ('listen_timeout = "0"', "listen_timeout", "between"),
        ('listen_timeout = "nan"', "listen_timeout", "between"),
        ('read_timeout = "soon"', "read_timeout", "number"),
        ('nfq_queue = "65536"', "nfq_queue", "between"),
        ('max_servers = "0"', "max_servers", "between"),
        ('ports_per_process = "0"', "ports_per_process", "between"),
        ('ports_per_process = "1025"', "ports_per_process", "between"),
        ('replace_private_ips = "maybe"', "replace_private_ips", "yes"),
        ('promisc = "1"', "promisc", "on"),
        ('bind_address = "localhost"', "bind_address", "IP address"),
        ('portconf_default = "proxy"', "portconf_default", "proxy mode cannot be the default"),
        ('portconf_default = "drop"', "portconf_default", "ignore, normal or mirror"),
        ('monitor = "ipq"', "monitor", "removed from Linux"),
        ('monitor = "ipfw"', "monitor", "never implemented"),
        ('monitor = "divert"', "monitor", "unknown monitor"),
        ('event_loop = "trio"', "event_loop", "auto, uvloop, asyncio"),
        ('download_allow = ["10.0.0.0/33"]', "download_allow", "CIDR"),
        ('logfile = ""', "logfile", "empty"),
        ('logfile = ["a"]', "logfile", "string"),
        ("portconf = \"x\"", "portconf", "block"),
    ],
)
def test_bad_value_is_an_error_naming_file_line_and_key(text: str, key: str, words: str) -> None:
    error = conf_error('user = "x"\n' + text)
    assert (error.file, error.line, error.key) == ("t.conf", 2, key)
    assert words in error.message


def test_unknown_key_is_a_logged_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="honeytrap.config"):
        config = conf('logfile = "a"\nfrobnicate = "yes"')
    assert len(config.warnings) == 1
    assert config.warnings[0].startswith("t.conf:2: frobnicate: unknown key")
    assert [record.getMessage() for record in caplog.records] == config.warnings


def test_key_given_twice_warns_and_the_later_wins() -> None:
    config = conf('logfile = "a"\nlogfile = "b"')
    assert config.logfile == "b"
    assert "first at t.conf:1" in config.warnings[0]


# -- portconf ------------------------------------------------------------------------------


def test_portconf_single_strings_and_lists() -> None:
    config = conf('portconf = { ignore = { protocol = "tcp" port = "22" } '
                  'normal = { protocol = ["tcp", "udp"] port = ["53", "5060"] } }')
    assert config.ports[("tcp", 22)].mode is Mode.IGNORE
    assert {key for key, conf in config.ports.items() if conf.mode is Mode.NORMAL} == {
        ("tcp", 53), ("udp", 53), ("tcp", 5060), ("udp", 5060)}


def test_portconf_repeated_key_adds_values_as_in_the_original() -> None:
    config = conf('portconf = { mirror = { protocol = "tcp" protocol = "udp" port = "7" } }')
    assert set(config.ports) == {("tcp", 7), ("udp", 7)}


def test_portconf_sections_may_repeat() -> None:
    config = conf('portconf = { ignore = { protocol = "tcp" port = "22" } '
                  'ignore = { protocol = "udp" port = "53" } }')
    assert set(config.ports) == {("tcp", 22), ("udp", 53)}


def test_proxy_target_port_and_protocol_default_to_the_attacked_ones() -> None:
    config = conf('portconf = { proxy = { p = { protocol = "tcp" port = ["25", "587"] '
                  'target_host = "192.0.2.5" } } }')
    assert config.ports[("tcp", 587)] == PortConf(
        "tcp", 587, Mode.PROXY, ProxyTarget("192.0.2.5", 587, "tcp"), "p")


def test_duplicate_port_is_an_error_at_the_second_mention() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(str(DATA / "duplicate-port.conf"))
    error = info.value
    assert error.file == str(DATA / "duplicate-port.conf")
    assert (error.line, error.key) == (10, "portconf.normal.port")
    assert "25/tcp" in error.message and "duplicate-port.conf:4" in error.message


def test_duplicate_port_across_portconf_blocks_is_an_error() -> None:
    error = conf_error('portconf = { ignore = { protocol = "udp" port = "53" } }\n'
                       'portconf = { proxy = { m = { protocol = "udp" port = "53" '
                       'target_host = "h" } } }')
    assert error.line == 2 and "53/udp" in error.message


def test_same_port_on_both_protocols_is_not_a_duplicate() -> None:
    config = conf('portconf = { ignore = { protocol = "tcp" port = "53" } '
                  'normal = { protocol = "udp" port = "53" } }')
    assert len(config.ports) == 2


@pytest.mark.parametrize(
    ("section", "key", "words"),
    [
        ('ignore = { protocol = "tcp" port = "0" }', "portconf.ignore.port", "1..65535"),
        ('ignore = { protocol = "tcp" port = "65536" }', "portconf.ignore.port", "1..65535"),
        ('ignore = { protocol = "tcp" port = "http" }', "portconf.ignore.port", "port number"),
        ('ignore = { protocol = "tcp" port = "" }', "portconf.ignore.port", "port number"),
        ('normal = { protocol = "icmp" port = "1" }', "portconf.normal.protocol", "tcp"),
        ('normal = { protocol = "t" port = "1" }', "portconf.normal.protocol", "tcp"),
        ('normal = { port = "1" }', "portconf.normal.protocol", "needs protocol"),
        ('normal = { protocol = "tcp" }', "portconf.normal.port", "needs port"),
        ('normal = { protocol = "tcp" port = [["1"]] }', "portconf.normal.port", "list of"),
        ('normal = "tcp"', "portconf.normal", "block"),
        ('proxy = { m = { protocol = "tcp" port = "1" } }', "portconf.proxy.m.target_host",
         "target_host"),
        ('proxy = { m = { protocol = "tcp" port = "1" target_host = "a b" } }',
         "portconf.proxy.m.target_host", "host"),
        ('proxy = { m = { protocol = "tcp" port = "1" target_host = "h" target_port = "0" } }',
         "portconf.proxy.m.target_port", "1..65535"),
        ('proxy = { m = { protocol = "tcp" port = "1" target_host = "h" '
         'target_protocol = "sctp" } }', "portconf.proxy.m.target_protocol", "tcp"),
        ('proxy = { m = "x" }', "portconf.proxy.m", "block"),
    ],
)
def test_bad_portconf_is_an_error_naming_the_key(section: str, key: str, words: str) -> None:
    error = conf_error("portconf = {\n" + section + "\n}")
    assert (error.file, error.line, error.key) == ("t.conf", 2, key)
    assert words in error.message


def test_unknown_portconf_keys_warn() -> None:
    config = conf('portconf = { drop = { } ignore = { protocol = "tcp" port = "1" x = "y" } }')
    assert [w.split(": ")[1] for w in config.warnings] == ["portconf.drop",
                                                           "portconf.ignore.x"]
    assert ("tcp", 1) in config.ports


# -- plugins -------------------------------------------------------------------------------


def test_plugin_options_nest_as_dicts_and_lists() -> None:
    config = conf('plugin-X = { a = "1" l = ["2", "3"] b = { c = "4" } }')
    (spec,) = config.plugins
    assert (spec.name, spec.file, spec.line) == ("X", "t.conf", 1)
    assert spec.options == {"a": "1", "l": ["2", "3"], "b": {"c": "4"}}


def test_plugin_loaded_twice_is_an_error() -> None:
    error = conf_error('plugin-X = ""\nplugin-X = { a = "1" }')
    assert (error.line, error.key) == (2, "plugin-X") and "t.conf:1" in error.message


@pytest.mark.parametrize("text", ['plugin- = ""', 'plugin-X = ["a"]'])
def test_bad_plugin_line_is_an_error(text: str) -> None:
    assert conf_error(text).line == 1


def test_plugin_string_value_other_than_empty_warns() -> None:
    config = conf('plugin-X = "yes"')
    assert config.plugins[0].options == {} and "ignored" in config.warnings[0]


# -- overrides -------------------------------------------------------------------------------


def test_overrides_win_and_none_means_not_given() -> None:
    config = conf('logfile = "file.log" loglevel = "2"')
    merged = apply_overrides(config, logfile="cli.log", loglevel=None, foreground=True)
    assert (merged.logfile, merged.loglevel, merged.foreground) == ("cli.log", 2, True)
    assert config.logfile == "file.log"  # the original is untouched
    assert apply_options is apply_overrides


@pytest.mark.parametrize(("name", "value"), [("loglevel", 9), ("listen_timeout", 0.0),
                                             ("read_limit", 0), ("monitor", "ipq")])
def test_overrides_are_checked(name: str, value: object) -> None:
    with pytest.raises(ConfigError):
        apply_overrides(Config(), **{name: value})


# -- fuzz: a Config or a ConfigError, nothing else ---------------------------------------------

KEYS = ["logfile", "read_limit", "replace_private_ips", "promisc", "bind_address", "monitor",
        "portconf_default", "portconf", "ignore", "normal", "mirror", "proxy", "protocol",
        "port", "target_host", "target_port", "target_protocol", "plugin-A", "plugin-",
        "download_allow", "loglevel", "listen_timeout", "nfq_queue", "include", "x"]
WORDS = ["", "tcp", "udp", "22", "0", "65536", "yes", "on", "nfq", "ipq", "proxy", "normal",
         "10.0.0.0/8", "::1", "nan", "-1", "1e9", "h", "\\x00"]


def soup() -> st.SearchStrategy[str]:
    piece = st.one_of(
        st.sampled_from(KEYS),
        st.sampled_from(WORDS).map(lambda word: f'"{word}"'),
        st.sampled_from(["=", "{", "}", "[", "]", ","]),
    )
    return st.lists(piece, max_size=60).map(" ".join)


@settings(max_examples=500, deadline=None)
@given(soup())
def test_fuzz_key_soup_gives_config_or_config_error(text: str) -> None:
    try:
        assert isinstance(conf(text), Config)
    except ConfigError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_file_bytes_give_config_or_config_error(data: bytes) -> None:
    def read(path: str) -> str:
        return data.decode("latin-1")

    try:
        load_config("m.conf", read=read)
    except ConfigError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200).map(lambda data: b'logfile = "' + data))
def test_fuzz_bytes_on_disk_give_config_or_config_error(data: bytes) -> None:
    """Through the real reader: invalid UTF-8 included."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "x.conf"
        path.write_bytes(data)
        try:
            load_config(str(path))
        except ConfigError:
            pass


def test_invalid_utf8_on_disk_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "x.conf"
    path.write_bytes(b'logfile = "\xc3\x28"')
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(str(path))
