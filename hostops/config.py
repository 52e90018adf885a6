"""The configuration file: the defaults people would otherwise type on every run.

Where it is looked for, first found wins (one file is read, never merged, as Ansible does):

1. ``$HOSTOPS_CONFIG`` (must exist; ``/dev/null`` reads nothing),
2. ``./hostops.yml`` in the current directory, read only when it is owned by the user
   running hostops, not writable by group or others, not a symbolic link, and its directory
   is not group/world-writable without the sticky bit; otherwise it is ignored with a
   one-line warning (a file in a shared directory must not redirect a run),
3. ``$XDG_CONFIG_HOME/hostops/config.yml`` (default ``~/.config/hostops/config.yml``).

What a value may be is :data:`KEYS`: one :class:`Key` per line, naming the click parameter
it is the default of and its environment variable, so adding a setting is one line. The CLI
feeds the values to click as ``default_map``; click's own order then gives
flag > environment > config file > built-in default.

Owns: finding, vetting and reading the file, checking every key and value (``file:line``).
Must not import: the CLI, paramiko; YAML only when a file is read.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import stat
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from hostops.errors import FileError

#: Bytes read from a config file at most: a real one is a few hundred.
MAX_CONFIG_BYTES = 256 * 1024
CWD_NAME = "hostops.yml"


class ConfigError(FileError):
    """A config file hostops cannot use: unknown key, wrong type, unreadable (exit 2)."""


# ------------------------------------------------------------------ value kinds
@dataclasses.dataclass(frozen=True)
class Kind:
    """What a key accepts: ``check`` returns the value to use or raises ValueError(why)."""

    what: str
    check: Callable[[Any], Any]
    is_path: bool = False
    is_list: bool = False


def _name(value: Any) -> str:
    """What a YAML value is, for a message: ``a string ('ten')``, ``a list``, ``nothing``."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"a string ({value[:40]!r})" if value.strip() else "an empty string"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    return "a list" if isinstance(value, list) else "a mapping" if isinstance(value, dict) else type(value).__name__


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"got {_name(value)}" + (" (quote it)" if isinstance(value, (int, float)) else ""))
    return value


def _strings(value: Any) -> Tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError("got an empty list")
    return tuple(_string(v) for v in items)


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"got {_name(value)}")
    return value


def _positive_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"got {_name(value)}")
    return float(value)


def choice(*names: str) -> Kind:
    def check(value: Any) -> str:
        if isinstance(value, bool):  # YAML 1.1 reads off/no/yes/on as true/false
            raise ValueError(f"got {_name(value)} (YAML reads off/no/on/yes as true/false: quote the word)")
        if value not in names:
            raise ValueError(f"got {_name(value)}")
        return str(value)
    return Kind("one of " + ", ".join(names), check)


def _duration(value: Any) -> str:
    """A --persist duration: 90, "90s", "10m", "2h", "1d", or 0/off for none."""
    from hostops.errors import UsageError
    from hostops.keepersock import parse_duration

    if isinstance(value, bool):  # YAML reads off/no as false
        value = "0" if not value else "true"
    text = str(value) if isinstance(value, (int, float, str)) else None
    if text is None:
        raise ValueError(f"got {_name(value)}")
    try:
        parse_duration(text)
    except UsageError:
        raise ValueError(f"got {_name(value)}") from None
    return text


DURATION = Kind("a duration such as 90s, 10m, 2h (0 or off: none)", _duration)
STRING = Kind("a string", _string)
PATH = Kind("a file or directory path", _string, is_path=True)
PATHS = Kind("a path or a list of paths", _strings, is_path=True, is_list=True)
POSITIVE_INT = Kind("a whole number of at least 1", _positive_int)
SECONDS = Kind("a number of seconds above 0", _positive_number)


# ------------------------------------------------------------------ the keys
@dataclasses.dataclass(frozen=True)
class Key:
    """One setting: its name in the file, what it accepts, the click parameter it is the
    default of (None: read by hostops itself), its environment variable, and a line of help."""

    name: str
    kind: Kind
    param: Optional[str]
    env: Optional[str]
    help: str
    default: Any = None  # shown by `hostops config` when the parameter has no default of its own


