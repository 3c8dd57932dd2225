"""Docstrings and comments cite only files the repository has (or say whose they are)."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("honeytrap", "plugins", "tests", "bench")
# A path in the repository: one of its top-level directories, then more of a path.
_PATH = re.compile(
    r"(?<![\w/.-])((?:honeytrap|plugins|tests|docs|bench|etc|man|templates)/[\w./-]*\w)"
)
# A file named without its directory: it must be somewhere in the repository.
_FILE = re.compile(r"(?<![\w/.-])([A-Za-z_]\w*\.(?:py|md|sh))\b")
# Files of others that the code cites by name, with whose they are.
EXTERNAL = {
    "JA4.md": "FoxIO-LLC/ja4, technical_details/JA4.md: the JA4 specification",
    "rules.sh": "T-Pot's host firewall script (telekom-security/tpotce)",
}
# Made by the build (setup.py maps the data into the package) or by runs (bench's output).
GENERATED = ("honeytrap/data", "bench/results")


def prose(source: Path) -> str:
    """The docstrings and comments of a module, nothing else (code and test data left out)."""
    text = source.read_text()
    parts = [tok.string for tok in tokenize.generate_tokens(io.StringIO(text).readline)
             if tok.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node)
            if doc:
                parts.append(doc)
    return "\n".join(parts)


def sources() -> list[Path]:
    return sorted(p for top in SOURCES for p in (ROOT / top).rglob("*.py")
                  if "__pycache__" not in p.parts and "results" not in p.parts)


def test_every_cited_path_exists() -> None:
    missing = {}
    for source in sources():
        for ref in _PATH.findall(prose(source)):
            if not ref.startswith(GENERATED) and not (ROOT / ref).exists():
                missing.setdefault(ref, source.relative_to(ROOT).as_posix())
    assert missing == {}


def test_every_cited_file_name_is_in_the_repository_or_named_as_someone_elses() -> None:
    names = {p.name for p in ROOT.rglob("*") if ".git" not in p.parts}
    missing = {}
    for source in sources():
        for name in _FILE.findall(prose(source)):
            if name not in names and name not in EXTERNAL:
                missing.setdefault(name, source.relative_to(ROOT).as_posix())
    assert missing == {}
