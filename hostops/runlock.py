"""``--lock FILE``: one run at a time. A second run finds the lock held and exits at once
with exit code 6, so overlapping cron runs never stack up. The kernel drops the lock when
the holder exits, however it exits."""
from __future__ import annotations

import fcntl
import os
from typing import Optional

from hostops.errors import LockHeld, UsageError


class RunLock:
    def __init__(self, path: str):
        self.path = path
        self.fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise UsageError(f"--lock {self.path}: cannot open it: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            try:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            except OSError:
                pass
            os.close(fd)
            raise LockHeld(f"another hostops run holds the lock {self.path}"
                           + (f" (pid {holder})" if holder else "") + "; not starting") from None
        except OSError as exc:  # e.g. ENOLCK on a file system without locks: a usage error, not a crash
            os.close(fd)
            raise UsageError(f"--lock {self.path}: cannot lock it: {exc.strerror}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
