"""``group_vars/`` and ``host_vars/``: the variable files Ansible reads next to each inventory
source, found as ansible-core's host_group_vars plugin finds them, kept per directory so the
inventory can merge them in Ansible's order, and every file that is present but not applied
reported as a warning (never ignored without a word).

Owns: finding and loading the files, the warnings. Must not import hostops.inventory (the
precedence of the layers it fills is the inventory's ``host_vars_with_sources``).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Set, Tuple, Union

from hostops import yamlfile
from hostops.errors import InventoryError
from hostops.variables import Source, check_var
from hostops.yamlfile import LineMap, YamlProblem, type_name

if TYPE_CHECKING:
    from hostops.inventory import Group, Host, Inventory

#: What a vars file may be called, in the order Ansible looks (the first one found is the one
#: read: ``web`` (a file or a directory) before ``web.yml`` before ``web.yaml`` before ``web.json``).
VARS_EXTS = ("", ".yml", ".yaml", ".json")
#: How deep ``group_vars/NAME/`` directories are followed.
MAX_VARS_DEPTH = 20
VAULT_HEADER = "$ANSIBLE_VAULT;"

Entity = Union["Group", "Host"]


def apply(inv: Inventory) -> None:
    """Load the group_vars/ and host_vars/ of every directory in ``inv.vars_dirs`` into the
    groups' and hosts' file-vars layers (keyed by that directory), warning about the rest."""
    done: Set[str] = set()
    for base in inv.vars_dirs:
        key = os.path.realpath(base)
        if key in done:
            continue
        done.add(key)
        _apply_kind(inv, base, key, "group_vars", inv.groups)
        _apply_kind(inv, base, key, "host_vars", inv.hosts)
    _warn_cwd(inv, done)


def _apply_kind(inv: Inventory, base: str, key: str, kind: str, entities: Mapping[str, Entity]) -> None:
    folder = os.path.join(base, kind) if base != "." else kind
    if not os.path.lexists(folder):
        return
    if not os.path.isdir(folder):
        inv.warnings.append(f"{folder}: not a directory, so not read as {kind} (Ansible skips it too)")
        return
    try:
        entries = sorted(os.listdir(folder))
    except OSError as exc:
        raise InventoryError(f"cannot list {kind}: {exc.strerror or exc}; fix its permissions", folder) from None
    present = set(entries)
    used: Dict[str, str] = {}  # entry -> the entity it was read for
    for name, entity in entities.items():
        if not name or name.startswith(os.sep):
            continue
        for ext in VARS_EXTS:
            entry = name + ext
            if entry in present:
                used[entry] = name
                layer, sources = _load_entry(inv, os.path.join(folder, entry))
                if layer:
                    entity.file_vars[key] = layer
                    entity.file_var_sources[key] = sources
                break
    for entry in entries:
        if entry not in used and not entry.startswith(".") and not entry.endswith("~"):
            reason = _unused_reason(entry, kind, entities, used)
            inv.warnings.append(f"{os.path.join(folder, entry)}: {reason}; its variables are not applied")


def _unused_reason(entry: str, kind: str, entities: Mapping[str, Entity], used: Dict[str, str]) -> str:
    what = "group" if kind == "group_vars" else "host"
    stem, ext = os.path.splitext(entry)
    if ext in VARS_EXTS and stem in entities:
        chosen = next(e for e, n in used.items() if n == stem)
        return (f"{kind}/{chosen} is read for {what} {stem!r} instead (Ansible reads only the first of "
                f"{stem}, {stem}.yml, {stem}.yaml, {stem}.json); merge the two")
    if ext not in VARS_EXTS:
        return (f"not a vars file name (Ansible reads {kind}/NAME, NAME.yml, NAME.yaml, NAME.json or a "
                f"NAME/ directory)" + (f", and there is no {what} {entry!r} either" if ext else ""))
    return f"there is no {what} {stem!r} in the inventory (check its name, or the -i sources)"


def _load_entry(inv: Inventory, path: str) -> Tuple[Dict[str, Any], Dict[str, Source]]:
    layer: Dict[str, Any] = {}
    sources: Dict[str, Source] = {}
    if os.path.isdir(path):
        files = _dir_files(inv, path, 0)
    elif os.path.isfile(path) or not os.path.exists(path):
        files = [path]  # (a dangling link: _load_file says it cannot be read)
    else:
        inv.warnings.append(f"{path}: not a regular file (a FIFO, socket or device); its variables are not applied")
        files = []
    for file in files:
        _load_file(inv, file, layer, sources)
    return layer, sources


def _dir_files(inv: Inventory, path: str, depth: int) -> List[str]:
    """The files of a ``group_vars/NAME/`` directory in lexical order, as Ansible lists them:
    sub-directories without an extension followed, files with a vars extension or none read."""
    if depth > MAX_VARS_DEPTH:
        raise InventoryError(f"vars directories nest deeper than {MAX_VARS_DEPTH} levels (the limit)", path)
    try:
        names = sorted(os.listdir(path))
    except OSError as exc:
        raise InventoryError(f"cannot list vars directory: {exc.strerror or exc}; fix its permissions", path) from None
    found: List[str] = []
    for name in names:
        if name.startswith(".") or name.endswith("~"):
            continue  # hidden files and editor backups, as Ansible
        full = os.path.join(path, name)
        ext = os.path.splitext(name)[1]
        if os.path.isdir(full) and not ext:
            found.extend(_dir_files(inv, full, depth + 1))
        elif os.path.isfile(full) and ext in VARS_EXTS:
            found.append(full)
        else:
            kind = "a directory" if os.path.isdir(full) else "a file"
            inv.warnings.append(f"{full}: {kind} with extension {ext!r} is not read as variables (only .yml, "
                                f".yaml, .json or no extension are); its variables are not applied")
    return found


def _load_file(inv: Inventory, path: str, layer: Dict[str, Any], sources: Dict[str, Source]) -> None:
    """Merge one vars file into ``layer``: later files replace earlier keys, as in Ansible."""
    try:
        with open(path, "r", encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        # an error, not a warning: an unread all.yml would mean connecting as the wrong user
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise InventoryError(f"cannot read variables file: {detail}; fix it or move it out of the way",
                             path) from None
    if text.lstrip().startswith(VAULT_HEADER):
        inv.warnings.append(f"{path}: encrypted with Ansible Vault, which hostops does not decrypt; "
                            f"its variables are not applied")
        return
    try:
        data = yamlfile.load(text)
    except YamlProblem as exc:
        raise InventoryError(exc.message, path, exc.line) from None
    if data is None or data == {}:
        return
    if not isinstance(data, dict):
        raise InventoryError(f"a variables file must be a mapping of names to values, not {type_name(data)}",
                             path, yamlfile.start_line(text))
    for name, value in data.items():
        src = Source(path, data.key_lines.get(name) if isinstance(data, LineMap) else None)
        check_var(str(name), value, src)
        layer[str(name)] = value
        sources[str(name)] = src


def _warn_cwd(inv: Inventory, read: Set[str]) -> None:
    """group_vars/ in the current directory that no -i source brought in: Ansible users expect
    ansible-playbook to read them next to the playbook; hostops has no playbook, so say so."""
    if os.path.realpath(".") in read:
        return
    for kind in ("group_vars", "host_vars"):
        if os.path.isdir(kind):
            inv.warnings.append(
                f"./{kind}/ is not read: hostops applies group_vars/ and host_vars/ found next to each -i "
                f"source (a file's directory, or the directory given); add -i with a source here, or move "
                f"{kind}/ next to the inventory")
