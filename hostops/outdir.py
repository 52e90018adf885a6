"""``-o DIR``: each host's output in ``DIR/<host>.out`` and ``.err`` (pssh's -o/-e), written
without following links, blocking on FIFOs or touching files that are not ours.

Owns: the -o file names and writes. Must not import: the API, the pool, the CLI.
"""
from __future__ import annotations

import errno
import os
import stat

from hostops.results import HostResult


def safe_filename(host: str) -> str:
    """``-o``'s file name for ``host``: one-to-one (hostops.localnames), never a collision."""
    from hostops.localnames import local_name

    return local_name(host)


def write_outdir(outdir: str, result: HostResult) -> None:
    """pssh's -o/-e: ``DIR/<host>.out`` and ``DIR/<host>.err`` (0600: output may hold secrets).

    Never follows a link planted at either name (O_NOFOLLOW), never blocks on a FIFO
    (O_NONBLOCK), and only empties a regular file of ours with no other hard link: a name
    someone else prepared is refused, its target untouched. A write cut short (full disk)
    removes the half-written file. Raises OSError saying which file and why."""
    base = os.path.join(outdir, safe_filename(result.host))
    for suffix, data in ((".out", result.stdout), (".err", result.stderr)):
        _write_private(base + suffix, data)


def _write_private(path: str, data: bytes) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(exc.errno, f"{path} is a symbolic link; not followed") from None
        if exc.errno == errno.ENXIO:  # a FIFO nobody reads (O_NONBLOCK: refused, not waited on)
            raise OSError(exc.errno, f"{path} is not a regular file; left alone") from None
        raise OSError(exc.errno, f"{path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, f"{path} is not a regular file; left alone")
        if st.st_uid != os.geteuid():
            raise OSError(errno.EPERM, f"{path} belongs to another user (uid {st.st_uid}); left alone")
        if st.st_nlink != 1:
            raise OSError(errno.EMLINK, f"{path} has other hard links; left alone")
        os.set_blocking(fd, True)
        os.ftruncate(fd, 0)
        os.fchmod(fd, 0o600)  # the mode above only applies to new files; tighten old ones too
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view):]
        except OSError as exc:
            _remove_if_same(path, st)
            raise OSError(exc.errno, f"{path}: {exc.strerror}") from None
    finally:
        os.close(fd)


def _remove_if_same(path: str, st: os.stat_result) -> None:
    """Remove a half-written file, if the name still is the file we wrote."""
    try:
        now = os.lstat(path)
        if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
            os.unlink(path)
    except OSError:
        pass
