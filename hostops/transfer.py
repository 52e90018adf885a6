"""What put, get and script share: the --timeout/abort deadline, local file facts, and the
small remote commands (mktemp, rm -rf, through sudo or not) the actions run on a host.

The actions themselves live in :mod:`hostops.put`, :mod:`hostops.get` and :mod:`hostops.script`.
Each is an action (plain data, picklable) whose ``run`` is called by a worker with an open
connection; ``prepare_*`` run in the parent first and turn bad input (a missing source, a
directory without -r, an unwritable destination) into a UsageError before anything is sent.

Must not import: put, get, script (they import this module), pool, worker, api, cli, runbook.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shlex
import time
from typing import Optional

from hostops.errors import CommandAborted, CommandTimeout, UsageError
from hostops.remotefs import CHUNK, FileSystem, RemoteFileError, chunk_cache
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


def _copy_local_to(fh, local: str, deadline: _Deadline) -> None:
    for chunk in chunk_cache().iter_file(local):
        deadline.check()
        fh.write(chunk)


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


def check_stdin(stdin: Optional[str]) -> None:
    if stdin is not None and not os.path.isfile(stdin):
        raise UsageError(f"--stdin {stdin}: no such file")
