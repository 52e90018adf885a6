"""A host's file system as put/get/script see it: over SFTP, or this machine's for
``connection: local``. Both raise :class:`RemoteFileError` with the host's own reason
(``No such file``, ``Permission denied``, ``No space left on device``).

:class:`ChunkCache` lets the threads of one worker share what they read from a local
file, so a file sent to many hosts at once is read from disk about once per worker
process, in bounded memory.
"""
from __future__ import annotations

import collections
import errno
import os
import posixpath
import stat as _stat
import threading
from typing import IO, Iterator, List, NamedTuple, Optional, Tuple

from hostops import _patches

CHUNK = 256 * 1024
CACHE_CHUNKS = 32            # 8 MiB per worker process at most


class RemoteFileError(OSError):
    """A file operation failed on the host; ``str()`` is the host's reason and the path."""

    def __str__(self) -> str:  # OSError's would be "[Errno 5] path: reason"
        return self.strerror if self.strerror else super().__str__()


class FileInfo(NamedTuple):
    is_dir: bool
    size: int
    mode: int
    is_link: bool = False  # listdir only: the entry is a symbolic link (the rest describes its target)


#: How long get waits for the host to answer an open (see SFTPFileSystem.open_regular).
OPEN_WAIT = 60.0


class Entry(NamedTuple):
    """``get``'s view of a path: what kind of file it is, as lstat (or stat) says, and its owner
    (to notice a name swapped for something else between listing and opening)."""

    name: str
    kind: str                  # "file", "dir", "link" or "other" (FIFO, socket, device)
    size: int
    mode: int                  # the whole st_mode, type bits included
    uid: Optional[int] = None
    gid: Optional[int] = None


def kind_of(mode: int) -> str:
    if _stat.S_ISREG(mode):
        return "file"
    if _stat.S_ISDIR(mode):
        return "dir"
    if _stat.S_ISLNK(mode):
        return "link"
    return "other"


