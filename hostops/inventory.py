"""Inventories: the model (groups, hosts, variables with their sources) and how sources load.

The inventory is a tree of groups (``all`` at the root) holding hosts and variables.
Every group and variable remembers the file and line it came from, so a bad value
can be reported as ``prod.yml:14: ...`` before anything runs.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

from hostops import groupgraph, hostlist, inventory_dirs, inventory_vars
from hostops.errors import InventoryError
from hostops.variables import (  # noqa: F401  (re-exported: the inventory API)
    CONNECTION_VARS, CONNECTIONS, GROUP_PRIORITY, OLD_SHORT_NAMES, PASSWORD_VARS, SSH_CONNECTIONS, Source,
    check_var, connection_vars, short_name_warnings)
from hostops.yamlfile import LineMap, type_name


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
class Group:
    name: str
    vars: Dict[str, Any] = dataclasses.field(default_factory=dict)
    var_sources: Dict[str, Source] = dataclasses.field(default_factory=dict)
    children: List[str] = dataclasses.field(default_factory=list)
    parents: List[str] = dataclasses.field(default_factory=list)
    hosts: List[str] = dataclasses.field(default_factory=list)
    source: Optional[Source] = None
    #: group_vars/ (host_vars/) files' variables, per directory they were found in (its real path)
    file_vars: Dict[str, Dict[str, Any]] = dataclasses.field(default_factory=dict)
    file_var_sources: Dict[str, Dict[str, Source]] = dataclasses.field(default_factory=dict)

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
    #: The address a ``-H`` entry or host-list line named (``deploy@alias:2222`` → ``alias``): as
    #: on ssh's command line, ssh_config's HostName for it still applies (settings.resolve).
    address: Optional[str] = None
    #: host_vars/ files' variables, per directory they were found in (its real path)
    file_vars: Dict[str, Dict[str, Any]] = dataclasses.field(default_factory=dict)
    file_var_sources: Dict[str, Dict[str, Source]] = dataclasses.field(default_factory=dict)


# YAML with line numbers lives in hostops.yamlfile (runbooks use it too)
_Map = LineMap
_type_name = type_name


# [user@]host[:port], where host may hold ranges such as web[01:20] (colons inside brackets).
_TEXT_LINE = re.compile(r"^(?:(?P<user>[^@\s]+)@)?(?P<host>(?:[^\s:@\[\]]|\[[^\]\s]*\])+)(?::(?P<port>\d+))?$")
# [user@][ipv6]:port or [user@]ipv6 (no port: only the brackets can give an IPv6 address one).
_IPV6_LINE = re.compile(r"^(?:(?P<user>[^@\s]+)@)?(?:\[(?P<bracketed>[^\]\s]+)\](?::(?P<port>\d+))?|(?P<bare>[^\s@\[\]]+))$")


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _parse_spec(spec: str) -> Optional[Tuple[str, str, Optional[str], bool]]:
    """``[user@]host[:port]`` → (user or "", host, port or None, whether the host was bracketed);
    None if it is not one. IPv6 addresses as OpenSSH and Ansible write them: ``[::1]:2222``, ``::1``."""
    m6 = _IPV6_LINE.match(spec)
    if m6:
        address = m6.group("bracketed") or m6.group("bare")
        if address.count(":") >= 2 and _is_ipv6(address):
            return m6.group("user") or "", address, m6.group("port"), bool(m6.group("bracketed"))
    m = _TEXT_LINE.match(spec)
    if not m:
        return None
    return m.group("user") or "", m.group("host"), m.group("port"), False


class Inventory:
    """Groups, hosts and variables loaded from one or more inventory sources."""

    def __init__(self) -> None:
        self.groups: Dict[str, Group] = {"all": Group("all"), "ungrouped": Group("ungrouped", parents=["all"])}
        self.groups["all"].children.append("ungrouped")
        self.hosts: Dict[str, Host] = {}
        self.sources: List[str] = []
        self.warnings: List[str] = []
        #: where each -i source's group_vars/ and host_vars/ are looked for, in -i order (repeats kept:
        #: Ansible merges the files once per source naming the directory)
        self.vars_dirs: List[str] = []
        self._vars_keys: List[str] = []  # their real paths: the keys of Group/Host.file_vars
        self.host_entries = 0  # host entries listed so far (see MAX_HOST_ENTRIES)
        #: where each parent → child link was first made, in order: reports a cycle at its last link
        self.links: Dict[Tuple[str, str], Tuple[int, Source]] = {("all", "ungrouped"): (0, Source("<built-in>"))}
        self._depths: Optional[Dict[str, int]] = None  # cache for depth(); None after any change
        self._repeats: Dict[str, List[Source]] = {}  # -H / host-list entries naming a host again

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
        inventory_vars.apply(inv)
        return inv

    def add_file(self, path: str) -> None:
        """Read one ``-i`` source: a file of any kind, a directory, or ``host1,host2``
        (detection rules: :mod:`hostops.inventory_dirs`)."""
        inventory_dirs.add_source(self, path)

    def add_text(self, text: str, path: str) -> None:
        """A pssh-style host file: one ``[user@]host[:port]`` per line, ``#`` comments."""
        for lineno, raw in enumerate(text.splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line or line.startswith(";"):
                continue
            self.add_host_spec(line, Source(path, lineno))

    def add_host_spec(self, spec: str, src: Source) -> None:
        """One ``-H`` entry or host-list line, ``[user@]host[:port]``. A host given with a user or
        a port is named as given (``deploy@10.0.0.5:2222``): entries that differ in user or port
        are different hosts, and an exact repeat is one host (with a warning at the end)."""
        text = spec.strip()
        parsed = _parse_spec(text)
        if parsed is None:
            raise src.error(f"{spec!r} is not a host: expected [user@]host[:port], one per line")
        user, host, port, bracketed = parsed
        if port is not None and (len(port) > 5 or not 1 <= int(port) <= 65535):
            raise src.error(f"port {port} of {text!r} is out of range (1-65535)")
        self.count_entries(host, src)
        for address in self.expand(host, src):
            hvars: Dict[str, Any] = {}
            name = address
            if user or port:
                shown = f"[{address}]" if bracketed else address
                name = f"{user + '@' if user else ''}{shown}{':' + port if port else ''}"
                hvars["ansible_host"] = address
                if user:
                    hvars["ansible_user"] = user
                if port:
                    hvars["ansible_port"] = int(port)
            if name in self.hosts:
                self._repeats.setdefault(name, [self.hosts[name].source or src]).append(src)
            self.add_host(name, "ungrouped", hvars, {k: src for k in hvars}, src)
            if hvars and self.hosts[name].address is None:
                self.hosts[name].address = address

    @staticmethod
    def entries_limit() -> int:
        """MAX_HOST_ENTRIES, read when asked (the readers plan against it before expanding)."""
        return MAX_HOST_ENTRIES

    @staticmethod
    def entries_message(name: str) -> str:
        shown = name if len(name) < 60 else name[:57] + "..."
        return (f"with {shown!r} the inventory lists more than {MAX_HOST_ENTRIES} host entries (ranges "
                f"expanded, aliased groups counted each time they are used); the limit is {MAX_HOST_ENTRIES}")

    def count_entries(self, name: str, src: Source) -> None:
        """Account for the host entries ``name`` expands to before expanding it."""
        try:
            n = hostlist.count(name)
        except InventoryError as exc:
            raise src.error(exc.message) from None
        if self.host_entries + n > MAX_HOST_ENTRIES:
            raise src.error(self.entries_message(name))
        self.host_entries += n

    def ensure_group(self, name: str, src: Source) -> Group:
        """The group called ``name``, created (remembering ``src``) if it is new."""
        if name in self.hosts:
            raise src.error(f"{name!r} is both a host and a group; rename one of them")
        group = self.groups.get(name)
        if group is None:
            group = self.groups[name] = Group(name, source=src)
        elif group.source is None:
            group.source = src
        return group

    @staticmethod
    def expand(name: str, src: Source) -> List[str]:
        try:
            return hostlist.expand(name)
        except InventoryError as exc:
            raise src.error(exc.message) from None

    def link(self, parent: str, child: str, src: Source) -> None:
        if child == "all":
            raise src.error("'all' cannot be the child of another group")
        if child == parent:
            raise src.error(f"groups form a cycle: {child} -> {child}; a group cannot contain itself")
        pgroup = self.groups[parent]
        cgroup = self.groups[child]
        if (parent, child) not in self.links:
            self.links[(parent, child)] = (len(self.links), src)
            pgroup.children.append(child)
            cgroup.parents.append(parent)
            self._depths = None

    def check_group_tree(self) -> None:
        """Refuse a cycle of groups (as Ansible does) and a chain deeper than MAX_GROUP_DEPTH.

        Checked once a file is read, in time linear in groups and links (checking at every link
        was quadratic in a long chain); a cycle is reported at the last of its links to be read.
        """
        cycle = self._find_cycle()
        if cycle:
            edges = list(zip(cycle, cycle[1:]))
            last = max(range(len(edges)), key=lambda i: self.links[edges[i]][0])
            ring = cycle[last + 1:-1] + cycle[:last + 1]  # so the last link read closes it
            shown = ring + [ring[0]]
            raise self.links[edges[last]][1].error(
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
            # a group without a parent yet is counted under 'all', where finish() puts it
            orphans = [n for n, g in self.groups.items() if not g.parents and n != "all"]
            children = {name: g.children for name, g in self.groups.items()}
            children["all"] = children["all"] + orphans
            parents = {name: len(g.parents) or (name != "all") for name, g in self.groups.items()}
            self._depths = groupgraph.depths(children, parents)
        return self._depths

    def add_host(self, name: str, group: str, hvars: Dict[str, Any], sources: Dict[str, Source],
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
        """What Ansible does once every source is read: groups without a parent go under
        ``all`` (in the order they were defined), hosts that only sit in ``all`` belong to
        ``ungrouped``. Then the warnings that need the whole inventory: hosts named twice by
        ``-H``/host lists, and old short variable names that no longer set the connection."""
        for name, group in list(self.groups.items()):
            if name != "all" and not group.parents:
                self.link("all", name, group.source or Source("inventory"))
        self.check_group_tree()
        for host in self.hosts.values():
            real = [g for g in host.groups if g != "ungrouped"]
            if real and "ungrouped" in host.groups:
                host.groups.remove("ungrouped")
                self.groups["ungrouped"].hosts.remove(host.name)
            if host.groups == ["all"]:
                host.groups = ["ungrouped"]
                self.groups["all"].hosts.remove(host.name)
                self.groups["ungrouped"].hosts.append(host.name)
        self.warnings.extend(self._repeat_warnings())
        holders: List[Any] = [*self.groups.values(), *self.hosts.values()]
        if any(k in OLD_SHORT_NAMES for holder in holders for k in holder.vars):
            self.warnings.extend(short_name_warnings(self.host_vars_with_sources(h) for h in self.hosts))

    def _repeat_warnings(self) -> List[str]:
        if not self._repeats:
            return []
        shown = [f"{name} ({', '.join(s.where() for s in where)})" for name, where in list(self._repeats.items())[:10]]
        more = len(self._repeats) - len(shown)
        return [f"host{'s' if len(self._repeats) > 1 else ''} listed more than once, run once: " + "; ".join(shown)
                + (f"; and {more} more" if more else "")]

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
        """A host's variables and where each came from, merged in Ansible's order (its
        VARIABLE_PRECEDENCE, checked against ansible-core): ``all``'s inventory vars, the other
        groups' inventory vars (by depth, priority, name), then group_vars/all files, then the
        other groups' group_vars files, then the host's inventory vars, then its host_vars files.
        Files come per -i source in order, and per group within one source."""
        merged: Dict[str, Any] = {}
        sources: Dict[str, Source] = {}
        groups = [self.groups[g] for g in self.host_groups(name)]
        host = self.hosts[name]
        if len(self._vars_keys) != len(self.vars_dirs):  # vars_dirs only grows
            self._vars_keys = [os.path.realpath(d) for d in self.vars_dirs]
        dirs = self._vars_keys
        layers: List[Tuple[Dict[str, Any], Dict[str, Source]]] = [(g.vars, g.var_sources) for g in groups]
        for entities in ([self.groups["all"]], [g for g in groups if g.name != "all"]):
            layers += [(g.file_vars[d], g.file_var_sources[d]) for d in dirs for g in entities if d in g.file_vars]
        for values, where in layers:
            merged.update(values)
            sources.update(where)
        # a group's rank among its siblings, not a variable: Ansible keeps it out of host variables
        merged.pop(GROUP_PRIORITY, None)
        sources.pop(GROUP_PRIORITY, None)
        layers = [(host.vars, host.var_sources)]
        layers += [(host.file_vars[d], host.file_var_sources[d]) for d in dirs if d in host.file_vars]
        for values, where in layers:
            merged.update(values)
            sources.update(where)
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


def default_inventory_path() -> str:
    """The embedded default inventory: this machine, no SSH."""
    return os.path.join(os.path.dirname(__file__), "data", "localhost.yml")
