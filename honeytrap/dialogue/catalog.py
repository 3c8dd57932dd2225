"""The dialogues a sensor serves, loaded once in the master at start (and on reload).

`Catalog.load` parses every `<port>_<protocol>.dialogue` in the response directory (a broken
file is a ConfigError naming file and line: the daemon does not start with it, a reload keeps
the running catalog), imports the dialogues written in code (below), and makes the per-sensor
material they need (the TLS context) as root. Server processes are forked from the master and
inherit it; they never read the response directory for dialogues.

Which dialogue answers a connection (`Catalog.factory`):
  1. the port's `.dialogue` file (it takes precedence over a raw template beside it);
  2. the code dialogue for the port's well-known protocol (TCP_PORTS, UDP_PORTS), if loaded;
  3. the port's raw template (`<port>_<protocol>`, raw.py: the original's behaviour, kept);
  4. TCP: protocol detection from the client's first bytes (detect.py), by name: a dialogue
     file's `dialogue NAME` (the lowest port's file of that name) or a code module below;
     UDP: the default template.

Dialogues written in code plug in by name: module `honeytrap.dialogue.<name>` for the names in
MODULES. tls and ssh have the agreed classes (TlsDialogue(ctx, choose_inner), SshDialogue(ctx));
the others expose `factory`, a DialogueFactory. A module that is not there leaves its name
unserved (detection then answers as for an unknown protocol).
"""

from __future__ import annotations

import errno
import importlib
import logging
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from honeytrap.config import Config
from honeytrap.dialogue.base import SENSOR_RNG, Context, Dialogue, DialogueFactory
from honeytrap.dialogue.detect import Detector, classify
from honeytrap.dialogue.raw import RawDialogue
from honeytrap.dialogue.script import Script, load_script
from honeytrap.dialogue.text import ScriptDialogue
from honeytrap.errors import ConfigError
from honeytrap.templates import DEFAULT_TEMPLATE

log = logging.getLogger("honeytrap.dialogue")

MODULES = ("tls", "ssh", "mysql", "postgres", "smb", "rdp", "vnc", "dns", "snmp", "sip",
           "ntp", "rpc")
# The class of each code module taking the connection's Context (tls's takes the chooser too);
# a module not listed exposes `factory`, a DialogueFactory.
CLASSES = {"ssh": "SshDialogue", "mysql": "MysqlDialogue", "postgres": "PostgresDialogue",
           "smb": "SmbDialogue", "rdp": "RdpDialogue", "vnc": "VncDialogue"}
# TCP ports whose well-known protocol a code dialogue answers (taking precedence over a raw
# template beside it, as a .dialogue file does): their clients wait for a banner (SSH, MySQL,
# VNC) or open with a binary request no static reply can follow (SMB, RDP, PostgreSQL), or
# send requests on one stream that each want their own response (SIP, RFC 3261 18.3).
TCP_PORTS = {22: "ssh", 2222: "ssh", 3306: "mysql", 5432: "postgres", 139: "smb", 445: "smb",
             3389: "rdp", 5900: "vnc", 5060: "sip"}
# TLS ports whose clients wait for the server after the handshake (RFC 8314 implicit TLS):
# their inner dialogue, chosen when the decrypted stream stays silent.
TLS_SILENT_PORTS = {465: "smtp", 993: "imap", 995: "pop3", 990: "ftp", 992: "telnet"}
# UDP ports whose datagrams a code dialogue answers (its reply echoes what the client checks:
# the DNS id, the SNMP request-id, ...); other UDP ports get their raw template.
UDP_PORTS = {53: "dns", 161: "snmp", 5060: "sip", 123: "ntp", 111: "rpc"}
# A response directory with more dialogue files than this is a mistake (each is parsed at load).
MAX_SCRIPTS = 1024
_NAME = re.compile(r"([0-9]{1,5})_(tcp|udp)\.dialogue")


def load_catalog(config: Config) -> Catalog:
    """The catalog for a configuration (ConfigError naming file and line for a bad dialogue)."""
    return Catalog.load(config.response_dir, state_dir=str(getattr(config, "state_dir", "")),
                        template_repeat=config.template_repeat)


def _tls_context(tls: ModuleType, state_dir: str, hostname: str) -> Any:
    """The sensor's TLS context, its certificate kept in state_dir; where state_dir cannot be
    written (a read-only root without a volume for it: T-Pot's container as it is), a
    certificate made for this start only, and a warning (errno's name: T-Pot's health check
    treats the kernel's wording as a failure)."""
    try:
        return tls.server_context(state_dir, hostname)
    except OSError as exc:
        if not state_dir or exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        log.warning("TLS certificate not kept: state_dir %s cannot be written (%s); "
                    "a new one for this start", state_dir, errno.errorcode[exc.errno])
        return tls.server_context("", hostname)


