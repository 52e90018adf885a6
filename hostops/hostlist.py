"""Host-name ranges: expanding ``web[01:20]`` (Ansible's syntax) and folding names back
into a compact list like ``web[01-20],db1`` (ClusterShell's NodeSet style) for --gather.
"""
from __future__ import annotations

import ipaddress
import re
import string
from typing import Iterable, List, Optional, Tuple, Union

from hostops.errors import InventoryError

#: No single name may expand to more hosts than this: a typo such as ``h[1:999999999]``
#: must fail fast instead of eating the machine's memory.
MAX_EXPANSION = 100_000

_RANGE_RE = re.compile(r"\[([^\[\]]*)\]")


def has_range(name: str) -> bool:
    """True when ``name`` holds a ``[begin:end]`` range (or an attempt at one)."""
    return "[" in name and ":" in name.split("[", 1)[1]


def count(name: str) -> int:
    """How many names ``expand(name)`` yields, without building them (InventoryError if malformed);
    lets the inventory bound its total work before expanding anything."""
    if not has_range(name):
        return 1
    _check_brackets(name)
    total = 1
    for body in _RANGE_RE.findall(name):
        if ":" in body:
            total *= _range_count(body, name)
    return total


def parts(name: str) -> List[Union[str, List[str]]]:
    """``name`` split into its literal text and, for each range, the values it runs over
    (``web[01:03]x`` → ``['web', ['01', '02', '03'], 'x']``), without multiplying them out;
    InventoryError if malformed. Lets host patterns match a range structurally."""
    if not has_range(name):
        return [name]
    _check_brackets(name)
    out: List[Union[str, List[str]]] = []
    pos = 0
    for m in _RANGE_RE.finditer(name):
        if ":" not in m.group(1):
            continue
        out.append(name[pos:m.start()])
        out.append(_range_values(m.group(1), name))
        pos = m.end()
    out.append(name[pos:])
    return out


def expand(name: str, limit: int = MAX_EXPANSION) -> List[str]:
    """Expand every ``[begin:end[:step]]`` range in ``name``; raise InventoryError if malformed.

    Numeric ranges keep the begin value's zero padding (``[01:20]`` → 01..20); letter
    ranges run over ASCII letters (``[a:c]``). Several ranges multiply.
    """
    if not has_range(name):
        if "[" in name or "]" in name:
            _check_brackets(name)
        return [name]
    _check_brackets(name)
    bodies = [b for b in _RANGE_RE.findall(name) if ":" in b]
    total = 1
    for body in bodies:  # refuse a product of ranges before building any of it
        count = _range_count(body, name)
        total *= count
        if total > limit:
            shown = name if len(name) < 60 else name[:57] + "..."
            if len(bodies) == 1:
                raise InventoryError(f"host range [{body}] in {shown!r} expands to {count} names; the limit is {limit}")
            raise InventoryError(f"host ranges in {shown!r} together expand to more than {limit} names (the "
                                 f"limit); one of them, [{body}], expands to {count}")
    m = _RANGE_RE.search(name)
    if m is None:  # pragma: no cover - _check_brackets guarantees a match
        raise InventoryError(f"malformed host range in {name!r}")
    head, body, tail = name[: m.start()], m.group(1), name[m.end():]
    values = _range_values(body, name)
    if len(values) > limit:
        raise InventoryError(f"host range in {name!r} expands to {len(values)} names; the limit is {limit}")
    out: List[str] = []
    for value in values:
        for expanded in expand(head + value + tail, limit):
            out.append(expanded)
            if len(out) > limit:
                raise InventoryError(f"host ranges in {name!r} expand to more than {limit} names")
    return out


def _check_brackets(name: str) -> None:
    depth = 0
    for ch in name:
        if ch == "[":
            depth += 1
            if depth > 1:
                raise InventoryError(f"nested '[' in host range {name!r}")
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise InventoryError(f"']' without '[' in host name {name!r}")
    if depth:
        raise InventoryError(f"unclosed range in host name {name!r}: missing ']'")


def _range_count(body: str, name: str) -> int:
    """How many names ``[body]`` yields, without building them (checks it like _range_values)."""
    parts = body.split(":")
    if len(parts) in (2, 3) and all(re.fullmatch(r"[0-9]{1,9}", p) for p in parts[:2]) \
            and (len(parts) == 2 or re.fullmatch(r"[0-9]{1,9}", parts[2] or "1")):
        b, e = int(parts[0]), int(parts[1])
        step = int(parts[2]) if len(parts) == 3 and parts[2] else 1
        if step >= 1 and b <= e:
            return (e - b) // step + 1
    return len(_range_values(body, name))  # letters, or malformed: small, or raises


