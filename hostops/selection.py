"""Host selection with Ansible's pattern language.

``web:db`` or ``web,db`` (union), ``web:&prod`` (intersection), ``web:!db`` (exclusion),
globs ``web*``, regexes ``~web\\d+``, ``all``/``*``, name ranges ``web[01:05]``, group
subscripts ``web[0]``/``web[0:2]``, ``@file`` (one host a line) and ``@ok``, ``@failed``,
``@unreachable``, ``@untouched`` (the last run's outcome, see :mod:`hostops.state`). As in Ansible, plain
terms are applied first, then intersections, then exclusions, whatever their order.
"""
from __future__ import annotations

import fnmatch
import re
from typing import TYPE_CHECKING, List, Optional

from hostops import hostlist
from hostops.errors import InventoryError, SelectionError

if TYPE_CHECKING:
    from hostops.inventory import Inventory


def split_pattern(pattern: str) -> List[str]:
    """Split a pattern into terms on ``,`` or on ``:`` outside brackets."""
    pattern = pattern.strip()
    if "," in pattern:
        return [p.strip() for p in pattern.split(",") if p.strip()]
    terms: List[str] = []
    current = ""
    depth = 0
    for ch in pattern:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == ":" and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += ch
    terms.append(current)
    return [t.strip() for t in terms if t.strip()]


def order_terms(terms: List[str]) -> List[str]:
    """Plain terms first, then ``&`` intersections, then ``!`` exclusions (Ansible's order)."""
    plain = [t for t in terms if t[0] not in "&!"]
    inter = [t for t in terms if t[0] == "&"]
    excl = [t for t in terms if t[0] == "!"]
    return (plain or ["all"]) + inter + excl


def select(inventory: "Inventory", pattern: str, state_file: Optional[str] = None) -> List[str]:
    """The inventory's hosts matching ``pattern``, in inventory order."""
    if not pattern or not pattern.strip():
        raise SelectionError("empty host pattern; use 'all' to select every host")
    chosen: dict[str, None] = {}
    for term in order_terms(split_pattern(pattern)):
        if term[0] == "&":
            keep = set(match_term(inventory, term[1:], state_file))
            chosen = {h: None for h in chosen if h in keep}
        elif term[0] == "!":
            drop = set(match_term(inventory, term[1:], state_file))
            chosen = {h: None for h in chosen if h not in drop}
        else:
            for h in match_term(inventory, term, state_file):
                chosen[h] = None
    order = {h: i for i, h in enumerate(inventory.hosts)}
    return sorted(chosen, key=order.__getitem__)


def match_term(inventory: "Inventory", term: str, state_file: Optional[str] = None) -> List[str]:
    """Hosts matched by one term (no leading ``&``/``!``)."""
    if not term:
        raise SelectionError("empty term in host pattern (a stray ':', '&' or '!')")
    if term.startswith("@"):
        from hostops.state import STATE_PATTERNS, hosts_with, state_path

        if term[1:] in STATE_PATTERNS:  # @failed, @ok, …: the last run (a file: @./failed)
            wanted = set(hosts_with(state_file or state_path(), term[1:]))
            return [h for h in inventory.hosts if h in wanted]
        return _from_file(inventory, term[1:])
    if term in ("all", "*"):
        return list(inventory.hosts)
    if term in inventory.groups:
        return inventory.group_hosts(term)
    if term in inventory.hosts:
        return [term]
    if term.startswith("~"):
        try:
            regex = re.compile(term[1:])
        except (re.error, OverflowError, RecursionError, ValueError) as exc:
            raise SelectionError(f"bad regular expression in host pattern {term!r}: {exc}") from None
        return _match(inventory, regex)
    m = re.fullmatch(r"(.+)\[(-?\d*)(?::(-?\d*))?\]", term)
    # A zero-padded bound (web[01:05]) is a host-name range, never an index.
    if m and m.group(1) in inventory.groups and not any(_padded(b) for b in m.groups()[1:]):
        return _subscript(inventory.group_hosts(m.group(1)), m.group(2), m.group(3), term)
    if hostlist.has_range(term):
        return _match_range(inventory, term)
    if any(c in term for c in "*?["):
        return _match(inventory, re.compile(fnmatch.translate(term)))
    return []


def state_terms(pattern: str) -> List[str]:
    """The ``@ok``/``@failed``/``@unreachable``/``@untouched`` terms of ``pattern`` (without the @)."""
    from hostops.state import STATE_PATTERNS

    terms = [t.lstrip("&!") for t in split_pattern(pattern or "")]
    return list(dict.fromkeys(t[1:] for t in terms if t.startswith("@") and t[1:] in STATE_PATTERNS))


