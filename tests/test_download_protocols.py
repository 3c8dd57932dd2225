"""The FTP and TFTP client protocol logic, without sockets."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from honeytrap.download.ftpproto import Reply, ReplyReader, command, passive_port, port_command
from honeytrap.download.policy import DownloadRefused
from honeytrap.download.tftpproto import ACK, BLOCK_SIZE, DATA, RrqSession, ack
from honeytrap.errors import DownloadError, ProtocolError

SERVER = ("198.18.0.2", 40000)


def test_multi_line_reply_is_one_reply() -> None:
    replies = ReplyReader().feed(b"220-Welcome\r\n220-to\r\n220 FTP\r\n331 Pass\r\n")
    assert [r.code for r in replies] == [220, 331]
    assert replies[0].text == b"Welcome\n220-to\nFTP"


def test_reply_split_across_reads() -> None:
    reader = ReplyReader()
    assert reader.feed(b"22") == []
    assert reader.feed(b"6 done\r\n") == [Reply(226, b"done")]


def test_garbage_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        ReplyReader().feed(b"HTTP/1.1 200 OK\r\n")


def test_port_and_eprt_arguments() -> None:
    assert port_command("198.18.0.1", 0x1234) == ("PORT", "198,18,0,1,18,52")
    assert port_command("2001:db8::1", 2121) == ("EPRT", "|2|2001:db8::1|2121|")


def test_passive_replies() -> None:
    assert passive_port(Reply(227, b"Entering Passive Mode (10,0,0,1,4,1)")) == 1025
    assert passive_port(Reply(229, b"Entering Extended Passive Mode (|||6446|)")) == 6446


def test_bad_passive_reply_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        passive_port(Reply(227, b"(1,2,3,4,999,1)"))


def test_line_break_in_an_argument_is_refused() -> None:
    with pytest.raises(ProtocolError):
        command("RETR", "x\r\nDELE y")


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=300), max_size=10))
def test_reply_reader_only_raises_protocol_error(chunks: list[bytes]) -> None:
    reader = ReplyReader()
    try:
        for chunk in chunks:
            assert all(isinstance(r, Reply) for r in reader.feed(chunk))
    except ProtocolError:
        pass


def _data(block: int, payload: bytes) -> bytes:
    return struct.pack("!HH", DATA, block) + payload


def test_rrq_is_octet_mode() -> None:
    assert RrqSession("x.exe", 100).start() == b"\x00\x01x.exe\x00octet\x00"


def test_short_block_ends_the_transfer() -> None:
    session = RrqSession("x", 10_000)
    session.start()
    assert session.receive(_data(1, b"a" * BLOCK_SIZE), SERVER) == ack(1)
    assert session.receive(_data(2, b"end"), SERVER) == ack(2)
    assert session.done and session.data == b"a" * BLOCK_SIZE + b"end"


def test_duplicate_block_is_acked_again_and_not_stored() -> None:
    session = RrqSession("x", 10_000)
    session.receive(_data(1, b"a" * BLOCK_SIZE), SERVER)
    assert session.receive(_data(1, b"a" * BLOCK_SIZE), SERVER) == ack(1)
    assert session.size == BLOCK_SIZE


def test_block_numbers_wrap_around() -> None:
    session = RrqSession("x", 1 << 30)
    for i in range(1, 65537):
        assert session.receive(_data(i & 0xFFFF, b"b" * BLOCK_SIZE), SERVER) == ack(i & 0xFFFF)
    assert session.size == 65536 * BLOCK_SIZE and not session.done


def test_other_transfer_id_gets_an_error() -> None:
    session = RrqSession("x", 10_000)
    session.receive(_data(1, b"a" * BLOCK_SIZE), SERVER)
    answer = session.receive(_data(2, b"z"), ("198.18.0.2", 40001))
    assert answer is not None and answer[:4] == b"\x00\x05\x00\x05"
    assert session.block == 1


def test_error_packet_fails_the_download() -> None:
    with pytest.raises(DownloadError, match="File not found"):
        RrqSession("x", 100).receive(b"\x00\x05\x00\x01File not found\x00", SERVER)


def test_file_over_the_cap_is_refused() -> None:
    session = RrqSession("x", 600)
    session.receive(_data(1, b"a" * BLOCK_SIZE), SERVER)
    with pytest.raises(DownloadRefused):
        session.receive(_data(2, b"a" * BLOCK_SIZE), SERVER)


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=600), max_size=20))
def test_tftp_session_only_raises_download_errors(packets: list[bytes]) -> None:
    session = RrqSession("x", 4096)
    try:
        for packet in packets:
            answer = session.receive(packet, SERVER)
            assert answer is None or answer[:2] in (struct.pack("!H", ACK), b"\x00\x05")
    except DownloadError:
        pass
