"""Inventory variables: which names are connection settings, which are refused, and the
checks every reader (YAML, INI, scripts, group_vars files) applies to a value with its file:line.

Only Ansible's names are connection settings. ``port``, ``user``, ``host``, ``password``,
``identity_file`` and ``connection`` are ordinary variables, as they are in Ansible: an
application's ``port: 8080`` must not send hostops to port 8080. (hostops once read them as
short aliases; :func:`short_name_warnings` tells an inventory still written that way.)
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Dict, Iterable, List, Optional, Tuple

from hostops.errors import InventoryError
from hostops.yamlfile import type_name as _type_name

#: Connection settings: canonical key → the Ansible variables that set it, weakest first. As in
#: Ansible's ssh connection plugin, the later name wins when both are set
#: (``ansible_ssh_host`` beats ``ansible_host``, wherever each was defined).
CONNECTION_NAMES: Dict[str, Tuple[str, ...]] = {
    "host": ("ansible_host", "ansible_ssh_host"),
    "port": ("ansible_port", "ansible_ssh_port"),
    "user": ("ansible_user", "ansible_ssh_user"),
    "identity_file": ("ansible_private_key_file", "ansible_ssh_private_key_file"),
    "connection": ("ansible_connection",),
}
#: Every connection variable name → its canonical key.
CONNECTION_VARS = {name: canon for canon, names in CONNECTION_NAMES.items() for name in names}
#: The short names hostops once read as connection settings; ordinary variables now.
OLD_SHORT_NAMES = ("host", "port", "user", "identity_file", "connection")
#: Variables that would put a login password in the inventory: refused, never used. A plain
#: ``password`` is an ordinary variable (an application's), as in Ansible.
PASSWORD_VARS = ("ansible_password", "ansible_ssh_pass", "ansible_ssh_password")
SSH_CONNECTIONS = ("ssh", "paramiko", "smart")
CONNECTIONS = SSH_CONNECTIONS + ("local",)
#: Set on a group, it orders groups of the same depth (Ansible's rule); never a host variable.
GROUP_PRIORITY = "ansible_group_priority"


@dataclasses.dataclass
class Source:
    """Where something was defined."""

    file: str
    line: Optional[int] = None

    def error(self, message: str) -> InventoryError:
        return InventoryError(message, self.file, self.line)

    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


def _shown(value: Any) -> Any:
    return value if not isinstance(value, str) or len(value) < 40 else value[:37] + "..."


def _is_port(value: Any) -> bool:
    return not isinstance(value, bool) and (
        isinstance(value, int) or (isinstance(value, str) and re.fullmatch(r"[0-9]{1,5}", value) is not None))


def check_var(key: str, value: Any, src: Source) -> None:
    """Reject what must never be in an inventory and connection values of the wrong type."""
    if key in PASSWORD_VARS:
        raise src.error(f"{key} is refused: passwords do not belong in inventories; "
                        "use SSH keys or ssh-agent instead (or --ask-pass)")
    if key == GROUP_PRIORITY:
        group_priority(value, src)
        return
    canon = CONNECTION_VARS.get(key)
    if canon is None:
        return
    if canon == "port":
        if not _is_port(value):
            raise src.error(f"{key} must be a port number, not {_type_name(value)} {_shown(value)!r}")
        if not 1 <= int(value) <= 65535:
            raise src.error(f"{key} {value} is out of range (1-65535)")
    elif canon == "connection":
        if value not in CONNECTIONS:
            raise src.error(f"{key}: {_shown(value)!r} is not supported; use one of {', '.join(CONNECTIONS)}")
    elif not isinstance(value, str) or not value:
        raise src.error(f"{key} must be a non-empty string, not {_type_name(value)}")


def group_priority(value: Any, src: Source) -> int:
    """``ansible_group_priority`` as the whole number Ansible makes of it (``int(value)``:
    ``"3"`` and ``2.5`` are accepted, ``high`` is refused as Ansible refuses it)."""
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise src.error(f"{GROUP_PRIORITY} must be a whole number, not {_type_name(value)} "
                        f"{_shown(value)!r}") from None


def connection_vars(hvars: Dict[str, Any]) -> Dict[str, Any]:
    """The canonical connection settings (host, port, user, identity_file, connection) that
    Ansible's variables in ``hvars`` (a host's merged variables) give, the ``ansible_ssh_*``
    names winning over the shorter ``ansible_*`` ones as in Ansible's ssh plugin."""
    out: Dict[str, Any] = {}
    for canon, names in CONNECTION_NAMES.items():
        for key in names:
            if key in hvars:
                value = hvars[key]
                out[canon] = int(value) if canon == "port" else value
    return out


def _old_meaning(key: str, value: Any) -> bool:
    """Whether hostops once read ``key: value`` as a connection setting (no warning for what it
    refused: those inventories failed, they cannot now behave differently unnoticed)."""
    if key == "port":
        return _is_port(value) and 1 <= int(value) <= 65535
    if key == "connection":
        return value in CONNECTIONS
    return isinstance(value, str) and bool(value)


def short_name_warnings(hosts: Iterable[Tuple[Dict[str, Any], Dict[str, Source]]]) -> List[str]:
    """One warning per file and short name for the hosts (merged variables, their sources)
    where an old short name (``port: 2222``) is set, no Ansible name for the same setting is,
    and hostops would therefore now connect differently than it once did."""
    found: Dict[Tuple[str, str], List[Any]] = {}  # (file, key) -> [first source, value, more lines]
    lines: Dict[Tuple[str, str], set] = {}
    for hvars, sources in hosts:
        for key in OLD_SHORT_NAMES:
            if key not in hvars or any(n in hvars for n in CONNECTION_NAMES[key]):
                continue
            if not _old_meaning(key, hvars[key]):
                continue
            src = sources.get(key) or Source("inventory")
            slot = (src.file, key)
            found.setdefault(slot, [src, hvars[key]])
            lines.setdefault(slot, set()).add(src.line)
    out = []
    for (_file, key), (src, value) in sorted(found.items(), key=lambda kv: (kv[0][0], kv[1][0].line or 0)):
        ansible = CONNECTION_NAMES[key][0]
        more = len(lines[(_file, key)]) - 1
        also = f" (and {more} more line{'s' if more != 1 else ''} in this file)" if more else ""
        out.append(f"{src.where()}: '{key}: {_shown(value)}' is an ordinary variable, as in Ansible: hostops "
                   f"no longer reads it as a connection setting{also}; if it was meant for SSH, rename it "
                   f"{ansible}")
    return out
