"""known_hosts writing: locked writes, recording and forgetting keys, HashKnownHosts.

One process at a time: an ``flock`` on the known_hosts file itself (no ``.lock`` file left
beside it; see :func:`locked` for why that is safe) is held while the file is re-read through
the locked descriptor, re-checked for a conflicting key and written. Appends are ``O_APPEND``
writes of whole lines; removals rewrite through a temporary file renamed into place.
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
import time
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

#: How long to wait for another process's lock on a known_hosts file before giving up with an
#: error that names the file (a hostops run holds it for milliseconds; anyone who can read the
#: file can take it, so the wait is bounded rather than endless).
LOCK_WAIT = 60.0


@contextlib.contextmanager
def locked(path: str, create: bool = True) -> Iterator[Optional[int]]:
    """Hold the write lock of known_hosts ``path`` and yield a descriptor of the file, opened
    read-write in append mode (None when it does not exist and ``create`` is false; created
    0600 otherwise).

    The lock is an ``flock`` on the known_hosts file itself, so nothing is left beside it
    (no ``known_hosts.lock``): the kernel drops it when the holder exits or dies. A thread
    lock serialises this process's threads. Safe against:

    - other hostops runs: they lock the same file; one that waited while the file was
      replaced (``keys forget`` renames a new file into place) finds the name pointing at
      another file and locks again, so a write never goes to a file no longer in place;
    - a symbolic link or non-regular file put in its place: opened with ``O_NOFOLLOW`` and
      checked, refused (KnownHostsError); and the file is read and appended through the
      locked descriptor, never reopened by name;
    - a user who can read the file holding its lock to stall us: the wait is bounded
      (:data:`LOCK_WAIT`), then an error naming the file.

    A ``<path>.lock`` left by an older hostops is removed when nobody holds it (see
    :func:`_remove_old_lock_file`)."""
    directory = os.path.dirname(path) or "."
    if create and not os.path.isdir(directory):
        from hostops.secrets import private_makedirs

        private_makedirs(directory)
    with _THREAD_LOCKS_GUARD:
        thread_lock = _THREAD_LOCKS.setdefault(os.path.abspath(path), threading.Lock())
    with thread_lock:
        fd = _lock_file(path, create)
        try:
            if fd is not None:
                _remove_old_lock_file(path)
            yield fd
        finally:
            if fd is not None:
                os.close(fd)  # drops the flock


def _lock_file(path: str, create: bool) -> Optional[int]:
    """Open ``path`` (no symbolic link, a regular file) and flock it, retrying while the name
    moves to another file; None when it does not exist and ``create`` is false."""
    deadline = time.monotonic() + LOCK_WAIT
    pause = 0.001
    while True:
        try:
            fd = _open_nofollow(path, os.O_RDWR | os.O_APPEND | (os.O_CREAT if create else 0), 0o600)
        except FileNotFoundError:
            if create:
                raise
            return None
        except PermissionError as exc:
            raise KnownHostsError(f"cannot write {path}: {exc.strerror}") from None
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise KnownHostsError(f"cannot lock {path}: another process has held it for {LOCK_WAIT:g}s "
                                          f"(see: fuser -v {path})") from None
                time.sleep(pause)
                pause = min(pause * 2, 0.05)
        st = os.fstat(fd)
        try:
            now = os.lstat(path)
        except FileNotFoundError:
            now = None
        if st.st_nlink and now is not None and (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
            return fd
        os.close(fd)  # replaced (or removed) while we waited: lock what the name is now


def _remove_old_lock_file(path: str) -> None:
    """Remove ``<path>.lock`` as older hostops versions left it: only an empty regular file of
    ours that no process holds locked (checked under its own flock, through O_NOFOLLOW)."""
    old = path + ".lock"
    try:
        fd = os.open(old, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size or st.st_uid != os.geteuid():
            return
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        now = os.lstat(old)
        if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
            os.unlink(old)
    except OSError:  # held by an older hostops still running, or gone meanwhile: leave it
        pass
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


def _read_fd(fd: int) -> bytes:
    """The whole file behind ``fd``, from its start (the locked descriptor: never reopened by name)."""
    chunks: List[bytes] = []
    offset = 0
    while True:
        chunk = os.pread(fd, 1 << 20, offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


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
    with locked(path) as fd:
        assert fd is not None  # created if missing
        data = _read_fd(fd)
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
            _append(fd, lines)
    return results


def _decide(names: List[str], hashed: Callable[[str], bool]) -> Dict[str, bool]:
    """Hash or not, per name. ``hashed`` may run ``ssh -G``: done before taking the lock,
    on a few threads when there are many names."""
    if len(names) <= 4:
        return {name: hashed(name) for name in names}
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, len(names))) as pool:
        return dict(zip(names, pool.map(hashed, names)))


def _append(fd: int, lines: Sequence[str]) -> None:
    """Whole lines at the end of the locked file (after a newline if its last line lacks one)."""
    size = os.fstat(fd).st_size
    data = ("\n".join(lines) + "\n").encode()
    if size and os.pread(fd, 1, size - 1) != b"\n":
        data = b"\n" + data
    view = memoryview(data)
    while view:  # O_APPEND: each write goes to the end, after anything ssh itself appended meanwhile
        view = view[os.write(fd, view):]


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
    with locked(path, create=False) as fd:
        if fd is None:
            return report
        st = os.fstat(fd)
        data = _read_fd(fd)
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
