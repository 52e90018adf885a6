"""This machine's file system for ``connection: local``: :class:`LocalFileSystem` and its
writer, the same operations as :mod:`hostops.sftpfs` through os calls and file descriptors.
The interface, value types and shared helpers are :mod:`hostops.remotefs`'s.

Must not import paramiko, :mod:`hostops._patches` or :mod:`hostops.sftpfs`, nor anything above
(transfer, local, connection).
"""
from __future__ import annotations

import errno
import os
import stat as _stat
from typing import IO, List, Optional, Tuple

from hostops.remotefs import (Entry, FileId, FileInfo, FileSystem, NewFile, _entry_of, _error, _file_id,
                              check_opened)


class _LocalWriter(NewFile):
    """``connection: local``: the same through the file descriptor."""

    def __init__(self, fh, path: str):
        self._fh = fh
        self._path = path

    def _do(self, op, *args):
        try:
            return op(*args)
        except OSError as exc:
            raise _error(exc, self._path) from None

    def write(self, data: bytes) -> None:
        self._do(self._fh.write, data)

    def finish(self) -> None:
        self._do(self._fh.flush)

    def chmod(self, mode: int) -> None:
        self._do(os.fchmod, self._fh.fileno(), mode)

    def chown(self, uid: int, gid: int) -> None:
        self._do(os.fchown, self._fh.fileno(), uid, gid)

    def identity(self) -> FileId:
        return _file_id(self._do(os.fstat, self._fh.fileno()), with_inode=True)

    def close(self) -> None:
        self._do(self._fh.close)



class LocalFileSystem(FileSystem):
    """``connection: local``: the same operations on this machine."""

    def command_path(self, path: str) -> str:
        return os.path.expanduser(path)

    def rmtree(self, path: str) -> None:
        import shutil

        try:
            shutil.rmtree(os.path.expanduser(path))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _error(exc, path) from None

    def stat(self, path: str) -> Optional[FileInfo]:
        try:
            st = os.stat(os.path.expanduser(path))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _error(exc, path) from None
        return FileInfo(_stat.S_ISDIR(st.st_mode), st.st_size, _stat.S_IMODE(st.st_mode))

    def open_new(self, path: str, mode: int = 0o600) -> NewFile:
        try:
            fd = os.open(os.path.expanduser(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
            os.fchmod(fd, mode)
            return _LocalWriter(os.fdopen(fd, "wb"), path)
        except OSError as exc:
            raise _error(exc, path) from None

    def identify(self, path: str) -> Optional[FileId]:
        try:
            return _file_id(os.lstat(os.path.expanduser(path)), with_inode=True)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _error(exc, path) from None

    def identify_all(self, path: str) -> List[Tuple[str, FileId]]:
        out = []
        try:
            names = os.listdir(os.path.expanduser(path))
        except OSError as exc:
            raise _error(exc, path) from None
        for name in names:
            found = self.identify(os.path.join(path, name))
            if found is not None:
                out.append((name, found))
        return out

    def open_read(self, path: str, size: int = 0) -> IO[bytes]:  # noqa: ARG002  (SFTP prefetches by size)
        try:
            return open(os.path.expanduser(path), "rb")
        except OSError as exc:
            raise _error(exc, path) from None

    def chmod(self, path: str, mode: int) -> None:
        try:
            os.chmod(os.path.expanduser(path), mode)
        except OSError as exc:
            raise _error(exc, path) from None

    def replace(self, src: str, dest: str) -> None:
        try:
            os.replace(os.path.expanduser(src), os.path.expanduser(dest))
        except OSError as exc:
            raise _error(exc, dest) from None

    def remove(self, path: str) -> None:
        try:
            os.remove(os.path.expanduser(path))
        except OSError as exc:
            raise _error(exc, path) from None

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        try:
            os.mkdir(os.path.expanduser(path), mode)
        except FileExistsError:
            if not os.path.isdir(os.path.expanduser(path)):
                raise _error(FileExistsError(errno.EEXIST, "exists and is not a directory"), path) from None
        except OSError as exc:
            raise _error(exc, path) from None

    # ---- get's side
    def entry(self, path: str, follow: bool = True) -> Optional[Entry]:
        try:
            st = (os.stat if follow else os.lstat)(os.path.expanduser(path))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _error(exc, path) from None
        return _entry_of(os.path.basename(path.rstrip("/")), st)

    def scandir(self, path: str) -> List[Entry]:
        where = os.path.expanduser(path)
        try:
            names = os.listdir(where)
        except OSError as exc:
            raise _error(exc, path) from None
        out = []
        for name in names:
            try:
                out.append(_entry_of(name, os.lstat(os.path.join(where, name))))
            except FileNotFoundError:
                continue  # removed since the listing
            except OSError as exc:
                raise _error(exc, os.path.join(path, name)) from None
        return out

    def readlink(self, path: str) -> str:
        try:
            return os.readlink(os.path.expanduser(path))
        except OSError as exc:
            raise _error(exc, path) from None

    def realpath(self, path: str) -> str:
        where = os.path.expanduser(path)
        if not os.path.lexists(where):
            raise _error(FileNotFoundError(errno.ENOENT, "No such file"), path)
        return os.path.realpath(where)

    def open_regular(self, path: str, expect: Optional[Entry] = None,
                     wait: Optional[float] = None) -> Tuple[IO[bytes], int]:  # noqa: ARG002  (O_NONBLOCK: no wait)
        import fcntl

        try:  # O_NONBLOCK: opening a FIFO must not wait for a writer
            fd = os.open(os.path.expanduser(path), os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError as exc:
            raise _error(exc, path) from None
        try:
            opened = _entry_of(path, os.fstat(fd))
            check_opened(path, opened, expect)
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        except BaseException:
            os.close(fd)
            raise
        return os.fdopen(fd, "rb"), opened.size
