"""Host selection with Ansible's pattern language, selecting what ansible-core selects, in its order.

``web:db`` or ``web,db`` (union), ``web:&prod`` (intersection), ``web:!db`` (exclusion),
globs ``web*``, regexes ``~web\\d+``, ``all``/``*``, subscripts ``web[0]``/``web[-1]``/
``web[1:3]``/``web[2:]`` (of the hosts the term before them matches, globs too: ``test*[1]``),
``@file`` (one host a line) and ``@ok``, ``@failed``, ``@unreachable``, ``@untouched`` (the last
run's outcome, see :mod:`hostops.state`). As in Ansible, plain terms are applied first, then
intersections, then exclusions, whatever their order; the hosts come in the order the terms
match them, and a group's hosts are its own hosts, then its children's, level by level.

The reference is ansible-core's ``inventory/manager.py`` (``split_host_pattern``,
``_split_subscript``, ``_apply_subscript``, ``_enumerate_matches``); tests/test_ansible_compare.py
runs both on one inventory. hostops refuses what Ansible reads as "every host" by accident: an
empty pattern, or one of separators only.
"""
from __future__ import annotations

import fnmatch
import re
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

from hostops import hostlist
from hostops.errors import SelectionError

if TYPE_CHECKING:
    from hostops.inventory import Inventory

# ansible.parsing.utils.addresses: a pattern that is one address (``host:22``, an IPv6 address,
# ``web[01:05]``) is one term, never split on its colons.
_NUM_RANGE = r"\[[0-9]+:[0-9]+(?::[0-9]+)?\]"
_HEX_RANGE = r"\[[0-9a-f]+:[0-9a-f]+(?::[0-9]+)?\]"
_ALNUM_RANGE = r"\[(?:[a-z]:[a-z]|[0-9]+:[0-9]+)(?::[0-9]+)?\]"
_V6 = rf"(?:[0-9a-f]{{1,4}}|{_HEX_RANGE})"
_V4 = rf"(?:[01]?[0-9]{{1,2}}|2[0-4][0-9]|25[0-5]|{_NUM_RANGE})"
_LABEL = rf"(?:[\w]|{_ALNUM_RANGE})(?:[\w_-]|{_ALNUM_RANGE})*(?<![_-])"
_BRACKETED_HOSTPORT = re.compile(r"^\[(.+)\]:([0-9]+)$")
_HOSTPORT = re.compile(r"^((?:[^:\[\]]|\[[^\]]*\])*):([0-9]+)$")
_ADDRESS = [
    re.compile(rf"^(?:{_V4}\.){{3}}{_V4}$", re.I),
    re.compile(rf"""^(?:(?:{_V6}:){{7}}{_V6}|(?:{_V6}:){{1,6}}:|(?:{_V6}:)(?::{_V6}){{1,6}}|
        (?:{_V6}:){{2}}(?::{_V6}){{1,5}}|(?:{_V6}:){{3}}(?::{_V6}){{1,4}}|(?:{_V6}:){{4}}(?::{_V6}){{1,3}}|
        (?:{_V6}:){{5}}(?::{_V6}){{1,2}}|(?:{_V6}:){{6}}(?::{_V6})|:(?::{_V6}){{1,6}}|{_V6}?::|
        (?:0:){{6}}(?:{_V6}\.){{3}}{_V6}|::(?:ffff:)?(?:{_V6}\.){{3}}{_V6}|(?:0:){{5}}ffff:(?:{_V6}\.){{3}}{_V6})$""",
               re.X | re.I),
    re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$", re.I),
]
# Terms of a ':'-separated pattern: runs of anything but whitespace, ':' and brackets, or whole
# bracketed expressions (so ``web[0:2]:db`` is two terms).
_TERM = re.compile(r"(?:[^\s:\[\]]|\[[^\]]*\])+")
# ``PATTERN[i]``, ``PATTERN[i:j]``, ``PATTERN[i:]`` (and the old ``PATTERN[i-j]``), as Ansible reads them.
_SUBSCRIPT = re.compile(r"^(.+)\[(?:(-?[0-9]+)|([0-9]+)([:-])([0-9]*))\]$")
_GLOB = ("*", "?", "[")


def is_address(text: str) -> bool:
    """True when ``text`` is one host address, with an optional port (Ansible's parse_address)."""
    for regex in (_BRACKETED_HOSTPORT, _HOSTPORT):
        m = regex.match(text)
        if m:
            text = m.group(1)
    return any(regex.match(text) for regex in _ADDRESS)


