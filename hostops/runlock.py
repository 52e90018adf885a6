"""``--lock FILE``: one run at a time. A second run finds the lock held and exits at once
with exit code 6, so overlapping cron runs never stack up. The kernel drops the lock when
the holder exits, however it exits.

Like flock(1), the file is only locked, never written: it is opened read-only (created
empty, 0600, only when missing), so locking the runbook or script itself, a common idiom,
leaves its content and mtime alone. The holder's pid is read from /proc/locks.

Owns: the --lock file. Taken and released by :func:`hostops.api.run_rollout`.
Must not import: anything of hostops but :mod:`hostops.errors`."""
from __future__ import annotations

import errno
import fcntl
import os

from hostops.errors import LockHeld, UsageError


class RunLock:
    def __init__(self, path: str):
        self.path = path
        self.fd: int | None = None

    def _open(self) -> int:
        flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NOCTTY | os.O_NONBLOCK
        try:
            try:
                return os.open(self.path, flags)
            except FileNotFoundError:
                return os.open(self.path, flags | os.O_CREAT, 0o600)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UsageError(f"--lock {self.path}: cannot open it: it is a symbolic link (not followed)") from None
            raise UsageError(f"--lock {self.path}: cannot open it: {exc.strerror}") from None

    def acquire(self) -> RunLock:
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = lock_holder(fd)
            os.close(fd)
            raise LockHeld(f"another hostops run holds the lock {self.path}"
                           + (f" (pid {holder})" if holder else "") + "; not starting") from None
        except OSError as exc:  # e.g. ENOLCK on a file system without locks: a usage error, not a crash
            os.close(fd)
            raise UsageError(f"--lock {self.path}: cannot lock it: {exc.strerror}") from None
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> RunLock:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lock_holder(fd: int, locks: str = "/proc/locks") -> int | None:
    """The pid holding a flock on ``fd``'s file, from /proc/locks (Linux); None if unknown."""
    try:
        st = os.fstat(fd)
        with open(locks) as fh:
            lines = fh.read(1 << 20).splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        # "12: FLOCK  ADVISORY  WRITE 4242 08:01:1234 0 EOF" ("->" marks a waiter: skipped)
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        try:
            major, minor, inode = fields[5].split(":")
            if (int(inode) == st.st_ino and int(major, 16) == os.major(st.st_dev)
                    and int(minor, 16) == os.minor(st.st_dev)):
                return int(fields[4])
        except ValueError:
            continue
    return None
