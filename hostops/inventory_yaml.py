"""The YAML inventory reader: Ansible's YAML format read as ansible-core's yaml plugin reads
it (sections in file order, ``host:port`` keys, the string forms ``hosts: web1``), with every
group, host and variable remembering its file and line (hostops.inventory holds the model).

Must not import hostops.inventory at run time (it imports this module).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

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
    """Read one YAML inventory (Ansible's format) into ``inv``. Top-level groups other than
    ``all`` get no parent here: ``Inventory.finish`` puts the groups left without one under
    ``all``, as Ansible does once every source is read."""
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
        _add_group(inv, name, body, None, _key_source(data, name, path, None), path)
    inv.check_group_tree()


def _key_source(mapping: Any, key: Any, path: str, default: Optional[int]) -> Source:
    return Source(path, mapping.key_lines.get(key, default) if isinstance(mapping, _Map) else default)


def _section(body: Dict[Any, Any], key: str) -> Any:
    """A group's ``hosts``/``vars``/``children``: a lone string is a one-key mapping
    (``hosts: web1`` is ``hosts: {web1: }``), as Ansible reads it."""
    value = body.get(key)
    if isinstance(value, str):
        mapping = _Map({value: None})
        mapping.line = body.key_lines.get(key, 0) if isinstance(body, _Map) else 0
        mapping.key_lines = {value: mapping.line}
        return mapping
    return value


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
        hosts = _section(body, "hosts")
        if isinstance(hosts, dict):
            for hname in hosts:
                try:
                    planned += hostlist.count(hostlist.split_port(hname)[0] if isinstance(hname, str) else "")
                except InventoryError:
                    planned += 1
                if planned > inv.entries_limit():
                    line = hosts.key_lines.get(hname) if isinstance(hosts, _Map) else None
                    raise InventoryError(inv.entries_message(str(hname)), path, line)
        children = _section(body, "children")
        if isinstance(children, dict):
            todo.extend(children.values())


def _group_name(name: Any, src: Source) -> str:
    """A group name as Ansible accepts it: a non-empty string (``123:`` is a number: refused,
    as ansible-core refuses it; ``"123":`` is a name)."""
    if not isinstance(name, str):
        raise src.error(f"group name {name!r} is {_type_name(name)}, not a name; put it in quotes "
                        f"(\"{name}\":) if it really is the group's name")
    if not name:
        raise src.error("a group name cannot be empty")
    return name


def _add_group(inv: Inventory, name: Any, body: Any, parent: Optional[str], src: Source, path: str) -> None:
    """One group and everything under it, its sections read in file order (the later
    definition of a variable wins, as in Ansible)."""
    name = _group_name(name, src)
    group = inv.ensure_group(name, src)
    if parent is not None:
        inv.link(parent, name, src)
    if body is None:
        return
    if not isinstance(body, dict):
        raise src.error(f"group {name!r} must be a mapping with hosts/vars/children, not {_type_name(body)}")
    for key in body:
        ksrc = _key_source(body, key, path, src.line)
        if key not in GROUP_KEYS:
            inv.warnings.append(f"{ksrc.where()}: ignoring unknown key {key!r} in group {name!r} "
                                f"(expected {', '.join(GROUP_KEYS)})")
            continue
        section = _section(body, key)
        if section is None:
            continue
        raw = body[key]
        if isinstance(raw, str) and key != "vars" and ("," in raw or " " in raw.strip()):
            inv.warnings.append(f"{ksrc.where()}: {key}: {raw!r} is one {'host' if key == 'hosts' else 'group'} named "
                                f"{raw!r} (as Ansible reads it); list several as a mapping, one name per line")
        if not isinstance(section, dict):
            what = {"vars": "variable names", "hosts": "host names (host name followed by ':')",
                    "children": "group names"}[key]
            raise ksrc.error(f"{key} of group {name!r} must be a mapping of {what}, not {_type_name(section)}")
        if key == "vars":
            _add_group_vars(group, section, path)
        elif key == "hosts":
            _add_group_hosts(inv, name, section, path)
        else:
            for cname, cbody in section.items():
                _add_group(inv, cname, cbody, name, _key_source(section, cname, path, ksrc.line), path)


def _add_group_vars(group: "Group", gvars: Dict[Any, Any], path: str) -> None:
    for key, value in gvars.items():
        vsrc = _key_source(gvars, key, path, None)
        check_var(str(key), value, vsrc)
        group.vars[str(key)] = value
        group.var_sources[str(key)] = vsrc


def _host_key(hname: Any, hsrc: Source) -> Tuple[str, Optional[int]]:
    """A host key (``web1``, ``web[01:10]``, ``db1:2222``, ``[::1]:22``) → (name or range, port)."""
    if not isinstance(hname, str):
        shown = "null" if hname is None else repr(hname)
        raise hsrc.error(f"host name {shown} is {_type_name(hname)}, not a name; put it in quotes "
                         f"(\"{hname}\":) if it really is the host's name (Ansible refuses it too)")
    if not hname:
        raise hsrc.error("a host name cannot be empty")
    pattern, port = hostlist.split_port(hname)
    if port is not None and not 1 <= port <= 65535:
        raise hsrc.error(f"port {port} of host {hname!r} is out of range (1-65535)")
    return pattern, port


def _add_group_hosts(inv: Inventory, name: str, hosts: Dict[Any, Any], path: str) -> None:
    for hname, hvars in hosts.items():
        hsrc = _key_source(hosts, hname, path, None)
        pattern, port = _host_key(hname, hsrc)
        if hvars is not None and not isinstance(hvars, dict):
            raise hsrc.error(f"variables of host {hname!r} must be a mapping, not {_type_name(hvars)}")
        values: Dict[str, Any] = {}
        sources: Dict[str, Source] = {}
        for key, value in (hvars or {}).items():
            vsrc = _key_source(hvars, key, path, hsrc.line)
            check_var(str(key), value, vsrc)
            values[str(key)] = value
            sources[str(key)] = vsrc
        inv.count_entries(pattern, hsrc)
        for expanded in inv.expand(pattern, hsrc):
            if port is not None and expanded not in inv.hosts:  # as Ansible: the key's port for a new host only
                inv.add_host(expanded, name, {"ansible_port": port, **values},
                             {"ansible_port": hsrc, **sources}, hsrc)
            else:
                inv.add_host(expanded, name, values, sources, hsrc)