@dataclass
class Catalog:
    scripts: dict[tuple[str, int], Script] = field(default_factory=dict)
    by_name: dict[str, Script] = field(default_factory=dict)
    modules: dict[str, ModuleType] = field(default_factory=dict)
    hostname: str = "localhost"
    extra: dict[str, Any] = field(default_factory=dict)
    template_repeat: int = 10
    state_dir: str = ""

    @classmethod
    def load(cls, response_dir: str, *, state_dir: str = "", template_repeat: int = 10,
             hostname: str = "") -> Catalog:
        catalog = cls(hostname=hostname or socket.gethostname() or "localhost",
                      template_repeat=template_repeat, state_dir=state_dir)
        catalog._load_scripts(response_dir)
        for name in MODULES:
            try:
                catalog.modules[name] = importlib.import_module(f"honeytrap.dialogue.{name}")
            except ImportError:
                continue
        tls = catalog.modules.get("tls")
        if tls is not None:
            try:
                catalog.extra["tls_context"] = _tls_context(tls, state_dir, catalog.hostname)
            except (OSError, ValueError) as exc:
                log.error("TLS disabled: no server context (%s)", exc)
                del catalog.modules["tls"]
        return catalog

    def _load_scripts(self, response_dir: str) -> None:
        try:
            names = sorted(os.listdir(response_dir))
        except OSError as exc:
            log.warning("response directory %s unreadable (%s): no dialogues", response_dir,
                        exc.strerror)
            return
        found = [(m.group(2), int(m.group(1)), n) for n in names if (m := _NAME.fullmatch(n))]
        if len(found) > MAX_SCRIPTS:
            raise ConfigError(f"{response_dir}: over {MAX_SCRIPTS} dialogue files")
        for protocol, port, filename in sorted(found):
            if not 0 < port < 65536:
                raise ConfigError(f"{response_dir}/{filename}: port {port} is not 1..65535")
            script = load_script(os.path.join(response_dir, filename))
            self.scripts[(protocol, port)] = script
            if protocol == "tcp":
                self.by_name.setdefault(script.name, script)

    # --- per connection ---------------------------------------------------------------------

    def context(self, protocol: str, port: int, read_limit: int, local_addr: str = "",
                remote_addr: str = "", remote_port: int = 0) -> Context:
        # Once per connection: by position, in Context's field order (keywords cost ~0.4 us
        # more, timeit; tests/test_dialogues.py checks each field lands where it belongs).
        return Context(protocol, port, read_limit, SENSOR_RNG, self.hostname, self.state_dir,
                       self.extra, local_addr, remote_addr, remote_port)

    def factory(self, port: int, template: bytes | None) -> DialogueFactory:
        """What answers a TCP connection to port (see the module's docstring); template is the
        port's raw template, None when it has none."""
        script = self.scripts.get(("tcp", port))
        if script is not None:
            return lambda ctx: ScriptDialogue(script, ctx)
        code = self.named(TCP_PORTS.get(port, ""), scripts=False)
        if code is not None:
            return code
        if template is not None:
            return lambda ctx: RawDialogue(template, ctx, self.template_repeat)
        return self.detector

    def udp_factory(self, port: int) -> DialogueFactory | None:
        """The dialogue answering a UDP port's datagrams, None for its raw template."""
        script = self.scripts.get(("udp", port))
        if script is not None:
            return lambda ctx: ScriptDialogue(script, ctx)
        return self.named(UDP_PORTS.get(port, ""))

    def detector(self, ctx: Context) -> Dialogue:
        # Bound methods taking the context, not two closures made per connection.
        return Detector(ctx, self._detected, self._unknown)

    def _detected(self, name: str, ctx: Context) -> Dialogue | None:
        factory = self.named(name)
        return factory(ctx) if factory is not None else None

    def _unknown(self, ctx: Context) -> Dialogue:
        return RawDialogue(DEFAULT_TEMPLATE, ctx, self.template_repeat)

    def named(self, name: str, scripts: bool = True) -> DialogueFactory | None:
        """The dialogue served for a protocol name, None if none is."""
        script = self.by_name.get(name) if scripts else None
        if script is not None:
            return lambda ctx: ScriptDialogue(script, ctx)
        module = self.modules.get(name)
        if module is None:
            return None
        if name == "tls":
            return lambda ctx: module.TlsDialogue(ctx, self.chooser(ctx))
        cls = getattr(module, CLASSES.get(name, ""), None) or getattr(module, "factory", None)
        return cls if callable(cls) else None

    def chooser(self, ctx: Context) -> Callable[[bytes], Dialogue]:
        """TLS's choose_inner: the dialogue for the first decrypted bytes (b"": the client
        waits for a banner, so detection goes on, silent)."""

        def choose(data: bytes) -> Dialogue:
            name = classify(data) if data else TLS_SILENT_PORTS.get(ctx.port)
            factory = self.named(name) if name is not None and name != "tls" else None
            if factory is not None:
                return factory(ctx)
            if data:
                return RawDialogue(DEFAULT_TEMPLATE, ctx, self.template_repeat)
            return self.detector(ctx)

        return choose
