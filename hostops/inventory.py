"""Inventories: Ansible's YAML format unchanged, plus pssh-style plain host lists.

The inventory is a tree of groups (``all`` at the root) holding hosts and variables.
Every group and variable remembers the file and line it came from, so a bad value
can be reported as ``prod.yml:14: ...`` before anything runs.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

import yaml

from hostops import groupgraph, hostlist, yamlfile
from hostops.errors import InventoryError
from hostops.yamlfile import LineMap, YamlProblem, type_name

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
GROUP_KEYS = ("hosts", "vars", "children")

# Bounds on what an inventory may make hostops do. An inventory is code someone else may write
# (a generated file, a shared repository): a few lines of aliases and ranges must not be able
# to take minutes or gigabytes. Each limit is checked before the work it bounds, and exceeding
# one is an InventoryError naming the file and line. (One range: hostlist.MAX_EXPANSION; YAML
# values and nesting: yamlfile.MAX_NODES and yamlfile.MAX_DEPTH.)

#: The most hosts all inventory sources together may define.
MAX_HOSTS = 100_000
#: The most host entries all sources together may list: every host name each group lists,
#: counted once per name its ranges expand to and once per place it appears (an aliased group
#: counts each time it is used). Far above 100,000 hosts in a few groups each; it bounds the
#: work of the ``g0: &G {hosts: {"h[1:99999]":}}`` aliased-300-times bomb before it starts.
MAX_HOST_ENTRIES = 1_000_000
#: The longest chain of groups below ``all`` (``all`` → a → b … counts the groups after ``all``).
#: Real inventories nest a handful; the bound keeps every walk of the tree (variable precedence,
#: ``--graph``) far from Python's recursion limit.
MAX_GROUP_DEPTH = 200


@dataclasses.dataclass
class Source:
    """Where something was defined."""

    file: str
    line: Optional[int] = None

    def error(self, message: str) -> InventoryError:
        return InventoryError(message, self.file, self.line)


@dataclasses.dataclass
class Group:
    name: str
    vars: Dict[str, Any] = dataclasses.field(default_factory=dict)
    var_sources: Dict[str, Source] = dataclasses.field(default_factory=dict)
    children: List[str] = dataclasses.field(default_factory=list)
    parents: List[str] = dataclasses.field(default_factory=list)
    hosts: List[str] = dataclasses.field(default_factory=list)
    source: Optional[Source] = None

    @property
    def priority(self) -> int:
        try:
            return int(self.vars.get("ansible_group_priority", 1))
        except (TypeError, ValueError):
            return 1


@dataclasses.dataclass
class Host:
    name: str
    vars: Dict[str, Any] = dataclasses.field(default_factory=dict)
    var_sources: Dict[str, Source] = dataclasses.field(default_factory=dict)
    groups: List[str] = dataclasses.field(default_factory=list)
    source: Optional[Source] = None


# YAML with line numbers lives in hostops.yamlfile (runbooks use it too)
_Map = LineMap
_type_name = type_name


# [user@]host[:port], where host may hold ranges such as web[01:20] (colons inside brackets).
_TEXT_LINE = re.compile(r"^(?:(?P<user>[^@\s]+)@)?(?P<host>(?:[^\s:@\[\]]|\[[^\]\s]*\])+)(?::(?P<port>\d+))?$")


class Inventory:
    """Groups, hosts and variables loaded from one or more inventory sources."""

    def __init__(self) -> None:
        self.groups: Dict[str, Group] = {"all": Group("all"), "ungrouped": Group("ungrouped", parents=["all"])}
        self.groups["all"].children.append("ungrouped")
        self.hosts: Dict[str, Host] = {}
        self.sources: List[str] = []
        self.warnings: List[str] = []
        self.host_entries = 0  # host entries listed so far (see MAX_HOST_ENTRIES)
        #: where each parent → child link was first made, in order: reports a cycle at its last link
        self._links: Dict[Tuple[str, str], Tuple[int, Source]] = {("all", "ungrouped"): (0, Source("<built-in>"))}
        self._depths: Optional[Dict[str, int]] = None  # cache for depth(); None after any change

    # ------------------------------------------------------------ loading
    @classmethod
    def load(cls, paths: Iterable[str] = (), hosts: Iterable[str] = ()) -> "Inventory":
        """Load and merge inventory files (in order) and ad-hoc ``[user@]host[:port]`` names."""
        inv = cls()
        for path in paths:
            inv.add_file(path)
        for spec in hosts:
            inv.add_host_spec(spec, Source("--host"))
        inv.finish()
        return inv

    def add_file(self, path: str) -> None:
        try:
            with open(path, "r", encoding="utf-8") as fh:
                text = fh.read()
        except FileNotFoundError:
            raise InventoryError("no such inventory file; check the -i path", path) from None
        except IsADirectoryError:
            raise InventoryError("is a directory, not an inventory file", path) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise InventoryError(f"cannot read inventory: {exc}", path) from None
        self.sources.append(path)
        if self._looks_like_text(path, text):
            self.add_text(text, path)
        else:
            self.add_yaml(text, path)

    @staticmethod
    def _looks_like_text(path: str, text: str) -> bool:
        """YAML files are YAML; other files are a host list unless they parse to a mapping."""
        if path.endswith((".yml", ".yaml")):
            return False
        try:
            data = yaml.safe_load(text)
        except (yaml.YAMLError, RecursionError, ValueError):
            return True
        return not isinstance(data, dict)

    def add_text(self, text: str, path: str) -> None:
        """A pssh-style host file: one ``[user@]host[:port]`` per line, ``#`` comments."""
        for lineno, raw in enumerate(text.splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            src = Source(path, lineno)
            if re.fullmatch(r"\[[^\]:]*(?::(?:vars|children))?\]", line):
                raise src.error(f"{line} looks like an INI inventory section; hostops reads YAML inventories "
                                "(convert with: ansible-inventory -i FILE --list -y) or one host per line")
            self.add_host_spec(line, src)

    def add_host_spec(self, spec: str, src: Source) -> None:
        m = _TEXT_LINE.match(spec.strip())
        if not m:
            raise src.error(f"{spec!r} is not a host: expected [user@]host[:port], one per line")
        hvars: Dict[str, Any] = {}
        if m.group("user"):
            hvars["user"] = m.group("user")
        if m.group("port"):
            port = m.group("port")
            if len(port) > 5 or not 1 <= int(port) <= 65535:
                raise src.error(f"port {port} of {spec.strip()!r} is out of range (1-65535)")
            hvars["port"] = int(port)
        self._count_entries(m.group("host"), src)
        for name in self._expand(m.group("host"), src):
            self._add_host(name, "ungrouped", hvars, {k: src for k in hvars}, src)

    def add_yaml(self, text: str, path: str) -> None:
        try:
            data = yamlfile.load(text)
        except YamlProblem as exc:
            raise InventoryError(exc.message, path, exc.line) from None
        if data is None:
            return
        if not isinstance(data, dict):
            raise InventoryError(f"the top level must be a mapping of group names (like 'all:'), "
                                 f"not {_type_name(data)}", path, yamlfile.start_line(text))
        self._plan_entries(data, path)
        for name, body in data.items():
            self._add_group(str(name), body, "all" if name != "all" else None,
                            Source(path, data.key_lines.get(name) if isinstance(data, _Map) else None), path)
        self._check_group_tree()

    def _plan_entries(self, data: Dict[Any, Any], path: str) -> None:
        """Count the host entries a YAML inventory would add (ranges expanded, aliased groups
        once per use) and refuse it past MAX_HOST_ENTRIES before expanding anything.

        A walk of the loaded structure, iterative and bounded by yamlfile.MAX_NODES; whatever
        is malformed is left for the real pass to report.
        """
        planned = self.host_entries
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
                    if planned > MAX_HOST_ENTRIES:
                        line = hosts.key_lines.get(hname) if isinstance(hosts, _Map) else None
                        raise InventoryError(self._entries_message(str(hname)), path, line)
            children = body.get("children")
            if isinstance(children, dict):
                todo.extend(children.values())

    @staticmethod
    def _entries_message(name: str) -> str:
        shown = name if len(name) < 60 else name[:57] + "..."
        return (f"with {shown!r} the inventory lists more than {MAX_HOST_ENTRIES} host entries (ranges "
                f"expanded, aliased groups counted each time they are used); the limit is {MAX_HOST_ENTRIES}")

    def _count_entries(self, name: str, src: Source) -> None:
        """Account for the host entries ``name`` expands to before expanding it."""
        try:
            n = hostlist.count(name)
        except InventoryError as exc:
            raise src.error(exc.message) from None
        if self.host_entries + n > MAX_HOST_ENTRIES:
            raise src.error(self._entries_message(name))
        self.host_entries += n

    def _add_group(self, name: str, body: Any, parent: Optional[str], src: Source, path: str) -> None:
        if name in self.hosts:
            raise src.error(f"{name!r} is both a host and a group; rename one of them")
        group = self.groups.get(name)
        if group is None:
            group = self.groups[name] = Group(name, source=src)
        elif group.source is None:
            group.source = src
        if parent is not None:
            self._link(parent, name, src)
        if body is None:
            return
        if not isinstance(body, dict):
            raise src.error(f"group {name!r} must be a mapping with hosts/vars/children, not {_type_name(body)}")
        for key in body:
            if key not in GROUP_KEYS:
                line = body.key_lines.get(key) if isinstance(body, _Map) else src.line
                self.warnings.append(f"{path}:{line}: ignoring unknown key {key!r} in group {name!r} "
                                     f"(expected {', '.join(GROUP_KEYS)})")

        def line_of(key: str) -> Source:
            return Source(path, body.key_lines.get(key) if isinstance(body, _Map) else src.line)

        self._add_group_vars(group, body.get("vars"), line_of("vars"), path)
        self._add_group_hosts(name, body.get("hosts"), line_of("hosts"), path)
        children = body.get("children")
        if children is not None:
            if not isinstance(children, dict):
                raise line_of("children").error(
                    f"children of group {name!r} must be a mapping of group names, not {_type_name(children)}")
            for cname, cbody in children.items():
                csrc = Source(path, children.key_lines.get(cname) if isinstance(children, _Map) else None)
                self._add_group(str(cname), cbody, name, csrc, path)

    @staticmethod
    def _add_group_vars(group: "Group", gvars: Any, src: Source, path: str) -> None:
        if gvars is None:
            return
        if not isinstance(gvars, dict):
            raise src.error(f"vars of group {group.name!r} must be a mapping, not {_type_name(gvars)}")
        for key, value in gvars.items():
            vsrc = Source(path, gvars.key_lines.get(key) if isinstance(gvars, _Map) else None)
            _check_var(str(key), value, vsrc)
            group.vars[str(key)] = value
            group.var_sources[str(key)] = vsrc

    def _add_group_hosts(self, name: str, hosts: Any, src: Source, path: str) -> None:
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
                _check_var(str(key), value, vsrc)
                sources[str(key)] = vsrc
            self._count_entries(str(hname), hsrc)
            for expanded in self._expand(str(hname), hsrc):
                self._add_host(expanded, name, {str(k): v for k, v in (hvars or {}).items()}, sources, hsrc)

    @staticmethod
    def _expand(name: str, src: Source) -> List[str]:
        try:
            return hostlist.expand(name)
        except InventoryError as exc:
            raise src.error(exc.message) from None

    def _link(self, parent: str, child: str, src: Source) -> None:
        if child == "all":
            raise src.error("'all' cannot be the child of another group")
        if child == parent:
            raise src.error(f"groups form a cycle: {child} -> {child}; a group cannot contain itself")
        pgroup = self.groups[parent]
        cgroup = self.groups[child]
        if (parent, child) not in self._links:
            self._links[(parent, child)] = (len(self._links), src)
            pgroup.children.append(child)
            cgroup.parents.append(parent)
            self._depths = None

    def _check_group_tree(self) -> None:
        """Refuse a cycle of groups (as Ansible does) and a chain deeper than MAX_GROUP_DEPTH.

        Checked once a file is read, in time linear in groups and links (checking at every link
        was quadratic in a long chain); a cycle is reported at the last of its links to be read.
        """
        cycle = self._find_cycle()
        if cycle:
            edges = list(zip(cycle, cycle[1:]))
            last = max(range(len(edges)), key=lambda i: self._links[edges[i]][0])
            ring = cycle[last + 1:-1] + cycle[:last + 1]  # so the last link read closes it
            shown = ring + [ring[0]]
            raise self._links[edges[last]][1].error(
                "groups form a cycle: " + " -> ".join(shown) + "; a group cannot contain itself")
        depths = self._all_depths()
        for name, depth in depths.items():
            if depth == MAX_GROUP_DEPTH + 1:
                src = self.groups[name].source or Source(self.sources[-1] if self.sources else "inventory")
                raise src.error(f"group {name!r} is nested {depth} groups below 'all'; the limit is "
                                f"{MAX_GROUP_DEPTH} (is the chain of children generated by mistake?)")

    def _find_cycle(self) -> Optional[List[str]]:
        return groupgraph.find_cycle({name: g.children for name, g in self.groups.items()})

    def _all_depths(self) -> Dict[str, int]:
        if self._depths is None:  # cached until the next link
            self._depths = groupgraph.depths({name: g.children for name, g in self.groups.items()},
                                             {name: len(g.parents) for name, g in self.groups.items()})
        return self._depths

    def _add_host(self, name: str, group: str, hvars: Dict[str, Any], sources: Dict[str, Source],
                  src: Source) -> None:
        if name in self.groups:
            raise src.error(f"{name!r} is both a host and a group; rename one of them")
        host = self.hosts.get(name)
        if host is None:
            if len(self.hosts) >= MAX_HOSTS:
                raise src.error(f"the inventory defines more than {MAX_HOSTS} hosts (the limit); "
                                f"split the fleet into several inventories")
            host = self.hosts[name] = Host(name, source=src)
        host.vars.update(hvars)
        host.var_sources.update(sources)
        if group not in host.groups:
            host.groups.append(group)
            self.groups[group].hosts.append(name)

    def finish(self) -> None:
        """Hosts that only sit in ``all`` belong to ``ungrouped``, as in Ansible."""
        for host in self.hosts.values():
            real = [g for g in host.groups if g != "ungrouped"]
            if real and "ungrouped" in host.groups:
                host.groups.remove("ungrouped")
                self.groups["ungrouped"].hosts.remove(host.name)
            if host.groups == ["all"]:
                host.groups = ["ungrouped"]
                self.groups["all"].hosts.remove(host.name)
                self.groups["ungrouped"].hosts.append(host.name)

    # ------------------------------------------------------------ queries
    def ancestors(self, group: str) -> List[str]:
        """``group`` and every group above it."""
        out: List[str] = []
        seen = set()
        todo = [group]
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            out.append(name)
            todo.extend(self.groups[name].parents)
        return out

    def depth(self, group: str) -> int:
        """Longest distance from ``all``: deeper groups override shallower ones."""
        return self._all_depths().get(group, 0)

    def host_groups(self, name: str) -> List[str]:
        """Every group a host belongs to, directly or through parents, ordered as Ansible merges
        their variables: by depth, then ``ansible_group_priority``, then name."""
        groups: List[str] = []
        for g in self.hosts[name].groups:
            for a in self.ancestors(g):
                if a not in groups:
                    groups.append(a)
        if "all" not in groups:
            groups.append("all")
        return sorted(groups, key=lambda g: (self.depth(g), self.groups[g].priority, g))

    def host_vars(self, name: str) -> Dict[str, Any]:
        """Variables of a host merged with Ansible's precedence: all < parent < child < host."""
        merged, _sources = self.host_vars_with_sources(name)
        return merged

    def host_vars_with_sources(self, name: str) -> Tuple[Dict[str, Any], Dict[str, Source]]:
        merged: Dict[str, Any] = {}
        sources: Dict[str, Source] = {}
        for g in self.host_groups(name):
            merged.update(self.groups[g].vars)
            sources.update(self.groups[g].var_sources)
        host = self.hosts[name]
        merged.update(host.vars)
        sources.update(host.var_sources)
        return merged, sources

    def group_hosts(self, group: str) -> List[str]:
        """All hosts in a group and its descendants, in inventory order."""
        if group == "all":
            return list(self.hosts)
        members = set()
        todo = [group]
        seen = set()
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            members.update(self.groups[name].hosts)
            todo.extend(self.groups[name].children)
        return [h for h in self.hosts if h in members]

    def select(self, pattern: str = "all", state_file: Optional[str] = None) -> List[str]:
        """Host names matching an Ansible host pattern (see :mod:`hostops.selection`);
        ``state_file`` is where ``@failed`` and friends look (default: the usual place)."""
        from hostops.selection import select

        return select(self, pattern, state_file)

    def __iter__(self) -> Iterator[str]:
        return iter(self.hosts)

    def __len__(self) -> int:
        return len(self.hosts)


def _check_var(key: str, value: Any, src: Source) -> None:
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


def default_inventory_path() -> str:
    """The embedded default inventory: this machine, no SSH."""
    return os.path.join(os.path.dirname(__file__), "data", "localhost.yml")
