"""ssh_config, resolved the way OpenSSH resolves it.

When the ``ssh`` client is installed, ``ssh -G`` gives the exact answer (``Include``,
``Match``, ``Host`` order, tokens and all); it runs once per distinct host, and only when
there is a user config to read (``--ssh-config FILE``, else ``~/.ssh/config``): with none,
nothing is looked up. Without the client, paramiko's parser is used, and directives it
cannot honour are refused with a clear message rather than ignored.

Like ``--ssh-config``, only the user's file is read (``ssh -F``): the system-wide
``/etc/ssh/ssh_config`` is not, so a distribution's defaults there (Debian hashes
known_hosts) do not change what hostops does.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import re
import shutil
import subprocess
from typing import Dict, List, Optional, Sequence, Tuple

from hostops.errors import UsageError

#: What hostops takes from ssh_config (lower case, as ``ssh -G`` prints them).
USED = ("hostname", "port", "user", "identityfile", "identitiesonly", "connecttimeout", "serveraliveinterval",
        "userknownhostsfile", "stricthostkeychecking", "hostkeyalias", "proxyjump", "proxycommand",
        "hashknownhosts")
#: Directives paramiko's parser cannot honour (checked only when the ssh client is missing).
UNSUPPORTED_WITHOUT_SSH = ("include", "proxycommand", "canonicalizehostname", "localcommand",
                           "permitlocalcommand", "knownhostscommand")
_DEFAULT_IDENTITIES = ("~/.ssh/id_rsa", "~/.ssh/id_ecdsa", "~/.ssh/id_ecdsa_sk", "~/.ssh/id_ed25519",
                       "~/.ssh/id_ed25519_sk", "~/.ssh/id_xmss", "~/.ssh/id_dsa")


@dataclasses.dataclass(frozen=True)
class HostConfig:
    """What ssh_config says about one host (None: it says nothing)."""

    hostname: Optional[str] = None
    port: Optional[int] = None
    user: Optional[str] = None
    identity_files: Tuple[str, ...] = ()
    identities_only: bool = False
    connect_timeout: Optional[float] = None
    keepalive: Optional[float] = None
    known_hosts: Tuple[str, ...] = ()
    host_key_policy: Optional[str] = None
    host_key_alias: Optional[str] = None
    proxy_jump: Optional[str] = None
    hash_known_hosts: Optional[bool] = None


class Resolver:
    """Looks hosts up in the user's ssh_config; one ``ssh -G`` per distinct host."""

    def __init__(self, path: Optional[str] = None):
        explicit = path is not None
        self.path = os.path.expanduser(path or "~/.ssh/config")
        if not os.path.exists(self.path):
            if explicit:
                raise UsageError(f"--ssh-config {self.path}: no such file")
            self.path = None  # type: ignore[assignment]
        self.ssh = shutil.which("ssh")
        self._cache: Dict[Tuple, HostConfig] = {}
        self._paramiko = None
        if self.path and not self.ssh:
            self._paramiko = self._load_paramiko(self.path)

    @property
    def active(self) -> bool:
        return self.path is not None

    def lookup_many(self, queries: Sequence[Tuple[str, Optional[int], Optional[str]]]) -> List[HostConfig]:
        """Look up (host, port, user) queries; distinct ones run ``ssh -G`` in parallel."""
        if not self.active:
            return [HostConfig() for _ in queries]
        todo = [q for q in dict.fromkeys(queries) if q not in self._cache]
        if todo and self.ssh:
            with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, len(todo))) as pool:
                for q, cfg in zip(todo, pool.map(lambda q: self._ssh_g(*q), todo)):
                    self._cache[q] = cfg
        for q in todo:
            if q not in self._cache:
                self._cache[q] = self._from_paramiko(q[0])
        return [self._cache[q] for q in queries]

    def lookup(self, host: str, port: Optional[int] = None, user: Optional[str] = None) -> HostConfig:
        return self.lookup_many([(host, port, user)])[0]

    # ---------------------------------------------------------------- ssh -G
    def _ssh_g(self, host: str, port: Optional[int], user: Optional[str]) -> HostConfig:
        assert self.ssh is not None, "ssh -G is only asked when the ssh client was found"
        argv: List[str] = [self.ssh, "-G", "-F", self.path]
        if port:
            argv += ["-p", str(port)]
        if user:
            argv += ["-l", user]
        argv += ["--", host]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=15, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise UsageError(f"ssh -G {host} failed ({exc}); check {self.path}") from None
        if proc.returncode != 0:
            first = (proc.stderr.strip().splitlines() or ["no output"])[0]
            raise UsageError(f"{self.path}: ssh could not read it for {host}: {first}")
        values: Dict[str, List[str]] = {}
        for line in proc.stdout.splitlines():
            key, _, value = line.partition(" ")
            if key in USED:
                values.setdefault(key, []).append(value.strip())
        return _host_config(values, host, self.path)

    # ---------------------------------------------------------------- paramiko fallback
    @staticmethod
    def _load_paramiko(path: str):
        with open(path, encoding="utf-8", errors="replace") as fh:
            for lineno, line in enumerate(fh, 1):
                word = line.strip().split(None, 1)[0].lower() if line.strip() else ""
                word = word.split("=", 1)[0]
                if word in UNSUPPORTED_WITHOUT_SSH or (word == "match" and " exec" in line.lower()):
                    raise UsageError(
                        f"{path}:{lineno}: {line.strip().split()[0]} cannot be honoured without the ssh client "
                        "(install openssh-client so hostops can ask 'ssh -G'), and hostops will not ignore it")
        from paramiko import SSHConfig

        try:
            return SSHConfig.from_path(path)
        except Exception as exc:  # noqa: BLE001  paramiko's parser raises many types: each is the file's fault
            raise UsageError(f"cannot read ssh config {path}: {exc}") from None

    def _from_paramiko(self, host: str) -> HostConfig:
        found = self._paramiko.lookup(host) if self._paramiko is not None else {}
        values = {k: (v if isinstance(v, list) else [str(v)]) for k, v in found.items() if k in USED}
        if "identityfile" not in values:
            values["identityfile"] = []
        return _host_config(values, host, self.path or "ssh_config", explicit_only=True)


