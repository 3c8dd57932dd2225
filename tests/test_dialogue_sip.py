"""SIP over TCP (RFC 3261 18.3): the stream framed into messages by the blank line and
Content-Length, every request on one connection answered in order, keep-alives ponged; sipsak
over loopback; the framing fuzzed (any split of a stream of messages gives those messages back;
any bytes: only FramingError)."""

from __future__ import annotations

import random
import subprocess

import pytest
from dialogue_adapter import serve
from hypothesis import given, settings
from hypothesis import strategies as st

from honeytrap.dialogue import sip
from honeytrap.dialogue.base import Context
from honeytrap.dialogue.datagram import DatagramDialogue


def ctx(protocol: str = "tcp") -> Context:
    return Context(protocol, 5060, 1 << 20, rng=random.Random(3), hostname="pbx")  # noqa: S311


def request(method: str, cseq: int, body: bytes = b"", compact: bool = False) -> bytes:
    length = f"l: {len(body)}" if compact else f"Content-Length: {len(body)}"
    return (f"{method} sip:100@198.18.0.2 SIP/2.0\r\n"
            f"Via: SIP/2.0/TCP 198.18.0.1:40000;branch=z9hG4bK-{cseq}\r\n"
            "From: <sip:100@198.18.0.2>;tag=f1\r\nTo: <sip:100@198.18.0.2>\r\n"
            f"Call-ID: call-{cseq}@198.18.0.1\r\nCSeq: {cseq} {method}\r\n"
            f"{length}\r\n\r\n").encode() + body


SDP = b"v=0\r\no=- 1 1 IN IP4 198.18.0.1\r\ns=-\r\nc=IN IP4 198.18.0.1\r\nt=0 0\r\n\r\n"


def responses(data: bytes) -> list[str]:
    """The status lines of the responses in data, in order."""
    return [part.split("\r\n", 1)[0] for part in data.decode().split("\r\n\r\n") if part]


def test_factory_serves_the_stream_on_tcp_and_datagrams_on_udp() -> None:
    assert isinstance(sip.factory(ctx("tcp")), sip.SipStreamDialogue)
    assert isinstance(sip.factory(ctx("udp")), DatagramDialogue)


def test_pipelined_requests_answered_in_order() -> None:
    """Three requests in one chunk, the INVITE with an SDP body whose blank line is not a
    message end: three responses matched by CSeq."""
    d = sip.SipStreamDialogue(ctx())
    stream = request("OPTIONS", 1) + request("INVITE", 2, SDP) + request("BYE", 3)
    out = d.receive(stream)
    assert not out.close
    assert responses(out.send) == ["SIP/2.0 200 OK", "SIP/2.0 401 Unauthorized",
                                   "SIP/2.0 405 Method Not Allowed"]
    assert [f"CSeq: {n}" in part for n, part in enumerate(
        out.send.decode().split("\r\n\r\n")[:3], 1)] == [True, True, True]
    rec = d.record()["sip"]
    assert (rec["answered"], rec["ignored"], rec["methods"]) == (3, 0, ["OPTIONS", "INVITE", "BYE"])


def test_byte_at_a_time_and_compact_content_length() -> None:
    d = sip.SipStreamDialogue(ctx())
    stream = request("INVITE", 7, SDP, compact=True)
    sent = b"".join(d.receive(stream[i : i + 1]).send for i in range(len(stream)))
    assert responses(sent) == ["SIP/2.0 401 Unauthorized"]
    assert d.record()["sip"]["answered"] == 1


def test_keepalive_ponged_leading_crlf_skipped_responses_and_ack_ignored() -> None:
    d = sip.SipStreamDialogue(ctx())
    assert d.receive(sip.KEEPALIVE).send == b"\r\n"  # RFC 5626 3.5.1
    out = d.receive(b"\r\n" + request("OPTIONS", 1))  # RFC 3261 7.5
    assert responses(out.send) == ["SIP/2.0 200 OK"]
    assert d.receive(b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n" + request("ACK", 2)).send == b""
    rec = d.record()["sip"]
    assert (rec["answered"], rec["ignored"], rec["keepalives"]) == (1, 2, 1)


def with_length(value: bytes) -> bytes:
    return request("INVITE", 1).replace(b"Content-Length: 0", b"Content-Length: " + value)


@pytest.mark.parametrize("data", [
    b"OPTIONS sip:x SIP/2.0\r\n" + b"X: y\r\n" * (sip.MAX_HEAD // 6),  # head without an end
    with_length(str(sip.MAX_BODY + 1).encode()), with_length(b"-1"), with_length(b"0\r\nl: 5"),
])
def test_unframeable_stream_closed_and_recorded(data: bytes) -> None:
    d = sip.SipStreamDialogue(ctx())
    out = d.receive(data)
    assert out.close and out.send == b""
    assert d.record()["sip"]["error"]
    assert d.receive(request("OPTIONS", 2)).close  # nothing more is answered


def test_sipsak_registers_twice_on_one_connection() -> None:
    """sipsak's usrloc mode over TCP: REGISTER, our 401, REGISTER with its Digest response,
    our 401 again; both on the one connection."""
    with serve(lambda: sip.factory(ctx())) as (port, records, ended):
        out = subprocess.run(["sipsak", "-vv", "-i", "-E", "tcp", "-U", "-a", "s3cret",
                              "-s", f"sip:1001@127.0.0.1:{port}"],
                             capture_output=True, text=True, timeout=30)
        assert ended.wait(10)
    said = out.stdout + out.stderr  # sipsak prints the exchange on stderr
    assert "SIP/2.0 401 Unauthorized" in said and 'response="' in said, said
    assert "request already contains (Proxy-) Authorization, but received 40" in said
    [record] = records
    rec = record["sip"]
    assert (rec["answered"], rec["methods"], rec["error"]) == (2, ["REGISTER", "REGISTER"], "")


message = st.builds(request, st.sampled_from(["OPTIONS", "REGISTER", "INVITE", "BYE", "ACK"]),
                    st.integers(1, 999), st.binary(max_size=300), st.booleans())


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(message, st.just(sip.KEEPALIVE)), min_size=1, max_size=6),
       st.lists(st.integers(0, 4000), max_size=12))
