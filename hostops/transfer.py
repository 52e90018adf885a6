"""put, get and script: files to and from hosts over the same connection and pool as exec.

Each is an action (plain data, picklable) whose ``run`` is called by a worker with an
open connection. ``prepare_*`` run in the parent first and turn bad input (a missing
source, a directory without -r, an unwritable destination) into a UsageError before
anything is sent.
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import posixpath
import re
import secrets
import shlex
import stat
import time
from typing import ClassVar, List, Optional, Sequence, Tuple

from hostops.errors import CommandAborted, CommandTimeout, ConnectError, UsageError
from hostops.remotefs import CHUNK, Entry, FileSystem, RemoteFileError, chunk_cache, describe_kind
from hostops.secrets import private_makedirs
from hostops.results import UNCHANGED
from hostops.connection import CommandOutcome


@dataclasses.dataclass
class LocalFile:
    rel: str            # path below the source root ("" for a single file)
    size: int
    mode: int
    sha256: Optional[str] = None


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def parse_mode(text: Optional[str]) -> Optional[int]:
    if text is None:
        return None
    if not re.fullmatch(r"0?[0-7]{3,4}", text):
        raise UsageError(f"--mode {text!r}: give an octal mode such as 0644 or 0755")
    return int(text, 8)


def _check_owner(owner: Optional[str]) -> Optional[str]:
    if owner is not None and not re.fullmatch(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*(:[A-Za-z0-9_.][A-Za-z0-9_.-]*)?",
                                              owner):
        raise UsageError(f"--owner {owner!r}: give user or user:group")
    return owner


class _Deadline:
    """--timeout, and the run's abort (first Ctrl-C/SIGTERM): checked between chunks, so a
    transfer stops like a command does, and its partial file is removed."""

    def __init__(self, timeout: Optional[float], ctx=None):
        self.timeout = timeout
        self.end = time.monotonic() + timeout if timeout else None
        self.ctx = ctx
        self.abort = getattr(ctx, "abort", None)

    def left(self) -> Optional[float]:
        return None if self.end is None else self.end - time.monotonic()

    def check(self) -> None:
        if self.abort is not None and self.abort.is_set():
            raise CommandAborted(b"", b"", "interrupted during the transfer; no partial file kept")
        if self.end is not None and time.monotonic() > self.end:
            raise CommandTimeout(b"", b"")


def _human(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


# ------------------------------------------------------------------------------- put
@dataclasses.dataclass
class PutAction:
    """Copy a local file (or tree) to ``dest`` on each host, atomically per file."""

    src: str
    dest: str
    files: List[LocalFile]
    dirs: List[str]
    recursive: bool = False
    mode: Optional[int] = None
    owner: Optional[str] = None
    sudo: bool = False
    checksum: bool = False
    timeout: Optional[float] = None

    needs_connection: ClassVar[bool] = True  # the Action protocol (hostops.actions)

    def describe(self) -> str:
        return f"put {self.src} {self.dest}"

    def run(self, conn, target, ctx, on_output) -> CommandOutcome:  # noqa: ARG002  (the Action protocol)
        deadline = _Deadline(self.timeout, ctx)
        fs = conn.files()
        info = fs.stat(self.dest)
        into_dir = self.dest.endswith("/") or (info is not None and info.is_dir)
        base = os.path.basename(self.src.rstrip("/"))
        root = posixpath.join(self.dest, base) if into_dir else self.dest.rstrip("/") or "/"
        if not self.recursive:
            parent = posixpath.dirname(root) or "."
            pinfo = fs.stat(parent)
            if pinfo is None or not pinfo.is_dir:
                return CommandOutcome(None, b"", b"", f"destination directory {parent} does not exist")
        sent = unchanged = 0
        nbytes = 0
        tidied: set = set()  # directories already rid of stale temporary files
        try:
            if self.recursive:
                self._mkdir(conn, fs, root)
                for d in self.dirs:
                    self._mkdir(conn, fs, posixpath.join(root, d))
            tree = _Tree.resolve(conn, fs, root if self.recursive else posixpath.dirname(root) or ".", self.sudo)
            for f in self.files:
                local = os.path.join(self.src, f.rel) if f.rel else self.src
                remote = posixpath.join(root, f.rel) if f.rel else root
                if self._put_file(conn, fs, local, remote, f, deadline, tidied, tree):
                    sent += 1
                    nbytes += f.size
                else:
                    unchanged += 1
        except RemoteFileError as exc:
            return CommandOutcome(None, b"", b"", str(exc))
        if self.recursive:
            text = f"sent {sent} file(s), {_human(nbytes)}, to {root}" + (f"; {unchanged} unchanged" if unchanged
                                                                          else "")
        elif sent:
            text = f"sent {self.src} -> {root} ({_human(nbytes)})"
        else:
            text = f"{root} already has the same content (sha256)"
        status = UNCHANGED if sent == 0 and unchanged else None
        return CommandOutcome(0, (text + "\n").encode(), b"", status=status)

    def _mkdir(self, conn, fs: FileSystem, path: str) -> None:
        """A real directory at ``path``. A symbolic link there (``conf.d -> /root/secret``) is
        replaced by a directory, as ``rsync -r`` without ``--keep-dirlinks`` does: files are
        never written through a link someone planted in the destination tree."""
        if self.sudo:
            q = shlex.quote(fs.command_path(path))
            _sudo_ok(conn, f"p={q}; if [ -L \"$p\" ]; then rm -f -- \"$p\"; fi; [ -d \"$p\" ] || mkdir -p -- \"$p\"",
                     f"cannot create {path}")
            return
        found = fs.identify(path)
        if found is not None and found.kind == "link":
            fs.remove(path)  # removes the link itself, never what it points to
            found = None
        if found is None or found.kind != "dir":
            fs.mkdir(path)

    def _put_file(self, conn, fs: FileSystem, local: str, remote: str, f: LocalFile, deadline: _Deadline,
                  tidied: set, tree: "_Tree") -> bool:
        """Send one file unless --checksum finds it unchanged (same content, mode and owner).
        True when sent."""
        if self.checksum and f.sha256 and self._unchanged(conn, fs, remote, f.sha256):
            return False
        deadline.check()
        if self.sudo:
            self._put_file_sudo(conn, fs, local, remote, f, deadline, tree)
            return True
        existing = fs.identify(remote)
        if existing is not None and existing.kind == "dir":
            raise RemoteFileError(21, f"{remote}: is a directory")
        # a link at the destination is replaced, not followed: its target's mode is not ours to copy
        kept = existing.mode if existing is not None and existing.kind == "file" else None
        mode = self.mode if self.mode is not None else (kept if kept is not None else f.mode & ~0o022)
        parent = posixpath.dirname(remote) or "."
        tmp = posixpath.join(parent, f".{posixpath.basename(remote)}.hostops-{secrets.token_hex(4)}")
        tree.check(fs, parent, remote)
        fh = fs.open_new(tmp, 0o600)
        renamed = False
        try:
            _remove_stale(fs, remote, fh.identity().mtime, tidied)
            _copy_local_to(fh, local, deadline)
            fh.finish()
            # owner first: chown clears set-user-ID bits that --mode may ask for
            if self.owner:
                if tree.owner_ids is None:  # looked up once per put, not per file
                    tree.owner_ids = _owner_ids(conn, self.owner, remote)
                uid, gid = tree.owner_ids
                fh.chown(uid, fh.identity().gid if gid is None else gid)
            fh.chmod(mode)
            written = fh.identity()
            _swap_check(fs, tmp, remote, written)
            tree.check(fs, parent, remote)
            fs.replace(tmp, remote)  # rename(2) replaces the name at remote, never writes through a link
            renamed = True
            now = fs.identify(remote)
            if now is not None and now.kind == "link":
                # the temporary name was swapped between the check and the rename: what was renamed
                # into place is the other user's link; remove it (the link only) and refuse the host
                fs.remove(remote)
                raise RemoteFileError(errno.EPERM, _SWAPPED.format(remote=remote, tmp=tmp))
            fh.close()
        except BaseException:
            try:
                fh.close()
            except Exception:  # noqa: BLE001  cleanup after a failure: the first error is the one to report
                pass
            if not renamed:
                try:
                    fs.remove(tmp)  # the name only: a link planted there is removed, its target untouched
                except Exception:  # noqa: BLE001  as above: the connection may be gone already
                    pass
            raise
        return True

    def _unchanged(self, conn, fs: FileSystem, remote: str, sha256: str) -> bool:
        """Same content, and the --mode/--owner asked for already: nothing to do. When only
        the mode or owner differ, the file is sent again (through the same safe path) rather
        than chmod/chown by name, which would follow a link swapped in meanwhile."""
        if not self.sudo:
            found = fs.identify(remote)
            if found is None or found.kind != "file":  # a link is replaced, never trusted
                return False
        else:
            out = conn.run(f"test -f {shlex.quote(fs.command_path(remote))} && "
                           f"test ! -L {shlex.quote(fs.command_path(remote))}", 60, sudo=True)
            if out.exit_code != 0:
                return False
        if _remote_sha256(conn, fs, remote, self.sudo) != sha256:
            return False
        q = shlex.quote
        if self.mode is not None:
            info = fs.stat(remote)
            if info is None or info.mode != self.mode:
                return False
        if self.owner:
            out = conn.run(f"stat -c %U:%G -- {q(fs.command_path(remote))}", 60)
            now = out.stdout.decode("utf-8", "replace").strip()
            same = now == self.owner if ":" in self.owner else now.split(":")[0] == self.owner
            if out.exit_code != 0 or not same:
                return False
        return True

    def _put_file_sudo(self, conn, fs: FileSystem, local: str, remote: str, f: LocalFile,
                       deadline: _Deadline, tree: "_Tree") -> None:
        """As the login user into a private staging directory; then sudo installs it with
        :data:`_SUDO_INSTALL`, which never follows a name another user could have swapped."""
        staging = _mktemp_dir(conn)
        try:
            staged = posixpath.join(staging, "file")
            fh = fs.open_new(staged, 0o600)
            try:
                _copy_local_to(fh, local, deadline)
            finally:
                fh.close()
            q = shlex.quote
            script = _SUDO_INSTALL.format(
                dest=q(fs.command_path(remote)), mode=q(f"{self.mode:o}" if self.mode is not None else ""),
                default=f"{f.mode & ~0o022:o}", staged=q(staged),
                expected=q(tree.expected(posixpath.dirname(remote) or ".")),
                chown=f"chown -- {q(self.owner)} f; " if self.owner else "")
            _sudo_ok(conn, script, f"cannot install {remote}")
        finally:
            _remove_tree(conn, fs, staging, deadline.ctx)


_SWAPPED = ("{remote}: refused: the temporary file {tmp} was replaced by someone else on the host "
            "(a link or another file) before it was renamed into place; nothing was written, "
            "chmod'ed or chown'ed through it. Check who can write that directory")

# Root installs the staged file. A user who can write the destination directory can swap any
# name there at any moment, so the file is created and finished inside a fresh directory only
# root can write (mktemp -d, 0700), entered with cd -P and checked to be that directory (its
# physical path, owner and mode, empty): after that no name the script uses can be swapped.
# chown/chmod act on that file, and mv -T renames it over the destination name (a link there
# is replaced, never followed; a directory there is refused).
_SUDO_INSTALL = (
    "set -e; f={dest}; "
    "if [ -d \"$f\" ] && [ ! -L \"$f\" ]; then echo \"$f: is a directory\" >&2; exit 1; fi; "
    "d=$(dirname -- \"$f\"); b=$(basename -- \"$f\"); p=$(cd -P -- \"$d\" && pwd -P); "
    "if [ \"$p\" != {expected} ]; then echo \"$f: refused: $d now leads to $p (a link someone put there while "
    "the put ran); nothing was installed. Check who can write it\" >&2; exit 1; fi; "
    "m={mode}; if [ -z \"$m\" ]; then "
    "if [ -f \"$f\" ] && [ ! -L \"$f\" ]; then m=$(stat -c %a -- \"$f\"); else m={default}; fi; fi; "
    "in=0; t=$(mktemp -d \"${{p%/}}/.$b.hostops-XXXXXXXX\"); "
    "trap 'if [ \"$in\" = 1 ]; then rm -f ./f; fi; cd /; rmdir -- \"$t\" 2>/dev/null || :' EXIT; "
    "trap 'exit 1' HUP INT TERM; "  # stopped by an interrupt: still run the EXIT trap
    "if ! cd -P -- \"$t\" 2>/dev/null || [ \"$(pwd -P)\" != \"$t\" ] || [ \"$(stat -c %u:%a .)\" != \"$(id -u):700\" ] || [ -n \"$(ls -A)\" ]; then "
    "echo \"$f: refused: the temporary directory $t was replaced by someone else on the host; nothing "
    "was installed. Check who can write $p\" >&2; exit 1; fi; in=1; "
    "cat -- {staged} > f; {chown}chmod -- \"$m\" f; "
    "mv -f -T -- f \"$p/$b\"; in=0"
)


STALE_AFTER = 3600  # seconds without a write: a temporary file left by a put whose connection died


def _remove_stale(fs: FileSystem, remote: str, now: int, tidied: set) -> None:
    """A put cut off by a dropped connection cannot remove its temporary file: the next put
    into the same directory removes ``.NAME.hostops-XXXXXXXX`` files there not written to for
    an hour (``now`` is the host's clock: our new file's mtime; a transfer in progress keeps
    its own temporary file fresh). Each directory is looked at once per run."""
    parent = posixpath.dirname(remote) or "."
    if parent in tidied:
        return
    tidied.add(parent)
    try:
        for name, found in fs.identify_all(parent):
            if _TEMP_NAME.fullmatch(name) and found.kind == "file" and found.mtime < now - STALE_AFTER:
                try:
                    fs.remove(posixpath.join(parent, name))  # unlink: never follows anything
                except RemoteFileError:
                    pass
    except RemoteFileError:
        pass  # an unreadable directory: nothing to tidy, the put itself goes on


_TEMP_NAME = re.compile(r"\..+\.hostops-[0-9a-f]{8}")


class _Tree:
    """Where one put's files go: its top directory resolved once on the host (the operator's
    path, followed like cp does). Each file's directory must still resolve to the same place
    below it when the file is created and renamed: a directory of the tree swapped for a link
    meanwhile is refused, not written through."""

    def __init__(self, anchor: str, real: str):
        self.anchor = anchor
        self.real = real
        self.owner_ids: Optional[Tuple[int, Optional[int]]] = None  # --owner as numbers on this host

    @classmethod
    def resolve(cls, conn, fs: FileSystem, anchor: str, sudo: bool) -> "_Tree":
        if sudo:  # the login user may not be able to look into it
            out = _sudo_ok(conn, f"cd -P -- {shlex.quote(fs.command_path(anchor))} && pwd -P",
                           f"cannot resolve {anchor}")
            return cls(anchor, out.stdout.decode("utf-8", "surrogateescape").rstrip("\n"))
        return cls(anchor, fs.realpath(anchor))

    def expected(self, parent: str) -> str:
        rest = parent[len(self.anchor):].strip("/") if parent.startswith(self.anchor) else ""
        return posixpath.join(self.real, rest) if rest else self.real

    def check(self, fs: FileSystem, parent: str, remote: str) -> None:
        real = fs.realpath(parent)
        if real != self.expected(parent):
            raise RemoteFileError(errno.EPERM, f"{remote}: refused: {parent} now leads to {real} (a link "
                                               "someone put there while the put ran); nothing was written "
                                               "there. Check who can write it")


def _swap_check(fs: FileSystem, tmp: str, remote: str, written) -> None:
    """The temporary name must still be the file written (fstat of the handle == lstat of the
    name) before it is renamed into place. A seam for tests, too."""
    if not written.same_file(fs.identify(tmp)):
        raise RemoteFileError(errno.EPERM, _SWAPPED.format(remote=remote, tmp=tmp))


def _owner_ids(conn, owner: str, remote: str) -> Tuple[int, Optional[int]]:
    """--owner user[:group] as numbers on the host, for chown through the open handle
    (SFTP has no names); no group (None) keeps the file's group, as chown(1) does."""
    user, _, group = owner.partition(":")
    q = shlex.quote
    command = f"id -u -- {q(user)}"
    if group:
        command += (f" && {{ getent group {q(group)} || grep -e {q('^' + group + ':')} /etc/group; }}"
                    f" | head -n 1 | cut -d: -f3")
    out = conn.run(command, 60)
    lines = out.stdout.decode("utf-8", "replace").split()
    if out.exit_code == 0 and len(lines) == (2 if group else 1) and all(x.isdigit() for x in lines):
        return int(lines[0]), int(lines[1]) if group else None
    if user.isdigit() and (not group or group.isdigit()):  # numeric ids, as chown(1) accepts
        return int(user), int(group) if group else None
    raise RemoteFileError(errno.EINVAL, f"cannot chown {remote}: no user/group {owner!r} on the host")


