"""Inventory variables: which names are connection settings, which are refused, and the
checks every reader (YAML, INI, scripts, group_vars files) applies to a value with its file:line."""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Dict, Optional

from hostops.errors import InventoryError
from hostops.yamlfile import type_name as _type_name

# Connection variables: Ansible's name and our short alias → canonical key.
CONNECTION_VARS = {
    "ansible_host": "host", "ansible_ssh_host": "host", "host": "host",
    "ansible_port": "port", "ansible_ssh_port": "port", "port": "port",
    "ansible_user": "user", "ansible_ssh_user": "user", "user": "user",
    "ansible_ssh_private_key_file": "identity_file", "identity_file": "identity_file",
    "ansible_connection": "connection", "connection": "connection",
}
#: Variables that would put a password in the inventory: refused, never used.
PASSWORD_VARS = ("ansible_password", "ansible_ssh_pass", "ansible_ssh_password", "password")
SSH_CONNECTIONS = ("ssh", "paramiko", "smart")
CONNECTIONS = SSH_CONNECTIONS + ("local",)

@dataclasses.dataclass
class Source:
    """Where something was defined."""

    file: str
    line: Optional[int] = None

    def error(self, message: str) -> InventoryError:
        return InventoryError(message, self.file, self.line)



def check_var(key: str, value: Any, src: Source) -> None:
    """Reject what must never be in an inventory and connection values of the wrong type."""
    if key in PASSWORD_VARS:
        raise src.error(f"{key} is refused: passwords do not belong in inventories; "
                        "use SSH keys or ssh-agent instead")
    canon = CONNECTION_VARS.get(key)
    if canon is None:
        return
    if canon == "port":
        if isinstance(value, bool) or not (isinstance(value, int) or
                                           (isinstance(value, str) and re.fullmatch(r"[0-9]{1,5}", value))):
            shown = value if not isinstance(value, str) or len(value) < 40 else value[:37] + "..."
            raise src.error(f"{key} must be a port number, not {_type_name(value)} {shown!r}")
        if not 1 <= int(value) <= 65535:
            raise src.error(f"{key} {value} is out of range (1-65535)")
    elif canon == "connection":
        if value not in CONNECTIONS:
            raise src.error(f"{key}: {value!r} is not supported; use one of {', '.join(CONNECTIONS)}")
    elif not isinstance(value, str) or not value:
        raise src.error(f"{key} must be a non-empty string, not {_type_name(value)}")


def connection_vars(hvars: Dict[str, Any]) -> Dict[str, Any]:
    """The canonical connection settings (host, port, user, identity_file, connection) in ``hvars``.

    Ansible's names win over our short aliases when both are set (``CONNECTION_VARS`` lists
    them first), as an Ansible user expects.
    """
    out: Dict[str, Any] = {}
    for key, canon in CONNECTION_VARS.items():
        if key in hvars and canon not in out:
            value = hvars[key]
            out[canon] = int(value) if canon == "port" else value
    return out
