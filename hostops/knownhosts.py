"""known_hosts reading: a reader that tolerates what real files hold, and OpenSSH's matching rules.

Reading. Comments and blank lines; several names a line (``a,b,[c]:2222``); wildcard and
negated patterns (``*.example.com``, ``web?``, ``!bad.example.com``: a negated match rules
the line out); hashed names (``|1|salt|hash``, HMAC-SHA1 as OpenSSH writes them);
``@cert-authority`` and ``@revoked`` markers. A line hostops cannot use never stops the
rest from loading: a malformed line and a key type paramiko cannot parse (``ssh-dss``,
``sk-…`` security keys, ``ssh-foo``) are skipped with a warning naming the file and line.
A key type hostops cannot parse still counts as "this host has a key on record": a host
whose only known keys are such is *unverifiable*, never *new*.

Files. ``--known-hosts`` files replace ``~/.ssh/known_hosts`` and ``~/.ssh/known_hosts2``
(like OpenSSH's ``UserKnownHostsFile``); the global ``/etc/ssh/ssh_known_hosts`` is always
read when present. New keys go to the first user file; the global file is never written.

Owns parsing, matching, :class:`KnownHosts` and :class:`Verdict` states. Must not import
:mod:`hostops.knownhosts_write` (locks, record, forget, HashKnownHosts), which builds on it.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import hashlib
import hmac
import os
import re
import struct
import threading
from typing import Any, Dict, List, Optional, Sequence, Tuple

GLOBAL_FILES: Tuple[str, ...] = ("/etc/ssh/ssh_known_hosts",)
USER_FILES: Tuple[str, ...] = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")
HASH_MAGIC = "|1|"
CERT_AUTHORITY = "cert-authority"
REVOKED = "revoked"
_MARKERS = {"@cert-authority": CERT_AUTHORITY, "@revoked": REVOKED}

# Verdicts on a key a host presented.
KNOWN, NEW, CHANGED, REVOKED_KEY, UNVERIFIABLE = "known", "new", "changed", "revoked", "unverifiable"


class ParseError(ValueError):
    """A malformed known_hosts line."""


# ------------------------------------------------------------------ files
def user_files(given: Sequence[str] = ()) -> List[str]:
    """The user's known_hosts files: the ``--known-hosts`` ones if any, else ~/.ssh/known_hosts{,2}.
    The first one receives new keys."""
    chosen = given if given else USER_FILES
    return list(dict.fromkeys(os.path.expanduser(p) for p in chosen))


def read_files(given: Sequence[str] = (), global_files: Optional[Sequence[str]] = None) -> List[str]:
    """Every file read for checking: :func:`user_files`, then the global file(s)."""
    files = user_files(given)
    for path in GLOBAL_FILES if global_files is None else global_files:
        if path not in files:
            files.append(path)
    return files


# ------------------------------------------------------------------ keys and names
def fingerprint_blob(blob: bytes) -> str:
    """OpenSSH's ``SHA256:…`` fingerprint of a public key blob."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


@functools.lru_cache(maxsize=None)
def supported_types() -> frozenset:
    """Host key types paramiko can parse and check (certificate and signature names excluded)."""
    import paramiko

    names = set()
    for cls in paramiko.key_classes:
        names.update(cls.identifiers())
    return frozenset(n for n in names if "-cert-" not in n and not n.startswith("rsa-sha2-"))


_KEY_CACHE: Dict[Tuple[str, bytes], Optional[str]] = {}
_KEY_CACHE_LOCK = threading.Lock()


def _check_key(key_type: str, blob: bytes) -> None:
    """Raise ParseError unless paramiko can load ``blob`` as a ``key_type`` key (cached)."""
    cache_key = (key_type, blob)
    with _KEY_CACHE_LOCK:
        if cache_key in _KEY_CACHE:
            problem = _KEY_CACHE[cache_key]
            if problem:
                raise ParseError(problem)
            return
    import paramiko

    problem = None
    try:
        paramiko.PKey.from_type_string(key_type, blob)
    except Exception as exc:  # noqa: BLE001  paramiko and cryptography raise many types for bad key data
        problem = f"the {key_type} key data is malformed ({type(exc).__name__})"
    with _KEY_CACHE_LOCK:
        if len(_KEY_CACHE) > 200_000:
            _KEY_CACHE.clear()
        _KEY_CACHE[cache_key] = problem
    if problem:
        raise ParseError(problem)


