"""known_hosts files: a reader that tolerates what real files hold, OpenSSH's matching rules,
and locked writes.

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

Writing. One process at a time: an ``fcntl`` lock on ``<file>.lock`` beside the file is
held while the file is re-read, re-checked for a conflicting key and written. Appends are
one ``write()`` of whole lines; removals rewrite through a temporary file renamed into
place. The file keeps its mode (a new one is created 0600) and is never opened through a
symbolic link. Lines are hashed when the user's ssh_config says ``HashKnownHosts yes``.
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import errno
import fcntl
import functools
import hashlib
import hmac
import os
import re
import shutil
import stat
import struct
import subprocess
import tempfile
import threading
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from hostops.errors import HostopsError
from hostops.exitcodes import ExitCode

GLOBAL_FILES: Tuple[str, ...] = ("/etc/ssh/ssh_known_hosts",)
USER_FILES: Tuple[str, ...] = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")
HASH_MAGIC = "|1|"
CERT_AUTHORITY = "cert-authority"
REVOKED = "revoked"
_MARKERS = {"@cert-authority": CERT_AUTHORITY, "@revoked": REVOKED}

# Verdicts on a key a host presented.
KNOWN, NEW, CHANGED, REVOKED_KEY, UNVERIFIABLE = "known", "new", "changed", "revoked", "unverifiable"


class KnownHostsError(HostopsError):
    """known_hosts cannot be written (a symbolic link, not a regular file, permissions)."""

    exit_code = ExitCode.USAGE


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


def write_file(given: Sequence[str] = ()) -> str:
    """Where new keys go: the first ``--known-hosts`` file, else ~/.ssh/known_hosts."""
    return user_files(given)[0]


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


def load_key(key_type: str, blob: bytes):
    """A paramiko key from a type and blob (raises on bad data)."""
    import paramiko

    return paramiko.PKey.from_type_string(key_type, blob)


def hash_name(name: str, salt: Optional[bytes] = None) -> str:
    """``|1|salt|hash``: a host name hashed as OpenSSH's HashKnownHosts writes it."""
    salt = salt if salt is not None else os.urandom(20)
    digest = _hmac_sha1(salt, name.encode())
    return f"{HASH_MAGIC}{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


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


# ------------------------------------------------------------------ HashKnownHosts
_HASH_CACHE: Dict[Tuple[str, int, str], bool] = {}


def split_name(name: str) -> Tuple[str, int]:
    """``[host]:port`` → (host, port); ``host`` → (host, 22)."""
    m = re.fullmatch(r"\[(.+)\]:(\d+)", name)
    return (m.group(1), int(m.group(2))) if m else (name, 22)


def hash_wanted(name: str, ssh_config: Optional[str] = None) -> bool:
    """Does the user's ssh_config say ``HashKnownHosts yes`` for this host?

    The config read is the one hostops reads for everything else (``--ssh-config``, else
    ``~/.ssh/config`` under $HOME), evaluated by ``ssh -G -F FILE`` when the ssh client is
    installed (Host and Match blocks, Include), else parsed by paramiko. No file: no.
    """
    host, port = split_name(name)
    path = os.path.expanduser(ssh_config or "~/.ssh/config")
    cache_key = (host, port, path)
    if cache_key in _HASH_CACHE:
        return _HASH_CACHE[cache_key]
    answer = False
    if os.path.isfile(path):
        found = _hash_from_ssh_g(path, host, port)
        answer = found if found is not None else _hash_from_file(path, host)
    _HASH_CACHE[cache_key] = answer
    return answer


