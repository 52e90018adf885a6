"""The YAML inventory reader: Ansible's YAML format, with every group, host and variable
remembering its file and line (hostops.inventory holds the model it fills)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional

from hostops import hostlist, yamlfile
from hostops.errors import InventoryError
from hostops.variables import Source, check_var
from hostops.yamlfile import LineMap as _Map
from hostops.yamlfile import YamlProblem
from hostops.yamlfile import type_name as _type_name

if TYPE_CHECKING:
    from hostops.inventory import Group, Inventory

GROUP_KEYS = ("hosts", "vars", "children")



def read(inv: Inventory, text: str, path: str) -> None:
    """Read one YAML inventory (Ansible's format) into ``inv``."""
    try:
        data = yamlfile.load(text)
    except YamlProblem as exc:
        raise InventoryError(exc.message, path, exc.line) from None
    if data is None:
        return
    if not isinstance(data, dict):
        raise InventoryError(f"the top level must be a mapping of group names (like 'all:'), "
                             f"not {_type_name(data)}", path, yamlfile.start_line(text))
    _plan_entries(inv, data, path)
    for name, body in data.items():
        _add_group(inv, str(name), body, "all" if name != "all" else None,
                        Source(path, data.key_lines.get(name) if isinstance(data, _Map) else None), path)
    inv.check_group_tree()


def _plan_entries(inv: Inventory, data: Dict[Any, Any], path: str) -> None:
    """Count the host entries a YAML inventory would add (ranges expanded, aliased groups
    once per use) and refuse it past MAX_HOST_ENTRIES before expanding anything.

    A walk of the loaded structure, iterative and bounded by yamlfile.MAX_NODES; whatever
    is malformed is left for the real pass to report.
    """
    planned = inv.host_entries
    todo: List[Any] = list(data.values())
    while todo:
        body = todo.pop()
        if not isinstance(body, dict):
            continue
        hosts = body.get("hosts")
        if isinstance(hosts, dict):
            for hname in hosts:
                try:
                    planned += hostlist.count(str(hname))
                except InventoryError:
                    planned += 1
                if planned > inv.entries_limit():
                    line = hosts.key_lines.get(hname) if isinstance(hosts, _Map) else None
                    raise InventoryError(inv.entries_message(str(hname)), path, line)
        children = body.get("children")
        if isinstance(children, dict):
            todo.extend(children.values())


def _add_group(inv: Inventory, name: str, body: Any, parent: Optional[str], src: Source, path: str) -> None:
    group = inv.ensure_group(name, src)
    if parent is not None:
        inv.link(parent, name, src)
    if body is None:
        return
    if not isinstance(body, dict):
        raise src.error(f"group {name!r} must be a mapping with hosts/vars/children, not {_type_name(body)}")
    for key in body:
        if key not in GROUP_KEYS:
            line = body.key_lines.get(key) if isinstance(body, _Map) else src.line
            inv.warnings.append(f"{path}:{line}: ignoring unknown key {key!r} in group {name!r} "
                                 f"(expected {', '.join(GROUP_KEYS)})")

    def line_of(key: str) -> Source:
        return Source(path, body.key_lines.get(key) if isinstance(body, _Map) else src.line)

    _add_group_vars(group, body.get("vars"), line_of("vars"), path)
    _add_group_hosts(inv, name, body.get("hosts"), line_of("hosts"), path)
    children = body.get("children")
    if children is not None:
        if not isinstance(children, dict):
            raise line_of("children").error(
                f"children of group {name!r} must be a mapping of group names, not {_type_name(children)}")
        for cname, cbody in children.items():
            csrc = Source(path, children.key_lines.get(cname) if isinstance(children, _Map) else None)
            _add_group(inv, str(cname), cbody, name, csrc, path)


def _add_group_vars(group: "Group", gvars: Any, src: Source, path: str) -> None:
    if gvars is None:
        return
    if not isinstance(gvars, dict):
        raise src.error(f"vars of group {group.name!r} must be a mapping, not {_type_name(gvars)}")
    for key, value in gvars.items():
        vsrc = Source(path, gvars.key_lines.get(key) if isinstance(gvars, _Map) else None)
        check_var(str(key), value, vsrc)
        group.vars[str(key)] = value
        group.var_sources[str(key)] = vsrc


def _add_group_hosts(inv: Inventory, name: str, hosts: Any, src: Source, path: str) -> None:
    if hosts is None:
        return
    if not isinstance(hosts, dict):
        raise src.error(
            f"hosts of group {name!r} must be a mapping (host name followed by ':'), not {_type_name(hosts)}")
    for hname, hvars in hosts.items():
        hsrc = Source(path, hosts.key_lines.get(hname) if isinstance(hosts, _Map) else None)
        if hname is None or isinstance(hname, (bool, float)):
            raise hsrc.error(f"{hname!r} is not a valid host name")
        if hvars is not None and not isinstance(hvars, dict):
            raise hsrc.error(f"variables of host {hname!r} must be a mapping, not {_type_name(hvars)}")
        sources = {}
        for key, value in (hvars or {}).items():
            vsrc = Source(path, hvars.key_lines.get(key) if isinstance(hvars, _Map) else hsrc.line)
            check_var(str(key), value, vsrc)
            sources[str(key)] = vsrc
        inv.count_entries(str(hname), hsrc)
        for expanded in inv.expand(str(hname), hsrc):
            inv.add_host(expanded, name, {str(k): v for k, v in (hvars or {}).items()}, sources, hsrc)

