"""How one command runs on a host, whatever carries it (SSH or a local process).

Owns: the command wrappers (sudo, the password prompt, the pid report), the kill script
and the words for what a kill achieved, and :class:`CommandRun`, the one state machine
both connections run a command through: deadline, abort, sudo prompt answering,
keepalives and peer silence, stop-and-report, the bounded output buffers. A connection
supplies only a :class:`CommandIO` (read what is ready, send/close stdin, kill, exit status).

Must not import paramiko, nor :mod:`hostops.ssh`, :mod:`hostops.local`,
:mod:`hostops.workerctx` (they import this).
"""
from __future__ import annotations

import abc
import select
import shlex
import threading
import time
from typing import Callable, Optional, Sequence, Tuple, Type, Union

from hostops.capture import OutputBuffer, PromptWatch, StderrWithPid
from hostops.connection import CommandOutcome, OutputCallback
from hostops.errors import CommandAborted, CommandTimeout, ConnectError
from hostops.settings import Options

READ_SIZE = 65536
KEEPALIVE_COUNT = 3  # like OpenSSH's ServerAliveCountMax


def wrap_command(command: str, sudo: bool, user: Optional[str] = None) -> str:
    """``sudo -n`` never prompts: a password request becomes a failure, not a hang."""
    if not sudo:
        return command
    as_user = f"-u {shlex.quote(user)} " if user else ""
    return f"sudo -n {as_user}-- sh -c {shlex.quote(command)}"


SUDO_AUTH_FAILED = "sudo: authentication failed (wrong sudo password?)"
SUDO_NO_PASSWORD = ("sudo needs a password on this host; hostops runs sudo -n unless given one "
                    "(--ask-sudo-pass, --sudo-pass-file or --sudo-pass-env), or configure NOPASSWD")


def sudo_command(command: str, options: Options, prompt: Optional[str]) -> str:
    """``command`` run through sudo. With a password, ``sudo -S -p PROMPT``: hostops answers
    the random prompt on the channel's stdin (never argv, never the command string), and the
    command itself reads /dev/null, so the password cannot reach it even if sudo never asks."""
    if prompt is None:
        return wrap_command(command, True, options.sudo_user)
    as_user = f"-u {shlex.quote(options.sudo_user)} " if options.sudo_user else ""
    return f"sudo -S -p {shlex.quote(prompt)} {as_user}-- sh -c {shlex.quote('exec </dev/null; ' + command)}"


def sudo_prelude(command: str, options: Options, sudo: bool, stdin: Optional[str]) -> Tuple[str, Optional[str]]:
    """(the command to run, sudo's random prompt when hostops answers it with a password)."""
    prompt = new_prompt() if sudo and options.secrets.sudo_password else None
    if prompt is not None and stdin is not None:
        raise ConnectError("--stdin cannot be combined with a sudo password (sudo reads the password "
                           "from the same stdin)", "usage")
    return (sudo_command(command, options, prompt) if sudo else command), prompt


def new_prompt() -> str:
    import secrets

    return f"[hostops-sudo-{secrets.token_hex(8)}]"


def with_pid_report(command: str) -> str:
    """Run ``command`` under /bin/sh as the session leader, first printing its pid on stderr.

    ``exec`` keeps the pid sshd gave the login shell (a session and process-group leader),
    so the reported pid is the group to signal. Written to work from any login shell. The
    command runs in that same /bin/sh through ``eval`` (positional parameters cleared, as
    under ``sh -c``): a second exec of the shell cost the server ~1.2 ms of CPU per login.
    """
    inner = 'printf "\\036HOSTOPS-PID %s\\n" "$$" >&2; eval "set --; $1"'
    return f"exec /bin/sh -c {shlex.quote(inner)} hostops {shlex.quote(command)}"


#: Exit codes of the kill script (see :func:`kill_command`); sudo itself fails with 1.
KILL_TERM, KILL_KILL, KILL_SURVIVED, KILL_FORBIDDEN = 0, 2, 3, 4