def _hash_from_ssh_g(path: str, host: str, port: int) -> Optional[bool]:
    ssh = shutil.which("ssh")
    if ssh is None or host.startswith("-"):
        return None
    try:
        proc = subprocess.run([ssh, "-G", "-F", path, "-p", str(port), "--", host], capture_output=True,
                              text=True, timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    for line in proc.stdout.splitlines():
        key, _, value = line.strip().partition(" ")
        if key.lower() == "hashknownhosts":
            return value.strip().lower() == "yes"
    return False


def _hash_from_file(path: str, host: str) -> bool:
    try:
        from paramiko import SSHConfig

        return str(SSHConfig.from_path(path).lookup(host).get("hashknownhosts", "no")).lower() == "yes"
    except Exception:  # noqa: BLE001  a config paramiko cannot read (any error): look for the bare line
        try:
            with open(path, errors="replace") as fh:
                for line in fh:
                    words = line.replace("=", " ").split()
                    if len(words) >= 2 and words[0].lower() == "hashknownhosts":
                        return words[1].lower() == "yes"
        except OSError:
            pass
    return False


# ------------------------------------------------------------------ writing
_THREAD_LOCKS: Dict[str, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def locked(path: str) -> Iterator[None]:
    """Hold the write lock of known_hosts ``path``: an ``fcntl`` lock on ``<path>.lock``
    (other processes; the kernel drops it if we die) and a thread lock (this process)."""
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        from hostops.secrets import private_makedirs

        private_makedirs(directory)
    with _THREAD_LOCKS_GUARD:
        thread_lock = _THREAD_LOCKS.setdefault(os.path.abspath(path), threading.Lock())
    with thread_lock:
        try:
            fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise KnownHostsError(f"cannot lock {path} ({path}.lock: {exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _open_nofollow(path: str, flags: int, mode: int = 0o600) -> int:
    try:
        fd = os.open(path, flags | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symbolic link
            raise KnownHostsError(f"{path} is a symbolic link; hostops does not write known_hosts through a "
                                  "link (name the real file with --known-hosts)") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise KnownHostsError(f"{path} is not a regular file")
    return fd


def _read_locked(path: str) -> Optional[bytes]:
    try:
        fd = _open_nofollow(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except PermissionError as exc:
        raise KnownHostsError(f"cannot read {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        return fh.read()


def format_line(name: str, key_type: str, blob: bytes, hashed: bool) -> str:
    host = hash_name(name) if hashed else name
    return f"{host} {key_type} {base64.b64encode(blob).decode()}"


@dataclasses.dataclass
class Recorded:
    """The outcome of recording one key: ``added``, ``present`` (already there) or a refusal,
    ``changed`` / ``revoked``, with the verdict of the freshly read file."""

    name: str
    key_type: str
    blob: bytes
    outcome: str
    verdict: Optional[Verdict] = None
    line: Optional[int] = None


def record_keys(path: str, keys: Sequence[Tuple[str, str, bytes]],
                hashed: Callable[[str], bool] = lambda name: False) -> List[Recorded]:  # noqa: ARG005
    """Append ``(name, key_type, blob)`` keys to known_hosts ``path`` under its lock, after
    re-reading it: a key already there is not written again, and a name with another key of
    the same type (changed) or a revoked key is refused, never replaced."""
    results: List[Recorded] = []
    hash_names = _decide(list(dict.fromkeys(name for name, _t, _b in keys)), hashed)
    with locked(path):
        data = _read_locked(path)
        fresh = KnownHosts()
        text = data.decode("utf-8", errors="replace") if data else ""
        fresh.load_text(text, path, only=[name for name, _t, _b in keys])
        next_line = 1 if not text else text.count("\n") + (1 if text.endswith("\n") else 2)
        lines: List[str] = []
        for name, key_type, blob in keys:
            v = fresh.verdict(name, key_type, blob)
            if v.state == KNOWN:
                results.append(Recorded(name, key_type, blob, "present", v, v.entry.line if v.entry else None))
                continue
            if v.state in (CHANGED, REVOKED_KEY):
                results.append(Recorded(name, key_type, blob, v.state, v))
                continue
            text_line = format_line(name, key_type, blob, hash_names[name])
            entry = parse_line(text_line, path, next_line)
            assert entry is not None
            fresh.add(entry)
            lines.append(text_line)
            results.append(Recorded(name, key_type, blob, "added", v, next_line))
            next_line += 1
        if lines:
            _append(path, lines)
    return results


def _decide(names: List[str], hashed: Callable[[str], bool]) -> Dict[str, bool]:
    """Hash or not, per name. ``hashed`` may run ``ssh -G``: done before taking the lock,
    on a few threads when there are many names."""
    if len(names) <= 4:
        return {name: hashed(name) for name in names}
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, len(names))) as pool:
        return dict(zip(names, pool.map(hashed, names)))


def _append(path: str, lines: Sequence[str]) -> None:
    flags = os.O_RDWR | os.O_APPEND
    try:
        fd = _open_nofollow(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
        os.fchmod(fd, 0o600)
    except FileExistsError:
        fd = _open_nofollow(path, flags)
    except PermissionError as exc:
        raise KnownHostsError(f"cannot write {path}: {exc.strerror}") from None
    try:
        size = os.fstat(fd).st_size
        data = ("\n".join(lines) + "\n").encode()
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


@dataclasses.dataclass
class Removal:
    """What ``forget`` did to one line."""

    path: str
    line: int
    name: str
    key_type: str
    fingerprint: str
    action: str       # removed (the line), trimmed (the name only), kept (marker/pattern line)
    detail: str = ""


def forget_names(path: str, names: Sequence[str]) -> List[Removal]:
    """Remove the entries of ``names`` from known_hosts ``path``, under its lock, through a
    temporary file renamed into place. A line naming only those hosts goes; a line naming
    others too loses just those names. ``@revoked`` and ``@cert-authority`` lines, and lines
    that match only through a wildcard, are kept and reported (as ``ssh-keygen -R`` keeps
    markers): hostops does not guess at hand-written patterns."""
    report: List[Removal] = []
    wanted = list(dict.fromkeys(names))
    with locked(path):
        try:
            fd = _open_nofollow(path, os.O_RDONLY)
        except FileNotFoundError:
            return report
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            data = fh.read()
        out: List[bytes] = []
        changed = False
        for number, raw in enumerate(data.split(b"\n"), 1):
            new_raw = _forget_in_line(raw, path, number, wanted, report)
            if new_raw is not raw:
                changed = True
            if new_raw is not None:
                out.append(new_raw)
        if changed:
            _replace(path, b"\n".join(out), st)
    return report


def _forget_in_line(raw: bytes, path: str, number: int, names: Sequence[str],
                    report: List[Removal]) -> Optional[bytes]:
    text = raw.decode("utf-8", errors="surrogateescape")
    try:
        entry = parse_line(text.rstrip("\r"), path, number)
    except ParseError:
        return raw
    if entry is None:
        return raw
    hits = [n for n in names if entry.matches(n)]
    if not hits:
        return raw
    fp = entry.fingerprint
    exact = [n for n in hits if entry.names_exactly(n)]
    if entry.marker is not None and not exact:
        return raw  # e.g. "@revoked * …": about every host, not about these
    if entry.marker is not None or not exact:
        for n in hits:
            why = (f"@{entry.marker} line" if entry.marker else
                   f"matched by the pattern {entry.host_text!r}")
            report.append(Removal(path, number, n, entry.key_type, fp, "kept", why))
        return raw
    if entry.hashed is not None:
        for n in exact:
            report.append(Removal(path, number, n, entry.key_type, fp, "removed"))
        return None
    drop = {n.lower() for n in exact}
    remaining = [p for p in entry.names if p.lower() not in drop]
    if not any(not p.startswith("!") for p in remaining):
        for n in exact:
            report.append(Removal(path, number, n, entry.key_type, fp, "removed"))
        return None
    for n in exact:
        report.append(Removal(path, number, n, entry.key_type, fp, "trimmed",
                              f"the line keeps {','.join(remaining)}"))
    lead = len(text) - len(text.lstrip())
    field = text.lstrip().split(None, 1)[0]
    rest = text.lstrip()[len(field):]
    return (text[:lead] + ",".join(remaining) + rest).encode("utf-8", errors="surrogateescape")


def _replace(path: str, data: bytes, st: os.stat_result) -> None:
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, stat.S_IMODE(st.st_mode))
        if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
            try:
                os.fchown(fd, st.st_uid, st.st_gid)
            except PermissionError:
                pass
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.rename(tmp, path)
        tmp = ""
        try:
            dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass
    finally:
        if fd >= 0:
            os.close(fd)
        if tmp:
            try:
                os.unlink(tmp)
            except OSError:
                pass
