"""One exception hierarchy for the whole library.

Every error an operator can see derives from :class:`HostopsError` and carries the exit
code the CLI uses for it, so the CLI turns library errors into exit codes in one place.
All of them survive pickling (plain positional ``args``), because workers may hand them
across process boundaries.
"""
from __future__ import annotations

from typing import Optional

from hostops.exitcodes import ExitCode


class HostopsError(Exception):
    """Root of every hostops error."""

    exit_code: ExitCode = ExitCode.INTERNAL


class UsageError(HostopsError):
    """Bad command-line input; nothing ran."""

    exit_code = ExitCode.USAGE


class FileError(UsageError):
    """A broken input file: names the file and, where known, the line."""

    def __init__(self, message: str, file: Optional[str] = None, line: Optional[int] = None):
        super().__init__(message, file, line)
        self.message = message
        self.file = file
        self.line = line

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        return f"{where}{self.message}"


class InventoryError(FileError):
    """A broken inventory."""


class RunbookError(FileError):
    """A broken runbook (unknown step kind or key, bad batch, missing variable or file…)."""


class LockHeld(HostopsError):
    """Another run holds the ``--lock`` file."""

    exit_code = ExitCode.LOCKED


class SelectionError(UsageError):
    """A host pattern that is malformed or matches no host."""


class ConnectError(HostopsError):
    """A host could not be reached: DNS, TCP, banner, key exchange, host key or auth.

    ``stage`` says which step failed so results and messages can say what to do.
    """

    def __init__(self, message: str, stage: str = "connect"):
        super().__init__(message, stage)
        self.message = message
        self.stage = stage

    def __str__(self) -> str:
        return self.message


class HostKeyError(ConnectError):
    """The host's key is unknown (strict policy) or has changed."""

    def __init__(self, message: str, stage: str = "hostkey"):
        super().__init__(message, stage)


class CommandTimeout(HostopsError):
    """A command ran past ``--timeout``. args: (stdout so far, stderr so far, cleanup note)."""

    def __init__(self, stdout: bytes = b"", stderr: bytes = b"", note: str = ""):
        super().__init__(stdout, stderr, note)
        self.stdout = stdout
        self.stderr = stderr
        self.note = note

    def __str__(self) -> str:
        return self.note or "timed out"


class CommandAborted(CommandTimeout):
    """The run was interrupted while the command ran; ``note`` says what cleanup did."""