def describe_kind(mode: int) -> str:
    """``a FIFO``, ``a socket``…: what a file that is not a regular file is, for a message."""
    for test, what in ((_stat.S_ISFIFO, "a FIFO"), (_stat.S_ISSOCK, "a socket"), (_stat.S_ISCHR, "a character device"),
                       (_stat.S_ISBLK, "a block device"), (_stat.S_ISDIR, "a directory"),
                       (_stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return what
    return "not a regular file" if not _stat.S_ISREG(mode) else "a regular file"


def _entry_of(name: str, st) -> Entry:
    mode = getattr(st, "st_mode", None) or 0
    return Entry(name, kind_of(mode), getattr(st, "st_size", None) or 0, mode,
                 getattr(st, "st_uid", None), getattr(st, "st_gid", None))


def check_opened(path: str, opened: Entry, expect: Optional[Entry]) -> None:
    """What was opened must be a regular file and, when ``expect`` (the listing's lstat) is
    given, owned like it: a name swapped for a link to another user's file, a FIFO or a
    device between listing and opening is refused, not read."""
    if opened.kind != "file":
        raise RemoteFileError(errno.EINVAL, f"{path}: not a regular file ({describe_kind(opened.mode)}); not copied")
    if expect is not None and (expect.kind != "file" or
                               (None not in (expect.uid, opened.uid) and expect.uid != opened.uid) or
                               (None not in (expect.gid, opened.gid) and expect.gid != opened.gid)):
        raise RemoteFileError(errno.EAGAIN, f"{path}: replaced by another file while it was being copied "
                                            "(a different owner or type); not copied")


class FileId(NamedTuple):
    """What a name is, without following it (lstat), or what an open file is (fstat): enough
    for put to tell whether a temporary name is still the file it wrote. SFTP tells no inode
    number; then type, size, owner, mode and mtime must all match (a swapped name is a link,
    or a file someone else owns)."""

    kind: str                  # "file", "dir", "link" or "other"
    size: int
    mode: int                  # permission bits only
    uid: int
    gid: int
    mtime: int
    inode: Optional[Tuple[int, int]] = None  # (st_dev, st_ino) where known (local file systems)

    def same_file(self, other: Optional["FileId"]) -> bool:
        if other is None or self.kind != "file" or other.kind != "file":
            return False
        if self.inode is not None and other.inode is not None:
            return self.inode == other.inode
        return self[:6] == other[:6]


def _file_id(st, with_inode: bool = False) -> FileId:
    mode = st.st_mode or 0
    inode = (st.st_dev, st.st_ino) if with_inode else None
    return FileId(kind_of(mode), st.st_size or 0, _stat.S_IMODE(mode), st.st_uid if st.st_uid is not None else -1,
                  st.st_gid if st.st_gid is not None else -1, int(st.st_mtime or 0), inode)


class ChunkCache:
    """A small LRU of file chunks shared by the threads of one process."""

    def __init__(self, chunks: int = CACHE_CHUNKS):
        self.capacity = chunks
        self._data: "collections.OrderedDict[Tuple[str, float, int], bytes]" = collections.OrderedDict()
        self._lock = threading.Lock()
        self.disk_bytes = 0
        self.served_bytes = 0

    def read(self, path: str, mtime: float, offset: int) -> bytes:
        key = (path, mtime, offset)
        with self._lock:
            data = self._data.get(key)
            if data is not None:
                self._data.move_to_end(key)
                self.served_bytes += len(data)
                return data
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read(CHUNK)
        with self._lock:
            self._data[key] = data
            self._data.move_to_end(key)
            while len(self._data) > self.capacity:
                self._data.popitem(last=False)
            self.disk_bytes += len(data)
            self.served_bytes += len(data)
        return data

    def iter_file(self, path: str) -> Iterator[bytes]:
        st = os.stat(path)
        offset = 0
        while offset < st.st_size:
            data = self.read(path, st.st_mtime, offset)
            if not data:
                break
            yield data
            offset += len(data)


_CACHE: Optional[ChunkCache] = None
_CACHE_LOCK = threading.Lock()


def chunk_cache() -> ChunkCache:
    """This process's cache (each worker process has its own)."""
    global _CACHE
    with _CACHE_LOCK:
        if _CACHE is None:
            _CACHE = ChunkCache()
        return _CACHE


class FileSystem:
    """The operations put/get/script need; paths are the host's."""

    def stat(self, path: str) -> Optional[FileInfo]:
        """Info about ``path`` (following links), or None when it does not exist."""
        raise NotImplementedError

    def open_new(self, path: str, mode: int = 0o600) -> "NewFile":
        """Create ``path`` exclusively (never reuse an existing file, never follow a link) for
        writing; mode, owner and identity then go through the open handle (:class:`NewFile`)."""
        raise NotImplementedError

    def identify(self, path: str) -> Optional[FileId]:
        """What ``path`` names, not following a link (lstat); None when nothing is there."""
        raise NotImplementedError

    def identify_all(self, path: str) -> List[Tuple[str, FileId]]:
        """The entries of directory ``path``, each as :meth:`identify` sees it (links not followed)."""
        raise NotImplementedError

    def open_read(self, path: str, size: int = 0) -> IO[bytes]:
        raise NotImplementedError

    def chmod(self, path: str, mode: int) -> None:
        raise NotImplementedError

    def replace(self, src: str, dest: str) -> None:
        """Atomically rename ``src`` over ``dest`` (readers see the old or the new file)."""
        raise NotImplementedError

    def remove(self, path: str) -> None:
        raise NotImplementedError

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        raise NotImplementedError

    def listdir(self, path: str) -> List[Tuple[str, FileInfo]]:
        raise NotImplementedError

    def rmtree(self, path: str) -> None:
        """Remove ``path`` and all below it (links removed, not followed); gone already is fine."""
        raise NotImplementedError

    # ---- get's side: see what is there without following links, read only regular files
    def entry(self, path: str, follow: bool = True) -> Optional[Entry]:
        """stat (``follow``) or lstat of ``path``; None when it does not exist."""
        raise NotImplementedError

    def scandir(self, path: str) -> List[Entry]:
        """The entries of a directory as lstat sees them, with the names exactly as the host
        sent them (the caller checks them: a hostile server can send ``../x``)."""
        raise NotImplementedError

    def readlink(self, path: str) -> str:
        raise NotImplementedError

    def realpath(self, path: str) -> str:
        """``path`` with every link resolved (SFTP's realpath)."""
        raise NotImplementedError

    def open_regular(self, path: str, expect: Optional[Entry] = None,
                     wait: Optional[float] = None) -> Tuple[IO[bytes], int]:
        """Open ``path`` for reading only if it is a regular file (see :func:`check_opened`),
        waiting at most ``wait`` seconds (default OPEN_WAIT) for the host; (handle, size)."""
        raise NotImplementedError

    def command_path(self, path: str) -> str:
        """``path`` as a shell command on the host must name it to mean the same file
        (``~`` is expanded here: it would be quoted, hence literal, in the command)."""
        return path

    def close(self) -> None:
        pass


def remote_path(path: str) -> str:
    """SFTP does not expand ``~``: ``~/x`` is ``x`` relative to the login directory."""
    if path == "~":
        return "."
    if path.startswith("~/"):
        return path[2:] or "."
    return path


def _error(exc: BaseException, path: str) -> RemoteFileError:
    code = getattr(exc, "errno", None)
    reason = os.strerror(code) if isinstance(code, int) and code > 0 else (str(exc) or type(exc).__name__)
    if reason == "Failure":
        reason = "the server reported a failure (a full disk, or a quota?)"
    err = RemoteFileError(code if isinstance(code, int) else errno.EIO, f"{path}: {reason}")
    return err


class NewFile:
    """A file put is writing. Mode, owner and identity are read and set on the open file
    (SFTP fsetstat/fstat, or fchmod/fchown/fstat here), never by name: the name is in a
    directory other users may write, and they could swap it for a link at any moment."""

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """Every write acknowledged (errors such as a full disk raised now)."""
        raise NotImplementedError

    def chmod(self, mode: int) -> None:
        raise NotImplementedError

    def chown(self, uid: int, gid: int) -> None:
        raise NotImplementedError

    def identity(self) -> FileId:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> "NewFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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

    def listdir(self, path: str) -> List[Tuple[str, FileInfo]]:
        try:
            entries = self.sftp.listdir_attr(remote_path(path))
        except OSError as exc:
            raise _error(exc, path) from None
        out = []
        for e in entries:
            mode = e.st_mode or 0
            if _stat.S_ISLNK(mode):
                info = self.stat(path.rstrip("/") + "/" + e.filename)
                if info is None:
                    continue
                info = info._replace(is_link=True)
            else:
                info = FileInfo(_stat.S_ISDIR(mode), e.st_size or 0, _stat.S_IMODE(mode))
            out.append((e.filename, info))
        return sorted(out)

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

    def listdir(self, path: str) -> List[Tuple[str, FileInfo]]:
        try:
            names = sorted(os.listdir(os.path.expanduser(path)))
        except OSError as exc:
            raise _error(exc, path) from None
        out = []
        for name in names:
            full = os.path.join(path, name)
            info = self.stat(full)
            if info is not None:
                out.append((name, info._replace(is_link=os.path.islink(os.path.expanduser(full)))))
        return out

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
