"""script: upload a local script to a private temporary directory on each host, run it,
always remove it.

Owns: :class:`ScriptAction` and :func:`prepare_script`.

Must not import: put, get, pool, worker, api, cli, runbook (they import this module or are
its siblings); shared helpers come from :mod:`hostops.transfer`.
"""
from __future__ import annotations

import dataclasses
import os
import posixpath
import shlex
from typing import ClassVar, Optional, Sequence

from hostops.errors import UsageError
from hostops.remotefs import RemoteFileError
from hostops.connection import CommandOutcome
from hostops.transfer import _copy_local_to, _Deadline, _mktemp_dir, _remove_tree, check_stdin


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
