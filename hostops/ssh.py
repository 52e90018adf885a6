"""SSHConnection: one host over SSH through paramiko. Opening (handshake, host key check,
authentication, all within the connect timeout), running a command through the shared
:class:`hostops.remotecmd.CommandRun` (this module supplies only the channel: read, stdin,
exit status, the remote kill), the SFTP file system, and closing.

When a command times out or the run is interrupted, its remote process group gets TERM,
then KILL after ``--kill-grace`` seconds, sent over a second channel: every command runs as
the leader of its own process group (sshd makes it a session leader) and reports that id
on its first stderr line, which hostops strips.

Must not import :mod:`hostops.workerctx` at run time (the context is only a type here),
nor paramiko at import time (it is imported inside functions, so the CLI starts fast).
"""
from __future__ import annotations

import os
import select
import threading
import time
from typing import TYPE_CHECKING, Any, Optional, Tuple

from hostops import _patches
from hostops.auth import _authenticate
from hostops.capture import PromptWatch
from hostops.connection import CommandOutcome, Connection, OutputCallback
from hostops.errors import ConnectError
from hostops.handshake import GuardedSocket, Handshake
from hostops.remotecmd import (
    KEEPALIVE_COUNT,
    READ_SIZE,
    CommandIO,
    CommandRun,
    PollResult,
    kill_command,
    kill_note,
    new_prompt,
    sudo_prelude,
    with_pid_report,
)
from hostops.settings import Target

if TYPE_CHECKING:
    from hostops.workerctx import WorkerContext