def _copy_local_to(fh, local: str, deadline: _Deadline) -> None:
    for chunk in chunk_cache().iter_file(local):
        deadline.check()
        fh.write(chunk)


def _remote_sha256(conn, fs: FileSystem, path: str, sudo: bool) -> Optional[str]:
    """The host's sha256 of ``path`` (None if missing): ``sha256sum`` there, else read over SFTP."""
    out = conn.run(f"sha256sum -- {shlex.quote(fs.command_path(path))}", 60, sudo=sudo)
    if out.exit_code == 0:
        return out.stdout.split(b" ", 1)[0].decode("ascii", "replace")
    if out.exit_code != 127 or sudo:
        return None
    info = fs.stat(path)
    if info is None or info.is_dir:
        return None
    h = hashlib.sha256()
    with fs.open_read(path, info.size) as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _run_ok(conn, command: str, what: str, sudo: bool = False) -> CommandOutcome:
    out = conn.run(command, 120, sudo=sudo)
    if out.exit_code != 0 or out.error:
        reason = out.error or out.stderr.decode("utf-8", "replace").strip() or f"exit code {out.exit_code}"
        raise RemoteFileError(1, f"{what}: {reason}")
    return out


def _sudo_ok(conn, script: str, what: str) -> CommandOutcome:
    """Through sudo: ``sudo -n``, or with the run's sudo password (the connection answers)."""
    return _run_ok(conn, script, what, sudo=True)