def kill_command(pgid: int, grace: float, sudo: bool, prompt: Optional[str] = None) -> str:
    """The shell script that TERMs process group ``pgid``, KILLs it after ``grace`` seconds,
    and says by its exit code what happened: 0 gone after TERM (or already gone), 2 gone
    after KILL, 3 still there after KILL, 4 the signals were not permitted (another user's
    processes). ``sudo``: run it as root, through ``sudo -S -p prompt`` when ``prompt``.

    ``kill -s SIG -- -PGID`` is the POSIX form, which dash (Debian's sh: it runs the script
    under sudo, and for users whose login shell it is) accepts too; dash refuses
    ``kill -TERM -- -PGID`` ("Illegal number"), which made every such kill fail unseen."""
    steps = max(1, int(grace * 10))
    # "alive" skips zombies (ps), which a slow init may take a while to reap
    script = (
        "alive() { if command -v ps >/dev/null 2>&1; then ps -eo pgid=,stat= | "
        "awk -v p=\"$1\" '$1==p && $2 !~ /^Z/ {f=1} END {exit !f}'; "
        "else kill -s 0 -- -\"$1\" 2>/dev/null; fi; }; "
        "foreign() { command -v ps >/dev/null 2>&1 && ps -eo pgid=,uid=,stat= | "
        "awk -v p=\"$1\" -v u=\"$(id -u)\" '$1==p && $2!=u && $3 !~ /^Z/ {f=1} END {exit !f}'; }; "
        f"p={pgid}; if ! kill -s TERM -- -$p 2>/dev/null; then alive $p && exit {KILL_FORBIDDEN}; exit 0; fi; i=0; "
        f"while alive $p; do i=$((i+1)); if [ $i -ge {steps} ]; then kill -s KILL -- -$p 2>/dev/null; j=0; "
        f"while alive $p; do j=$((j+1)); if [ $j -ge 30 ]; then foreign $p && exit {KILL_FORBIDDEN}; "
        f"exit {KILL_SURVIVED}; fi; sleep 0.1; done; exit {KILL_KILL}; fi; "
        "sleep 0.1; done; exit 0")
    if not sudo:
        return script
    if prompt is None:
        return wrap_command(script, True)
    return f"sudo -S -p {shlex.quote(prompt)} -- sh -c {shlex.quote(script)}"


def kill_note(code: Optional[int], refused: bool, errtext: str, grace: float) -> str:
    """What stopping the remote command achieved, in words that claim only what happened."""
    if code == KILL_TERM:
        return "the remote command was stopped (TERM)"
    if code == KILL_KILL:
        return f"the remote command was killed (KILL after {grace:g}s)"
    if code == KILL_SURVIVED:
        return "the remote command may still be running (it survived TERM and KILL)"
    if code is None:
        return "the remote command may still be running (cleanup did not finish)"
    if code < 0:
        return ("not stopped: the kill ended without an exit status (connection lost?); the remote command "
                "may still be running")
    if code == KILL_FORBIDDEN:
        return ("not stopped: the kill was not permitted (the command runs as another user; use the same "
                "--sudo); the remote command may still be running")
    lowered = errtext.lower()
    if refused or "incorrect password" in lowered or "no password was provided" in lowered:
        why = "sudo refused the password"
    elif "password is required" in lowered:
        why = "sudo needs a password (--ask-sudo-pass, --sudo-pass-file or --sudo-pass-env)"
    else:
        last = errtext.strip().splitlines()[-1:] or [""]
        why = f"the kill failed (exit {code}{': ' + last[0][:200] if last[0] else ''})"
    return f"not stopped: {why}; the remote command may still be running"


def _silence_clock_waits(on_output: OutputCallback, heard: Callable[[float], None]) -> OutputCallback:
    """--stream back-pressure: while ``on_output`` waits for a slow reader we do not read the
    channel, so the peer (its window full) rightly says nothing: that silence is ours, and
    must not count against the keepalive (a paused ``| less`` would drop the connection)."""
    def call(stream: str, data: bytes) -> None:
        began = time.monotonic()
        on_output(stream, data)
        if time.monotonic() - began > 0.5:
            heard(time.monotonic())
    return call


# ---------------------------------------------------------------------------- one command run
PollResult = Sequence[Tuple[int, int]]


