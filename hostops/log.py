"""The JSON-lines run log, shared by the parent and every worker process.

Each record is one ``write()`` of one line, made while holding :class:`LogLock`, so lines
from many processes never interleave or tear; a record the disk has no room for is cut
back out, so the file only ever holds whole lines. The lock is an ``fcntl`` lock on the log
file itself: the kernel releases it if its holder dies (a SIGKILLed worker cannot wedge
the run), and it also keeps two hostops runs writing the same log apart. A thread lock
inside the lock object orders the threads of one process.

Owns: the log file (open, lock, append whole records, mask secrets).
Must not import: the pool, the API, the CLI, the renderers (workers import this module).
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import threading
from typing import Any

from hostops.results import stamp


class LogLock:
    """The Lock that serialises log writes across processes (fcntl) and threads."""

    def __init__(self, fd: int):
        self._fd = fd
        self._thread_lock = threading.Lock()

    def __enter__(self) -> LogLock:  # noqa: PYI034 - typing.Self needs Python 3.11
        self._thread_lock.acquire()
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._thread_lock.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()


def open_log(path: str) -> int:
    """Open ``path`` for appending, created 0600; never follows a symlink at the last step,
    and refuses a file that belongs to another user (someone could be reading it)."""
    from hostops.errors import UsageError

    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UsageError(f"--log {path} is a symbolic link; refusing to follow it") from None
        raise UsageError(f"--log {path}: {exc.strerror}") from None
    st = os.fstat(fd)
    if st.st_uid != os.geteuid():
        os.close(fd)
        raise UsageError(f"--log {path} belongs to another user (uid {st.st_uid}); refusing to write to it")
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise UsageError(f"--log {path} is not a regular file")
    return fd


class RunLog:
    """Append JSON records to the log file, one line each, under the LogLock. Every string in
    a record has the run's secrets masked first."""

    def __init__(self, path: str, secrets=None):
        self.path = path
        self.secrets = secrets
        self._fd = open_log(path)
        self.lock = LogLock(self._fd)

    def _mask(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.secrets.redact(value)
        if isinstance(value, dict):
            return {k: self._mask_b64(v) if k.endswith("_b64") and isinstance(v, str) else self._mask(v)
                    for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._mask(v) for v in value]
        return value

    def _mask_b64(self, value: str) -> str:
        """A ``stdout_b64`` field: the secrets masked in the bytes it holds, too."""
        import base64

        data = base64.b64decode(value)
        masked = self.secrets.redact(data)
        return value if masked == data else base64.b64encode(masked).decode("ascii")

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` with the schema version and the time (:func:`hostops.results.stamp`)."""
        record = stamp(record)
        if self.secrets is not None and self.secrets.all():
            record = self._mask(record)
        # ensure_ascii keeps any control byte from remote output escaped inside the JSON string,
        # so a record is always exactly one line.
        data = (json.dumps(record, ensure_ascii=True, separators=(",", ":")) + "\n").encode("ascii")
        with self.lock:
            # Under the lock the file ends where this record will begin (every writer appends
            # only under it). A write cut short (ENOSPC, EDQUOT, EIO) is cut back to there:
            # the file holds whole lines only, and the caller marks the host.
            before = os.fstat(self._fd).st_size
            view = memoryview(data)
            try:
                while view:
                    written = os.write(self._fd, view)
                    view = view[written:]
            except OSError:
                try:
                    os.ftruncate(self._fd, before)
                except OSError:
                    pass
                raise

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def maybe_open(path: str | None, secrets=None) -> RunLog | None:
    return RunLog(path, secrets) if path else None
