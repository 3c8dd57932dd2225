"""The configuration syntax: tokens, tree, positions, errors, includes; fuzzed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from honeytrap.confparse import (
    MAX_FILE_BYTES,
    MAX_INCLUDE_DEPTH,
    MAX_NESTING,
    Block,
    Entry,
    ListNode,
    Scalar,
    Value,
    load,
    parse,
    read_text,
    tokenize,
)
from honeytrap.errors import ConfigError

DATA = Path(__file__).parent / "data" / "conf"


def only(text: str) -> Entry:
    (entry,) = parse(text, "t.conf").entries
    return entry


def plain(value: Value) -> object:
    """A node without positions, for comparisons."""
    if isinstance(value, Scalar):
        return value.value
    if isinstance(value, ListNode):
        return [plain(item) for item in value.items]
    return [(entry.key, plain(entry.value)) for entry in value.entries]


def error_of(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text, "t.conf")
    return info.value


# -- constructs ---------------------------------------------------------------------------


def test_key_string_value() -> None:
    entry = only('logfile = "/var/log/x.log"')
    assert (entry.key, plain(entry.value)) == ("logfile", "/var/log/x.log")


def test_keys_may_contain_dash_underscore_digits() -> None:
    assert only('plugin-Save_File2 = ""').key == "plugin-Save_File2"


def test_entries_need_no_separator_and_may_share_a_line() -> None:
    tree = parse('a = "1" b = "2"\nc="3"')
    assert plain(tree) == [("a", "1"), ("b", "2"), ("c", "3")]


def test_list_with_and_without_commas() -> None:
    assert plain(only('p = ["1", "2" "3",, ]').value) == ["1", "2", "3"]


def test_empty_list_and_empty_block() -> None:
    assert plain(parse('a = [] b = {}')) == [("a", []), ("b", [])]


def test_nested_blocks_and_lists() -> None:
    text = 'portconf = { proxy = { m = { port = ["1", ["2"], { x = "y" }] } } }'
    assert plain(only(text).value) == [
        ("proxy", [("m", [("port", ["1", ["2"], [("x", "y")]])])])
    ]


def test_line_comment() -> None:
    assert plain(parse('// a = "1"\nb = "2" // c = "3"')) == [("b", "2")]


def test_block_comment_spanning_lines() -> None:
    assert plain(parse('/* a = "1"\n * b = "2" */ c = "3"')) == [("c", "3")]


def test_block_comment_may_contain_line_comment_and_quotes() -> None:
    assert plain(parse('/*\n// x\n y = "a \\" b"\n*/ z = "1"')) == [("z", "1")]


def test_comment_markers_inside_strings_are_text() -> None:
    assert plain(only('u = "http://x/* not a comment */"').value) == "http://x/* not a comment */"


@pytest.mark.parametrize(
    ("escape", "char"),
    [("\\n", "\n"), ("\\t", "\t"), ("\\r", "\r"), ("\\0", "\0"), ("\\\\", "\\"), ('\\"', '"'),
     ("\\x41", "A"), ("\\xff", "\xff"), ("\\x00", "\0")],
)
def test_string_escapes(escape: str, char: str) -> None:
    assert plain(only(f'k = "<{escape}>"').value) == f"<{char}>"


def test_hex_escapes_round_trip_bytes_through_latin1() -> None:
    value = plain(only('k = "\\x90\\xeb\\x1f\\xcc"').value)
    assert isinstance(value, str)
    assert value.encode("latin-1") == b"\x90\xeb\x1f\xcc"


def test_strings_may_span_lines() -> None:
    tree = parse('a = "one\ntwo"\nb = "3"')
    assert plain(tree) == [("a", "one\ntwo"), ("b", "3")]
    assert tree.entries[1].line == 3


def test_positions_are_file_and_line_of_each_node() -> None:
    tree = parse('\n\na = [\n"x",\n"y" ]\nb = {\n c = "1"\n}', "f.conf")
    a, b = tree.entries
    assert (a.file, a.line) == ("f.conf", 3)
    assert isinstance(a.value, ListNode)
    assert [item.line for item in a.value.items] == [4, 5]
    assert isinstance(b.value, Block)
    assert (b.line, b.value.entries[0].line) == (6, 7)


def test_tokens_carry_lines() -> None:
    tokens = tokenize('a\n=\n"x"', "f")
    assert [(t.kind, t.text, t.line) for t in tokens] == [
        ("ident", "a", 1), ("=", "=", 2), ("string", "x", 3)
    ]


def test_empty_text_is_an_empty_tree() -> None:
    assert parse("  // nothing\n/* here */\n").entries == ()


# -- errors name file and line -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ('a = "1"\nb = 2', 2, "unquoted"),
        ('a = "1"\n\nb = "x', 3, "never closed"),
        ('a = "1"\n/* x', 2, "never closed"),
        ('# a comment?\na = "1"', 1, "'#'"),
        ('a = "1"\nb = "\\q"', 2, "invalid escape"),
        ('a = "line1\nline2 \\xg1"', 2, "invalid escape"),
        ('a = "1"\nb "2"', 2, "expected '='"),
        ('a = "1"\nb = }', 2, "expected a value"),
        ('a = "1"\n}', 2, "expected a key"),
        ('a = "1",\nb = "2"', 1, "expected a key"),
        ('a = {\nb = "1"\n', 2, "file ends"),
        ('a = [\n"1"\n', 2, "file ends"),
        ('a =\n', 1, "file ends"),
        ('a = "1"\n  @', 2, "unexpected character"),
        ('a = "1"\nb = /var/log', 2, "unquoted"),
        ('1a = "x"', 1, "unquoted"),
    ],
)
def test_syntax_errors_name_file_and_line(text: str, line: int, words: str) -> None:
    error = error_of(text)
    assert (error.file, error.line) == ("t.conf", line)
    assert words in error.message
    assert str(error).startswith(f"t.conf:{line}: ")


def test_error_names_the_key_whose_value_is_wrong() -> None:
    error = error_of('logfile = ]')
    assert error.key == "logfile"


def test_nesting_is_bounded() -> None:
    ok = "a = " + "[" * MAX_NESTING + "]" * MAX_NESTING
    assert isinstance(only(ok).value, ListNode)
    deep = "a = " + "{ b = " * MAX_NESTING + "{}" + "}" * MAX_NESTING
    assert "nested deeper" in error_of(deep).message


def test_read_text_refuses_huge_files(tmp_path: Path) -> None:
    path = tmp_path / "big.conf"
    path.write_bytes(b" " * (MAX_FILE_BYTES + 1))
    with pytest.raises(ConfigError, match="larger than"):
        read_text(str(path))


def test_read_text_reports_invalid_utf8_with_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.conf"
    path.write_bytes(b'a = "1"\nb = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        read_text(str(path))
    assert (info.value.file, info.value.line) == (str(path), 2)


def test_read_text_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    """A FIFO has no writer here: a blocking open would never return."""
    fifo = tmp_path / "fifo.conf"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file") as info:
        read_text(str(fifo))
    assert info.value.file == str(fifo)


def test_read_text_refuses_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        read_text(str(tmp_path))
    assert info.value.file == str(tmp_path)


def test_fifo_include_names_the_fifo_and_the_including_line(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.conf")
    (tmp_path / "m.conf").write_text('a = "1"\ninclude = "fifo.conf"\n')
    with pytest.raises(ConfigError, match="not a regular file") as info:
        load(str(tmp_path / "m.conf"))
    assert (info.value.file, info.value.line) == (str(tmp_path / "m.conf"), 2)
    assert "fifo.conf" in info.value.message


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(str(tmp_path / "absent.conf"))


# -- includes -------------------------------------------------------------------------------


def test_include_is_spliced_in_place() -> None:
    tree = load(str(DATA / "main-with-include.conf"))
    keys = [entry.key for entry in tree.entries]
    assert keys == ["logfile", "portconf", "plugin-logJSON"]
    assert tree.entries[1].file.endswith("ports.conf")


def test_include_is_relative_to_the_including_file() -> None:
    cwd = os.getcwd()
    os.chdir("/")
    try:
        tree = load(str(DATA / "include-subdir.conf"))
    finally:
        os.chdir(cwd)
    (entry,) = tree.entries
    assert (entry.key, plain(entry.value)) == ("pidfile", "leaf.pid")
    assert entry.file.endswith(os.path.join("sub", "leaf.conf"))


def test_include_list_of_files(tmp_path: Path) -> None:
    (tmp_path / "a.conf").write_text('a = "1"')
    (tmp_path / "b.conf").write_text('b = "2"')
    (tmp_path / "m.conf").write_text('x = "0"\ninclude = ["a.conf", "b.conf"]\ny = "3"')
    assert plain(load(str(tmp_path / "m.conf"))) == [("x", "0"), ("a", "1"), ("b", "2"),
                                                      ("y", "3")]


def test_include_loop_is_an_error_at_the_closing_include() -> None:
    with pytest.raises(ConfigError) as info:
        load(str(DATA / "loop-a.conf"))
    error = info.value
    assert error.file is not None and error.file.endswith("loop-b.conf")
    assert (error.line, error.key) == (2, "include")
    assert "loop" in error.message and "loop-a.conf -> " in error.message


def test_self_include_is_a_loop() -> None:
    with pytest.raises(ConfigError, match="include loop"):
        load(str(DATA / "self-loop.conf"))


def test_include_depth_is_bounded(tmp_path: Path) -> None:
    for level in range(MAX_INCLUDE_DEPTH + 2):
        (tmp_path / f"{level}.conf").write_text(f'include = "{level + 1}.conf"')
    (tmp_path / f"{MAX_INCLUDE_DEPTH + 2}.conf").write_text('a = "1"')
    with pytest.raises(ConfigError, match="deeper than"):
        load(str(tmp_path / "0.conf"))


def test_missing_include_names_the_including_line(tmp_path: Path) -> None:
    (tmp_path / "m.conf").write_text('a = "1"\ninclude = "nope.conf"\n')
    with pytest.raises(ConfigError) as info:
        load(str(tmp_path / "m.conf"))
    assert (info.value.file, info.value.line, info.value.key) == (
        str(tmp_path / "m.conf"), 2, "include")
    assert "nope.conf" in info.value.message


def test_syntax_error_in_included_file_names_that_file(tmp_path: Path) -> None:
    (tmp_path / "bad.conf").write_text('\n\nx = oops')
    (tmp_path / "m.conf").write_text('include = "bad.conf"')
    with pytest.raises(ConfigError) as info:
        load(str(tmp_path / "m.conf"))
    assert (info.value.file, info.value.line) == (str(tmp_path / "bad.conf"), 3)


@pytest.mark.parametrize("text", ['include = ""', "include = {}", "include = [{}]"])
def test_include_needs_a_file_name(text: str) -> None:
    with pytest.raises(ConfigError, match="file name"):
        load("m.conf", read=lambda path: text)


def test_include_inside_a_block_is_an_error() -> None:
    with pytest.raises(ConfigError, match="top level") as info:
        load("m.conf", read=lambda path: 'portconf = {\n include = "x"\n}')
    assert info.value.line == 2


def test_load_uses_the_given_reader_without_disk() -> None:
    files = {"/c/m.conf": 'include = "p.conf"', "/c/p.conf": 'a = "1"'}
    assert plain(load("/c/m.conf", read=files.__getitem__)) == [("a", "1")]


# -- fuzz: a tree or a ConfigError, nothing else ------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_fuzz_arbitrary_text(text: str) -> None:
    try:
        parse(text)
    except ConfigError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary())
def test_fuzz_arbitrary_bytes_decoded(data: bytes) -> None:
    try:
        parse(data.decode("latin-1"))
    except ConfigError:
        pass


PIECES = ["a", "plugin-X", "include", "=", "[", "]", "{", "}", ",", '"x"', '""', '"\\x4"',
          '"\\n"', "//c\n", "/*", "*/", "\n", " ", '"', "\\", "#", "1"]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=40))
def test_fuzz_token_soup(pieces: list[str]) -> None:
    """Near-miss texts reach the parser's deeper states; includes go to a reader of nothing."""
    text = " ".join(pieces)

    def read(path: str) -> str:
        return text if path == "m.conf" else ""

    try:
        load("m.conf", read=read)
    except ConfigError:
        pass


def render_string(value: str) -> str:
    out = []
    for char in value:
        if char in '"\\':
            out.append("\\" + char)
        elif char == "\0":
            out.append("\\0")
        elif ord(char) < 32:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def render(value: object) -> str:
    if isinstance(value, str):
        return render_string(value)
    if isinstance(value, list) and all(isinstance(item, tuple) for item in value) and value:
        return "{ " + " ".join(f"{k} = {render(v)}" for k, v in value) + " }"
    assert isinstance(value, list)
    return "[" + ", ".join(render(item) for item in value) + "]"


KEYS = st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,8}", fullmatch=True)
VALUES = st.recursive(
    st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3)
    | st.lists(st.tuples(KEYS, inner), min_size=1, max_size=3),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(KEYS, VALUES), max_size=5))
def test_rendered_trees_parse_back_to_themselves(entries: list[tuple[str, object]]) -> None:
    text = "\n".join(f"{key} = {render(value)}" for key, value in entries)
    assert plain(parse(text)) == entries
