"""The built wheel and sdist carry everything honeytrap needs, and an installed wheel runs on
its own: its plugins, templates and default configuration, nothing of this repository."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import REPO, Honeytrap, nfq_rules
from netns import Lab, inside

# What the repository ships inside the package (setup.py: honeytrap/data/<name>/).
DATA_DIRS = ("plugins", "templates", "etc", "man")
# The repository's files that are not source: caches and build output (.gitignore).
IGNORED_PARTS = {"__pycache__", ".git", ".venv", ".mypy_cache", ".ruff_cache", ".pytest_cache",
                 ".hypothesis", "build", "dist", "results", ".ci"}
# The system's Python, which install.sh builds its virtualenv with.
SYSTEM_PYTHON = "/usr/bin/python3"


def shipped(top: str) -> set[str]:
    """Every file under REPO/top, relative to REPO, caches and build output left out."""
    found = set()
    for path in (REPO / top).rglob("*"):
        rel = path.relative_to(REPO)
        if path.is_file() and not IGNORED_PARTS & set(rel.parts) and path.suffix != ".pyc" \
                and not any(p.endswith(".egg-info") for p in rel.parts):
            found.add(rel.as_posix())
    return found


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The sdist and the wheel, built from this tree with `python -m build` (PEP 517)."""
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    yield out


def wheel_of(dist: Path) -> Path:
    (wheel,) = dist.glob("honeytrap-*.whl")
    return wheel


@pytest.mark.slow
def test_wheel_carries_the_package_its_data_licence_and_types(dist: Path) -> None:
    names = set(zipfile.ZipFile(wheel_of(dist)).namelist())
    wanted = shipped("honeytrap")
    for top in DATA_DIRS:
        wanted |= {f"honeytrap/data/{name}" for name in shipped(top)}
    assert wanted - names == set()
    assert {"honeytrap/py.typed", "honeytrap/data/etc/honeytrap.service",
            "honeytrap/data/etc/logrotate.d/honeytrap", "honeytrap/data/man/honeytrap.8",
            "honeytrap/data/etc/honeytrap.conf"} <= names
    (licence,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
    text = zipfile.ZipFile(wheel_of(dist)).read(licence).decode()
    assert "GNU GENERAL PUBLIC LICENSE" in text and "Version 2, June 1991" in text
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


@pytest.mark.slow
def test_sdist_holds_the_tree_its_tests_and_installer_need(dist: Path) -> None:
    (sdist,) = dist.glob("honeytrap-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    wanted = {"LICENSE", "README.md", "INSTALL", "install.sh", "run-tests.sh", "setup.py",
              "pyproject.toml", "debian-packages.txt"}
    for top in ("honeytrap", *DATA_DIRS, "tests", "docs", "bench"):
        wanted |= shipped(top)
    assert wanted - names == set()


# Tests that need nothing but the tree and the shared tools: run from the unpacked sdist, they
# show it holds what its tests need (conftest.py, the helpers, the docs and data they read).
SDIST_TESTS = ("tests/test_confparse.py", "tests/test_manpage.py",
               "tests/test_docs_references.py", "tests/test_plugin_contract.py")


@pytest.mark.slow
def test_tests_run_from_the_unpacked_sdist(dist: Path, tmp_path: Path) -> None:
    (sdist,) = dist.glob("honeytrap-*.tar.gz")
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path, filter="data")
    (tree,) = tmp_path.iterdir()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SDIST_TESTS],
        capture_output=True, text=True, timeout=600, cwd=tree,
        env=dict(os.environ, PYTHONPATH=str(tree)),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    imported = subprocess.run(
        [sys.executable, "-c", "import honeytrap; print(honeytrap.__file__)"],
        capture_output=True, text=True, timeout=60, cwd=tree,
        env=dict(os.environ, PYTHONPATH=str(tree)),
    )
    assert imported.stdout.startswith(str(tree))  # the sdist's code was under test


@pytest.fixture(scope="module")
def installed(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv of the system's Python with the wheel (and its dependencies) only."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(venv)], check=True, timeout=120)
    proc = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(wheel_of(dist))],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return venv


