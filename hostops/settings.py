"""Run options and per-host connection settings, resolved once, in the parent.

Settings resolve per host as: inventory variables > command-line flags > ssh_config
(Host, HostName, Port, User, IdentityFile) > defaults. The result, a :class:`Target`, is
plain picklable data whose every field is the effective value: it is what crosses into
worker processes, and no worker completes it from the run's options.

:class:`Options` holds both kinds of settings a run has; :meth:`Options.run_options` and
:meth:`Options.host_defaults` are the two views: what is run-wide (forks, processes, start
method, log, output limits, kill grace) and what is only a default for each host (user,
port, keys, timeouts, host key policy: a host's inventory or ssh_config may say otherwise).
The action's own ``timeout`` and ``sudo`` are in neither: each action carries its own.

Environment variables and option conflicts are checked here before anything starts
(:class:`~hostops.errors.UsageError`, exit 2).

Owns: Options, Target, resolve(), the checks of local inputs. Must not import: pool,
worker, transport (or its successors), api, cli.
"""
from __future__ import annotations

import dataclasses
import getpass
import os
import re
from typing import Any, Dict, FrozenSet, List, Optional, Sequence, Tuple, Union

from hostops.errors import InventoryError, UsageError
from hostops.inventory import Inventory, connection_vars
from hostops.secrets import Secrets

HOST_KEY_POLICIES = ("strict", "accept-new", "off")
START_METHODS = ("fork", "spawn", "forkserver")
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
    explicit: Tuple[str, ...] = ()   # options given (flag, environment, config file): they beat ssh_config
    state_dir: Optional[str] = None  # where last-run.json goes without --log (None: $XDG_STATE_HOME/hostops)
    persist: float = 0.0             # --persist: seconds the keeper holds connections once idle (0: no keeper)

    def run_options(self) -> "RunOptions":
        """The run-wide part: the same for every host."""
        return RunOptions(self.forks, self.processes, start_method(self), self.log, self.stream_output,
                          self.max_output, self.kill_grace)

    def host_defaults(self) -> "HostDefaults":
        """The per-host defaults: a host's inventory variables or ssh_config may override each."""
        return HostDefaults(self.user, self.port, tuple(self.identity_files), self.ssh_config,
                            tuple(self.known_hosts), self.host_key_policy, self.connect_timeout, self.keepalive,
                            self.jump, frozenset(self.explicit))

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
        if self.persist < 0:
            raise UsageError("--persist cannot be negative")
        if self.max_output < 1024:
            raise UsageError("--max-output must be at least 1 KiB")
        if self.start_method is not None and self.start_method not in START_METHODS:
            raise UsageError(f"--start-method={self.start_method!r} is not a start method; use one of "
                             f"{', '.join(START_METHODS)}")

    def known_hosts_files(self) -> Tuple[str, ...]:
        """--known-hosts files replace ~/.ssh/known_hosts, like OpenSSH's UserKnownHostsFile."""
        if self.known_hosts:
            return tuple(os.path.expanduser(p) for p in self.known_hosts)
        return (os.path.expanduser("~/.ssh/known_hosts"),)


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """What is run-wide: how many hosts at once, in which processes, what is logged and kept."""

    forks: int
    processes: Optional[int]
    start_method: Optional[str]   # effective: --start-method, else $HOSTOPS_START_METHOD, else None (the default)
    log: Optional[str]
    stream_output: bool
    max_output: int
    kill_grace: float


@dataclasses.dataclass(frozen=True)
class HostDefaults:
    """What each host gets unless its inventory variables or ssh_config say otherwise."""

    user: Optional[str]
    port: Optional[int]
    identity_files: Tuple[str, ...]
    ssh_config: Optional[str]
    known_hosts: Tuple[str, ...]
    host_key_policy: str
    connect_timeout: float
    keepalive: float
    jump: Optional[str]
    explicit: FrozenSet[str]      # given on the command line: they beat ssh_config


