"""hostops's own standard output and error, guarded: a closed pipe or a full disk under them
stops the output, never the run.

Owns: GuardedRaw (fd 1/2 behind a guard), guard_std_streams (the CLI's entry point calls it
first), the broken-stream listeners, and the null stream for a closed descriptor.
Must not import: anything of hostops (the renderers, the API and the CLI import this).
"""
from __future__ import annotations

import errno
import io
import os
import sys
from collections.abc import Callable
from typing import IO, cast


class _Null(io.TextIOBase):
    """Where output goes when there is no stream at all (a descriptor closed by the caller)."""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        return len(text)


def _or_null(stream: IO | None) -> IO:
    return stream if stream is not None else cast(IO, _Null())


class GuardedRaw(io.RawIOBase):
    """fd 1 or 2 behind a guard. A failed write (EPIPE: the reader went away; ENOSPC, EIO)
    never raises into the run: the stream is marked broken, ``/dev/null`` takes the
    descriptor's place (so Python's own flush at exit stays quiet, as the Python docs advise
    for SIGPIPE), the listeners are told once, and later writes are dropped."""

    def __init__(self, fd: int, name: str):
        super().__init__()
        self.fd = fd
        self.name = name
        self.error: OSError | None = None
        self.listeners: list[Callable[[OSError], None]] = []

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.fd

    def isatty(self) -> bool:
        try:
            return self.error is None and os.isatty(self.fd)
        except OSError:
            return False

    def write(self, data) -> int:  # type: ignore[override]
        size = memoryview(data).nbytes
        if self.error is not None:
            return size
        try:
            return os.write(self.fd, data)
        except BlockingIOError:
            raise
        except OSError as exc:
            self._broke(exc)
            return size

    def close(self) -> None:  # the descriptor is the process's, not ours: never closed here
        super().close()

    def _broke(self, exc: OSError) -> None:
        self.error = exc
        try:
            null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
            os.dup2(null, self.fd, inheritable=True)
            os.close(null)
        except OSError:
            pass
        for listener in list(self.listeners):
            try:
                listener(exc)
            except Exception:  # noqa: BLE001, S110 - one listener's failure must not stop the others or the run
                pass


_GUARDS: dict[str, GuardedRaw] = {}


def _sanitise_std_fds() -> None:
    """Open /dev/null on fds 0-2 if the caller closed them (``>&-``), as OpenSSH's
    sanitise_stdfd() does: otherwise the next file or socket opened would become "stdout",
    and a worker's stray print could land in the log or on the wire."""
    import fcntl

    for fd in (0, 1, 2):
        try:
            fcntl.fcntl(fd, fcntl.F_GETFD)
        except OSError:
            null = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
            if null != fd:
                os.dup2(null, fd, inheritable=True)
                os.close(null)
            else:
                os.set_inheritable(fd, True)


def guard_std_streams() -> None:
    """Give sys.stdout and sys.stderr a :class:`GuardedRaw` underneath (the CLI's entry point
    calls this first): a closed pipe or a full disk under hostops's output stops the output,
    never the run."""
    _sanitise_std_fds()
    for fd, name in ((1, "stdout"), (2, "stderr")):
        if name in _GUARDS:
            continue
        old = getattr(sys, name)
        if old is not None and old is not getattr(sys, f"__{name}__"):
            continue  # redirected in-process (a test's capture, an embedding program): theirs to handle
        try:
            if old is not None:
                old.flush()
        except (OSError, ValueError):
            pass
        raw = GuardedRaw(fd, name)
        encoding = getattr(old, "encoding", None) or "utf-8"
        errors = getattr(old, "errors", None) or ("backslashreplace" if name == "stderr" else "strict")
        line = bool(getattr(old, "line_buffering", name == "stderr"))
        setattr(sys, name, io.TextIOWrapper(io.BufferedWriter(raw), encoding=encoding, errors=errors,
                                            line_buffering=line, write_through=name == "stderr"))
        _GUARDS[name] = raw


def stream_error(name: str) -> OSError | None:
    """Why writing to ``stdout``/``stderr`` failed, or None (also None when not guarded)."""
    guard = _GUARDS.get(name)
    return guard.error if guard is not None else None


def when_broken(name: str, listener: Callable[[OSError], None]) -> Callable[[], None]:
    """Call ``listener(error)`` once if writing to ``stdout``/``stderr`` fails; returns the
    function that unregisters it. Nothing happens for an unguarded stream."""
    guard = _GUARDS.get(name)
    if guard is None:
        return lambda: None
    guard.listeners.append(listener)

    def remove() -> None:
        if listener in guard.listeners:
            guard.listeners.remove(listener)

    return remove


def reader_gone(error: OSError | None) -> bool:
    """The error means the reader went away (EPIPE), not that writing failed otherwise."""
    return error is not None and error.errno == errno.EPIPE
