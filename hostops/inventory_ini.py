"""The INI inventory reader: Ansible's most common inventory format, read as ansible-core 2.19
reads it (its ``plugins/inventory/ini.py`` is the reference), every group, host and variable
remembering its file and line.

Owns: sections (``[g]``, ``[g:vars]``, ``[g:children]``), host lines with inline ``key=value``
variables, ``host:port``, value typing. Must not import hostops.inventory (it fills the model
through the builder API it is given).
"""
from __future__ import annotations

import ast
import re
import shlex
import warnings
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from hostops import yamlfile
from hostops.errors import InventoryError
from hostops.variables import Source, check_var

if TYPE_CHECKING:
    from hostops.inventory import Inventory

#: ``[name]`` or ``[name:kind]`` with an optional trailing ``#`` comment (Ansible's pattern).
SECTION = re.compile(r"^\[([^:\]\s]+)(?::(\w+))?\]\s*(?:#.*)?$")
#: A line of a ``:children`` section: one group name, an optional comment.
GROUP_NAME = re.compile(r"^([^:\]\s]+)\s*(?:#.*)?$")
COMMENT_MARKERS = ("#", ";")
# Fast paths, with exactly the results of the general ones (shlex, ast.literal_eval) they skip:
_PLAIN_LINE = re.compile(r"[\"'\\]")  # a host line without quotes or backslashes
_SHLEX_SPACE = re.compile(r"[ \t\r\n]+")  # shlex's whitespace (not str.split's Unicode one)
_PLAIN_TEXT = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*|[0-9]+(?:\.[0-9]+){2,}")
_PLAIN_INT = re.compile(r"0|[1-9][0-9]{0,17}")
SECTION_KINDS = ("hosts", "children", "vars")


def looks_like_ini(text: str) -> bool:
    """True when ``text`` has an INI section header or a host line with ``key=value`` variables.

    A file of bare ``[user@]host[:port]`` lines reads the same as a pssh host list and is left
    to that reader (which also honours ``user@``; see the README's detection rules).
    """
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in COMMENT_MARKERS:
            continue
        if line.startswith("[") and line.endswith("]"):
            return True  # a section header, or a malformed one the INI reader reports
        head = line.split("#", 1)[0].split()
        if len(head) > 1 and "=" in head[1]:
            return True
    return False