#: Every key a config file may hold: one line each.
KEYS: Tuple[Key, ...] = (
    # param None: read by cli.options.default_inventories when a command needs hosts and has no -i/-H
    Key("inventory", PATHS, None, "HOSTOPS_INVENTORY", "inventory file(s), merged in order (-i)",
        "none: give -i or -H (-l localhost alone: this machine)"),
    Key("forks", POSITIVE_INT, "forks", "HOSTOPS_FORKS", "hosts in flight at once (-f)"),
    Key("user", STRING, "user", "HOSTOPS_USER", "remote user (-u); inventory ansible_user still wins",
        "ssh_config's, else your login name"),
    Key("identity", PATHS, "identity_files", "HOSTOPS_IDENTITY", "private key file(s) (-k)",
        "ssh-agent, ssh_config's, ~/.ssh/id_ed25519, id_ecdsa, id_rsa"),
    Key("known_hosts", PATHS, "known_hosts", "HOSTOPS_KNOWN_HOSTS", "known_hosts file(s) (--known-hosts)",
        "~/.ssh/known_hosts"),
    Key("host_key_policy", choice("strict", "accept-new", "off"), "host_key_policy", None,
        "strict, accept-new or off (--host-key-policy)"),
    Key("connect_timeout", SECONDS, "connect_timeout", None, "seconds for connect + handshake + auth"),
    Key("timeout", SECONDS, "timeout", None, "seconds each host's command may run (-t)", "none"),
    Key("ssh_config", PATH, "ssh_config", None, "ssh_config file to read (--ssh-config)", "~/.ssh/config"),
    Key("log", PATH, "log_path", "HOSTOPS_LOG", "JSON-lines log to append to (--log)", "none"),
    Key("state_dir", PATH, "state_dir", "HOSTOPS_STATE_DIR", "where last-run.json is kept for @failed "
        "(--state-dir)", "$XDG_STATE_HOME/hostops"),
    Key("output", choice("text", "json", "stream", "gather", "quiet"), "output", None,
        "output mode of exec/put/get/script/run (--output)", "text"),
    Key("color", choice("auto", "always", "never"), "color", None, "colour on a terminal (--color)", "auto"),
    Key("persist", DURATION, "persist", "HOSTOPS_PERSIST", "keep connections warm this long once idle "
        "(--persist)", "0: no keeper"),
    Key("cluster", STRING, "cluster", "HOSTOPS_CLUSTER", "Dask scheduler to run through (--cluster)", "none"),
)
KEY_BY_NAME: Dict[str, Key] = {k.name: k for k in KEYS}
ENV_VARS: Tuple[str, ...] = ("HOSTOPS_CONFIG",) + tuple(k.env for k in KEYS if k.env)


def env_for(param: str) -> Optional[str]:
    """The environment variable of a click parameter, if it has one (for ``envvar=``)."""
    return next((k.env for k in KEYS if k.param == param), None)


# ------------------------------------------------------------------ the loaded file
@dataclasses.dataclass
class Config:
    """What was read: the file (None when none), each key's value and line, and the
    warnings about files passed over (printed once by the CLI)."""

    path: Optional[str] = None
    found_as: str = ""                      # "HOSTOPS_CONFIG", "current directory" or "user config"
    values: Dict[str, Any] = dataclasses.field(default_factory=dict)
    lines: Dict[str, int] = dataclasses.field(default_factory=dict)
    warnings: List[str] = dataclasses.field(default_factory=list)

    def where(self, key: str) -> str:
        return f"{self.path}:{self.lines.get(key, 1)}"

    def param_defaults(self) -> Dict[str, Any]:
        """click parameter name → value, for ``default_map``."""
        return {KEY_BY_NAME[k].param: (list(v) if isinstance(v, tuple) else v)  # type: ignore[misc]
                for k, v in self.values.items() if KEY_BY_NAME[k].param}


def user_config_path(environ: Mapping[str, str]) -> str:
    base = environ.get("XDG_CONFIG_HOME", "")
    if not os.path.isabs(base):  # the XDG spec: a relative value is ignored
        base = os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "hostops", "config.yml")


def load(environ: Optional[Mapping[str, str]] = None) -> Config:
    """Find the config file (see the module docstring), vet it, read it and check every key.
    ConfigError (exit 2) for a file that is named or found but wrong."""
    environ = os.environ if environ is None else environ
    named = environ.get("HOSTOPS_CONFIG", "")
    if named:
        return _read(named, "HOSTOPS_CONFIG", _read_named(named, "HOSTOPS_CONFIG"))
    warnings: List[str] = []
    local = os.path.join(".", CWD_NAME)
    if os.path.lexists(local):
        text, why = read_if_private(local)
        if why is None:
            return _read(local, "current directory", text)
        warnings.append(f"ignoring {local}: {why}")
    user = user_config_path(environ)
    config = _read(user, "user config", _read_named(user, None)) if os.path.exists(user) else Config()
    config.warnings = warnings + config.warnings
    return config