class SSHConnection(Connection):
    def __init__(self, transport, target: Target, guard: GuardedSocket, ctx: WorkerContext):
        self.transport = transport
        self.target = target
        self.guard = guard
        self.ctx = ctx
        self._fs: Any = None
        #: Why no password may be sent to this host (its key differs from known_hosts and
        #: was accepted under --host-key-policy off), or None.
        self.password_withheld: Optional[str] = None

    @classmethod
    def open(cls, target: Target, ctx: WorkerContext, via: Optional["SSHConnection"] = None) -> "SSHConnection":
        """Connect, check the host key, authenticate: all within the connect timeout. With
        ``via`` (or the target's jump hosts), the TCP stream is a direct-tcpip channel of the
        jump host's connection; each hop has its own key check and authentication."""
        if via is None and target.jump:
            try:
                via = ctx.jump_connection(target.jump)
            except ConnectError as exc:
                raise ConnectError(f"jump host {target.jump[-1].name} for {target.name}: {exc}", exc.stage) from None
        checker = ctx.hostkeys_for(target)
        with ctx.connection_slot():
            hs = Handshake(target, ctx, via, checker)
            try:
                with ctx.handshake_slot():
                    hs.negotiate()
                    return cls._login(hs, target, ctx, checker)
            except BaseException:
                hs.close()
                raise

    @classmethod
    def _login(cls, hs: Handshake, target: Target, ctx: WorkerContext, checker) -> "SSHConnection":
        import paramiko

        mismatch = checker.check(target.known_hosts_name, hs.transport.get_remote_server_key())
        withheld = None
        if mismatch is not None:  # accepted only because checking is off: no password goes there
            from hostops.hostkeys import mismatch_warning

            withheld = (f"the host key of {target.name} changed ({mismatch.key_type} {mismatch.fingerprint} is not "
                        "the key in known_hosts) and host key checking is off")
            warn_user(mismatch_warning(target.name, mismatch))
        try:
            _authenticate(hs.transport, target, ctx, hs.remaining, password_withheld=withheld)
        except ConnectError:
            # paramiko says "Authentication timeout." the way it says "refused": look at the clock
            if hs.guard.expired or time.monotonic() >= hs.deadline - 0.05:
                raise hs.timed_out() from None
            if not hs.transport.is_active():
                raise ConnectError(f"connection dropped during authentication with {hs.where}", "auth") \
                    from None
            raise
        except (EOFError, OSError, paramiko.SSHException) as exc:
            if hs.guard.expired:
                raise hs.timed_out() from None
            raise ConnectError(f"connection dropped during authentication with {hs.where} "
                               f"({exc or type(exc).__name__})", "auth") from None
        hs.guard.handshake_done()
        conn = cls(hs.transport, target, hs.guard, ctx)
        conn.password_withheld = withheld
        return conn

    def run(self, command: str, timeout: Optional[float] = None, on_output: Optional[OutputCallback] = None,
            stdin: Optional[str] = None, sudo: bool = False) -> CommandOutcome:
        import paramiko

        opts = self.ctx.options
        if sudo and opts.secrets.sudo_password and self.password_withheld:
            raise ConnectError(f"sudo password not sent: {self.password_withheld}. Verify the host's new key "
                               "(hostops keys scan, with this run's -i/-l/--known-hosts) and update known_hosts "
                               "before sending it a password",
                               "hostkey-changed")
        command, prompt = sudo_prelude(command, opts, sudo, stdin)
        try:
            chan = self.transport.open_session(timeout=opts.connect_timeout)
        except (paramiko.SSHException, EOFError, OSError) as exc:  # nothing was sent to run: "channel-open"
            why = str(exc) or ("the connection closed" if not self.transport.is_active() else type(exc).__name__)
            raise ConnectError(f"cannot start the command on {self.target.hostname}: {why}", "channel-open") \
                from None
        try:
            chan.exec_command(with_pid_report(command))
            if stdin is None and prompt is None:
                chan.shutdown_write()
        except (paramiko.SSHException, EOFError, OSError) as exc:
            why = str(exc) or ("the connection closed" if not self.transport.is_active() else type(exc).__name__)
            raise ConnectError(f"cannot start the command on {self.target.hostname}: {why}", "channel") from None
        feeder = _feed_stdin(chan, stdin) if stdin is not None else None
        keepalive = self.target.keepalive or opts.keepalive or None
        try:
            return CommandRun(_ChannelIO(self, chan, keepalive), opts, timeout, on_output, prompt, sudo,
                              self.ctx.abort, self.ctx.abort_fd).run()
        finally:
            chan.close()
            if feeder is not None:
                feeder.join(5)

    def alive(self) -> bool:
        return self.transport.is_active()

    def kill(self, pid: Optional[int], sudo: bool = False) -> str:
        return self.kill_remote(pid, sudo)

    def kill_remote(self, pgid: Optional[int], sudo: bool = False) -> str:
        """TERM the command's process group, KILL it after the grace period; say how it went.

        With ``sudo`` the kill runs as root through the same sudo exchange as the command
        (``sudo -S`` answered with the sudo password when there is one, else ``sudo -n``): a
        root command cannot be stopped by the login user. When the kill itself cannot run,
        the note says "not stopped" and why, never what was not tried."""
        if pgid is None:
            return "the remote command may still be running (its process id is unknown)"
        grace = self.ctx.options.kill_grace
        password = self.ctx.options.secrets.sudo_password if sudo else None
        prompt = new_prompt() if password else None
        try:
            if not self.transport.is_active():
                raise EOFError("connection closed")
            chan = self.transport.open_session(timeout=5)
            try:
                chan.exec_command(kill_command(pgid, grace, sudo, prompt))
                if prompt is None:
                    chan.shutdown_write()
                code, refused, errtext = _wait_kill(chan, grace + 10, prompt, password)
            finally:
                chan.close()
        except Exception as exc:  # noqa: BLE001 - the connection may be the thing that failed
            return (f"not stopped: the kill could not be sent ({exc or type(exc).__name__}); the remote command "
                    "may still be running")
        return kill_note(code, refused, errtext, grace)

    def files(self) -> Any:
        if self._fs is None:
            from hostops.sftpfs import SFTPFileSystem

            try:
                self._fs = SFTPFileSystem(self.transport.open_sftp_client())
            except Exception as exc:  # noqa: BLE001 - any failure to open SFTP is said, per host
                raise ConnectError(f"cannot open SFTP on {self.target.hostname}: {exc} (is the sftp "
                                   "subsystem enabled in its sshd_config?)", "sftp") from None
        return self._fs

    def close(self) -> None:
        if self._fs is not None:
            try:
                self._fs.close()
            except Exception:  # noqa: BLE001 - closing: the transport closes next anyway
                pass
        self.transport.close()