def split_pattern(pattern: str) -> List[str]:
    """Split a pattern into terms as Ansible does: on ``,`` if there is one; else keep one address
    (``10.0.0.5:2222``, ``fe80::1``, and ``deploy@10.0.0.5:2222``, as hostops names a ``-H`` host)
    whole; else on ``:`` and whitespace outside brackets."""
    if "," in pattern:
        return [p.strip() for p in pattern.split(",") if p.strip()]
    pattern = pattern.strip()
    if pattern and is_address(pattern.split("@", 1)[-1] if "@" in pattern[1:] else pattern):
        return [pattern]  # also hostops's names of -H hosts, user@address:port
    stray = _TERM.sub("", pattern).replace(":", "").split()
    if stray and pattern.startswith("~") and not re.search(r"[\s:]", pattern):
        return [pattern]  # one regex (Ansible would cut '~web[(' in two): compiled, it says what is wrong
    if stray:  # Ansible drops these silently ('web[' selects web): a typo is better reported
        raise SelectionError(f"unbalanced {stray[0][0]!r} in host pattern {pattern!r}; "
                             "a subscript is written web[0], web[1:3] or web[2:]")
    return [t.strip() for t in _TERM.findall(pattern)]


def order_terms(terms: List[str]) -> List[str]:
    """Plain terms first, then ``&`` intersections, then ``!`` exclusions (Ansible's order)."""
    plain = [t for t in terms if t[0] not in "&!"]
    inter = [t for t in terms if t[0] == "&"]
    excl = [t for t in terms if t[0] == "!"]
    return (plain or ["all"]) + inter + excl


def select(inventory: "Inventory", pattern: str, state_file: Optional[str] = None) -> List[str]:
    """The inventory's hosts matching ``pattern``, in Ansible's order: as the terms match them."""
    if not pattern or not pattern.strip():
        raise SelectionError("empty host pattern; use 'all' to select every host")
    terms = split_pattern(pattern)
    if not terms:  # ',' alone: Ansible reads it as 'all'
        raise SelectionError(f"host pattern {pattern!r} names no hosts or groups; use 'all' to select every host")
    chosen: Dict[str, None] = {}
    for term in order_terms(terms):
        if term[0] == "&":
            keep = set(match_term(inventory, term[1:], state_file))
            chosen = {h: None for h in chosen if h in keep}
        elif term[0] == "!":
            drop = set(match_term(inventory, term[1:], state_file))
            chosen = {h: None for h in chosen if h not in drop}
        else:
            for h in match_term(inventory, term, state_file):
                chosen.setdefault(h, None)
    return list(chosen)


def no_match_hint(inventory: "Inventory", pattern: str) -> str:
    """For a pattern that selected nothing: why, when a subscript was probably meant as a host-name
    range (``web0[1:3]``, as pdsh and earlier hostops read it); else ``""``."""
    try:
        terms = split_pattern(pattern)
    except SelectionError:
        return ""
    for term in terms:
        base, subscript = _split_subscript(term.lstrip("&!"))
        if subscript is not None and subscript[1] is not None and not term.startswith(("@", "~")) \
                and not _enumerate(inventory, base):
            return (f" ({term!r} indexes the hosts {base!r} matches, as in Ansible, and {base!r} matches "
                    f"none: brackets after a name are no host-name range; select names with '{base}*' or a regex)")
    return ""


def match_term(inventory: "Inventory", term: str, state_file: Optional[str] = None) -> List[str]:
    """Hosts matched by one term (no leading ``&``/``!``), in Ansible's order; a name may repeat."""
    if not term:
        raise SelectionError("empty term in host pattern (a stray ':', '&' or '!')")
    if term.startswith("@"):
        from hostops.state import STATE_PATTERNS, hosts_with, state_path

        if term[1:] in STATE_PATTERNS:  # @failed, @ok, …: the last run (a file: @./failed)
            wanted = set(hosts_with(state_file or state_path(), term[1:]))
            return [h for h in inventory.hosts if h in wanted]
        return _from_file(inventory, term[1:])
    if term in inventory.hosts:
        return [term]
    if term.startswith("~"):
        return _enumerate(inventory, term)
    base, subscript = _split_subscript(term)
    if subscript is None:
        return _enumerate(inventory, base)
    start, end = subscript
    last = end if end and end > 0 else start if not end and start >= 0 else None  # the last index used
    return _apply_subscript(_enumerate(inventory, base, keep_repeats=True, upto=last), subscript, term)


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


def _split_subscript(term: str) -> Tuple[str, Optional[Tuple[int, Optional[int]]]]:
    """``web[1:]`` -> (``web``, (1, -1)); ``web[-1]`` -> (``web``, (-1, None)); no subscript -> None.
    Whatever else is in brackets stays in the term, a glob character class (``web[12]``)."""
    m = _SUBSCRIPT.match(term)
    if not m:
        return term, None
    base, index, start, _sep, end = m.groups()
    if index:
        return base, (_number(index), None)
    return base, (_number(start), _number(end) if end else -1)


