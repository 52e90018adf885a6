"""get: copy a file (or tree) from each host into ``DEST/<host>/``; partial files never remain.

Owns: :class:`GetAction`, :func:`prepare_get`, the streaming download (:func:`_download`) and
the local-directory helpers that never follow a link (host directory, tree directories,
the staging directory of partial downloads).

Must not import: put, script, pool, worker, api, cli, runbook (they import this module or
are its siblings); shared helpers come from :mod:`hostops.transfer`.
"""
from __future__ import annotations

import dataclasses
import errno
import os
import posixpath
import secrets
import stat
from typing import ClassVar, List, Optional, Tuple

from hostops.errors import CommandTimeout, ConnectError, UsageError
from hostops.remotefs import CHUNK, Entry, FileSystem, RemoteFileError, describe_kind
from hostops.secrets import private_makedirs
from hostops.connection import CommandOutcome
from hostops.transfer import _Deadline, _human


#: How deep ``get -r`` goes, as OpenSSH's sftp (MAX_DIR_DEPTH): a hostile or looping tree ends.
MAX_DEPTH = 64
#: Skipped entries named one per line in a host's output; the rest are counted.
NOTES_SHOWN = 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _suspect(name: str) -> bool:
    """A directory entry name that is not one plain name (OpenSSH's "suspect path")."""
    return name in ("", ".", "..") or "/" in name or "\0" in name


def _shown(path: str) -> str:
    """A host's path for a one-line note: as is when printable, else escaped (a name with a
    newline or an escape sequence cannot start a line of its own)."""
    return path if path.isprintable() else ascii(path)


def _local_error(exc: OSError, path: str) -> RemoteFileError:
    return RemoteFileError(exc.errno or errno.EIO, f"local {path}: {exc.strerror or exc}")


def _mkdir_open(parent_fd: int, name: str) -> int:
    """Directory ``name`` under ``parent_fd``, created 0700 if missing, opened without following
    a link (OSError ELOOP/ENOTDIR when something else is there: each caller decides)."""
    try:
        os.mkdir(name, 0o700, dir_fd=parent_fd)
    except FileExistsError:
        pass
    return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)


def _open_host_dir(dest: str, name: str) -> int:
    """``DEST/<host>`` (created 0700), opened without following a link: a ``DEST/<host>`` that is
    a symbolic link (planted, or left by someone) is refused, never written through."""
    path = os.path.join(dest, name)
    try:
        private_makedirs(dest)
        dest_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise _local_error(exc, dest) from None
    try:
        try:
            return _mkdir_open(dest_fd, name)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                if stat.S_ISLNK(os.stat(name, dir_fd=dest_fd, follow_symlinks=False).st_mode):
                    raise RemoteFileError(errno.ELOOP, f"local {path} is a symbolic link; not followed (remove it "
                                                       "or choose another destination)") from None
                raise RemoteFileError(errno.ENOTDIR, f"local {path} exists and is not a directory") from None
            raise _local_error(exc, path) from None
    except OSError as exc:
        if isinstance(exc, RemoteFileError):
            raise
        raise _local_error(exc, path) from None
    finally:
        os.close(dest_fd)


def _enter_dir(parent_fd: int, name: str, shown: str) -> int:
    """A directory of the copied tree, created 0700 if missing, opened without following links.
    A symbolic link in its place (recorded by an earlier ``get``) is replaced by a real
    directory, as ``rsync -r`` does; the new directory is never reached through a link."""
    try:
        try:
            return _mkdir_open(parent_fd, name)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR) or \
                    not stat.S_ISLNK(os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode):
                raise
        os.unlink(name, dir_fd=parent_fd)
        return _mkdir_open(parent_fd, name)
    except OSError as exc:
        raise _local_error(exc, shown) from None


def _remove_staging(parent_fd: int, name: str) -> None:
    """Remove the flat staging directory ``name`` (partial downloads), never following links."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError:
        return
    try:
        for entry in os.listdir(fd):
            try:
                os.unlink(entry, dir_fd=fd)
            except OSError:
                pass
    finally:
        os.close(fd)
    try:
        os.rmdir(name, dir_fd=parent_fd)
    except OSError:
        pass


class _Tally:
    """What one host's ``get`` did: counts, entries skipped (notes) and refusals (problems)."""

    def __init__(self) -> None:
        self.files = self.links = self.nbytes = 0
        self.notes: List[str] = []
        self.problems: List[str] = []