def _hmac_sha1(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha1).digest()


def _hmac_pads(key: bytes) -> Tuple[Any, Any]:
    """HMAC-SHA1's inner and outer hashes with the key pads already absorbed: a lookup
    through thousands of hashed names then costs two small hashes per name."""
    if len(key) > 64:
        key = hashlib.sha1(key).digest()
    key = key.ljust(64, b"\0")
    return hashlib.sha1(key.translate(_IPAD)), hashlib.sha1(key.translate(_OPAD))


_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))


@functools.lru_cache(maxsize=4096)
def _pattern_regex(pattern: str) -> "re.Pattern[str]":
    parts = []
    for ch in pattern:
        parts.append(".*" if ch == "*" else "." if ch == "?" else re.escape(ch))
    return re.compile("".join(parts), re.S)


def match_pattern(pattern: str, name: str) -> bool:
    """OpenSSH's match_pattern: ``*`` any run, ``?`` one character; case-insensitive."""
    return _pattern_regex(pattern.lower()).fullmatch(name.lower()) is not None


def match_names(patterns: Sequence[str], name: str) -> bool:
    """OpenSSH's match_hostname: some pattern matches and no negated (``!``) one does."""
    found = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if match_pattern(pattern[1:] if negated else pattern, name):
            if negated:
                return False
            found = True
    return found


def _is_literal(pattern: str) -> bool:
    return not (pattern.startswith("!") or "*" in pattern or "?" in pattern)


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ParseError("the key is not valid base64") from None


def _blob_type(blob: bytes) -> Optional[str]:
    """The key type a public key blob names in its first field, or None if it has none."""
    if len(blob) < 4:
        return None
    (length,) = struct.unpack(">I", blob[:4])
    if length > 64 or len(blob) < 4 + length:
        return None
    try:
        return blob[4:4 + length].decode("ascii")
    except UnicodeDecodeError:
        return None


# ------------------------------------------------------------------ entries
@dataclasses.dataclass(eq=False)
class Entry:
    """One known_hosts line that names hosts and a key."""

    path: str
    line: int
    marker: Optional[str]                   # None, CERT_AUTHORITY or REVOKED
    names: Tuple[str, ...]                  # patterns as written (empty when hashed)
    hashed: Optional[Tuple[bytes, bytes]]   # (salt, HMAC-SHA1 digest) of a |1| name
    key_type: str
    blob: bytes
    comment: str = ""
    supported: bool = True                  # False: a key type hostops cannot check
    seq: int = 0                            # load order, for stable reports

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}" if self.line else self.path

    @property
    def fingerprint(self) -> str:
        return fingerprint_blob(self.blob) if self.blob else "(no fingerprint)"

    @property
    def host_text(self) -> str:
        return "(hashed name)" if self.hashed else ",".join(self.names)

    def matches(self, name: str) -> bool:
        if self.hashed is not None:
            salt, digest = self.hashed
            lower = name.lower()
            return _hmac_sha1(salt, name.encode()) == digest or (
                lower != name and _hmac_sha1(salt, lower.encode()) == digest)
        return match_names(self.names, name)

    def names_exactly(self, name: str) -> bool:
        """True when ``name`` is written on this line (or is its hashed name), not only
        matched by a wildcard."""
        if self.hashed is not None:
            return self.matches(name)
        return any(_is_literal(p) and p.lower() == name.lower() for p in self.names)