def _number(digits: str) -> int:
    """A subscript bound; past 9 digits it is past the end of any list (and int() of thousands of
    digits raises), so it is read as 10**9 with its sign."""
    if len(digits.lstrip("-")) > 9:
        return -10 ** 9 if digits.startswith("-") else 10 ** 9
    return int(digits)


def _apply_subscript(hosts: List[str], subscript: Tuple[int, Optional[int]], term: str) -> List[str]:
    """Ansible's slice: ``[i:j]`` is inclusive, ``[i:]`` runs to the end, and (as in Ansible) an
    end of 0 reads as the single index ``[i]``. An index past the end is an error, as in Ansible."""
    if not hosts:
        return hosts
    start, end = subscript
    if end:
        return hosts[start:(len(hosts) if end == -1 else end + 1)]
    if not -len(hosts) <= start < len(hosts):
        raise SelectionError(f"no host matched the subscripted pattern {term!r}: it indexes {len(hosts)} "
                             f"host{'s' if len(hosts) != 1 else ''} (0 to {len(hosts) - 1}, or -1 for the last)")
    return [hosts[start]]


def _enumerate(inventory: "Inventory", pattern: str, keep_repeats: bool = False,
               upto: Optional[int] = None) -> List[str]:
    """Ansible's ``_enumerate_matches``: the hosts of every group the pattern matches (in the
    order groups were defined), then, if no group matched or the pattern is a glob or regex or
    holds a dot, every host whose name matches. ``keep_repeats`` keeps a host each time a group
    brings it, as Ansible does before a subscript indexes the list (``test*[2]``); then the list
    may stop once it holds index ``upto`` (``*[0]`` need not walk every group of a deep tree)."""
    regex = None
    if pattern.startswith("~") or any(c in pattern for c in _GLOB):
        regex = _compile(pattern)
        groups = [g for g in inventory.groups if regex.match(g)]
    else:  # a plain name: what fnmatch would find, without scanning every name
        groups = [pattern] if pattern in inventory.groups else []
    out: List[str] = []
    seen: Dict[str, None] = {}
    covered: Dict[str, None] = {}  # groups already walked as part of a matched group
    for g in groups:
        if not keep_repeats and g in covered:
            continue  # every host it has is in ``out`` already
        order = _walk(inventory, g)
        covered.update(dict.fromkeys(order))
        for h in _hosts_of(inventory, order):
            if keep_repeats or h not in seen:
                seen[h] = None
                out.append(h)
        if upto is not None and len(out) > upto:
            return out
    if not groups or regex is not None or "." in pattern:
        if regex is None:
            names = [pattern] if pattern in inventory.hosts else []
        else:
            names = [h for h in inventory.hosts if regex.match(h)]
        out.extend(h for h in names if keep_repeats or h not in seen)
    return out


def _compile(pattern: str) -> "re.Pattern[str]":
    if not pattern.startswith("~"):
        return re.compile(fnmatch.translate(pattern))
    try:
        return re.compile(pattern[1:])
    except (re.error, OverflowError, RecursionError, ValueError) as exc:
        raise SelectionError(f"bad regular expression in host pattern {pattern!r}: {exc}") from None


def _walk(inventory: "Inventory", group: str) -> List[str]:
    """``group`` and its descendants in Ansible's order: the group, its children in order, then
    their children, level by level (deeper levels in the order their parents come; ansible-core's
    own order there follows memory addresses)."""
    order = [group]
    seen = {group}
    level = [group]
    while level:
        below = []
        for name in level:
            for child in inventory.groups[name].children:
                if child not in seen:
                    seen.add(child)
                    below.append(child)
        order.extend(below)
        level = below
    return order


def _hosts_of(inventory: "Inventory", groups: List[str]) -> List[str]:
    """The hosts of these groups, each once, in the order of the groups and of each group's hosts."""
    return list(dict.fromkeys(h for g in groups for h in _own_hosts(inventory, g)))


def _own_hosts(inventory: "Inventory", group: str) -> List[str]:
    """A group's own hosts. Ansible keeps a host written under ``all: hosts:`` in ``all`` (and,
    if it has no other group, in ``ungrouped`` too); hostops moves such a host to ``ungrouped``
    only, so ``all``'s own hosts are both lists merged in the order hosts were first read."""
    if group != "all":
        return inventory.groups[group].hosts
    own = set(inventory.groups["all"].hosts) | set(inventory.groups["ungrouped"].hosts)
    return [h for h in inventory.hosts if h in own]


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
