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
    jump: Optional[str] = None       # -J/--jump [user@]host[:port][,…] for every host
    explicit: Tuple[str, ...] = ()   # options given on the command line: they beat ssh_config

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
    """One host, fully resolved: what a worker needs to reach it. Fields left None fall back
    to the run's options."""

    name: str
    hostname: str
    port: int = 22
    user: str = ""
    identity_files: Tuple[str, ...] = ()
    connection: str = "ssh"
    identities_only: bool = False
    connect_timeout: Optional[float] = None
    keepalive: Optional[float] = None
    known_hosts: Tuple[str, ...] = ()          # ssh_config UserKnownHostsFile for this host
    host_key_policy: Optional[str] = None      # ssh_config StrictHostKeyChecking for this host
    host_key_alias: Optional[str] = None
    hash_known_hosts: Optional[bool] = None
    jump: Tuple["Target", ...] = ()            # ProxyJump hops, first one first

    @property
    def known_hosts_name(self) -> str:
        """The name OpenSSH records in known_hosts: ``host`` (or its HostKeyAlias), as
        ``[host]:port`` off port 22."""
        host = self.host_key_alias or self.hostname
        return host if self.port == 22 else f"[{host}]:{self.port}"

    def to_json(self) -> Dict[str, Any]:
        data = dataclasses.asdict(self)
        data["jump"] = [f"{h.user}@{h.hostname}:{h.port}" for h in self.jump]
        return data


def load_ssh_config(path: Optional[str]):
    """The user's ssh_config, resolved as OpenSSH does (see :mod:`hostops.sshconfig`)."""
    from hostops.sshconfig import Resolver

    return Resolver(path)


def resolve(inventory: Inventory, names: Sequence[str], options: Options) -> List[Target]:
    """Resolve the connection settings of ``names``: inventory variables > command-line
    flags > ssh_config > defaults. Jump hosts resolve the same way."""
    from hostops.sshconfig import jump_from_common_args

    resolved: List[Tuple[str, Dict[str, Any]]] = []
    for name in names:
        hvars = inventory.host_vars(name)
        conn = connection_vars(hvars)
        check_host_name(name, conn.get("host"), inventory)
        jump = hvars.get("proxy_jump") or hvars.get("ansible_ssh_proxy_jump")
        if not jump and hvars.get("ansible_ssh_common_args"):
            jump = jump_from_common_args(str(hvars["ansible_ssh_common_args"]))
        conn["jump"] = str(jump) if jump else None
        resolved.append((name, conn))
    needs_ssh = any(c.get("connection", "ssh") != "local" for _n, c in resolved)
    config = load_ssh_config(options.ssh_config) if needs_ssh else None
    queries = []
    for name, conn in resolved:
        queries.append((conn.get("host") or name, conn.get("port") or options.port, conn.get("user") or options.user))
    configs = config.lookup_many(queries) if config is not None else [None] * len(resolved)
    default_user = getpass.getuser()
    targets = []
    for (name, conn), cfg in zip(resolved, configs):
        if conn.get("connection") == "local":
            targets.append(Target(name, str(conn.get("host") or name), connection="local"))
            continue
        jump_spec = conn.get("jump") or options.jump or (cfg.proxy_jump if cfg else None)
        target = _target(name, conn, cfg, options, default_user)
        if jump_spec:  # the hops may use the host's keys too (after their own), as operators expect
            target = dataclasses.replace(target, jump=_resolve_jump(jump_spec, config, options, default_user,
                                                                    target.identity_files))
        targets.append(target)
    return targets


def _target(name: str, conn: Dict[str, Any], cfg, options: Options, default_user: str) -> Target:
    from hostops.sshconfig import HostConfig

    cfg = cfg or HostConfig()
    explicit = set(options.explicit)
    hostname = conn.get("host") or cfg.hostname or name
    port = conn.get("port") or options.port or cfg.port or 22
    user = conn.get("user") or options.user or cfg.user or default_user
    identities: Tuple[str, ...] = ()
    if conn.get("identity_file"):
        identities = (conn["identity_file"],)
    identities += tuple(options.identity_files)
    identities += tuple(cfg.identity_files)
    identities = tuple(dict.fromkeys(os.path.expanduser(p) for p in identities))
    return Target(
        name, str(hostname), int(port), str(user), identities, "ssh",
        identities_only=cfg.identities_only,
        connect_timeout=None if "connect_timeout" in explicit else cfg.connect_timeout,
        keepalive=None if "keepalive" in explicit else cfg.keepalive,
        known_hosts=() if options.known_hosts else cfg.known_hosts,
        host_key_policy=None if "host_key_policy" in explicit else cfg.host_key_policy,
        host_key_alias=cfg.host_key_alias,
        hash_known_hosts=cfg.hash_known_hosts,
    )