class CommandIO(abc.ABC):
    """What a connection supplies to :class:`CommandRun` for one running command: reading
    what is ready, stdin, the exit status and the kill. Peer silence (keepalives) only where
    the connection has a peer (``keepalive`` set)."""

    #: stderr begins with the wrapper's pid line (:func:`with_pid_report`), taken out
    pid_report = False
    #: seconds of peer silence before a keepalive; None: no peer to watch
    keepalive: Optional[float] = None
    #: errors that mean the connection failed under the command (output is kept)
    failures: Tuple[Type[BaseException], ...] = ()

    @abc.abstractmethod
    def register(self, poller: "select.poll") -> None:
        """Register the descriptors whose readiness means output (or an exit) may be waiting."""

    @abc.abstractmethod
    def pump(self, ready: PollResult, run: "CommandRun") -> bool:
        """Read, without blocking, what is ready (``ready``: the last poll's result) and hand
        it to ``run.stdout`` / ``run.stderr``; True when anything was read."""

    @abc.abstractmethod
    def output_done(self) -> bool:
        """Both streams reached their end (all output is in)."""

    @abc.abstractmethod
    def wait_exit(self, timeout: float) -> bool:
        """Wait at most ``timeout`` seconds for the exit status; True once it is there."""

    def more_output(self) -> bool:
        """Output still unread after the exit status arrived."""
        return False

    @abc.abstractmethod
    def exit_status(self) -> Optional[int]:
        """The exit status; None or negative when there is none (killed, connection lost)."""

    @abc.abstractmethod
    def no_status(self, status: Optional[int]) -> str:
        """The error to report for an exit without a status (``status`` None or negative)."""

    @abc.abstractmethod
    def send_stdin(self, data: bytes) -> None: ...

    @abc.abstractmethod
    def close_stdin(self) -> None: ...

    @abc.abstractmethod
    def kill(self, pid: Optional[int], sudo: bool) -> str:
        """Stop the command (``pid``: its process group as reported, if any) with the
        command's own ``sudo``; the note says what that achieved."""

    def failed(self, exc: BaseException) -> str:
        """The error for one of :attr:`failures`."""
        return str(exc) or type(exc).__name__

    # peer silence: only called when ``keepalive`` is set
    def last_heard(self) -> float:
        raise NotImplementedError

    def heard(self, when: float) -> None:
        raise NotImplementedError

    def probe(self) -> None:
        """Send a keepalive that wants an answer."""
        raise NotImplementedError

    def drop(self, silent: float) -> None:
        """The peer said nothing for ``silent`` seconds: close, and raise ConnectError."""
        raise NotImplementedError