class _ChannelIO(CommandIO):
    """The command's channel, for :class:`CommandRun`. paramiko buffers what its transport
    thread received: ``pump`` drains those buffers (the channel's fd only says "look")."""

    pid_report = True

    def __init__(self, conn: SSHConnection, chan: Any, keepalive: Optional[float]):
        import paramiko

        self.conn = conn
        self.chan = chan
        self.keepalive = keepalive
        self.failures = (paramiko.SSHException, EOFError, OSError)

    def register(self, poller: Any) -> None:
        poller.register(self.chan.fileno(), select.POLLIN)

    def pump(self, ready: PollResult, run: CommandRun) -> bool:  # noqa: ARG002 - paramiko buffers: no fds
        chan = self.chan
        got = False
        if chan.recv_ready():
            data = chan.recv(READ_SIZE)
            if data:
                got = True
                run.stdout(data)
        if chan.recv_stderr_ready():
            data = chan.recv_stderr(READ_SIZE)
            if data:
                got = True
                run.stderr(data)
        return got

    def output_done(self) -> bool:
        return bool(self.chan.eof_received or self.chan.closed)

    def wait_exit(self, timeout: float) -> bool:
        return bool(self.chan.status_event.wait(timeout) or self.chan.closed)

    def more_output(self) -> bool:
        return bool(self.chan.recv_ready() or self.chan.recv_stderr_ready())

    def exit_status(self) -> Optional[int]:
        status: Optional[int] = self.chan.exit_status
        return status

    def no_status(self, status: Optional[int]) -> str:  # noqa: ARG002 - sshd gave none
        transport = self.conn.transport
        if transport.is_active():
            # paramiko closes the channels a moment before it marks a dropped transport inactive
            transport.join(0.5)
        if not transport.is_active():
            # sshd (or the network) went away: nothing says the command ended with it
            return ("the connection dropped during the command (no exit status); the remote command may still "
                    "be running")
        return "the command was killed by a signal (sshd reported no exit status)"

    def failed(self, exc: BaseException) -> str:
        return (f"the connection failed during the command ({exc or type(exc).__name__}); the "
                "remote command may still be running")

    def send_stdin(self, data: bytes) -> None:
        self.chan.sendall(data)

    def close_stdin(self) -> None:
        self.chan.shutdown_write()

    def kill(self, pid: Optional[int], sudo: bool) -> str:
        return self.conn.kill_remote(pid, sudo)

    def last_heard(self) -> float:
        return self.conn.guard.last_recv

    def heard(self, when: float) -> None:
        guard = self.conn.guard
        guard.last_recv = max(guard.last_recv, when)

    def probe(self) -> None:
        _patches.send_keepalive(self.conn.transport)

    def drop(self, silent: float) -> None:
        self.conn.transport.close()
        raise ConnectError(
            f"{self.conn.target.hostname} stopped answering during the command (no reply to "
            f"{KEEPALIVE_COUNT} keepalives in {silent:.0f}s); the connection was dropped and the "
            "remote command may still be running", "keepalive")


def _feed_stdin(chan, path: str) -> threading.Thread:
    """Send a local file to the command's stdin on a thread (output is read meanwhile), then EOF."""
    from hostops.remotefs import chunk_cache

    def feed() -> None:
        try:
            for chunk in chunk_cache().iter_file(path):
                chan.sendall(chunk)
            chan.shutdown_write()
        except Exception:  # noqa: BLE001 - the command exited without reading it all
            pass

    t = threading.Thread(target=feed, name="stdin-feeder", daemon=True)
    t.start()
    return t


def _wait_kill(chan, limit: float, prompt: Optional[str], password: Optional[str]) -> Tuple[Optional[int], bool, str]:
    """Wait (at most ``limit`` seconds) for the kill script, answering sudo's prompt once with
    the password (stdin is then closed: a second prompt fails at once). (exit code or None if
    it did not finish, whether sudo refused the password, its stderr)."""
    watch = PromptWatch(prompt.encode()) if prompt else None
    refused = False
    err = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        while chan.recv_stderr_ready():
            data = chan.recv_stderr(READ_SIZE)
            if watch is not None:
                data, prompts = watch.feed(data)
                if prompts and watch.count == 1:
                    chan.sendall(((password or "") + "\n").encode())
                    chan.shutdown_write()
                elif prompts:
                    refused = True
            err = (err + data)[-4096:]
        if chan.exit_status_ready() and not chan.recv_stderr_ready():
            return chan.recv_exit_status(), refused, err.decode(errors="replace")
        chan.status_event.wait(0.1)
    return None, refused, err.decode(errors="replace")


def warn_user(message: str) -> None:
    """A warning on the terminal from wherever this runs (a worker process shares the CLI's
    stderr): one write per line, so lines from many hosts never interleave."""
    try:
        from hostops.progress import worker_erase

        clear = worker_erase(2)  # over the progress line, which the parent redraws on its next tick
        os.write(2, f"{clear}hostops: warning: {message}\n".encode("utf-8", "replace"))
    except OSError:
        pass