def _resolve_jump(spec: str, config, options: Options, default_user: str,
                  fallback_keys: Tuple[str, ...] = ()) -> Tuple[Target, ...]:
    from hostops.sshconfig import parse_jump

    hops = []
    for user, host, port in parse_jump(spec):
        check_host_name(f"jump host {host}", host)
        cfg = config.lookup(host, port, user) if config is not None else None
        conn = {"host": host, "port": port, "user": user}
        hop = _target(f"{user + '@' if user else ''}{host}{':' + str(port) if port else ''}",
                      {k: v for k, v in conn.items() if v}, cfg, dataclasses.replace(options, port=None, user=None),
                      default_user)
        keys = tuple(dict.fromkeys(hop.identity_files + fallback_keys))
        hops.append(dataclasses.replace(hop, identity_files=keys))
    return tuple(hops)


#: What a host name or address may hold: letters, digits, dots, dashes, underscores, and the
#: colons/brackets/percent of IPv6 literals. Nothing a shell or ssh_config's Match exec,
#: ProxyCommand or %-expansion could make into a command or an option.
_SAFE_HOST = re.compile(r"^[A-Za-z0-9_.:\[\]%-]+$")


def check_host_name(name: str, address: Optional[str], inventory: Optional[Inventory] = None) -> None:
    """Refuse a host address that could turn into an option or a command (exit 2, before any
    ssh_config lookup). The address is ``ansible_host`` when set, else the host's name."""
    value = address if address is not None else name
    if value and not value.startswith("-") and _SAFE_HOST.fullmatch(value):  # match's $ passes a final \n
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


START_METHODS = ("fork", "spawn", "forkserver")


def check_start_method(explicit: Optional[str]) -> None:
    """``--start-method`` (click checks it) or ``$HOSTOPS_START_METHOD``: a bad value is the
    operator's mistake (exit 2 before anything runs), not an internal error in the pool."""
    value = explicit or os.environ.get("HOSTOPS_START_METHOD") or None
    if value is not None and value not in START_METHODS:
        where = "--start-method" if explicit else "HOSTOPS_START_METHOD"
        raise UsageError(f"{where}={value!r} is not a start method; use one of {', '.join(START_METHODS)} "
                         "(or unset it)")


def check_identity_file(path: str, flag: str = "-k") -> None:
    """A key file named on the command line must be a readable private key: a typo is a usage
    error before any host is contacted, not the same authentication failure on every host."""
    import stat

    shown = path
    path = os.path.expanduser(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise UsageError(f"{flag} {shown}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{flag} {shown}: is a directory, not a private key file") from None
    except OSError as exc:
        raise UsageError(f"{flag} {shown}: cannot be read ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise UsageError(f"{flag} {shown}: is a directory, not a private key file")
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"{flag} {shown}: not a regular file")
        try:
            head = os.read(fd, 64 * 1024)
        except OSError as exc:
            raise UsageError(f"{flag} {shown}: cannot be read ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
    if b"PRIVATE KEY-----" in head:
        return
    if head.lstrip().startswith((b"ssh-", b"ecdsa-", b"sk-")):
        raise UsageError(f"{flag} {shown}: is a public key; give the private key file (without .pub)")
    raise UsageError(f"{flag} {shown}: not a private key (no '-----BEGIN ... PRIVATE KEY-----' line)")


def check_outdir(path: Optional[str]) -> None:
    """``-o DIR`` must be a directory or not exist yet (it is created)."""
    if path and os.path.lexists(path) and not os.path.isdir(path):
        raise UsageError(f"-o {path}: exists and is not a directory; give a directory (it is created if missing)")


def check_stdin_with_sudo_password(stdin: Optional[str], sudo: bool, has_sudo_password: bool,
                                   what: str = "--stdin") -> None:
    """sudo -S reads the password from the command's stdin: both cannot be fed at once."""
    if stdin is not None and sudo and has_sudo_password:
        raise UsageError(f"{what} cannot be combined with a sudo password (sudo reads the password from the same "
                         "stdin); configure NOPASSWD for the command, or drop the password option")


def _int(value: Any) -> Optional[int]:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