def parse_line(text: str, path: str = "", line: int = 0) -> Optional[Entry]:
    """An Entry for one line; None for a blank or comment line; ParseError when malformed.
    A key type hostops cannot parse gives an Entry with ``supported=False``."""
    stripped = text.strip()
    if not stripped or stripped.startswith("#"):
        return None
    fields = stripped.split()
    marker = None
    if fields[0].startswith("@"):
        marker = _MARKERS.get(fields[0])
        if marker is None:
            raise ParseError(f"unknown marker {fields[0]!r} (expected @cert-authority or @revoked)")
        fields = fields[1:]
    if len(fields) < 3:
        raise ParseError("expected host names, a key type and a key")
    host_field, key_type = fields[0], fields[1]
    names: Tuple[str, ...] = ()
    hashed = None
    if host_field.startswith("|"):
        hashed = _parse_hash(host_field)
    else:
        names = tuple(n for n in host_field.split(",") if n)
        if not names:
            raise ParseError("no host name")
    if key_type.isdigit():  # SSH protocol 1: "bits exponent modulus"
        return Entry(path, line, marker, names, hashed, "ssh1-rsa", b"", " ".join(fields[4:]), supported=False)
    blob = _b64(fields[2])
    comment = " ".join(fields[3:])
    if key_type not in supported_types():
        return Entry(path, line, marker, names, hashed, key_type, blob, comment, supported=False)
    inner = _blob_type(blob)
    if inner != key_type:
        raise ParseError(f"the key data is {'a ' + inner if inner else 'not a'} key, not {key_type}")
    _check_key(key_type, blob)
    return Entry(path, line, marker, names, hashed, key_type, blob, comment)


def _parse_hash(field: str) -> Tuple[bytes, bytes]:
    if not field.startswith(HASH_MAGIC):
        raise ParseError(f"unsupported hashed name {field[:12]!r}… (only |1| is known)")
    parts = field[len(HASH_MAGIC):].split("|")
    if len(parts) != 2:
        raise ParseError("a hashed name must be |1|salt|hash")
    try:
        salt = base64.b64decode(parts[0], validate=True)
        digest = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise ParseError("a hashed name is not valid base64") from None
    if len(digest) != 20 or not salt:
        raise ParseError("a hashed name's hash must be 20 bytes (HMAC-SHA1)")
    return salt, digest


@dataclasses.dataclass
class Verdict:
    """What known_hosts says about the key a host presented."""

    state: str                                  # known, new, changed, revoked, unverifiable
    name: str
    key_type: str
    fingerprint: str
    entry: Optional[Entry] = None               # known: the line; revoked: the @revoked line
    old: List[Entry] = dataclasses.field(default_factory=list)           # changed: keys on record
    unsupported: List[Entry] = dataclasses.field(default_factory=list)   # unverifiable: unusable lines
    authorities: List[Entry] = dataclasses.field(default_factory=list)   # @cert-authority lines
    other_types: List[str] = dataclasses.field(default_factory=list)     # new: other types on record


