"""``connection: local``: run the command on this machine through ``/bin/sh``, through the
same :class:`hostops.remotecmd.CommandRun` as SSH; this module supplies only the pipes,
stdin and the process-group kill.

Must not import :mod:`hostops.ssh`, :mod:`hostops.workerctx` at run time (the context is
only a type here), nor paramiko.
"""
from __future__ import annotations

import os
import select
import subprocess
from typing import IO, TYPE_CHECKING, Any, Dict, Optional

from hostops.connection import CommandOutcome, Connection, OutputCallback
from hostops.remotecmd import READ_SIZE, CommandIO, CommandRun, PollResult, sudo_prelude
from hostops.settings import Options

if TYPE_CHECKING:
    from hostops.workerctx import WorkerContext


class LocalConnection(Connection):
    """``connection: local``: run the command on this machine through ``/bin/sh``."""

    def __init__(self, ctx: Optional[WorkerContext] = None):
        self.ctx = ctx
        self._running: Dict[int, subprocess.Popen] = {}

    def run(self, command: str, timeout: Optional[float] = None, on_output: Optional[OutputCallback] = None,
            stdin: Optional[str] = None, sudo: bool = False) -> CommandOutcome:
        opts = self.ctx.options if self.ctx else Options()
        command, prompt = sudo_prelude(command, opts, sudo, stdin)
        stdin_file: Any = (open(stdin, "rb") if stdin is not None  # noqa: SIM115 - closed once Popen has it
                           else subprocess.PIPE if prompt else subprocess.DEVNULL)
        try:
            proc = subprocess.Popen(["/bin/sh", "-c", command], stdin=stdin_file, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True)
        finally:
            if stdin is not None:
                stdin_file.close()
        self._running[proc.pid] = proc
        ctx = self.ctx
        try:
            return CommandRun(_ProcessIO(self, proc), opts, timeout, on_output, prompt, sudo,
                              ctx.abort if ctx is not None else None, ctx.abort_fd if ctx is not None else None).run()
        finally:
            del self._running[proc.pid]
            for f in (proc.stdout, proc.stderr, proc.stdin):
                if f is not None and not f.closed:
                    f.close()

    def kill(self, pid: Optional[int], sudo: bool = False) -> str:  # noqa: ARG002 - the interface's
        """Stop the group of this connection's running command ``pid`` (it runs in its own
        session). ``sudo`` changes nothing here: the group is signalled from this process."""
        proc = self._running.get(pid) if pid is not None else None
        if proc is None:
            return "the command may still be running (it is not one this connection started)"
        return _kill_group(proc, self.ctx.options.kill_grace if self.ctx else Options().kill_grace)

    def files(self) -> Any:
        from hostops.localfs import LocalFileSystem

        return LocalFileSystem()


class _ProcessIO(CommandIO):
    """The local command's pipes, for :class:`CommandRun`: stdout and stderr are read as the
    poll says they are ready; stdin is a pipe only when sudo's prompt is answered."""

    def __init__(self, conn: LocalConnection, proc: subprocess.Popen):
        self.conn = conn
        self.proc = proc
        self.streams: Dict[int, str] = {
            proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr"}  # type: ignore[union-attr]
        self.poller: Any = None

    def register(self, poller: Any) -> None:
        self.poller = poller
        for fd in self.streams:
            poller.register(fd, select.POLLIN)

    def pump(self, ready: PollResult, run: CommandRun) -> bool:
        got = False
        for fd, _event in ready:
            name = self.streams.get(fd)
            if name is None:
                continue
            data = os.read(fd, READ_SIZE)
            if not data:
                self.poller.unregister(fd)
                del self.streams[fd]
                continue
            got = True
            if name == "stdout":
                run.stdout(data)
            else:
                run.stderr(data)
        return got

    def output_done(self) -> bool:
        return not self.streams

    def wait_exit(self, timeout: float) -> bool:
        try:
            self.proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def exit_status(self) -> Optional[int]:
        return self.proc.returncode

    def no_status(self, status: Optional[int]) -> str:
        return f"the command was killed by signal {-(status or 0)}"

    def send_stdin(self, data: bytes) -> None:
        stdin: Optional[IO[bytes]] = self.proc.stdin
        if stdin is None or stdin.closed:
            return
        try:
            stdin.write(data)
            stdin.flush()
        except OSError:
            pass

    def close_stdin(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()

    def kill(self, pid: Optional[int], sudo: bool) -> str:  # noqa: ARG002 - the pid is proc's (no report)
        return self.conn.kill(self.proc.pid, sudo)


def _kill_group(proc: subprocess.Popen, grace: float = 5.0) -> str:
    """Stop the command and everything it started (it runs in its own session)."""
    import signal

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return "the command was stopped"
        except PermissionError:
            return "not stopped: the kill was not permitted; the command may still be running"
        try:
            proc.wait(wait)
            return "the command was stopped (TERM)" if sig == signal.SIGTERM else "the command was killed (KILL)"
        except subprocess.TimeoutExpired:
            continue
    return "the command may still be running (it survived TERM and KILL)"
