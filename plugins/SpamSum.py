"""SpamSum (ANALYZE): fuzzy hashes (ssdeep) of the attack string and of the samples.

The original computed Tridgell's spamsum of each attack string, appended new MD5 sums to
`md5sum_sigfile` and new spamsums to `spamsum_sigfile`, and logged the best match score against
the spamsums seen before (stopping at 90). We hash with ssdeep (ppdeep: spamsum's maintained
successor, same "blocksize:hash:hash" form), also hash the samples (downloads), keep the same two
files with the same behaviour, and put the result in the record instead of only the log. It runs
in ANALYZE so the savers and loggers see it: configure it after the downloaders.

Options (the original's; both optional, without them only the hashes are recorded):
    md5sum_sigfile  = "/opt/honeytrap/md5sum.sigs"    one MD5 a line, learnt as attacks arrive
    spamsum_sigfile = "/opt/honeytrap/spamsum.sigs"   one ssdeep hash a line, learnt likewise
    threshold       = "90"                            score (0-100) that counts as "similar"

The record, on the root attack: analysis["SpamSum"][<md5>] = {"source", "ssdeep", "truncated",
"md5_known", "best_score", "best_match", "similar"} for the payload, each virtual payload
and each sample.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import ppdeep

from honeytrap.attack import Attack, Payload
from honeytrap.errors import PluginError
from honeytrap.plugin import PluginContext

# The original's hard-coded threshold: the search stops at the first hash scoring this well.
DEFAULT_THRESHOLD = 90
# Signatures kept in memory per file; a file beyond this is still appended to, not read further.
MAX_SIGNATURES = 200_000
# Bytes read from a signature file per refresh (the file grows as other servers append).
MAX_REFRESH_BYTES = 16 * 1024 * 1024
# ppdeep is pure Python (about 1 s per MiB here): data past this is not hashed, and the
# record says so ("truncated"). 16 MiB is httpDownload's sample cap, so samples hash whole.
MAX_HASH_BYTES = 16 * 1024 * 1024
# A line longer than this is not an MD5 or ssdeep hash (ssdeep: at most ~150 characters).
MAX_LINE = 512


class SigFile:
    """A signature file shared with other processes: read incrementally, appended atomically
    (one os.write on an O_APPEND descriptor, so concurrent servers never interleave lines)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.known: set[str] = set()
        self.by_blocksize: dict[int, list[str]] = {}
        self._offset = 0
        self._lock = threading.Lock()

    def create(self, uid: int, gid: int) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            if uid >= 0 or gid >= 0:
                os.fchown(fd, uid, gid)  # writable after the privilege drop
        finally:
            os.close(fd)

    def refresh(self) -> None:
        with self._lock:
            if len(self.known) >= MAX_SIGNATURES:
                return
            with open(self.path, "rb") as handle:
                handle.seek(self._offset)
                chunk = handle.read(MAX_REFRESH_BYTES)
            end = chunk.rfind(b"\n") + 1  # only whole lines; the rest is read next time
            self._offset += end
            for raw in chunk[:end].splitlines():
                line = raw.strip().decode("ascii", errors="replace")
                if line and len(line) <= MAX_LINE:
                    self._add(line)

    def _add(self, line: str) -> None:
        if line in self.known or len(self.known) >= MAX_SIGNATURES:
            return
        self.known.add(line)
        blocksize = _blocksize(line)
        if blocksize and line.count(":") == 2:  # else ppdeep refuses it ("Invalid hash format")
            self.by_blocksize.setdefault(blocksize, []).append(line)

    def append(self, line: str) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, line.encode("ascii") + b"\n")
        finally:
            os.close(fd)

    def best_match(self, digest: str, threshold: int) -> tuple[int, str | None]:
        """The best ssdeep score among comparable hashes (block size equal, half or double)."""
        blocksize = _blocksize(digest)
        best, best_line = 0, None
        with self._lock:
            for size in (blocksize, blocksize * 2, blocksize // 2):
                for line in self.by_blocksize.get(size, ()):
                    try:
                        score = int(ppdeep.compare(digest, line))
                    except ValueError:  # a line of the file that is not an ssdeep hash
                        continue
                    if score > best:
                        best, best_line = score, line
                        if best >= threshold:
                            return best, best_line
        return best, best_line


def _blocksize(digest: str) -> int:
    head = digest.split(":", 1)[0]
    return int(head) if head.isdigit() and len(head) < 12 else 0


def _ids(name: str, lookup: Any) -> int:
    if not name:
        return -1
    try:
        return int(lookup(name)[2])
    except KeyError:
        return -1


class SpamSum:
    def __init__(self, ctx: PluginContext) -> None:
        import grp
        import pwd

        self.log = ctx.log
        self.threshold = ctx.option_int("threshold", DEFAULT_THRESHOLD)
        if not 0 <= self.threshold <= 100:
            raise PluginError(f"plugin {ctx.name}: threshold must be 0..100")
        self.md5s: SigFile | None = None
        self.sums: SigFile | None = None
        uid = _ids(ctx.config.user, pwd.getpwnam)
        gid = _ids(ctx.config.group, grp.getgrnam)
        for key in ("md5sum_sigfile", "spamsum_sigfile"):
            if key not in ctx.options:
                continue
            sigfile = SigFile(ctx.option(key))
            try:
                sigfile.create(uid, gid)
                sigfile.refresh()
            except OSError as exc:
                raise PluginError(f"plugin {ctx.name}: {key} {sigfile.path}: {exc}") from exc
            if key == "md5sum_sigfile":
                self.md5s = sigfile
            else:
                self.sums = sigfile

    def analyze(self, attack: Attack) -> None:
        root = attack.root
        results: dict[str, Any] = dict(root.analysis.get("SpamSum", {}))
        items = [("virtual payload" if attack.is_virtual else "payload", attack.payload)]
        items += [("download", d.payload.data) for d in attack.downloads]
        for source, data in items:
            payload = Payload(data)
            if not data or payload.md5 in results:
                continue
            results[payload.md5] = self._hash(source, payload)
        root.set_analysis("SpamSum", results)

    def followup(self, attack: Attack) -> None:
        """The samples downloaded after the attack was recorded (the download pool)."""
        results: dict[str, Any] = dict(attack.analysis.get("SpamSum", {}))
        for download in list(attack.downloads):
            if download.payload.size and download.payload.md5 not in results:
                results[download.payload.md5] = self._hash("download", download.payload)
        attack.set_analysis("SpamSum", results)

    def _hash(self, source: str, payload: Payload) -> dict[str, Any]:
        digest = str(ppdeep.hash(payload.data[:MAX_HASH_BYTES]))
        result: dict[str, Any] = {
            "source": source,
            "ssdeep": digest,
            "truncated": payload.size > MAX_HASH_BYTES,
            "md5_known": False,
            "best_score": 0,
            "best_match": None,
            "similar": False,
        }
        try:
            if self.md5s is not None:
                self.md5s.refresh()
                result["md5_known"] = payload.md5 in self.md5s.known
                if not result["md5_known"]:
                    self.md5s.append(payload.md5)
            if result["md5_known"]:
                # Seen before, byte for byte (the original stopped here too).
                result.update(best_score=100, best_match=digest, similar=True)
            elif self.sums is not None:
                self.sums.refresh()
                score, line = self.sums.best_match(digest, self.threshold)
                result.update(best_score=score, best_match=line, similar=score >= self.threshold)
                if digest not in self.sums.known:
                    self.sums.append(digest)
        except OSError as exc:
            self.log.warning("signature file: %s", exc)
        return result


def load(ctx: PluginContext) -> SpamSum:
    return SpamSum(ctx)