def _run_quiet(conn, command: str) -> bool:
    try:
        return conn.run(command, 30).exit_code == 0
    except Exception:  # noqa: BLE001  a best-effort cleanup command: any failure means 'fall back'
        return False


def _remove_tree(conn, fs: FileSystem, path: str, ctx=None) -> bool:
    """``rm -rf`` on the host. While the run is being interrupted, commands are stopped as
    soon as they start, so then (and if rm fails) the tree is removed over SFTP instead."""
    if getattr(getattr(ctx, "abort", None), "is_set", lambda: False)() or \
            not _run_quiet(conn, f"rm -rf -- {shlex.quote(fs.command_path(path))}"):
        try:
            fs.rmtree(path)
        except Exception:  # noqa: BLE001  best effort: the caller reports what was left
            return False
    return True


def _mktemp_dir(conn) -> str:
    out = _run_ok(conn, 'mktemp -d "${TMPDIR:-/tmp}/hostops.XXXXXXXX"', "cannot create a temporary directory")
    path = out.stdout.decode("utf-8", "replace").strip()
    if not path.startswith("/"):
        raise RemoteFileError(1, f"mktemp returned an unexpected path {path!r}")
    return path


def prepare_put(src: str, dest: str, recursive: bool, mode: Optional[str], owner: Optional[str], sudo: bool,
                checksum: bool, timeout: Optional[float]) -> PutAction:
    """Check the local side and build the action; UsageError (exit 2) before anything is sent."""
    if not os.path.lexists(src):
        raise UsageError(f"{src}: no such file or directory")
    if not os.access(src, os.R_OK):
        raise UsageError(f"{src}: permission denied (cannot read it)")
    src = os.path.abspath(src)
    files: List[LocalFile] = []
    dirs: List[str] = []
    if os.path.isdir(src):
        if not recursive:
            raise UsageError(f"{src} is a directory; use -r/--recursive to copy a tree")
        for root, dnames, fnames in os.walk(src):
            dnames.sort()
            rel_root = os.path.relpath(root, src)
            for d in dnames:
                dirs.append(os.path.normpath(os.path.join(rel_root, d)))
            for name in sorted(fnames):
                full = os.path.join(root, name)
                st = os.stat(full)
                if not stat.S_ISREG(st.st_mode):
                    continue
                rel = os.path.normpath(os.path.join(rel_root, name))
                files.append(LocalFile(rel, st.st_size, stat.S_IMODE(st.st_mode),
                                       sha256_file(full) if checksum else None))
    elif os.path.isfile(src):
        st = os.stat(src)
        files.append(LocalFile("", st.st_size, stat.S_IMODE(st.st_mode), sha256_file(src) if checksum else None))
    else:
        raise UsageError(f"{src} is not a regular file or directory")
    if not dest:
        raise UsageError("the destination path is empty")
    # -r on a single file copies that file (as cp -r does), rather than making a directory of its name
    return PutAction(src, dest, files, dirs, recursive and os.path.isdir(src), parse_mode(mode),
                     _check_owner(owner), sudo, checksum, timeout)


