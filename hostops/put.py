"""put: copy a local file (or tree) to each host, atomically per file.

Owns: :class:`PutAction`, :func:`prepare_put`, and what only put needs: the tree check
(:class:`_Tree`), the temporary-name swap check, the sudo install script, --owner lookup,
--checksum's remote sha256 and the removal of stale temporary files.

Must not import: get, script, pool, worker, api, cli, runbook (they import this module or
are its siblings); shared helpers come from :mod:`hostops.transfer`.
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
from typing import ClassVar, List, Optional, Tuple

from hostops.errors import UsageError
from hostops.remotefs import CHUNK, FileSystem, RemoteFileError
from hostops.results import UNCHANGED
from hostops.connection import CommandOutcome
from hostops.transfer import (LocalFile, _copy_local_to, _Deadline, _human, _mktemp_dir, _remove_tree, _sudo_ok,
                              parse_mode, sha256_file)


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


def _check_owner(owner: Optional[str]) -> Optional[str]:
    if owner is not None and not re.fullmatch(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*(:[A-Za-z0-9_.][A-Za-z0-9_.-]*)?",
                                              owner):
        raise UsageError(f"--owner {owner!r}: give user or user:group")
    return owner
