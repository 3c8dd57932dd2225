"""Which firewall rules queue packets to an NFQUEUE: read at start, to warn when a queue is fed
but nobody reads it (the kernel drops what a queue without `--queue-bypass` cannot deliver).

Sans-IO parsers of `iptables-save` / `ip6tables-save` output (`-j NFQUEUE [--queue-num N |
--queue-balance A:B] [--queue-bypass]`) and of `nft list ruleset` output (`queue [flags ...]
[num N | to N | N-M] [bypass] [fanout]`), plus a best-effort reader that runs those tools. The
reader never fails: a tool that is missing, refused (no CAP_NET_ADMIN) or slow just contributes
nothing, and the result says which tools answered.
"""

from __future__ import annotations

import logging
import re
import subprocess
from dataclasses import dataclass, field

log = logging.getLogger("honeytrap.monitor.rules")

# The tools read, with the parser of each one's output.
# T-Pot's rules.sh installs its rules with iptables-legacy: read both back ends.
IPTABLES_TOOLS = (("iptables-save",), ("ip6tables-save",), ("iptables-legacy-save",),
                  ("ip6tables-legacy-save",))
NFT_TOOL = ("nft", "list", "ruleset")
# A firewall dump takes milliseconds; a tool stuck on a lock must not hold up the start.
TOOL_TIMEOUT = 5.0
# Output read per tool: a rule set larger than this is truncated (parsing stays bounded).
MAX_OUTPUT = 4 * 1024 * 1024
# The queue a rule without a number uses (iptables-extensions(8), nft(8)).
DEFAULT_QUEUE = 0

_IPT_NUM = re.compile(r"--queue-num\s+(\d+)")
_IPT_BALANCE = re.compile(r"--queue-balance\s+(\d+):(\d+)")
# nft: `queue`, then optional `flags a,b`, then optional `num X` or `to X`, X = N or N-M.
_NFT_QUEUE = re.compile(
    r"(?:^|\s)queue(?:\s+flags\s+(?P<flags>[\w,]+))?(?:\s+(?:num|to)\s+(?P<low>\d+)"
    r"(?:-(?P<high>\d+))?)?(?P<rest>(?:\s+(?:bypass|fanout))*)(?=\s|$|;)"
)


@dataclass(frozen=True)
class QueueRule:
    """One rule that queues packets to NFQUEUE numbers `low`..`high`."""

    source: str  # the tool whose output showed it
    low: int
    high: int
    bypass: bool  # without a reader, the kernel lets the packet pass instead of dropping it
    text: str  # the rule as the tool printed it

    def feeds(self, queue: int) -> bool:
        return self.low <= queue <= self.high


@dataclass
class QueueRules:
    rules: list[QueueRule] = field(default_factory=list)
    read: list[str] = field(default_factory=list)  # tools that answered

    def dropping(self, queue: int) -> list[QueueRule]:
        """Rules that queue to `queue` without bypass: with no reader, their packets are lost."""
        return [r for r in self.rules if r.feeds(queue) and not r.bypass]


def parse_iptables_save(text: str, source: str = "iptables-save") -> list[QueueRule]:
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("-A ") or not re.search(r"-j\s+NFQUEUE\b", line):
            continue
        low = high = DEFAULT_QUEUE
        if balance := _IPT_BALANCE.search(line):
            low, high = int(balance.group(1)), int(balance.group(2))
        elif num := _IPT_NUM.search(line):
            low = high = int(num.group(1))
        rules.append(QueueRule(source, low, high, "--queue-bypass" in line, line))
    return rules


def parse_nft_ruleset(text: str, source: str = "nft") -> list[QueueRule]:
    rules = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith(("type ", "chain ", "table ", "set ", "map ")):
            continue
        match = _NFT_QUEUE.search(line)
        if match is None:
            continue
        low = int(match.group("low")) if match.group("low") else DEFAULT_QUEUE
        high = int(match.group("high")) if match.group("high") else low
        flags = (match.group("flags") or "").split(",") + match.group("rest").split()
        rules.append(QueueRule(source, low, high, "bypass" in flags, line))
    return rules


def _run(argv: tuple[str, ...]) -> str | None:
    try:
        proc = subprocess.run(  # noqa: S603 - fixed argv, no shell
            argv, capture_output=True, timeout=TOOL_TIMEOUT, check=False, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("cannot read the firewall with %s: %s", argv[0], type(exc).__name__)
        return None
    if proc.returncode != 0:
        # Its message (often a refusal, without CAP_NET_ADMIN) is not ours to repeat.
        log.debug("%s exited with status %d", argv[0], proc.returncode)
        return None
    return proc.stdout[:MAX_OUTPUT].decode(errors="replace")


def read_queue_rules() -> QueueRules:
    """The queue rules of this network namespace, from whichever tools answer."""
    found = QueueRules()
    for argv in IPTABLES_TOOLS:
        text = _run(argv)
        if text is not None:
            found.read.append(argv[0])
            found.rules += parse_iptables_save(text, argv[0])
    text = _run(NFT_TOOL)
    if text is not None:
        found.read.append("nft")
        found.rules += parse_nft_ruleset(text)
    return found