@dataclasses.dataclass(frozen=True)
class Target:
    """One host, fully resolved: what a worker needs to reach it.

    After :func:`resolve` every field is the effective value. ``connect_timeout``,
    ``keepalive`` (0: none) and ``host_key_policy`` default to None only so that a Target
    built by hand (a library user, a test) can leave them to the run's options:
    :func:`complete_target` fills them in the parent before the target reaches a worker.
    ``known_hosts`` () is the user's default files (or --known-hosts); ``hash_known_hosts``
    None is "as ssh_config's HashKnownHosts says when a key is recorded"."""

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
    flags > ssh_config > defaults. Jump hosts resolve the same way. Every field of every
    target (and hop) is the effective value."""
    from hostops.sshconfig import jump_from_common_args

    defaults = options.host_defaults()

    resolved: List[Tuple[str, Dict[str, Any]]] = []
    for name in names:
        hvars = inventory.host_vars(name)
        conn = connection_vars(hvars)
        if conn.get("host") is not None and conn["host"] == inventory.hosts[name].address:
            conn["alias"] = True  # -H user@alias:port: ssh_config's HostName applies, as on ssh's command line
        check_host_name(name, conn.get("host"), inventory)
        jump = hvars.get("proxy_jump") or hvars.get("ansible_ssh_proxy_jump")
        if not jump and hvars.get("ansible_ssh_common_args"):
            jump = jump_from_common_args(str(hvars["ansible_ssh_common_args"]))
        conn["jump"] = str(jump) if jump else None
        resolved.append((name, conn))
    needs_ssh = any(c.get("connection", "ssh") != "local" for _n, c in resolved)
    config = load_ssh_config(defaults.ssh_config) if needs_ssh else None
    queries = []
    for name, conn in resolved:
        queries.append((conn.get("host") or name, conn.get("port") or defaults.port,
                        conn.get("user") or defaults.user))
    configs = config.lookup_many(queries) if config is not None else [None] * len(resolved)
    default_user = getpass.getuser()
    targets = []
    for (name, conn), cfg in zip(resolved, configs):
        if conn.get("connection") == "local":
            targets.append(complete_target(Target(name, str(conn.get("host") or name), connection="local"),
                                           defaults))
            continue
        jump_spec = conn.get("jump") or defaults.jump or (cfg.proxy_jump if cfg else None)
        target = _target(name, conn, cfg, defaults, default_user)
        if jump_spec:  # the hops may use the host's keys too (after their own), as operators expect
            target = dataclasses.replace(target, jump=_resolve_jump(jump_spec, config, defaults, default_user,
                                                                    target.identity_files))
        targets.append(target)
    return targets


def _target(name: str, conn: Dict[str, Any], cfg: Any, defaults: HostDefaults, default_user: str) -> Target:
    from hostops.sshconfig import HostConfig

    cfg = cfg or HostConfig()
    explicit = defaults.explicit
    hostname = (conn.get("alias") and cfg.hostname) or conn.get("host") or cfg.hostname or name
    port = conn.get("port") or defaults.port or cfg.port or 22
    user = conn.get("user") or defaults.user or cfg.user or default_user
    identities: Tuple[str, ...] = ()
    if conn.get("identity_file"):
        identities = (conn["identity_file"],)
    identities += tuple(defaults.identity_files)
    identities += tuple(cfg.identity_files)
    identities = tuple(dict.fromkeys(os.path.expanduser(p) for p in identities))
    # ssh_config's value unless the flag was given (or ssh_config is silent, or says 0): then the flag's.
    return Target(
        name, str(hostname), int(port), str(user), identities, "ssh",
        identities_only=cfg.identities_only,
        connect_timeout=(None if "connect_timeout" in explicit else cfg.connect_timeout) or defaults.connect_timeout,
        keepalive=(None if "keepalive" in explicit else cfg.keepalive) or defaults.keepalive,
        known_hosts=defaults.known_hosts or cfg.known_hosts,
        host_key_policy=(None if "host_key_policy" in explicit else cfg.host_key_policy) or defaults.host_key_policy,
        host_key_alias=cfg.host_key_alias,
        hash_known_hosts=cfg.hash_known_hosts,
    )


def complete_target(target: Target, defaults: Union[Options, HostDefaults]) -> Target:
    """``target`` with the fields left None (a Target built by hand) given the run's values;
    ``target`` itself when none is (every target :func:`resolve` makes)."""
    missing: Dict[str, Any] = {}
    if target.connect_timeout is None:
        missing["connect_timeout"] = defaults.connect_timeout
    if target.keepalive is None:
        missing["keepalive"] = defaults.keepalive
    if target.host_key_policy is None:
        missing["host_key_policy"] = defaults.host_key_policy
    if not target.known_hosts and defaults.known_hosts:
        missing["known_hosts"] = tuple(defaults.known_hosts)
    hops = tuple(complete_target(h, defaults) for h in target.jump)
    if any(h is not o for h, o in zip(hops, target.jump)):
        missing["jump"] = hops
    return dataclasses.replace(target, **missing) if missing else target


def _resolve_jump(spec: str, config: Any, defaults: HostDefaults, default_user: str,
                  fallback_keys: Tuple[str, ...] = ()) -> Tuple[Target, ...]:
    from hostops.sshconfig import parse_jump

    hops = []
    for user, host, port in parse_jump(spec):
        check_host_name(f"jump host {host}", host)
        cfg = config.lookup(host, port, user) if config is not None else None
        conn = {"host": host, "port": port, "user": user}
        hop = _target(f"{user + '@' if user else ''}{host}{':' + str(port) if port else ''}",
                      {k: v for k, v in conn.items() if v}, cfg, dataclasses.replace(defaults, port=None, user=None),
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
        sources = inventory.host_vars_with_sources(name)[1]  # the value may come from a host_vars file
        src = (sources.get("ansible_ssh_host") or sources.get("ansible_host")) if address else host.source
    what = "address (ansible_host)" if address is not None else "host name"
    message = (f"{what} {value!r} of host {name!r} is refused: only letters, digits and . - _ : [ ] % are "
               "allowed, and it may not start with '-'")
    if src is not None and src.file != "--host":
        raise InventoryError(message, src.file, src.line)
    raise UsageError(message)


def check_start_method(explicit: Optional[str]) -> None:
    """``--start-method`` (click checks it) or ``$HOSTOPS_START_METHOD``: a bad value is the
    operator's mistake (exit 2 before anything runs), not an internal error in the pool."""
    value = explicit or os.environ.get("HOSTOPS_START_METHOD") or None
    if value is not None and value not in START_METHODS:
        where = "--start-method" if explicit else "HOSTOPS_START_METHOD"
        raise UsageError(f"{where}={value!r} is not a start method; use one of {', '.join(START_METHODS)} "
                         "(or unset it)")


def start_method(options: Options) -> Optional[str]:
    """The effective start method: --start-method, else ``$HOSTOPS_START_METHOD``, else None
    (multiprocessing's default). A bad value is a UsageError (exit 2), whoever asks."""
    check_start_method(options.start_method)
    return options.start_method or os.environ.get("HOSTOPS_START_METHOD") or None


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