class KnownHosts:
    """The entries of some known_hosts files, with the warnings loading them produced."""

    def __init__(self, files: Sequence[str] = ()):
        self.files = list(files)
        self.entries: List[Entry] = []
        self.warnings: List[str] = []
        self._literal: Dict[str, List[Entry]] = {}
        self._patterned: List[Entry] = []
        self._hashed: List[Tuple[Any, Any, bytes, Entry]] = []  # HMAC pads absorbed, digest, entry
        self._cache: Dict[str, List[Entry]] = {}
        for path in self.files:
            self.load(path)

    def load(self, path: str) -> None:
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return
        except OSError as exc:
            self.warnings.append(f"{path}: cannot read it ({exc.strerror or exc}); its keys are not used")
            return
        self.load_text(data.decode("utf-8", errors="replace"), path)

    def load_text(self, text: str, path: str = "", only: Optional[Sequence[str]] = None) -> None:
        """Load lines from ``text``; with ``only``, just the lines that may concern those
        names (a quick look at the names first: no key parsing, no warnings for the rest)."""
        wanted = _NameFilter(only) if only is not None else None
        for number, line in enumerate(text.split("\n"), 1):
            if wanted is not None and not wanted.may_match(line):
                continue
            try:
                entry = parse_line(line, path, number)
            except ParseError as exc:
                self.warnings.append(f"{path}:{number}: malformed line skipped: {exc}")
                continue
            if entry is None:
                continue
            if not entry.supported:
                what = ("an SSH-1 key (obsolete)" if entry.key_type == "ssh1-rsa"
                        else f"key type {entry.key_type} is not supported by hostops (paramiko)")
                self.warnings.append(f"{path}:{number}: {what}; entry skipped")
            self.add(entry)

    def add(self, entry: Entry) -> None:
        entry.seq = len(self.entries)
        self.entries.append(entry)
        self._cache.clear()
        if entry.hashed is not None:
            inner, outer = _hmac_pads(entry.hashed[0])
            self._hashed.append((inner, outer, entry.hashed[1], entry))
        elif all(_is_literal(p) for p in entry.names):
            for name in {p.lower() for p in entry.names}:
                self._literal.setdefault(name, []).append(entry)
        else:
            self._patterned.append(entry)

    def matching(self, name: str) -> List[Entry]:
        """Every line (markers included) whose names match ``name``, in file order."""
        cached = self._cache.get(name)
        if cached is not None:
            return list(cached)
        found = list(self._literal.get(name.lower(), ()))
        found += [e for e in self._patterned if e.matches(name)]
        candidates = {name.encode(), name.lower().encode()}
        for inner, outer, digest, e in self._hashed:
            for c in candidates:
                i = inner.copy()
                i.update(c)
                o = outer.copy()
                o.update(i.digest())
                if o.digest() == digest:
                    found.append(e)
                    break
        found.sort(key=lambda e: e.seq)
        if len(self._cache) > 10000:
            self._cache.clear()
        self._cache[name] = found
        return list(found)

    def known_types(self, name: str) -> List[str]:
        """Key types on record for ``name`` that hostops can check."""
        return list(dict.fromkeys(e.key_type for e in self.matching(name) if e.marker is None and e.supported))

    def verdict(self, name: str, key_type: str, blob: bytes) -> Verdict:
        """Judge the key (``key_type``, ``blob``) that the host known as ``name`` presented."""
        entries = self.matching(name)
        v = Verdict(NEW, name, key_type, fingerprint_blob(blob))
        v.authorities = [e for e in entries if e.marker == CERT_AUTHORITY]
        for e in entries:
            if e.marker == REVOKED and e.blob == blob:
                v.state, v.entry = REVOKED_KEY, e
                return v
        plain = [e for e in entries if e.marker is None]
        for e in plain:
            if e.supported and e.blob == blob:
                v.state, v.entry = KNOWN, e
                return v
        usable = [e for e in plain if e.supported]
        v.old = [e for e in usable if e.key_type == key_type]
        if v.old:
            v.state = CHANGED
            return v
        v.unsupported = [e for e in plain if not e.supported]
        if not usable and (v.unsupported or v.authorities):
            v.state = UNVERIFIABLE
            return v
        v.other_types = list(dict.fromkeys(e.key_type for e in usable))
        return v


class _NameFilter:
    """Tells, from its names alone, whether a known_hosts line may concern some names."""

    def __init__(self, names: Sequence[str]):
        self.names = list(dict.fromkeys(names))
        self.lower = {n.lower() for n in self.names}
        self.encoded = list(dict.fromkeys(c.encode() for n in self.names for c in (n, n.lower())))

    def may_match(self, line: str) -> bool:
        fields = line.split(None, 2)
        if not fields or fields[0].startswith("#"):
            return False
        host = fields[1] if fields[0].startswith("@") and len(fields) > 1 else fields[0]
        if host.startswith("|"):
            try:
                salt, digest = _parse_hash(host)
            except ParseError:
                return False
            if len(self.encoded) <= 2:
                return any(_hmac_sha1(salt, c) == digest for c in self.encoded)
            inner, outer = _hmac_pads(salt)
            for c in self.encoded:
                i = inner.copy()
                i.update(c)
                o = outer.copy()
                o.update(i.digest())
                if o.digest() == digest:
                    return True
            return False
        patterns = host.split(",")
        if all(_is_literal(p) for p in patterns):
            return any(p.lower() in self.lower for p in patterns)
        return any(match_names(patterns, n) for n in self.names)


def unverifiable_reason(v: Verdict) -> str:
    """Why a host's key cannot be checked, in words an operator can act on."""
    parts = []
    if v.unsupported:
        types = ", ".join(dict.fromkeys(e.key_type for e in v.unsupported))
        wheres = ", ".join(e.where for e in v.unsupported[:3])
        parts.append(f"known_hosts holds only key types hostops cannot check for it ({types} at {wheres})")
    if v.authorities:
        wheres = ", ".join(e.where for e in v.authorities[:3])
        parts.append(f"known_hosts trusts host certificates from a certificate authority for it "
                     f"(@cert-authority at {wheres}), and hostops cannot validate SSH host certificates")
    return "; ".join(parts)
