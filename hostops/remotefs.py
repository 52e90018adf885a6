"""A host's file system as put/get/script see it: the :class:`FileSystem` interface, the
:class:`NewFile` writer interface, their value types (:class:`FileInfo`, :class:`Entry`,
:class:`FileId`), :class:`RemoteFileError` and the helpers both implementations share
(``remote_path``, ``_error``, ``_file_id``, ``_entry_of``, ``check_opened``). The
implementations live in :mod:`hostops.sftpfs` (over SFTP) and :mod:`hostops.localfs` (this
machine's, for ``connection: local``); both raise :class:`RemoteFileError` with the host's own
reason (``No such file``, ``Permission denied``, ``No space left on device``).

Must not import paramiko, :mod:`hostops._patches`, :mod:`hostops.sftpfs` or
:mod:`hostops.localfs` (they import this module), nor anything above (transfer, ssh, local).

:class:`ChunkCache` lets the threads of one worker share what they read from a local
file, so a file sent to many hosts at once is read from disk about once per worker
process, in bounded memory.
"""
from __future__ import annotations

import collections
import errno
import os
import stat as _stat
import threading
from typing import IO, Iterator, List, NamedTuple, Optional, Tuple

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


#: How long get waits for the host to answer an open (see hostops.sftpfs.SFTPFileSystem.open_regular).
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