def _host_config(values: Dict[str, List[str]], host: str, path: str, explicit_only: bool = False) -> HostConfig:
    def one(key: str) -> Optional[str]:
        v = values.get(key)
        return v[0] if v else None

    if one("proxycommand") and one("proxycommand") != "none":
        raise UsageError(f"{path}: ProxyCommand is set for {host}; hostops does not run local commands to "
                         "connect: use ProxyJump instead")
    identities = [os.path.expanduser(p) for p in values.get("identityfile", [])]
    if not explicit_only:  # ssh -G lists its defaults too (home from passwd): keep what the config chose
        identities = [p for p in identities if not _is_default(p, _DEFAULT_IDENTITIES)]
    policy = {"true": "strict", "yes": "strict", "ask": "strict", "accept-new": "accept-new",
              "false": "off", "no": "off", "off": "off"}.get((one("stricthostkeychecking") or "").lower())
    known = tuple(os.path.expanduser(p) for v in values.get("userknownhostsfile", []) for p in v.split())
    default_known = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")
    if len(known) == 2 and all(_is_default(p, (d,)) for p, d in zip(known, default_known)):
        known = ()
    timeout = one("connecttimeout")
    alive = one("serveraliveinterval")
    jump = one("proxyjump")
    port = one("port")
    return HostConfig(
        hostname=one("hostname"),
        port=int(port) if port and port.isdigit() else None,
        user=one("user"),
        identity_files=tuple(identities),
        identities_only=(one("identitiesonly") or "no").lower() == "yes",
        connect_timeout=float(timeout) if timeout and re.fullmatch(r"\d+(\.\d+)?", timeout) else None,
        keepalive=float(alive) if alive and alive.isdigit() and int(alive) > 0 else None,
        known_hosts=known,
        host_key_policy=policy,
        host_key_alias=one("hostkeyalias") if one("hostkeyalias") not in (None, "none") else None,
        proxy_jump=jump if jump and jump != "none" else None,
        hash_known_hosts=((one("hashknownhosts") or "").lower() == "yes") if one("hashknownhosts") else None,
    )


def _is_default(path: str, defaults: Sequence[str]) -> bool:
    """``path`` is one of OpenSSH's defaults (``~/.ssh/…``), wherever ``~`` was expanded to."""
    return any(path == os.path.expanduser(d) or path.endswith("/" + d[2:]) for d in defaults)


_JUMP_HOP = re.compile(r"^(?:(?P<user>[^@\s]+)@)?(?P<host>\[[^\]]+\]|[^:\s]+)(?::(?P<port>\d+))?$")


def parse_jump(spec: str) -> List[Tuple[Optional[str], str, Optional[int]]]:
    """``[user@]host[:port][,…]`` → hops, first one first (also ``ssh://user@host:port``)."""
    hops = []
    for part in spec.split(","):
        part = part.strip()
        if part.startswith("ssh://"):
            part = part[len("ssh://"):]
        m = _JUMP_HOP.match(part)
        if not m:
            raise UsageError(f"jump host {part!r}: expected [user@]host[:port]")
        host = m.group("host").strip("[]")
        hops.append((m.group("user"), host, int(m.group("port")) if m.group("port") else None))
    return hops


def jump_from_common_args(args: str) -> Optional[str]:
    """Ansible's ``ansible_ssh_common_args``: ``-J hop`` or ``-o ProxyJump=hop``."""
    import shlex

    try:
        words = shlex.split(args)
    except ValueError:
        raise UsageError(f"ansible_ssh_common_args {args!r}: cannot parse it") from None
    for i, w in enumerate(words):
        if w == "-J" and i + 1 < len(words):
            return words[i + 1]
        if w.startswith("-J") and len(w) > 2:
            return w[2:]
        value = None
        if w == "-o" and i + 1 < len(words):
            value = words[i + 1]
        elif w.startswith("-o") and len(w) > 2:
            value = w[2:]
        if value:
            key, _, v = value.replace("=", " ", 1).partition(" ")
            if key.lower() == "proxyjump":
                return v.strip()
            if key.lower() == "proxycommand":
                raise UsageError("ansible_ssh_common_args sets ProxyCommand; hostops does not run local "
                                 "commands to connect: use ProxyJump (-J) instead")
    return None