@dataclasses.dataclass
class GetAction:
    """Copy ``src`` from each host into ``dest/<host>/``; partial files never remain.

    Only regular files are read, and the tree's symbolic links are recorded as links (never
    followed) unless ``follow_links``, which follows only links that stay inside the tree.
    Partial downloads live in ``DEST/<host>/.hostops-<run_id>.part/`` until renamed into
    place; the parent removes that directory when a worker dies (:meth:`discard_partial`)."""

    src: str
    dest: str
    recursive: bool = False
    timeout: Optional[float] = None
    follow_links: bool = False
    run_id: str = dataclasses.field(default_factory=lambda: secrets.token_hex(8))

    needs_connection: ClassVar[bool] = True  # the Action protocol (hostops.actions)
    sudo: ClassVar[bool] = False  # `get --sudo` is refused

    def describe(self) -> str:
        return f"get {self.src} {self.dest}"

    def _staging_name(self) -> str:
        return f".hostops-{self.run_id}.part"

    def discard_partial(self, target) -> None:
        """The parent's cleanup for a host whose worker died mid-transfer: nothing ran there to
        remove the partial file, so its staging directory is removed here."""
        from hostops.localnames import local_name

        try:
            dest_fd = os.open(self.dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            host_fd = os.open(local_name(target.name), _DIR_FLAGS, dir_fd=dest_fd)  # never through a link
        except OSError:
            return
        finally:
            os.close(dest_fd)
        try:
            _remove_staging(host_fd, self._staging_name())
        finally:
            os.close(host_fd)

    def run(self, conn, target, ctx, on_output) -> CommandOutcome:  # noqa: ARG002  (the Action protocol)
        from hostops.localnames import local_name

        deadline = _Deadline(self.timeout, ctx)
        fs = conn.files()
        try:
            info = fs.entry(self.src, follow=True)  # SRC itself may be a link: the operator named it
        except RemoteFileError as exc:
            return CommandOutcome(None, b"", b"", str(exc))
        if info is None:
            return CommandOutcome(None, b"", b"", f"{self.src}: no such file or directory on {target.name}")
        if info.kind == "dir" and not self.recursive:
            return CommandOutcome(None, b"", b"", f"{self.src} is a directory on {target.name}; use -r")
        if info.kind not in ("dir", "file"):
            return CommandOutcome(None, b"", b"", f"{self.src} on {target.name} is not a regular file "
                                                  f"({describe_kind(info.mode)}); not copied")
        host_name = local_name(target.name)
        host_dir = os.path.join(self.dest, host_name)
        base = posixpath.basename(posixpath.normpath(self.src.rstrip("/") or "/"))
        if _suspect(base):
            base = "root"
        local_root = os.path.join(host_dir, base)
        tally = _Tally()
        staging = self._staging_name()
        try:
            host_fd = _open_host_dir(self.dest, host_name)
        except RemoteFileError as exc:
            return CommandOutcome(None, b"", b"", str(exc))
        staging_fd = -1
        try:
            try:
                os.mkdir(staging, 0o700, dir_fd=host_fd)
                staging_fd = os.open(staging, _DIR_FLAGS, dir_fd=host_fd)
            except OSError as exc:
                raise _local_error(exc, os.path.join(host_dir, staging)) from None
            if info.kind == "file":
                tally.nbytes = _download(fs, self.src, info, staging_fd, host_fd, base, local_root, deadline)
                tally.files = 1
            else:
                root_fd = _enter_dir(host_fd, base, local_root)
                try:
                    root_real = fs.realpath(self.src) if self.follow_links else self.src
                    self._walk(fs, self.src.rstrip("/") or "/", (root_real,), root_fd, local_root, 0, tally,
                               staging_fd, deadline)
                finally:
                    os.close(root_fd)
        except RemoteFileError as exc:
            return CommandOutcome(None, b"", b"", str(exc))
        except Exception as exc:
            from paramiko import SSHException

            if not isinstance(exc, (SSHException, EOFError)):
                raise
            raise _dropped(self.src, exc) from None  # the connection died while listing or opening
        finally:
            if staging_fd >= 0:
                os.close(staging_fd)
            _remove_staging(host_fd, staging)
            os.close(host_fd)
        return self._outcome(info, local_root, tally)

    def _outcome(self, info: Entry, local_root: str, tally: _Tally) -> CommandOutcome:
        if info.kind == "file":
            text = f"received {self.src} -> {local_root} ({_human(tally.nbytes)})"
        else:
            text = f"received {tally.files} file(s), {_human(tally.nbytes)}, into {local_root}"
            if tally.links:
                text += f"; {tally.links} symbolic link(s) recorded as links, not followed"
            if tally.notes:
                text += f"; {len(tally.notes)} skipped"
        lines = [text] + tally.notes[:NOTES_SHOWN]
        if len(tally.notes) > NOTES_SHOWN:
            lines.append(f"... and {len(tally.notes) - NOTES_SHOWN} more skipped")
        stdout = ("\n".join(lines) + "\n").encode("utf-8", "replace")
        if tally.problems:
            error = "; ".join(tally.problems[:3]) + (f" (and {len(tally.problems) - 3} more)"
                                                      if len(tally.problems) > 3 else "")
            return CommandOutcome(None, stdout, b"", error)
        return CommandOutcome(0, stdout, b"")

    def _walk(self, fs: FileSystem, rdir: str, chain: Tuple[str, ...], dir_fd: int, ldir: str, depth: int,
              tally: _Tally, staging_fd: int, deadline: _Deadline) -> None:
        """Copy the directory ``rdir`` into the open local directory ``dir_fd``. ``chain``: the
        real paths of ``rdir`` and the directories above it (loops, and what "inside" means)."""
        for e in sorted(fs.scandir(rdir), key=lambda e: e.name):
            deadline.check()
            if _suspect(e.name):
                tally.problems.append(f"the server sent a suspect path {e.name!r} in {_shown(rdir)}; refused")
                continue
            rpath, lpath = posixpath.join(rdir, e.name), os.path.join(ldir, e.name)
            source, what, real = rpath, e, posixpath.join(chain[-1], e.name)
            if e.kind == "link":
                if not self.follow_links:
                    self._record_link(fs, rpath, staging_fd, dir_fd, e.name, lpath)
                    tally.links += 1
                    continue
                followed = self._follow(fs, rpath, chain, tally)
                if followed is None:
                    continue
                real, what = followed
                source = real
            if what.kind == "dir":
                if depth + 1 >= MAX_DEPTH:
                    tally.problems.append(f"{_shown(rpath)}: deeper than {MAX_DEPTH} directory levels; not copied")
                    continue
                child = _enter_dir(dir_fd, e.name, lpath)
                try:
                    self._walk(fs, source, chain + (real,), child, lpath, depth + 1, tally, staging_fd, deadline)
                finally:
                    os.close(child)
            elif what.kind == "file":
                tally.nbytes += _download(fs, source, what, staging_fd, dir_fd, e.name, lpath, deadline)
                tally.files += 1
            else:
                tally.notes.append(f"skipped {_shown(rpath)}: not a regular file ({describe_kind(what.mode)})")

    def _follow(self, fs: FileSystem, rpath: str, chain: Tuple[str, ...],
                tally: _Tally) -> Optional[Tuple[str, Entry]]:
        """--follow-links: (real path, what it is) when the link resolves inside the tree and
        does not loop; else None with a note saying why it was not followed."""
        try:
            real = fs.realpath(rpath)
            what = fs.entry(real, follow=False)
        except RemoteFileError:
            real, what = "", None
        if what is None or what.kind == "link":
            tally.notes.append(f"skipped {_shown(rpath)}: a symbolic link that does not resolve")
            return None
        root = chain[0].rstrip("/")
        if not (real == chain[0] or real.startswith(root + "/")):
            tally.notes.append(f"skipped {_shown(rpath)}: a symbolic link to {_shown(real)}, outside the tree; "
                                "not followed")
            return None
        if what.kind == "dir" and real in chain:
            tally.notes.append(f"skipped {_shown(rpath)}: a symbolic link to {_shown(real)}, a directory it is "
                                "inside (a loop)")
            return None
        return real, what

    @staticmethod
    def _record_link(fs: FileSystem, rpath: str, staging_fd: int, dir_fd: int, name: str, shown: str) -> None:
        """Make ``name`` a local symbolic link with the same text (``rsync -l``). The link is
        created in the staging directory and renamed into place, so it replaces a previous
        link or file of that name and is never followed."""
        text = fs.readlink(rpath)
        tmp = f"{secrets.token_hex(8)}.link"
        try:
            os.symlink(text, tmp, dir_fd=staging_fd)
        except ValueError:  # a NUL in the link's text: no such link can exist
            raise RemoteFileError(errno.EINVAL, f"{rpath}: the server sent an impossible link target "
                                                f"{text!r}; refused") from None
        except OSError as exc:
            raise _local_error(exc, shown) from None
        try:
            os.replace(tmp, name, src_dir_fd=staging_fd, dst_dir_fd=dir_fd)
        except OSError as exc:
            try:
                os.unlink(tmp, dir_fd=staging_fd)
            except OSError:
                pass
            raise _local_error(exc, shown) from None


def _dropped(remote: str, exc: BaseException) -> ConnectError:
    """The connection died under a download (paramiko says so with SSHException, EOFError or
    an OSError without errno): the host is unreachable, not "unexpected error"."""
    return ConnectError(f"the connection dropped while copying {remote} ({exc or type(exc).__name__}); "
                        "no partial file kept", "transfer")


def _download(fs: FileSystem, remote: str, expect: Optional[Entry], staging_fd: int, dir_fd: int, name: str, shown: str,
              deadline: _Deadline) -> int:
    """Stream the regular file ``remote`` into the staging directory, then rename it to ``name``
    in ``dir_fd`` (a link or file already there is replaced, never followed)."""
    tmp = f"{secrets.token_hex(8)}.part"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=staging_fd)
    except OSError as exc:
        raise _local_error(exc, shown) from None
    total = 0
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                fh, size = fs.open_regular(remote, expect, deadline.left())
            except RemoteFileError as exc:
                left = deadline.left()
                if exc.errno == errno.ETIMEDOUT and left is not None and left < 0.5:
                    raise CommandTimeout(b"", b"") from None  # --timeout ran out: say so, as for a command
                raise
            with fh:
                while True:
                    deadline.check()
                    try:
                        block = fh.read(CHUNK)
                    except Exception as exc:  # noqa: BLE001  paramiko raises SSHException, EOFError, OSError…: sorted below
                        channel = getattr(getattr(fh, "sftp", None), "sock", None)
                        if isinstance(exc, OSError) and getattr(exc, "errno", None) and \
                                not getattr(channel, "closed", False):  # the host's own error
                            raise RemoteFileError(exc.errno, f"{remote}: {exc}") from None
                        raise _dropped(remote, exc) from None
                    if not block:
                        break
                    try:
                        out.write(block)
                    except OSError as exc:
                        raise _local_error(exc, shown) from None
                    total += len(block)
        if total < size:  # truncated on the host while we read it: what we have is neither old nor new
            raise RemoteFileError(errno.EIO, f"{remote}: the file shrank during the transfer ({size} bytes "
                                             f"expected, {total} read); nothing kept")
        try:
            os.replace(tmp, name, src_dir_fd=staging_fd, dst_dir_fd=dir_fd)
        except OSError as exc:
            raise _local_error(exc, shown) from None
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=staging_fd)
        except OSError:
            pass
        raise
    return total


def prepare_get(src: str, dest: str, recursive: bool, timeout: Optional[float], create: bool = True,
                follow_links: bool = False) -> GetAction:
    """Check that ``dest`` is (or can become) a writable directory; ``create`` makes it now
    (runbooks check at plan time and create nothing until they run)."""
    if not src:
        raise UsageError("the source path is empty")
    existing = dest
    while not os.path.exists(existing):
        parent = os.path.dirname(os.path.abspath(existing))
        if parent == os.path.abspath(existing):
            break
        existing = parent
    if not os.path.isdir(existing):
        raise UsageError(f"cannot create the local destination {dest}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"local destination {dest} is not writable")
    if create:
        try:
            from hostops.secrets import private_makedirs

            private_makedirs(dest)  # 0700 whatever the umask, as the directories inside it
        except OSError as exc:
            raise UsageError(f"cannot create the local destination {dest}: {exc.strerror}") from None
    return GetAction(src, os.path.abspath(dest), recursive, timeout, follow_links)
