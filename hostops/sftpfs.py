"""The host's file system over SFTP (paramiko): :class:`SFTPFileSystem` and its checked,
pipelined writer. The interface, value types and shared helpers are :mod:`hostops.remotefs`'s.

Must not import :mod:`hostops.localfs`, nor anything above (transfer, ssh, connection).
"""
from __future__ import annotations

import errno
import posixpath
import stat as _stat
from typing import IO, List, Optional, Tuple

from hostops import _patches
from hostops.remotefs import (OPEN_WAIT, Entry, FileId, FileInfo, FileSystem, NewFile, RemoteFileError, _entry_of,
                              _error, _file_id, check_opened, remote_path)


class _CheckedWriter(NewFile):
    """A pipelined paramiko SFTPFile whose write errors are not lost.

    paramiko sends pipelined writes without waiting and, at close, reads their replies
    without checking them: a full disk or a quota on the host went unnoticed and a short
    file was renamed into place. Here every reply is read and checked before the close.
    """

    def __init__(self, fh, path: str):
        self._fh = fh
        self._path = path

    def write(self, data: bytes) -> None:
        try:
            self._fh.write(data)
        except OSError as exc:
            raise _error(exc, self._path) from None

    def finish(self) -> None:
        fh = self._fh
        try:
            fh.flush()
            _patches.collect_write_replies(fh)  # raises on an error status
        except OSError as exc:
            raise _error(exc, self._path) from None

    def chmod(self, mode: int) -> None:
        try:
            self._fh.chmod(mode)  # SSH_FXP_FSETSTAT on the handle
        except OSError as exc:
            raise _error(exc, self._path) from None

    def chown(self, uid: int, gid: int) -> None:
        try:
            self._fh.chown(uid, gid)  # SSH_FXP_FSETSTAT on the handle
        except OSError as exc:
            raise _error(exc, self._path) from None

    def identity(self) -> FileId:
        try:
            return _file_id(self._fh.stat())  # SSH_FXP_FSTAT on the handle
        except OSError as exc:
            raise _error(exc, self._path) from None

    def close(self) -> None:
        fh = self._fh
        try:
            try:
                self.finish()
            finally:
                fh.close()
        except OSError as exc:
            raise _error(exc, self._path) from None


def _quiet_prefetch(fh) -> None:
    """paramiko's prefetch thread asks for the whole file, whatever the reader does. When a
    download is cut (--timeout, a file that shrank) and the connection closed under it, the
    thread died with a traceback on the worker's stderr, one per host. Once the file is
    closed, its failures are expected and are not printed."""
    _patches.quiet_prefetch(fh, lambda: fh.closed or getattr(fh.sftp.sock, "closed", False))