def describe_state(inventory: "Inventory", pattern: str, state_file: str) -> List[str]:
    """For each ``@…`` term of ``pattern``: what it selects and which run it came from
    (``@failed: 2 of 5 hosts (web[03,07]) of the run of 'uptime' at … (state file …)``).
    Hosts the state names that this inventory no longer has are counted apart."""
    from hostops.state import read_state

    lines = []
    for which in state_terms(pattern):
        last = read_state(state_file, which)
        chosen = last.select(which)
        here = [h for h in chosen if h in inventory.hosts]
        gone = len(chosen) - len(here)
        listed = f" ({hostlist.compact(here)})" if here else ""
        extra = f", {gone} no longer in the inventory" if gone else ""
        lines.append(f"@{which}: {len(here)} of {len(last.hosts)} host{'s' if len(last.hosts) != 1 else ''}"
                     f"{listed}{extra} from {last.describe()}")
    return lines


def _match_range(inventory: "Inventory", term: str) -> List[str]:
    """A term with host ranges (``web[01:05]``, ``*db[1:9]``): the hosts and groups it names,
    or, when it is a glob too, the hosts matching any of its expansions (one compile)."""
    try:
        names = hostlist.expand(term)
    except InventoryError as exc:
        raise SelectionError(f"host pattern {term!r}: {exc.message}") from None
    if any(c in names[0] for c in "*?["):  # a glob too (range values never hold one)
        regex = _glob_with_ranges(term)
        if regex is None:  # rare globs: the expansions' translations joined, still one compile
            regex = re.compile("|".join(f"(?:{fnmatch.translate(name)})" for name in names))
        return _match(inventory, regex)
    wanted: set = set()
    for name in names:
        wanted.update([name] if name in inventory.hosts else inventory.group_hosts(name)
                      if name in inventory.groups else [])
    return [h for h in inventory.hosts if h in wanted]


def _glob_with_ranges(term: str) -> "Optional[re.Pattern[str]]":
    """One regex for a glob holding ranges (``*db[1:99]db[1:99]``) that matches exactly what any
    of its expansions matches, so selection costs one compile, not one per expanded name (9,801
    here). None when the term is one this cannot translate faithfully (the caller expands).

    Each range becomes a placeholder in the glob given to fnmatch.translate, then an alternation
    of its values. fnmatch matches the text between two ``*`` atomically (leftmost match, no
    backtracking), which is only right for fixed-length text: so the values are grouped by
    length and each combination of lengths is its own alternative of the one regex.
    """
    pieces = hostlist.parts(term)
    marks = [chr(0xF0000 + i) for i in range(len(pieces))]
    if any(m in term for m in marks):
        return None
    template = "".join(p if isinstance(p, str) else marks[i] for i, p in enumerate(pieces))
    if "[]" in template or "[!]" in template:  # fnmatch reads ']' after these as a class member
        return None
    by_length = []
    for i, p in enumerate(pieces):
        if not isinstance(p, str):
            lengths: "dict[int, List[str]]" = {}
            for value in dict.fromkeys(p):
                lengths.setdefault(len(value), []).append(value)
            by_length.append((marks[i], list(lengths.values())))
    translated = fnmatch.translate(template)
    alternatives = [translated]
    for mark, groups in by_length:
        if len(alternatives) * len(groups) > hostlist.MAX_EXPANSION:  # pragma: no cover - pathological
            return None
        alternatives = [alt.replace(mark, "(?:" + "|".join(values) + ")") for alt in alternatives
                        for values in groups]
    if any(m in alt for alt in alternatives for m in marks):  # pragma: no cover - defensive
        return None
    return re.compile("|".join(f"(?:{alt})" for alt in alternatives))


def _padded(bound: "str | None") -> bool:
    digits = (bound or "").lstrip("-")
    return len(digits) > 1 and digits.startswith("0")


def _match(inventory: "Inventory", regex: "re.Pattern[str]") -> List[str]:
    """Hosts whose name matches, plus every host of each group whose name matches."""
    wanted = {h for h in inventory.hosts if regex.match(h)}
    for g in inventory.groups:
        if regex.match(g):
            wanted.update(inventory.group_hosts(g))
    return [h for h in inventory.hosts if h in wanted]


def _subscript(hosts: List[str], start: str, end: "str | None", term: str) -> List[str]:
    """Ansible's ``group[0]``, ``group[-1]``, ``group[1:3]`` (end inclusive)."""
    try:
        if end is None:
            i = int(start)
            return [hosts[i]] if -len(hosts) <= i < len(hosts) else []
        a = int(start) if start else 0
        b = int(end) if end else len(hosts) - 1
    except ValueError:
        raise SelectionError(f"bad subscript in host pattern {term!r}") from None
    if b < 0:
        b += len(hosts)
    return hosts[a: b + 1]


def _from_file(inventory: "Inventory", path: str) -> List[str]:
    try:
        with open(path, encoding="utf-8") as fh:
            names = [ln.split("#", 1)[0].strip() for ln in fh]
    except OSError as exc:
        raise SelectionError(f"cannot read host list @{path}: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise SelectionError(f"cannot read host list @{path!r}: {exc}") from None
    wanted = {n for n in names if n}
    return [h for h in inventory.hosts if h in wanted]
