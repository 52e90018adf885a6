"""Inventory sources: what one ``-i`` argument is (a directory, a script, a YAML, INI or JSON
file, a pssh-style host list, a comma-separated host list) and reading it with the right reader.

Owns: the detection rules (documented in the README's "Inventories") and the walk of an
inventory directory, which skips what Ansible skips. Must not import hostops.inventory (it
fills the model through the builder API).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Set

import yaml

from hostops import inventory_ini, inventory_script, inventory_yaml
from hostops.errors import InventoryError
from hostops.variables import Source

if TYPE_CHECKING:
    from hostops.inventory import Inventory

#: Names skipped in an inventory directory: Ansible's default ``inventory_ignore_extensions``
#: (its REJECT_EXTS plus .orig, .cfg, .retry), checked as suffixes of the name.
IGNORED_EXTS = (".pyc", ".pyo", ".swp", ".bak", "~", ".rpm", ".md", ".txt", ".rst", ".orig", ".cfg", ".retry")
#: Entries of an inventory directory that are never inventory sources (Ansible's IGNORED_ALWAYS;
#: hidden names, those starting with '.', are skipped too).
IGNORED_NAMES = ("group_vars", "host_vars", "vars_plugins")
#: How deep sub-directories of an inventory directory are followed (symbolic-link loops and
#: generated trees stop here with an error, not at the recursion limit).
MAX_DIR_DEPTH = 20

YAML_EXTS = (".yml", ".yaml")


def add_source(inv: Inventory, path: str) -> None:
    """Read one ``-i`` argument into ``inv`` and remember where its group_vars/ and host_vars/
    live (the directory itself, or the directory holding the file)."""
    if os.path.isdir(path):
        before = len(inv.sources)
        _read_dir(inv, path, 0, set())
        if len(inv.sources) == before:
            inv.warnings.append(f"{path}: no inventory source in this directory (hidden files, group_vars/, "
                                f"host_vars/ and {', '.join(IGNORED_EXTS)} files are skipped)")
        inv.vars_dirs.append(path)
    elif "," in path and not os.path.exists(path):
        # Ansible's host list: -i 'web1,web2:2222,' (no group_vars are read for it)
        for spec in path.split(","):
            if spec.strip():
                inv.add_host_spec(spec.strip(), Source(f"-i {path}"))
    else:
        read_file(inv, path)
        inv.vars_dirs.append(os.path.dirname(path) or ".")


def _read_dir(inv: Inventory, path: str, depth: int, seen: Set[str]) -> None:
    """Every source in ``path`` in lexical order, sub-directories included, as Ansible reads them."""
    real = os.path.realpath(path)
    if real in seen:
        inv.warnings.append(f"{path}: directory already read (a symbolic link loop?); skipped")
        return
    if depth > MAX_DIR_DEPTH:
        raise InventoryError(f"inventory directories nest deeper than {MAX_DIR_DEPTH} levels (the limit)", path)
    seen.add(real)
    try:
        names = sorted(os.listdir(path))
    except OSError as exc:
        raise InventoryError(f"cannot list inventory directory: {exc.strerror or exc}", path) from None
    for name in names:
        full = os.path.join(path, name)
        if name in IGNORED_NAMES:
            if depth > 0 and name != "vars_plugins":
                inv.warnings.append(
                    f"{full}: not applied: Ansible reads {name}/ only next to an -i source, not in its "
                    f"sub-directories; pass -i {path} as well or move {name}/ up")
            continue
        if name.startswith(".") or name.endswith(IGNORED_EXTS):
            continue
        if os.path.isdir(full):
            _read_dir(inv, full, depth + 1, seen)
        elif os.path.isfile(full) or not os.path.exists(full):
            read_file(inv, full)  # (a dangling link: read_file says so)
        else:  # a FIFO or device would block the read: only -i names one on purpose (-i <(cmd))
            inv.warnings.append(f"{full}: not a regular file (a FIFO, socket or device); skipped")


def read_file(inv: Inventory, path: str) -> None:
    """One inventory file, read by the reader its content calls for (rules in the README)."""
    if inventory_script.is_script(path):
        inv.sources.append(path)
        inventory_script.read_script(inv, path)
        return
    try:
        with open(path, "r", encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise InventoryError("no such inventory file or directory; check the -i path", path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InventoryError(f"cannot read inventory: {exc}", path) from None
    inv.sources.append(path)
    ext = os.path.splitext(path)[1].lower()
    if ext in YAML_EXTS:
        inventory_yaml.read(inv, text, path)
    elif ext == ".json" or text.lstrip().startswith("{"):
        _read_json(inv, text, path, ext == ".json")
    elif ext == ".toml":
        raise InventoryError("TOML inventories are not read; convert it with: "
                             "ansible-inventory -i FILE --list -y > FILE.yml", path)
    elif ext == ".ini":
        inventory_ini.read(inv, text, path)
    else:
        _read_untyped(inv, text, path)


def _read_untyped(inv: Inventory, text: str, path: str) -> None:
    """A file whose extension says nothing: YAML groups, else INI, else a pssh-style list."""
    kind = _yaml_kind(text)
    if kind == "inventory":
        inventory_yaml.read(inv, text, path)
    elif inventory_ini.looks_like_ini(text):
        inventory_ini.read(inv, text, path)
    elif kind == "mapping":
        inventory_yaml.read(inv, text, path)  # not an inventory: its reader says why, with the line
    else:
        inv.add_text(text, path)


def _read_json(inv: Inventory, text: str, path: str, is_json: bool) -> None:
    """JSON: the script / ``ansible-inventory --list`` format, or the YAML format written as JSON.
    A file without the .json extension that is not JSON is YAML (a flow mapping)."""
    try:
        data = inventory_script.parse_json(text, path)
    except InventoryError:
        if is_json:
            raise
        inventory_yaml.read(inv, text, path)
        return
    if inventory_script.is_listing(data):
        inventory_script.read_json_file(inv, data, path)
    else:
        inventory_yaml.read(inv, text, path)


def _yaml_kind(text: str) -> str:
    """"inventory" for a YAML mapping of groups (each a mapping or empty), "mapping" for another
    mapping, "" for anything else. An INI line such as ``h1 msg="a: b"`` parses as a YAML
    mapping of a string; it is INI, as Ansible finds when its YAML reader gives up."""
    try:
        data = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError, ValueError):
        return ""
    if not isinstance(data, dict):
        return ""
    return "inventory" if all(v is None or isinstance(v, dict) for v in data.values()) else "mapping"
