"""Run options and per-host connection settings.

Settings resolve per host as: inventory variables > command-line flags > ssh_config
(Host, HostName, Port, User, IdentityFile) > defaults. The result, a :class:`Target`, is
plain picklable data: it is what crosses into worker processes.
"""
from __future__ import annotations

import dataclasses
import getpass
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hostops.errors import InventoryError, UsageError
from hostops.inventory import Inventory, connection_vars
from hostops.secrets import Secrets

HOST_KEY_POLICIES = ("strict", "accept-new", "off")
DEFAULT_FORKS = 50
DEFAULT_CONNECT_TIMEOUT = 10.0


@dataclasses.dataclass
class Options:
    """Everything about a run except the hosts. Plain data, so it pickles under spawn."""

    user: Optional[str] = None
    port: Optional[int] = None
    identity_files: Tuple[str, ...] = ()
    ssh_config: Optional[str] = None
    known_hosts: Tuple[str, ...] = ()
    host_key_policy: str = "strict"
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    timeout: Optional[float] = None
    sudo: bool = False
    forks: int = DEFAULT_FORKS
    processes: Optional[int] = None
    start_method: Optional[str] = None
    log: Optional[str] = None
    stream_output: bool = False
    sudo_user: Optional[str] = None  # sudo -u USER
    secrets: Secrets = dataclasses.field(default_factory=Secrets)
    keepalive: float = 15.0          # seconds of silence before a keepalive; 0 turns them off
    kill_grace: float = 5.0          # TERM → KILL delay for remote commands being stopped
    max_output: int = 4 * 1024 * 1024  # bytes kept per host and stream

    def __post_init__(self) -> None:
        if self.host_key_policy not in HOST_KEY_POLICIES:
            raise UsageError(f"--host-key-policy must be one of {', '.join(HOST_KEY_POLICIES)}")
        if self.forks < 1:
            raise UsageError("-f/--forks must be at least 1")
        if self.processes is not None and self.processes < 1:
            raise UsageError("--processes must be at least 1")
        if self.connect_timeout <= 0:
            raise UsageError("--connect-timeout must be more than 0 seconds")
        if self.timeout is not None and self.timeout <= 0:
            raise UsageError("-t/--timeout must be more than 0 seconds")
        if self.keepalive < 0 or self.kill_grace < 0:
            raise UsageError("--keepalive and --kill-grace cannot be negative")
        if self.max_output < 1024:
            raise UsageError("--max-output must be at least 1 KiB")

    def known_hosts_files(self) -> Tuple[str, ...]:
        """--known-hosts files replace ~/.ssh/known_hosts, like OpenSSH's UserKnownHostsFile."""
        if self.known_hosts:
            return tuple(os.path.expanduser(p) for p in self.known_hosts)
        return (os.path.expanduser("~/.ssh/known_hosts"),)


@dataclasses.dataclass(frozen=True)
class Target:
    """One host, fully resolved: what a worker needs to reach it."""

    name: str
    hostname: str
    port: int = 22
    user: str = ""
    identity_files: Tuple[str, ...] = ()
    connection: str = "ssh"

    @property
    def known_hosts_name(self) -> str:
        """The name OpenSSH records in known_hosts: ``host``, or ``[host]:port`` off port 22."""
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"

    def to_json(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def load_ssh_config(path: Optional[str]):
    """paramiko's SSHConfig for ``path`` (default ~/.ssh/config), or None when there is none."""
    explicit = path is not None
    path = os.path.expanduser(path or "~/.ssh/config")
    if not os.path.exists(path):
        if explicit:
            raise UsageError(f"--ssh-config {path}: no such file")
        return None
    from paramiko import SSHConfig  # imported here: paramiko is slow to import

    try:
        return SSHConfig.from_path(path)
    except Exception as exc:  # paramiko raises several types for bad configs
        raise UsageError(f"cannot read ssh config {path}: {exc}") from None


def resolve(inventory: Inventory, names: Sequence[str], options: Options) -> List[Target]:
    """Resolve the connection settings of ``names``."""
    ssh_config = None
    needs_ssh = False
    resolved: List[Tuple[str, Dict[str, Any]]] = []
    for name in names:
        conn = connection_vars(inventory.host_vars(name))
        resolved.append((name, conn))
        needs_ssh = needs_ssh or conn.get("connection", "ssh") != "local"
    if needs_ssh:
        ssh_config = load_ssh_config(options.ssh_config)
    default_user = getpass.getuser()
    targets = []
    for name, conn in resolved:
        check_host_name(name, conn.get("host"), inventory)
        connection = "local" if conn.get("connection") == "local" else "ssh"
        cfg: Dict[str, Any] = {}
        if ssh_config is not None and connection == "ssh":
            cfg = ssh_config.lookup(conn.get("host", name))
        hostname = conn.get("host") or cfg.get("hostname") or name
        port = conn.get("port") or options.port or _int(cfg.get("port")) or 22
        user = conn.get("user") or options.user or cfg.get("user") or default_user
        identities: Tuple[str, ...] = ()
        if conn.get("identity_file"):
            identities = (conn["identity_file"],)
        identities += tuple(options.identity_files)
        identities += tuple(cfg.get("identityfile", ()))
        identities = tuple(dict.fromkeys(os.path.expanduser(p) for p in identities))
        targets.append(Target(name, str(hostname), int(port), str(user), identities, connection))
    return targets


#: What a host name or address may hold: letters, digits, dots, dashes, underscores, and the
#: colons/brackets/percent of IPv6 literals. Nothing a shell or ssh_config's Match exec,
#: ProxyCommand or %-expansion could make into a command or an option.
_SAFE_HOST = re.compile(r"^[A-Za-z0-9_.:\[\]%-]+$")


def check_host_name(name: str, address: Optional[str], inventory: Optional[Inventory] = None) -> None:
    """Refuse a host address that could turn into an option or a command (exit 2, before any
    ssh_config lookup). The address is ``ansible_host`` when set, else the host's name."""
    value = address if address is not None else name
    if value and not value.startswith("-") and _SAFE_HOST.match(value):
        return
    src = None
    if inventory is not None and name in inventory.hosts:
        host = inventory.hosts[name]
        src = (host.var_sources.get("ansible_host") or host.var_sources.get("host")) if address else host.source
    what = "address (ansible_host)" if address is not None else "host name"
    message = (f"{what} {value!r} of host {name!r} is refused: only letters, digits and . - _ : [ ] % are "
               "allowed, and it may not start with '-'")
    if src is not None and src.file != "--host":
        raise InventoryError(message, src.file, src.line)
    raise UsageError(message)


def _int(value: Any) -> Optional[int]:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