class SFTPFileSystem(FileSystem):
    def __init__(self, sftp):
        self.sftp = sftp

    def stat(self, path: str) -> Optional[FileInfo]:
        try:
            st = self.sftp.stat(remote_path(path))
        except FileNotFoundError:
            return None
        except OSError as exc:
            if getattr(exc, "errno", None) == errno.ENOENT:
                return None
            raise _error(exc, path) from None
        return FileInfo(_stat.S_ISDIR(st.st_mode or 0), st.st_size or 0, _stat.S_IMODE(st.st_mode or 0))

    def open_new(self, path: str, mode: int = 0o600) -> NewFile:
        try:
            fh = self.sftp.open(remote_path(path), "wxb")  # w: writable, x: O_CREAT|O_EXCL (no link followed)
            fh.chmod(mode)
            fh.set_pipelined(True)
            return _CheckedWriter(fh, path)
        except OSError as exc:
            raise _error(exc, path) from None

    def identify(self, path: str) -> Optional[FileId]:
        try:
            return _file_id(self.sftp.lstat(remote_path(path)))
        except OSError as exc:
            if isinstance(exc, FileNotFoundError) or getattr(exc, "errno", None) == errno.ENOENT:
                return None
            raise _error(exc, path) from None

    def identify_all(self, path: str) -> List[Tuple[str, FileId]]:
        try:  # READDIR's attributes are lstat's
            return [(e.filename, _file_id(e)) for e in self.sftp.listdir_attr(remote_path(path))]
        except OSError as exc:
            raise _error(exc, path) from None

    def open_read(self, path: str, size: int = 0) -> IO[bytes]:
        try:
            fh = self.sftp.open(remote_path(path), "rb")
            _quiet_prefetch(fh)
            fh.prefetch(size or None, max_concurrent_requests=64)  # bounded read-ahead
            return fh
        except OSError as exc:
            raise _error(exc, path) from None

    def chmod(self, path: str, mode: int) -> None:
        try:
            self.sftp.chmod(remote_path(path), mode)
        except OSError as exc:
            raise _error(exc, path) from None

    def replace(self, src: str, dest: str) -> None:
        try:
            self.sftp.posix_rename(remote_path(src), remote_path(dest))
        except OSError as exc:
            raise _error(exc, dest) from None

    def remove(self, path: str) -> None:
        try:
            self.sftp.remove(remote_path(path))
        except OSError as exc:
            raise _error(exc, path) from None

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        try:
            self.sftp.mkdir(remote_path(path), mode)
        except OSError as exc:
            if self.stat(path) is not None and self.stat(path).is_dir:  # type: ignore[union-attr]
                return
            raise _error(exc, path) from None

    def rmtree(self, path: str) -> None:
        where = remote_path(path)
        try:
            entries = self.sftp.listdir_attr(where)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _error(exc, path) from None
        try:
            for e in entries:
                child = where.rstrip("/") + "/" + e.filename
                if _stat.S_ISDIR(e.st_mode or 0):
                    self.rmtree(child)
                else:
                    self.sftp.remove(child)
            self.sftp.rmdir(where)
        except OSError as exc:
            raise _error(exc, path) from None

    # ---- get's side
    def entry(self, path: str, follow: bool = True) -> Optional[Entry]:
        try:
            st = (self.sftp.stat if follow else self.sftp.lstat)(remote_path(path))
        except OSError as exc:
            if isinstance(exc, FileNotFoundError) or getattr(exc, "errno", None) == errno.ENOENT:
                return None
            raise _error(exc, path) from None
        return _entry_of(posixpath.basename(path.rstrip("/")), st)

    def scandir(self, path: str) -> List[Entry]:
        try:
            return [_entry_of(e.filename, e) for e in self.sftp.listdir_attr(remote_path(path))]
        except UnicodeDecodeError:
            raise RemoteFileError(errno.EILSEQ, f"{path}: a name in this directory is not UTF-8; "
                                                "cannot copy it over SFTP") from None
        except OSError as exc:
            raise _error(exc, path) from None

    def readlink(self, path: str) -> str:
        try:
            text = self.sftp.readlink(remote_path(path))
        except (OSError, UnicodeDecodeError) as exc:
            raise _error(exc, path) from None
        if text is None:
            raise RemoteFileError(errno.EINVAL, f"{path}: the server did not say where this link points")
        return text

    def realpath(self, path: str) -> str:
        try:
            return self.sftp.normalize(remote_path(path))
        except (OSError, UnicodeDecodeError) as exc:
            raise _error(exc, path) from None

    def open_regular(self, path: str, expect: Optional[Entry] = None,
                     wait: Optional[float] = None) -> Tuple[IO[bytes], int]:
        # sftp-server opens without O_NONBLOCK: a name swapped for a FIFO after the listing
        # blocks it in open(2) until a writer comes. The reply is awaited at most ``wait`` s.
        chan = self.sftp.get_channel()
        before = chan.gettimeout()
        limit = OPEN_WAIT if wait is None else max(0.1, wait)
        chan.settimeout(limit)
        try:
            fh = self.sftp.open(remote_path(path), "rb")
            stat_reply = fh.stat()  # fstat of the open handle: what will really be read
        except TimeoutError:
            raise RemoteFileError(errno.ETIMEDOUT, f"{path}: no answer to opening it within {limit:g}s (a FIFO, "
                                                   "or a hung file system?); not copied") from None
        except OSError as exc:
            raise _error(exc, path) from None
        finally:
            chan.settimeout(before)
        try:
            opened = _entry_of(path, stat_reply)
            check_opened(path, opened, expect)
            if opened.size:
                _quiet_prefetch(fh)
                fh.prefetch(opened.size, max_concurrent_requests=64)  # bounded read-ahead
        except BaseException as exc:
            fh.close()
            if isinstance(exc, OSError) and not isinstance(exc, RemoteFileError):
                raise _error(exc, path) from None
            raise
        return fh, opened.size

    def command_path(self, path: str) -> str:
        return remote_path(path)  # commands start in the login directory, as SFTP does

    def close(self) -> None:
        self.sftp.close()