def _read_named(path: str, env: Optional[str]) -> str:
    shown = f"HOSTOPS_CONFIG={path}" if env else path
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{shown}: no such config file (unset HOSTOPS_CONFIG, or use /dev/null for none)"
                          if env else "no such config file", None if env else path) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror or exc}", path) from None
    return _decode(data, path)


def _decode(data: bytes, path: str) -> str:
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file is larger than {MAX_CONFIG_BYTES // 1024} KiB; is this the right file?", path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file is not UTF-8 text (byte {exc.start})", path) from None


def read_if_private(path: str) -> Tuple[str, Optional[str]]:
    """(text, None) when ``path`` may be trusted as a config in the current directory, else
    ("", why not). Opened without following a link and checked on the open file, so it
    cannot be swapped between the check and the read."""
    why = _directory_problem(os.path.dirname(os.path.abspath(path)))
    if why:
        return "", why
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        if os.path.islink(path):
            return "", "it is a symbolic link (name the file with HOSTOPS_CONFIG instead)"
        return "", f"cannot open it: {exc.strerror or exc}"
    try:
        st = os.fstat(fd)
        why = _file_problem(st, path)
        if why:
            return "", why
        chunks, size = [], 0
        while size <= MAX_CONFIG_BYTES:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    return _decode(b"".join(chunks), path), None


def _file_problem(st: os.stat_result, path: str) -> Optional[str]:
    if not stat.S_ISREG(st.st_mode):
        return "it is not a regular file"
    if st.st_uid != os.geteuid():
        return f"it is owned by uid {st.st_uid}, not by you (uid {os.geteuid()})"
    if st.st_mode & 0o022:
        return f"it is writable by group or others (fix: chmod go-w {path})"
    return None


def _directory_problem(directory: str) -> Optional[str]:
    try:
        st = os.stat(directory)
    except OSError as exc:
        return f"cannot check its directory: {exc.strerror or exc}"
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        return (f"its directory {directory} is writable by group or others without the sticky bit "
                "(anyone there could plant it)")
    return None


def _read(path: str, found_as: str, text: str) -> Config:
    from hostops import yamlfile

    try:
        data = yamlfile.load(text)
    except yamlfile.YamlProblem as exc:
        raise ConfigError(exc.message, path, exc.line) from None
    config = Config(path, found_as)
    if data is None:
        return config
    if not isinstance(data, dict):
        raise ConfigError(f"a config file is a mapping of settings (key: value), not {_name(data)}", path,
                          yamlfile.start_line(text))
    base = os.path.dirname(os.path.abspath(path)) if path != os.devnull else os.getcwd()
    for key, raw in data.items():
        line = data.line_of(key) if isinstance(data, yamlfile.LineMap) else None
        config.values[str(key)] = check_value(key, raw, path, line, base)
        config.lines[str(key)] = line or 1
    return config


def check_value(key: Any, value: Any, path: str, line: Optional[int], base: str) -> Any:
    """The value to use for ``key``, paths made absolute against ``base`` (the config file's
    directory, as Ansible resolves paths in ansible.cfg); ConfigError naming file:line."""
    spec = KEY_BY_NAME.get(key) if isinstance(key, str) else None
    if spec is None:
        close = difflib.get_close_matches(str(key), list(KEY_BY_NAME), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else "known keys: " + ", ".join(KEY_BY_NAME)
        raise ConfigError(f"unknown key {key!r}; {hint}", path, line)
    try:
        checked = spec.kind.check(value)
    except ValueError as exc:
        raise ConfigError(f"{key}: expected {spec.kind.what}; {exc}", path, line) from None
    if spec.kind.is_path:
        if spec.kind.is_list:
            return tuple(_absolute(p, base) for p in checked)
        return _absolute(checked, base)
    return checked


def _absolute(path: str, base: str) -> str:
    return os.path.normpath(os.path.join(base, os.path.expanduser(path)))


def default_map(command: Any, values: Dict[str, Any]) -> Dict[str, Any]:
    """click ``default_map`` for ``command`` (a group: every subcommand, nested): each command
    gets the values whose parameter it has, so an option added later picks its key up."""
    out: Dict[str, Any] = {}
    for name, sub in getattr(command, "commands", {}).items():
        if getattr(sub, "commands", None) is not None:
            out[name] = default_map(sub, values)
        else:
            params = {p.name for p in sub.params}
            out[name] = {k: v for k, v in values.items() if k in params}
    return out

