"""``hostops inventory --json`` and ``--graph``: the inventory as ``ansible-inventory --list``
and ``--graph`` print it, so that the two can be compared line for line.

Owns: the --list layout (``_meta.hostvars``, ``all.children``, groups without hosts or
children left out as Ansible leaves them out), turning every YAML value into JSON (dates,
timestamps, sets, binary), and the --graph tree. Must not import the CLI or the API.
"""
from __future__ import annotations

import base64
import datetime
import json
import math
from typing import Any, Dict, Iterable, List, Set, Tuple

from hostops.errors import InventoryError
from hostops.output import one_line

#: The most lines ``--graph`` draws. A group reached by several paths is drawn once per path
#: (as Ansible draws it), so a few dozen groups nested as diamonds could ask for billions.
MAX_GRAPH_LINES = 1_000_000


def inventory_json(inv: Any, targets: Iterable[Any]) -> Dict[str, Any]:
    """``hostops inventory --json``: ansible-inventory --list's layout for the selected hosts,
    each host's merged variables (as JSON values) plus ``hostops_connection``, its resolved
    connection. Every group reachable from ``all`` names all its children; a group's hosts are
    the selected ones; a group left with neither is not listed itself (as in Ansible)."""
    targets = list(targets)
    selected = {t.name for t in targets}
    data: Dict[str, Any] = {}
    seen: Set[str] = {"all"}
    todo = ["all"]
    while todo:  # every group once, the first time a parent names it (Ansible's order)
        name = todo.pop()
        group = inv.groups[name]
        entry: Dict[str, Any] = {}
        if group.children:
            entry["children"] = list(group.children)
        hosts = [h for h in group.hosts if h in selected] if name != "all" else []
        if hosts:
            entry["hosts"] = hosts
        if entry:
            data[name] = entry
        fresh = [c for c in group.children if c not in seen]
        seen.update(fresh)
        todo.extend(reversed(fresh))
    hostvars = {}
    for t in targets:
        hv = json_value(inv.host_vars(t.name))
        hv["hostops_connection"] = t.to_json()
        hostvars[t.name] = hv
    data["_meta"] = {"hostvars": hostvars}
    return data


def render_json(inv: Any, targets: Iterable[Any]) -> str:
    """The --json text: keys sorted and indented as ansible-inventory prints them."""
    return json.dumps(inventory_json(inv, targets), indent=4, sort_keys=True)


def json_value(value: Any) -> Any:
    """A variable's value as JSON holds it, as ansible-inventory writes it: dates and
    timestamps as ISO 8601 strings, sets as sorted lists, binary as its base64 text (where
    ansible-core stops with an error), mapping keys as strings. Recursion is bounded by
    yamlfile.MAX_DEPTH (every reader's values come through that loader or a JSON one)."""
    if isinstance(value, dict):
        return {_json_key(k): json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    if isinstance(value, (set, frozenset)):
        items = [json_value(v) for v in value]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(value, (datetime.date, datetime.time)):  # datetime is a date
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if value is None or isinstance(value, (str, int, float)):
        return value
    return str(value)


def _json_key(key: Any) -> str:
    """A mapping key as json.dumps would write it (``1`` → ``"1"``, ``true`` → ``"true"``), and
    dates as ISO strings (which json.dumps refuses)."""
    if isinstance(key, str):
        return key
    if isinstance(key, bool) or key is None:
        return json.dumps(key)
    if isinstance(key, float) and not math.isfinite(key):
        return json.dumps(key)
    if isinstance(key, (int, float)):
        return json.dumps(key)
    value = json_value(key)
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def inventory_graph(inv: Any, selected: Set[str]) -> str:
    """``hostops inventory --graph``: the group tree as ansible-inventory --graph draws it
    (``@all:``, ``  |--@ungrouped:``, a group drawn under each of its parents, empty groups
    too); only the selected hosts are listed. Names may hold controls: escaped."""
    lines: List[str] = []
    todo: List[Tuple[str, int]] = [("all", 0)]
    while todo:
        name, depth = todo.pop()
        if depth < 0:  # a host line, queued after its group's children
            lines.append("  |" * -depth + "--" + one_line(name))
        else:
            lines.append(("  |" * depth + "--" if depth else "") + f"@{one_line(name)}:")
            group = inv.groups[name]
            hosts = [h for h in group.hosts if h in selected] if name != "all" else []
            todo.extend((h, -(depth + 1)) for h in reversed(hosts))
            todo.extend((c, depth + 1) for c in reversed(group.children))
        if len(lines) > MAX_GRAPH_LINES:
            raise InventoryError(f"the group tree takes more than {MAX_GRAPH_LINES} lines to draw (groups reached "
                                 "by many paths are drawn once per path); use --json instead", "--graph")
    return "\n".join(lines)