@pytest.mark.slow
def test_installed_package_finds_its_own_data(installed: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(installed / "bin" / "python"), "-c",
         "import honeytrap.resources as r; print(r.plugin_dir()); print(r.template_dir())"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert proc.returncode == 0, proc.stderr
    plugins, templates = proc.stdout.split()
    assert plugins.startswith(str(installed)) and templates.startswith(str(installed))
    assert (Path(plugins) / "logJSON.py").is_file() and (Path(templates) / "21_tcp").is_file()
    printed = subprocess.run(
        [str(installed / "bin" / "honeytrap"), "--print-config"],
        capture_output=True, timeout=60, cwd=tmp_path,
    )
    assert printed.returncode == 0
    assert printed.stdout == (REPO / "etc" / "honeytrap.conf").read_bytes()


@pytest.mark.slow
@pytest.mark.netns
def test_installed_wheel_answers_with_a_shipped_template_and_records_with_logjson(
    lab: Lab, installed: Path, tmp_path: Path
) -> None:
    """The daemon from the fresh virtualenv, with a configuration naming no plugin_dir or
    response_dir: the attack meets the wheel's 21_tcp and reaches the wheel's logJSON."""
    nfq_rules(lab.sensor)
    ht = Honeytrap(
        lab, tmp_path / "ht", program=[str(installed / "bin" / "honeytrap")],
        plugin_dir=None, response_dir=None, args=["-u", "nobody", "-g", "nogroup"],
        plugins=f'plugin-logJSON = {{ logfile = "{tmp_path / "ht" / "attackers.json"}" }}',
    )
    ht.start()
    try:
        with inside(lab.attacker):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect((lab.sensor.ip4, 21))
        banner = sock.recv(4096)
        sock.sendall(b"USER root\r\n")
        sock.shutdown(socket.SHUT_WR)
        sock.close()
        records = ht.wait_records(1)
    finally:
        assert ht.stop() == 0
    assert banner == (REPO / "templates" / "21_tcp").read_bytes()
    assert len(records) == 1
    conn = records[0]["attack_connection"]
    assert isinstance(conn, dict)
    assert bytes.fromhex(conn["payload"]["data_hex"]) == b"USER root\r\n"
    assert "plugin_dir" not in ht.configfile.read_text()
    assert "response_dir" not in ht.configfile.read_text()


@pytest.mark.slow
def test_install_sh_installs_the_wheel_and_a_second_run_upgrades_in_place(
    dist: Path, tmp_path: Path
) -> None:
    """install.sh with --root (system files under a directory of ours, no user, no systemd):
    the wheel with its extras in a venv of /usr/bin/python3, the package's own configuration,
    unit, logrotate snippet and man page; run again, it reuses the venv and keeps the
    configuration."""
    prefix, root = tmp_path / "opt", tmp_path / "root"
    command = [str(REPO / "install.sh"), "--no-apt", "--prefix", str(prefix), "--root",
               str(root), "--wheel", str(wheel_of(dist))]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    first = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert first.returncode == 0, first.stderr
    conf = root / "etc" / "honeytrap" / "honeytrap.conf"
    assert conf.read_bytes() == (REPO / "etc" / "honeytrap.conf").read_bytes()
    unit = (root / "etc" / "systemd" / "system" / "honeytrap.service").read_text()
    assert f"ExecStart={prefix}/bin/honeytrap -D" in unit
    assert (root / "etc" / "logrotate.d" / "honeytrap").is_file()
    assert (root / "usr" / "local" / "share" / "man" / "man8" / "honeytrap.8").is_file()
    assert os.readlink(root / "usr" / "local" / "sbin" / "honeytrap") == f"{prefix}/bin/honeytrap"
    assert os.path.realpath(prefix / "bin" / "python") == os.path.realpath(SYSTEM_PYTHON)
    extras = subprocess.run(
        [str(prefix / "bin" / "python"), "-c", "import psycopg, ppdeep, magic, prometheus_client"],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert extras.returncode == 0, extras.stderr  # submitPostgres, SpamSum, magicPE, metrics

    conf.write_text(conf.read_text() + '\n// edited by the operator\n')
    python = (prefix / "bin" / "python").stat().st_ino
    second = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert second.returncode == 0, second.stderr
    assert conf.read_text().endswith("// edited by the operator\n")
    assert "keeping" in second.stdout
    assert (prefix / "bin" / "python").stat().st_ino == python  # the same venv, upgraded
    version = subprocess.run([str(prefix / "bin" / "honeytrap"), "-v"], capture_output=True,
                             text=True, timeout=60, env=env)
    assert version.stdout.startswith("honeytrap 2.")


@pytest.mark.parametrize("script", ["install.sh", "run-tests.sh"])
def test_shell_scripts_pass_shellcheck(script: str) -> None:
    proc = subprocess.run(["shellcheck", str(REPO / script)], capture_output=True, text=True,
                          timeout=60)
    assert (proc.returncode, proc.stdout) == (0, "")
