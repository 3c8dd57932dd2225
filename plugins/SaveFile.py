"""SaveFile: the attack string and every downloaded sample to disk (the original's SaveFile).

Options (as the original's): `attacks_dir`, `downloads_dir`.

At SAVEDATA:
- the attack string goes to `attacks_dir/from_port_<port>-<proto>_<YYYY-MM-DDTHHMMSS>_<id>`
  (UTC start time, the attack's id): made from our own data only, never from attacker bytes,
  and unique by construction. The original put the pid in the name and created it exclusively:
  with a fork per connection, pids wrapped and about one attack in ten was lost.
  Attacks with no data are not saved (as the original). Virtual attacks are not saved: their
  data is decoded from the root attack's, which is.
- each download's payload goes to `downloads_dir/<md5>` (the original's naming, without its
  attacker-chosen file name suffix): one file per content, published by rename so a reader
  never sees half a sample.
Files are complete before their names appear (outfile.write_new). While a file cannot be
written (a full disk), it waits in memory with the later ones, in order, and is written when
space returns (backlog.py); its path is recorded at once (the name is known in advance).
The paths are recorded as `attack.analysis["SaveFile"]`, so logJSON (POSTPROC) lists them.
At FOLLOWUP (the downloads ended after the attack was saved) the samples are saved the same
way and their paths added there, so logJSON's follow-up line lists them.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from hashlib import sha256

from honeytrap import outfile
from honeytrap.attack import Attack, Payload
from honeytrap.backlog import Backlog
from honeytrap.plugin import PluginContext

# Attack ids are uuid4 hex; anything else (a plugin's own id) is hashed into a safe name part.
_SAFE_ID = re.compile(r"[A-Za-z0-9]{1,64}")
_PROTOCOLS = frozenset({"tcp", "udp", "raw"})
_stamp = outfile.utc_formatter("%Y-%m-%dT%H%M%S")


class SaveFile:
    def __init__(self, ctx: PluginContext) -> None:
        self.log = ctx.log
        self.attacks_path = ctx.option("attacks_dir")
        self.downloads_path = ctx.option("downloads_dir")
        owner = outfile.server_owner(ctx.config, ctx.name)
        self.attacks_fd: int | None = outfile.open_directory(self.attacks_path, owner, ctx.name)
        try:
            self.downloads_fd: int | None = outfile.open_directory(
                self.downloads_path, owner, ctx.name
            )
        except BaseException:
            outfile.close_fd(self.attacks_fd)
            raise
        self.backlog = Backlog(ctx.name, f"{self.attacks_path} and {self.downloads_path}", ctx.log)

    def savedata(self, attack: Attack) -> None:
        result: dict[str, object] = {}
        if not attack.is_virtual and attack.payload:
            result["attack_file"] = self._save_attack(attack)
        samples = self._save_downloads(attack)
        if samples:
            result["downloads"] = samples
        if result:
            attack.set_analysis("SaveFile", result)

    def followup(self, attack: Attack) -> None:
        """The samples downloaded after the attack was saved."""
        samples = self._save_downloads(attack)
        if samples:
            previous = attack.analysis.get("SaveFile")
            result = dict(previous) if isinstance(previous, dict) else {}
            result["downloads"] = samples
            attack.set_analysis("SaveFile", result)

    def _save_attack(self, attack: Attack) -> str:
        assert self.attacks_fd is not None, "savedata after close"
        dir_fd, base, payload = self.attacks_fd, attack_file_name(attack), attack.payload
        saved = [base]

        def write() -> None:
            saved[0] = outfile.write_new(dir_fd, _candidates(base), payload)
            if saved[0] != base:
                # Only a file left from an earlier run takes the name: names are unique.
                self.log.warning("attack file %s existed already: saved as %s", base, saved[0])

        self.backlog.submit(len(payload), write)
        return f"{self.attacks_path}/{saved[0]}"

    def _save_downloads(self, attack: Attack) -> list[str]:
        assert self.downloads_fd is not None, "savedata after close"
        paths: list[str] = []
        if not attack.downloads:
            return paths  # most attacks: no copy of an empty list
        for download in list(attack.downloads):  # a copy: other hooks may add to it
            payload = download.payload
            if payload.size == 0:
                continue
            self.backlog.submit(payload.size, functools.partial(self._publish, payload))
            paths.append(f"{self.downloads_path}/{payload.md5}")
        return paths

    def _publish(self, payload: Payload) -> None:
        assert self.downloads_fd is not None, "savedata after close"
        if outfile.publish(self.downloads_fd, payload.md5, payload.data):
            self.log.info("sample %s saved (%d bytes)", payload.md5, payload.size)

    def stats(self) -> dict[str, int]:
        return self.backlog.stats()

    def close(self) -> None:
        self.backlog.close()
        outfile.close_fd(self.attacks_fd)
        outfile.close_fd(self.downloads_fd)
        self.attacks_fd = self.downloads_fd = None


def _candidates(base: str) -> Iterator[str]:
    yield base
    for n in range(1, outfile.MAX_NAME_ATTEMPTS):
        yield f"{base}.{n}"


def attack_file_name(attack: Attack) -> str:
    """`from_port_<port>-<proto>_<YYYY-MM-DDTHHMMSS>_<id>`: only our own data in it."""
    conn = attack.attack_connection
    proto = conn.protocol if conn.protocol in _PROTOCOLS else "ip"
    stamp = _stamp(attack.start_time)
    ident = attack.id if _SAFE_ID.fullmatch(attack.id) else sha256(attack.id.encode()).hexdigest()
    return f"from_port_{int(conn.local_port)}-{proto}_{stamp}_{ident}"


def load(ctx: PluginContext) -> SaveFile:
    return SaveFile(ctx)
