"""known_hosts writing: locked writes, recording and forgetting keys, HashKnownHosts.

One process at a time: an ``fcntl`` lock on ``<file>.lock`` beside the file is held while
the file is re-read, re-checked for a conflicting key and written. Appends are one
``write()`` of whole lines; removals rewrite through a temporary file renamed into place.
The file keeps its mode (a new one is created 0600) and is never opened through a symbolic
link. Lines are hashed when the user's ssh_config says ``HashKnownHosts yes``.

Owns: :func:`locked`, :func:`record_keys`, :func:`forget_names`, :func:`write_file`,
:func:`hash_name`, :func:`hash_wanted` and :class:`KnownHostsError`. Reads files through
:mod:`hostops.knownhosts`; must not import :mod:`hostops.hostkeys` or :mod:`hostops.keys`.
"""
from __future__ import annotations

import base64
import contextlib
import dataclasses
import errno
import fcntl
import os
import re
import shutil
import stat
import subprocess
import tempfile
import threading
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from hostops.errors import HostopsError
from hostops.exitcodes import ExitCode
from hostops.knownhosts import (
    CHANGED,
    HASH_MAGIC,
    KNOWN,
    REVOKED_KEY,
    KnownHosts,
    ParseError,
    Verdict,
    _hmac_sha1,
    parse_line,
    user_files,
)

class KnownHostsError(HostopsError):
    """known_hosts cannot be written (a symbolic link, not a regular file, permissions)."""

    exit_code = ExitCode.USAGE


def write_file(given: Sequence[str] = ()) -> str:
    """Where new keys go: the first ``--known-hosts`` file, else ~/.ssh/known_hosts."""
    return user_files(given)[0]


def hash_name(name: str, salt: Optional[bytes] = None) -> str:
    """``|1|salt|hash``: a host name hashed as OpenSSH's HashKnownHosts writes it."""
    salt = salt if salt is not None else os.urandom(20)
    digest = _hmac_sha1(salt, name.encode())
    return f"{HASH_MAGIC}{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


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