def _range_values(body: str, name: str) -> List[str]:
    parts = body.split(":")
    if len(parts) not in (2, 3):
        raise InventoryError(f"host range [{body}] in {name!r} must be [begin:end] or [begin:end:step]")
    begin, end = parts[0] or "0", parts[1]
    if not end:
        raise InventoryError(f"host range [{body}] in {name!r} has no end value")
    try:
        if len(parts) == 3 and len(parts[2]) > 9:
            raise ValueError
        step = int(parts[2]) if len(parts) == 3 and parts[2] else 1
    except ValueError:
        raise InventoryError(f"host range step {parts[2]!r} in {name!r} is not a number") from None
    if step < 1:
        raise InventoryError(f"host range step in {name!r} must be at least 1")
    letters = string.ascii_letters
    if len(begin) == 1 and len(end) == 1 and begin in letters and end in letters:
        b, e = letters.index(begin), letters.index(end)
        if b > e:
            raise InventoryError(f"host range [{body}] in {name!r} runs backwards")
        return list(letters[b: e + 1: step])
    if not (re.fullmatch(r"[0-9]+", begin) and re.fullmatch(r"[0-9]+", end)):
        raise InventoryError(f"host range [{body[:40]}] in {name[:60]!r} must be numbers or single letters")
    if len(begin) > 9 or len(end) > 9:
        raise InventoryError(f"host range in {name[:60]!r} expands to more than {MAX_EXPANSION} names "
                             "(a bound of more than 9 digits)")
    b, e = int(begin), int(end)
    if b > e:
        raise InventoryError(f"host range [{body}] in {name!r} runs backwards")
    count = (e - b) // step + 1
    if count > MAX_EXPANSION:
        raise InventoryError(f"host range [{body}] in {name!r} expands to {count} names; the limit is {MAX_EXPANSION}")
    if begin.startswith("0") and len(begin) > 1:
        if len(begin) != len(end):
            raise InventoryError(f"host range [{body}] in {name!r}: zero-padded begin and end must have the same width")
        width = len(begin)
        return [str(i).zfill(width) for i in range(b, e + 1, step)]
    return [str(i) for i in range(b, e + 1, step)]


_NUM_RE = re.compile(r"^(.*?)(\d+)(\D*)$")


def compact(names: Iterable[str]) -> str:
    """Fold host names into a compact list: ``web01..web20, db1`` → ``db1,web[01-20]``."""
    groups: dict[Tuple[str, str], List[str]] = {}
    plain: List[str] = []
    for name in dict.fromkeys(names):
        m = _NUM_RE.match(name)
        if not m:
            plain.append(name)
            continue
        groups.setdefault((m.group(1), m.group(3)), []).append(m.group(2))
    parts: List[Tuple[str, str]] = [(n, n) for n in plain]
    for (prefix, tail), nums in groups.items():
        padded = {len(s) for s in nums if len(s) > 1 and s.startswith("0")}
        classes: dict[int, List[int]] = {}
        for s in nums:
            classes.setdefault(len(s) if len(s) in padded else 0, []).append(int(s))
        for width, values in classes.items():
            text = _fold(sorted(set(values)), width)
            sort_key = f"{prefix}\x00{tail}\x00{width:04d}"
            if len(values) == 1 and len(set(values)) == 1:
                parts.append((sort_key, f"{prefix}{text}{tail}"))
            else:
                parts.append((sort_key, f"{prefix}[{text}]{tail}"))
    return ",".join(text for _key, text in sorted(parts))


def _fold(values: List[int], width: int) -> str:
    def fmt(v: int) -> str:
        return str(v).zfill(width) if width else str(v)

    runs: List[str] = []
    start = prev = values[0]
    for v in values[1:] + [None]:  # type: ignore[list-item]
        if v is not None and v == prev + 1:
            prev = v
            continue
        runs.append(fmt(start) if start == prev else f"{fmt(start)}-{fmt(prev)}")
        if v is not None:
            start = prev = v
    return ",".join(runs)


# ------------------------------------------------------------------ host:port keys (Ansible's rules)
#: ``[address]:port``: the only way to give an IPv6 address a port.
_BRACKETED_PORT = re.compile(r"^\[(.+)\]:([0-9]+)$")
#: ``name:port`` where the name has no colon outside its ``[range]`` brackets.
_NAME_PORT = re.compile(r"^((?:[^:\[\]]|\[[^\]]*\])*):([0-9]+)$")
_NUM_RANGE = r"\[[0-9]+:[0-9]+(?::[0-9]+)?\]"
_ALNUM_RANGE = r"\[(?:[a-z]:[a-z]|[0-9]+:[0-9]+)(?::[0-9]+)?\]"
_IPV4_PART = rf"(?:25[0-5]|2[0-4][0-9]|[01]?[0-9]{{1,2}}|{_NUM_RANGE})"
_IPV4 = re.compile(rf"^(?:{_IPV4_PART}\.){{3}}{_IPV4_PART}$")
_LABEL = rf"(?:\w|{_ALNUM_RANGE})(?:[\w-]|{_ALNUM_RANGE})*(?<![_-])"
_HOSTNAME = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$", re.I)
_HEX_RANGE = re.compile(r"\[[0-9a-f]+:[0-9a-f]+(?::[0-9]+)?\]", re.I)


def _is_address(text: str) -> bool:
    """An IPv4 address, IPv6 address or host name, each possibly holding ``[x:y]`` ranges:
    what Ansible accepts before a ``:port`` (its parse_address)."""
    if _IPV4.match(text) or _HOSTNAME.match(text):
        return True
    if ":" not in text:
        return False
    plain = _HEX_RANGE.sub("0", text)  # a range stands for one hexadecimal group
    if "%" in plain or "[" in plain or "]" in plain:
        return False
    try:
        ipaddress.IPv6Address(plain)
    except ValueError:
        return False
    return True


def split_port(key: str) -> Tuple[str, Optional[int]]:
    """A YAML/INI host key as Ansible reads it: ``badwolf.example.com:5309`` → the name and
    port 5309, ``[::1]:22`` → ``::1`` and 22, ``web[1:3]:2222`` → ``web[1:3]`` and 2222. A key
    that is not an address (with an optional port) stays whole, port None, as in Ansible."""
    port: Optional[int] = None
    address = key
    for pattern in (_BRACKETED_PORT, _NAME_PORT):
        m = pattern.match(address)
        if m:
            address, port = m.group(1), int(m.group(2))
    if not _is_address(address):
        return key, None
    return address, port