class CommandRun:
    """One command, from its start to its outcome: reads stdout and stderr together (neither
    can fill up and stall the other) until the command exits, ``timeout`` passes, the peer
    stops answering, or the run is aborted; answers sudo's prompt once with the password (a
    second prompt means it was wrong: stdin is then closed, so sudo gives up at once); on a
    timeout or an abort, kills the command with ITS ``sudo`` and raises with what was read."""

    def __init__(self, io: CommandIO, options: Options, timeout: Optional[float],
                 on_output: Optional[OutputCallback], prompt: Optional[str], sudo: bool,
                 abort: Optional[threading.Event] = None, abort_fd: Optional[int] = None):
        self.io = io
        self.options = options
        self.timeout = timeout
        self.sudo = sudo
        self.abort = abort
        self.deadline = time.monotonic() + timeout if timeout else None
        self.out = OutputBuffer(options.max_output, options.secrets)  # masked before any --max-output cut
        self.err: Union[OutputBuffer, StderrWithPid] = (
            StderrWithPid(options.max_output, options.secrets) if io.pid_report
            else OutputBuffer(options.max_output, options.secrets))
        self.watch = PromptWatch(prompt.encode()) if prompt else None
        self.auth_failed = False
        self._quiet = False  # while stopping: keep what arrives, show and answer nothing
        if on_output is not None and io.keepalive:
            on_output = _silence_clock_waits(on_output, io.heard)
        self.on_output = on_output
        self.poller = select.poll()
        io.register(self.poller)
        if abort_fd is not None:
            self.poller.register(abort_fd, select.POLLIN)

    # -- what the connection's pump hands over
    def stdout(self, data: bytes) -> None:
        self.out.add(data)
        if self.on_output is not None and not self._quiet:
            self.on_output("stdout", data)

    def stderr(self, data: bytes) -> None:
        """Strip the pid marker and sudo's prompt, answering the prompt."""
        err = self.err
        visible = err.strip(data) if isinstance(err, StderrWithPid) else data
        if self._quiet:
            err.add(visible)
            return
        watch = self.watch
        if watch is not None:
            visible, prompts = watch.feed(visible)
            if prompts and watch.count == 1:
                self.io.send_stdin(((self.options.secrets.sudo_password or "") + "\n").encode())
            elif prompts and not self.auth_failed:
                self.auth_failed = True
                self.io.close_stdin()
        err.add(visible)
        if self.on_output is not None and visible:
            self.on_output("stderr", visible)

    def _aborted(self) -> bool:
        return self.abort is not None and self.abort.is_set()

    # -- the loop
    def run(self) -> CommandOutcome:  # noqa: C901 - one loop: see the docstring
        """The state machine. One piece (~40 lines) because every branch shares the deadline,
        the poll result and the keepalive clock; each step is a line or a method call."""
        io, deadline = self.io, self.deadline
        keepalive = io.keepalive
        last_probe = time.monotonic()
        ready: PollResult = ()
        try:
            while True:
                got = io.pump(ready, self)
                ready = ()
                if got and not self._aborted() and (deadline is None or time.monotonic() < deadline):
                    continue  # (a host that never stops printing still meets its deadline and Ctrl-C)
                now = time.monotonic()
                if self._aborted():
                    self.stop(CommandAborted, "interrupted")
                left = None if deadline is None else deadline - now
                if left is not None and left <= 0:
                    self.stop(CommandTimeout, f"timed out after {self.timeout:g}s (--timeout)")
                if io.output_done():
                    # All output is in; the exit status follows EOF.
                    if io.wait_exit(min(left, 1.0) if left is not None else 1.0):
                        if io.more_output():
                            continue
                        break
                    continue
                wait = left
                if keepalive:
                    silent = now - io.last_heard()
                    if silent > keepalive * KEEPALIVE_COUNT:
                        io.drop(silent)
                    if silent > keepalive and now - last_probe > keepalive:
                        io.probe()
                        last_probe = now
                    wait = keepalive if wait is None else min(wait, keepalive)
                ready = self.poller.poll(None if wait is None else max(1, int(wait * 1000)))
        except io.failures as exc:
            # the connection failed under us: keep what was read, and say what happened
            return CommandOutcome(None, self.out.getvalue(), self.err.getvalue(), io.failed(exc))
        return self._outcome()

    def stop(self, exc_type: Type[CommandTimeout], note_prefix: str) -> None:
        """Kill the command (with its own sudo) and raise ``exc_type`` with what was read."""
        err = self.err
        if isinstance(err, StderrWithPid):
            # The pid is the first thing the command says; if we stop it sooner than that, wait
            # a moment for it rather than leave the command running.
            self._quiet = True
            until = time.monotonic() + 3.0
            ready: PollResult = ()
            while err.pid is None and err.pending and time.monotonic() < until:
                if self.io.pump(ready, self):
                    ready = ()
                elif self.io.output_done():
                    break
                else:
                    ready = self.poller.poll(100)
        note = self.io.kill(err.pid if isinstance(err, StderrWithPid) else None, self.sudo)
        raise exc_type(self.out.getvalue(), err.getvalue(), f"{note_prefix}; {note}")

    def _outcome(self) -> CommandOutcome:
        err = self.err
        extra = err.finish() if isinstance(err, StderrWithPid) else b""
        if self.watch is not None:
            held = self.watch.flush()
            err.add(held)
            extra += held
        if self.on_output and extra:
            self.on_output("stderr", extra)
        status = self.io.exit_status()
        out, errv = self.out.getvalue(), err.getvalue()
        if self.auth_failed:
            return CommandOutcome(status if status is not None and status >= 0 else None, out, errv,
                                  SUDO_AUTH_FAILED)
        if status is None or status < 0:
            return CommandOutcome(None, out, errv, self.io.no_status(status))
        return CommandOutcome(status, out, errv)
