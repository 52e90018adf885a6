"""The connection contract: what a worker may ask of one host, whatever carries it.

Owns :class:`Connection` (the abstract base of :class:`hostops.ssh.SSHConnection` and
:class:`hostops.local.LocalConnection`) and :class:`CommandOutcome`, what every command and
transfer returns. Must not import any other hostops module, nor paramiko: everything that
talks to a host imports this, and it imports nothing back.
"""
from __future__ import annotations

import abc
from typing import Any, Callable, Optional

OutputCallback = Callable[[str, bytes], None]


class CommandOutcome:
    """Exit code and output of one command (or transfer). ``status`` overrides the status the
    worker would derive from the exit code, e.g. ``unchanged`` for a put that sent nothing."""

    __slots__ = ("exit_code", "stdout", "stderr", "error", "status")

    def __init__(self, exit_code: Optional[int], stdout: bytes, stderr: bytes, error: Optional[str] = None,
                 status: Optional[str] = None):
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr
        self.error = error
        self.status = status


class Connection(abc.ABC):
    """An open connection to one host: runs commands, reads and writes files."""

    @abc.abstractmethod
    def run(self, command: str, timeout: Optional[float] = None, on_output: Optional[OutputCallback] = None,
            stdin: Optional[str] = None, sudo: bool = False) -> CommandOutcome:
        """Run ``command`` (through sudo when ``sudo``); ``stdin`` is a local file fed to it."""

    @abc.abstractmethod
    def files(self) -> Any:
        """The host's file system (:mod:`hostops.remotefs`), opened on first use."""

    @abc.abstractmethod
    def kill(self, pid: Optional[int], sudo: bool = False) -> str:
        """Stop the process group ``pid`` that one of this connection's commands leads (as
        root when ``sudo``: the command's own sudo); say, truthfully, what that achieved."""

    def alive(self) -> bool:
        """Still usable for another command (runbook steps reuse connections)."""
        return True

    def close(self) -> None:  # noqa: B027 - most connections have nothing to close
        pass
