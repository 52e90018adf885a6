"""Host-key checking: strict (default), accept-new, off.

known_hosts files are parsed once per worker process and kept in memory. Under
accept-new, a new key is appended while holding an ``fcntl`` lock on ``<file>.lock``;
the file is re-read under the lock first, so many workers learning the same host's
key at once still write exactly one line.
"""
from __future__ import annotations

import base64
import fcntl
import os
import threading
from typing import Dict, List, Optional, Sequence, Tuple

from hostops.errors import HostKeyError


def fingerprint(key) -> str:
    """OpenSSH's ``SHA256:…`` fingerprint of a paramiko key."""
    import hashlib

    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class HostKeyChecker:
    """Checks server keys against known_hosts under one policy; safe to share between threads."""

    def __init__(self, files: Sequence[str], policy: str = "strict"):
        from paramiko.hostkeys import HostKeys

        self.files = list(files)
        self.policy = policy
        self._keys = HostKeys()
        self._lock = threading.Lock()
        for path in self.files:
            self._load(path)

    def _load(self, path: str) -> None:
        if os.path.exists(path):
            try:
                self._keys.load(path)
            except OSError:
                pass

    def known_types(self, name: str) -> List[str]:
        """Key types recorded for ``name``: offered first so the server picks a key we know."""
        with self._lock:
            entry = self._keys.lookup(name)
            return list(entry.keys()) if entry else []

    def check(self, name: str, key) -> None:
        """Accept ``key`` for ``name`` or raise HostKeyError; may record it under accept-new."""
        if self.policy == "off":
            return
        keytype = key.get_name()
        with self._lock:
            entry = self._keys.lookup(name)
            known = entry.get(keytype) if entry else None
        if known is not None:
            if known == key:
                return
            raise _changed(name, known, key, self.files[0])
        if self.policy == "strict":
            raise HostKeyError(
                f"host key unknown for {name} ({keytype} {fingerprint(key)}); not in "
                f"{', '.join(self.files)}. Verify it and add it (ssh-keyscan, or run once with "
                "--host-key-policy accept-new)", "hostkey-unknown")
        self._learn(name, key)

    def _learn(self, name: str, key) -> None:
        """Append ``name key`` to the first known_hosts file unless another process did already."""
        from paramiko.hostkeys import HostKeys

        path = self.files[0]
        directory = os.path.dirname(path) or "."
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o700, exist_ok=True)
        lock_fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            fresh = HostKeys()
            if os.path.exists(path):
                fresh.load(path)
            entry = fresh.lookup(name)
            known = entry.get(key.get_name()) if entry else None
            if known is None:
                line = f"{name} {key.get_name()} {key.get_base64()}\n".encode()
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
                             | getattr(os, "O_NOFOLLOW", 0), 0o600)
                try:
                    if os.fstat(fd).st_size and not _ends_with_newline(path):
                        line = b"\n" + line
                    os.write(fd, line)
                finally:
                    os.close(fd)
            elif known != key:
                raise _changed(name, known, key, path)
        finally:
            os.close(lock_fd)
        with self._lock:
            self._keys.add(name, key.get_name(), key)


def _ends_with_newline(path: str) -> bool:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


def _changed(name: str, known, key, path: str) -> HostKeyError:
    return HostKeyError(
        f"HOST KEY CHANGED for {name}: known_hosts has {known.get_name()} {fingerprint(known)}, "
        f"the server sent {fingerprint(key)}. This can be an attack (man in the middle) or a "
        f"reinstalled host; verify, then remove the old entry (ssh-keygen -R '{name}' -f {path})",
        "hostkey-changed")