class _Reader:
    """One INI file being read into an inventory (Ansible's single pass, pending declarations
    checked at the end)."""

    def __init__(self, inv: Inventory, path: str) -> None:
        self.inv = inv
        self.path = path
        self.lineno = 0
        self.nodes = 0  # values built from literals in this file (bounded by yamlfile.MAX_NODES)
        self.created: List[str] = []  # groups this file made, in order (top-level ones join 'all')
        #: group -> (line, kind, parents): a [g:vars] or a child named before the group is declared
        self.pending: Dict[str, Tuple[int, str, List[str]]] = {}

    def src(self) -> Source:
        return Source(self.path, self.lineno)

    def fail(self, message: str) -> InventoryError:
        return InventoryError(message, self.path, self.lineno)

    def read(self, text: str) -> None:
        group, state = "ungrouped", "hosts"
        for self.lineno, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line[0] in COMMENT_MARKERS:
                continue
            m = SECTION.match(line)
            if m:
                group, state = m.group(1), m.group(2) or "hosts"
                self.section(group, state, line)
            elif line.startswith("[") and line.endswith("]"):
                raise self.fail(f"invalid section header {line!r}: expected [group], [group:vars] or "
                                f"[group:children] (no spaces, one ':')")
            elif state == "hosts":
                self.host_line(line, group)
            elif state == "vars":
                self.var_line(line, group)
            else:
                self.child_line(line, group)
        self.check_pending()
        for name in self.created:
            if name != "all" and not self.inv.groups[name].parents:
                self.inv.link("all", name, self.inv.groups[name].source or Source(self.path))

    def section(self, group: str, state: str, line: str) -> None:
        if state not in SECTION_KINDS:
            raise self.fail(f"section {line.split(']')[0]}] has unknown type {state!r}; "
                            f"use [{group}], [{group}:vars] or [{group}:children]")
        if group not in self.inv.groups:
            # [g:vars] alone does not declare g: remember it, to refuse it if g never appears
            if state == "vars" and group not in self.pending:
                self.pending[group] = (self.lineno, "vars", [])
            self.new_group(group)
        pending = self.pending.get(group)
        if pending is not None and state != "vars":
            if pending[1] == "children":
                self.add_pending_children(group)
            else:
                del self.pending[group]

    def new_group(self, name: str) -> None:
        if name not in self.inv.groups:
            self.created.append(name)
        self.inv.ensure_group(name, self.src())

    def add_pending_children(self, group: str) -> None:
        todo = [group]
        while todo:  # iterative: a chain of forward references cannot exhaust the stack
            name = todo.pop()
            entry = self.pending.pop(name, None)
            if entry is None:
                continue
            for parent in entry[2]:
                self.inv.link(parent, name, Source(self.path, entry[0]))
                if parent in self.pending and self.pending[parent][1] == "children":
                    todo.append(parent)

    def check_pending(self) -> None:
        for name, (line, kind, parents) in self.pending.items():
            self.lineno = line
            if kind == "vars":
                raise self.fail(f"section [{name}:vars] is for group {name!r}, which is defined nowhere; "
                                f"add a [{name}] section (or list it under some [parent:children])")
            raise self.fail(f"section [{parents[-1]}:children] names group {name!r}, which is defined "
                            f"nowhere; add a [{name}] section (it may be empty)")

    def child_line(self, line: str, parent: str) -> None:
        m = GROUP_NAME.match(line)
        if not m:
            raise self.fail(f"expected one group name in [{parent}:children], got {line!r}")
        child = m.group(1)
        if child in self.inv.groups:
            self.inv.link(parent, child, self.src())
        elif child in self.pending:
            self.pending[child][2].append(parent)
        else:
            self.pending[child] = (self.lineno, "children", [parent])

    def var_line(self, line: str, group: str) -> None:
        if "=" not in line:
            raise self.fail(f"expected key=value in [{group}:vars], got {line!r}")
        key, value = (part.strip() for part in line.split("=", 1))
        if not key:
            raise self.fail(f"a variable needs a name before '=' in [{group}:vars]: {line!r}")
        parsed = self.value(value)
        check_var(key, parsed, self.src())
        target = self.inv.groups[group]
        target.vars[key] = parsed
        target.var_sources[key] = self.src()

    def host_line(self, line: str, group: str) -> None:
        if _PLAIN_LINE.search(line) is None:  # nothing shlex would treat specially but '#'
            tokens = _SHLEX_SPACE.split(line.split("#", 1)[0].strip(" \t\r\n"))
        else:
            try:
                tokens = shlex.split(line, comments=True)
            except ValueError as exc:
                raise self.fail(f"cannot read host line {line!r}: {exc}") from None
        if not tokens or not tokens[0]:
            raise self.fail(f"expected a host name, got {line!r}")
        pattern, port = self.split_port(tokens[0])
        hvars: Dict[str, Any] = {}
        for token in tokens[1:]:
            if "=" not in token:
                raise self.fail(f"expected key=value after the host name, got {token!r} "
                                f"(quote values that hold spaces: key=\"a b\")")
            key, value = token.split("=", 1)
            hvars[key] = self.value(value)
        src = self.src()
        if port is not None:
            check_var("ansible_port", port, src)
        for key, value in hvars.items():
            check_var(key, value, src)
        self.inv.count_entries(pattern, src)
        for name in self.inv.expand(pattern, src):
            if name.strip() == "---":
                raise self.fail("host '---' is the start of a YAML document: is this a YAML file? "
                                "Name it .yml")
            hostvars = dict(hvars)
            if port is not None and name not in self.inv.hosts:
                # as Ansible: host:port sets the port of a new host only, before its inline vars
                hostvars = {"ansible_port": port, **hvars}
            self.inv.add_host(name, group, hostvars, {k: src for k in hostvars}, src)

    def split_port(self, token: str) -> Tuple[str, Optional[int]]:
        """``host:port`` → (host, port); ``[v6addr]:port`` too; a bare IPv6 address keeps its colons.

        Colons inside ``[a:b]`` ranges do not count (``web[01:09]:2222``).
        """
        m = re.fullmatch(r"\[([0-9A-Fa-f:.%]+)\](?::([0-9]+))?", token)
        if m and (m.group(1).count(":") >= 7 or "::" in m.group(1)):
            return m.group(1), int(m.group(2)) if m.group(2) else None
        outside = re.sub(r"\[[^\]]*\]", "", token)
        if outside.count(":") != 1:
            return token, None
        host, _, port = token.rpartition(":")
        if port == "":
            raise self.fail(f"host {token!r} ends in ':'; the part after ':' is the port number")
        if not port.isdigit() or not port.isascii():
            return token, None  # as Ansible: not an address with a port, the name is kept whole
        return host, int(port)

    def value(self, text: str) -> Any:
        """An INI value typed as Ansible types it: a Python literal when it is one (``1``,
        ``True``, ``[1, 2]``, ``'quoted'``), else the text as written."""
        if _PLAIN_TEXT.fullmatch(text) and text not in ("True", "False", "None"):
            return text  # names, host names, addresses: never a literal (and 10x faster to know)
        if _PLAIN_INT.fullmatch(text):
            return int(text)
        return self.literal(text)

    def literal(self, text: str) -> Any:
        """The general path of value(): Python's literal rules, as Ansible applies them."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", SyntaxWarning)
                value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
        except (TypeError, MemoryError, RecursionError) as exc:
            raise self.fail(f"value {text[:60]!r} cannot be read: {exc}") from None
        return self.coerce(value, 0)

    def coerce(self, value: Any, depth: int) -> Any:
        """Literal types Ansible does not keep become what it makes of them (lists, text)."""
        self.nodes += 1
        if self.nodes > yamlfile.MAX_NODES:
            raise self.fail(f"the file's values hold more than {yamlfile.MAX_NODES} items (the limit)")
        if depth > yamlfile.MAX_DEPTH:
            raise self.fail(f"a value nests deeper than {yamlfile.MAX_DEPTH} levels (the limit)")
        if isinstance(value, (list, tuple, set)):
            return [self.coerce(v, depth + 1) for v in value]
        if isinstance(value, dict):
            return {k: self.coerce(v, depth + 1) for k, v in value.items()}
        if value is ...:
            return "..."
        if isinstance(value, complex):
            return str(value)
        if isinstance(value, bytes):
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise self.fail(f"a bytes value is not UTF-8: {exc}") from None
        return value


def read(inv: Inventory, text: str, path: str) -> None:
    """Read one INI inventory into ``inv``."""
    _Reader(inv, path).read(text)
    inv.check_group_tree()