# ------------------------------------------------------------------------------- get
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
            os.mkdir(name, 0o700, dir_fd=dest_fd)
        except FileExistsError:
            pass
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=dest_fd)
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
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        except FileExistsError:
            pass
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR) or \
                    not stat.S_ISLNK(os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode):
                raise
        os.unlink(name, dir_fd=parent_fd)
        os.mkdir(name, 0o700, dir_fd=parent_fd)
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
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


# ------------------------------------------------------------------------------- script
@dataclasses.dataclass
class ScriptAction:
    """Upload a local script to a private temporary directory, run it, always remove it."""

    path: str
    args: Sequence[str] = ()
    sudo: bool = False
    timeout: Optional[float] = None
    stdin: Optional[str] = None

    needs_connection: ClassVar[bool] = True  # the Action protocol (hostops.actions)

    def describe(self) -> str:
        return " ".join([f"script {self.path}"] + [shlex.quote(a) for a in self.args])

    def run(self, conn, target, ctx, on_output) -> CommandOutcome:  # noqa: ARG002  (the Action protocol)
        fs = conn.files()
        try:
            tmpdir = _mktemp_dir(conn)
        except RemoteFileError as exc:
            return CommandOutcome(None, b"", b"", str(exc))
        outcome: Optional[CommandOutcome] = None
        try:
            remote = posixpath.join(tmpdir, os.path.basename(self.path))
            fh = fs.open_new(remote, 0o700)
            try:
                _copy_local_to(fh, self.path, _Deadline(self.timeout, ctx))
            finally:
                fh.close()
            command = " ".join([shlex.quote(remote)] + [shlex.quote(a) for a in self.args])
            outcome = conn.run(command, self.timeout, on_output, self.stdin, sudo=self.sudo)
            return outcome
        except RemoteFileError as exc:
            outcome = CommandOutcome(None, b"", b"", str(exc))
            return outcome
        finally:
            if not _remove_tree(conn, fs, tmpdir, ctx) and outcome is not None:
                note = f"could not remove the temporary script directory {tmpdir}"
                outcome.error = f"{outcome.error}; {note}" if outcome.error else note


def prepare_script(path: str, args: Sequence[str], sudo: bool, timeout: Optional[float],
                   stdin: Optional[str]) -> ScriptAction:
    if not os.path.isfile(path):
        raise UsageError(f"{path}: no such script file")
    if not os.access(path, os.R_OK):
        raise UsageError(f"{path}: permission denied (cannot read it)")
    check_stdin(stdin)
    return ScriptAction(os.path.abspath(path), tuple(args), sudo, timeout,
                        os.path.abspath(stdin) if stdin else None)


def check_stdin(stdin: Optional[str]) -> None:
    if stdin is not None and not os.path.isfile(stdin):
        raise UsageError(f"--stdin {stdin}: no such file")