def test_fuzz_any_split_gives_the_messages_back(messages: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(messages)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    framer = sip.Framer()
    got: list[bytes] = []
    for start, end in zip([0, *points], [*points, len(stream)], strict=True):
        got += framer.feed(stream[start:end])
    assert got == messages


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600), st.sampled_from([b"", request("OPTIONS", 1)[:40],
                                                   b"\r\n", b"INVITE sip:x SIP/2.0\r\nl: "]))
def test_fuzz_only_framing_errors(data: bytes, prefix: bytes) -> None:
    framer = sip.Framer()
    try:
        framer.feed(prefix + data)
    except sip.FramingError:
        pass
    d = sip.SipStreamDialogue(ctx())
    d.receive(prefix)
    d.receive(data)
    d.idle()
    d.record()


# --- the topmost Via says where the request came from (RFC 3261 18.2.1, RFC 3581 4) ----------


def via_of(response: bytes) -> list[str]:
    return [line for line in response.decode().split("\r\n") if line.startswith("Via: ")]


@pytest.mark.parametrize(("via", "marked"), [
    ("SIP/2.0/TCP 198.18.0.1:40000;branch=z9hG4bK-1;rport",
     "SIP/2.0/TCP 198.18.0.1:40000;branch=z9hG4bK-1;rport=40001;received=198.18.0.1"),
    ("SIP/2.0/TCP 198.18.0.1:40000;branch=z9hG4bK-1",  # sent-by is the source: as it came
     "SIP/2.0/TCP 198.18.0.1:40000;branch=z9hG4bK-1"),
    ("SIP/2.0/UDP pbx.example:5060;branch=z9hG4bK-1",
     "SIP/2.0/UDP pbx.example:5060;branch=z9hG4bK-1;received=198.18.0.1"),
    ("SIP/2.0/TCP 10.0.0.1;received=10.0.0.1;rport=7;branch=b",  # theirs replaced, rport kept
     "SIP/2.0/TCP 10.0.0.1;rport=7;branch=b;received=198.18.0.1"),
    ("SIP/2.0/TCP [2001:db8::1]:5060;rport;branch=b, SIP/2.0/UDP 10.0.0.1;rport",
     "SIP/2.0/TCP [2001:db8::1]:5060;rport=40001;branch=b;received=198.18.0.1, "
     "SIP/2.0/UDP 10.0.0.1;rport"),
])
def test_topmost_via_gets_received_and_rport(via: str, marked: str) -> None:
    assert sip.topmost_via(via, ("198.18.0.1", 40001)) == marked


def sourced(protocol: str) -> Context:
    return Context(protocol, 5060, 1 << 20, rng=random.Random(3),  # noqa: S311
                   hostname="pbx", remote_addr="198.18.0.9", remote_port=40001)


def with_rport(cseq: int) -> bytes:
    """A request with two Via headers, the topmost asking for rport."""
    return request("OPTIONS", cseq).replace(
        b"Via: ", b"Via: SIP/2.0/TCP 198.18.0.1:40000;branch=z9hG4bK-x;rport\r\nVia: ", 1)


@pytest.mark.parametrize("protocol", ["tcp", "udp"])
def test_the_response_names_the_source_in_the_topmost_via_only(protocol: str) -> None:
    reply = sip.factory(sourced(protocol)).receive(with_rport(1)).send
    assert via_of(reply) == [
        "Via: SIP/2.0/TCP 198.18.0.1:40000;branch=z9hG4bK-x;rport=40001;received=198.18.0.9",
        "Via: SIP/2.0/TCP 198.18.0.1:40000;branch=z9hG4bK-1",
    ]


def test_without_a_known_source_the_via_is_echoed_as_it_came() -> None:
    reply = sip.factory(ctx()).receive(with_rport(1)).send
    assert via_of(reply)[0] == "Via: SIP/2.0/TCP 198.18.0.1:40000;branch=z9hG4bK-x;rport"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200), st.ip_addresses().map(str), st.integers(0, 65535))
def test_fuzz_topmost_via_takes_any_text(via: str, address: str, port: int) -> None:
    """Attacker text in, a Via out: never raises, keeps what follows the first comma, and
    names the source only in the first via-parm."""
    marked = sip.topmost_via(via, (address, port))
    _first, comma, rest = via.partition(",")
    assert marked.endswith(comma + rest)
