"""Transports: how one host's command runs. SSH through paramiko, or ``local`` (no SSH).

A worker keeps one :class:`WorkerContext` (known_hosts and private keys, parsed once per
process) and asks :func:`connect` for a :class:`Connection` per host. paramiko is
imported here only, inside functions, so the CLI starts fast.

Deadlines: DNS, TCP connect, banner, key exchange, auth and channel open all share one
``--connect-timeout`` budget, enforced by :class:`GuardedSocket` underneath paramiko (which
on its own lets a server trickle a banner forever). During a command, keepalives that
need an answer detect a peer that stopped answering. When a command times out or the run
is interrupted, its remote process group gets TERM, then KILL after ``--kill-grace``
seconds, sent over a second channel: every command runs as the leader of its own process
group (sshd makes it a session leader) and reports that id on its first stderr line,
which hostops strips.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import os
import select
import shlex
import socket
import subprocess
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

from hostops.capture import OutputBuffer, PromptWatch, StderrWithPid
from hostops.errors import CommandAborted, CommandTimeout, ConnectError, HostKeyError
from hostops.limiter import HandshakeLimiter
from hostops.settings import Options, Target

OutputCallback = Callable[[str, bytes], None]
READ_SIZE = 65536
DEFAULT_KEYS = ("id_ed25519", "id_ecdsa", "id_rsa")
#: Bytes a server may send before the handshake is done: a banner, KEXINIT and the key
#: exchange reply fit in a few KiB. A server spewing more is refused, not buffered.
PRE_AUTH_LIMIT = 256 * 1024
KEEPALIVE_COUNT = 3  # like OpenSSH's ServerAliveCountMax
MAX_HANDSHAKES_PER_WORKER = 256  # the adaptive limit's ceiling (hostops.limiter)
CONNECTIONS_PER_WORKER = 64  # hosts from TCP connect to logged in, per worker (connection_slot)


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


class WorkerContext:
    """Per-process state shared by all the connections a worker makes."""

    def __init__(self, options: Options):
        self.options = options
        self._hostkeys = None
        self._keys: Dict[str, object] = {}
        self._lock = threading.Lock()
        self.abort = threading.Event()
        self._abort_r, self._abort_w = os.pipe()
        self.connections: Dict[str, "Connection"] = {}  # kept open between a host's jobs
        self.handshakes = HandshakeLimiter(high=min(options.forks, MAX_HANDSHAKES_PER_WORKER))
        self._connecting = threading.BoundedSemaphore(CONNECTIONS_PER_WORKER)
        self._checkers: Dict[tuple, object] = {}
        self._jumps: Dict[tuple, "SSHConnection"] = {}
        self._jump_locks: Dict[tuple, threading.Lock] = {}
        self._dns = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="dns")

    @property
    def abort_fd(self) -> int:
        """Readable once :meth:`request_abort` was called: pollers wake up at once."""
        return self._abort_r

    def request_abort(self) -> None:
        if not self.abort.is_set():
            self.abort.set()
            try:
                os.write(self._abort_w, b"x")
            except OSError:
                pass

    @property
    def hostkeys(self):
        with self._lock:
            if self._hostkeys is None:
                from hostops.hostkeys import HostKeyChecker

                self._hostkeys = HostKeyChecker.for_options(self.options)
            return self._hostkeys

    def _wait_for_slot(self, acquire: Callable[[], Optional[object]]) -> object:
        """Call ``acquire`` (which waits a bounded time) until it returns a slot; an aborted
        run stops the wait."""
        while True:
            slot = acquire()
            if slot is not None:
                return slot
            if self.abort.is_set():
                raise ConnectError("interrupted before connecting", "interrupted")

    @contextlib.contextmanager
    def connection_slot(self):
        """At most CONNECTIONS_PER_WORKER hosts between their TCP connect and the end of their
        login: a burst of connects to one address overflows its listen queue (the SYNs are
        then retried a second later), and hosts that never answer wait out their connect
        timeout here without holding one of the (fewer) handshake slots."""
        self._wait_for_slot(lambda: True if self._connecting.acquire(timeout=0.5) else None)
        try:
            yield
        finally:
            self._connecting.release()

    @contextlib.contextmanager
    def handshake_slot(self):
        """Wait for one of this worker's handshake slots (key exchange and login): their number
        adapts (:mod:`hostops.limiter`), since hundreds of key exchanges at once starve each
        other of CPU and all run past the connect timeout together. Waiting for a slot is not
        part of that timeout."""
        token = self._wait_for_slot(lambda: self.handshakes.acquire(0.5))
        ok = False
        try:
            yield
            ok = True
        finally:
            self.handshakes.release(token, ok)

    def hostkeys_for(self, target: Target):
        """The checker for ``target``: the run's, unless its ssh_config names other known_hosts
        files, another StrictHostKeyChecking or HashKnownHosts (parsed once per combination)."""
        if not (target.known_hosts or target.host_key_policy or target.hash_known_hosts is not None):
            return self.hostkeys
        from hostops import knownhosts
        from hostops.hostkeys import HostKeyChecker

        key = (target.known_hosts, target.host_key_policy, target.hash_known_hosts)
        with self._lock:
            if key not in self._checkers:
                files = knownhosts.user_files(target.known_hosts or self.options.known_hosts)
                self._checkers[key] = HostKeyChecker(
                    files, target.host_key_policy or self.options.host_key_policy, ssh_config=self.options.ssh_config,
                    hash_known_hosts=target.hash_known_hosts)
            return self._checkers[key]

    def jump_connection(self, hops: Tuple[Target, ...]) -> "SSHConnection":
        """The connection to the last of ``hops`` (through the ones before it), shared by every
        host of this worker behind the same jump chain; opened on first use."""
        with self._lock:
            lock = self._jump_locks.setdefault(hops, threading.Lock())
        with lock:
            conn = self._jumps.get(hops)
            if conn is not None and conn.alive():
                return conn
            via = self.jump_connection(hops[:-1]) if len(hops) > 1 else None
            conn = SSHConnection.open(hops[-1], self, via=via)
            self._jumps[hops] = conn
            return conn

    def close_jumps(self) -> None:
        for conn in list(self._jumps.values())[::-1]:
            try:
                conn.close()
            except Exception:
                pass
        self._jumps.clear()

    def load_key(self, path: str) -> Tuple[Optional[object], Optional[str]]:
        """A private key from ``path`` (cached per process), or why it cannot be used."""
        with self._lock:
            if path not in self._keys:
                self._keys[path] = _read_key(path)
            return self._keys[path]  # type: ignore[return-value]

    def resolve(self, host: str, port: int, timeout: float) -> List[tuple]:
        """getaddrinfo bounded by ``timeout`` (the C call itself cannot be interrupted)."""
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            return [(family, socket.SOCK_STREAM, 0, "", (host, port))]
        except OSError:
            pass
        future = self._dns.submit(socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise ConnectError(f"cannot resolve {host}: no answer from DNS within {timeout:.3g}s "
                               "(--connect-timeout)", "dns") from None
        except socket.gaierror as exc:
            raise ConnectError(f"cannot resolve {host}: {exc.strerror}", "dns") from None


def _read_key(path: str) -> Tuple[Optional[object], Optional[str]]:
    import paramiko

    try:
        return paramiko.PKey.from_path(path), None
    except FileNotFoundError:
        return None, f"{path}: no such file"
    except paramiko.PasswordRequiredException:
        return None, f"{path} is passphrase-protected (load it into ssh-agent)"
    except TypeError as exc:  # cryptography's words for an encrypted OpenSSH-format key
        if "password" in str(exc).lower():
            return None, f"{path} is passphrase-protected (load it into ssh-agent)"
        return None, f"{path}: {exc}"
    except (paramiko.SSHException, OSError, ValueError) as exc:
        return None, f"{path}: {exc}"


class Connection:
    """An open connection to one host: runs commands, reads and writes files."""

    def run(self, command: str, timeout: Optional[float] = None, on_output: Optional[OutputCallback] = None,
            stdin: Optional[str] = None, sudo: bool = False) -> CommandOutcome:
        """Run ``command`` (through sudo when ``sudo``); ``stdin`` is a local file fed to it."""
        raise NotImplementedError

    def files(self):
        """The host's file system (:mod:`hostops.remotefs`), opened on first use."""
        raise NotImplementedError

    def alive(self) -> bool:
        """Still usable for another command (runbook steps reuse connections)."""
        return True

    def close(self) -> None:
        pass


def connect(target: Target, ctx: WorkerContext) -> Connection:
    if target.connection == "local":
        return LocalConnection(ctx)
    return SSHConnection.open(target, ctx)


# ---------------------------------------------------------------------------- SSH
class GuardedSocket:
    """The socket paramiko reads: ends the connection at the handshake deadline, refuses a
    flood of pre-handshake bytes, and remembers when the peer last said anything."""

    def __init__(self, sock: socket.socket, deadline: float):
        self._sock = sock
        self.deadline: Optional[float] = deadline
        self.pre_auth_bytes = 0
        self.last_recv = time.monotonic()
        self.expired = False
        self.flooded = False
        self._io_lock = threading.Lock()
        self._gone = False

    def handshake_done(self) -> None:
        self.deadline = None

    def recv(self, n: int) -> bytes:
        if self.deadline is not None and time.monotonic() > self.deadline:
            self.expired = True
            return b""  # paramiko reads this as EOF and gives up at once
        data = self._sock.recv(n)
        if data:
            self.last_recv = time.monotonic()
            if self.deadline is not None:
                self.pre_auth_bytes += len(data)
                if self.pre_auth_bytes > PRE_AUTH_LIMIT:
                    self.flooded = True
                    return b""
        return data

    def send(self, data: bytes) -> int:
        # Under the same lock as close(): over a jump host the "socket" is a channel, and
        # paramiko sends a data packet built before a close after the close itself, which the
        # jump's sshd answers by dropping the whole connection, every other host's tunnel too.
        with self._io_lock:
            if self._gone:
                raise OSError(errno.EBADF, "socket closed")
            return self._sock.send(data)

    def settimeout(self, t: Optional[float]) -> None:
        self._sock.settimeout(t)

    def close(self) -> None:
        with self._io_lock:
            if not self._gone:
                self._gone = True
                self._sock.close()

    @property
    def _closed(self) -> bool:
        return getattr(self._sock, "_closed", False)

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


def _no_handshake_timer(timeout: float) -> None:
    """Stands in for paramiko's Packetizer.start_handshake (see Handshake)."""


def _skip_debug_message(m) -> None:
    """Stands in for paramiko's Transport._parse_debug (see Handshake)."""


class Handshake:
    """TCP (or a jump host's tunnel), then banner and key exchange, each within the connect
    timeout; the caller checks the key, then authenticates (a connection) or stops there
    (keys scan). Waiting for a handshake slot between the two is not part of the timeout."""

    def __init__(self, target: Target, ctx: WorkerContext, via: Optional["SSHConnection"] = None, checker=None):
        self.target = target
        self.ctx = ctx
        self.checker = checker
        self.timeout = target.connect_timeout or ctx.options.connect_timeout
        self.deadline = time.monotonic() + self.timeout
        self.where = f"{target.hostname}:{target.port}"
        self.transport = None
        raw = _tcp_connect(target, ctx, self.deadline) if via is None else _tunnel(via, target, self.remaining)
        self.guard = GuardedSocket(raw, self.deadline)
        self._left = self.deadline - time.monotonic()
        if self._left <= 0:
            self.close()
            raise self.timed_out()

    def negotiate(self) -> None:
        """Banner and key exchange, within what the TCP connection left of the timeout. On
        failure the caller closes the handshake."""
        import paramiko

        self.deadline = time.monotonic() + self._left
        self.guard.deadline = self.deadline
        self.transport = paramiko.Transport(self.guard)  # type: ignore[arg-type]
        # paramiko starts a threading.Timer per handshake to enforce handshake_timeout; the
        # guard already ends the connection at our deadline, and one more thread per host
        # costs a clone and several context switches.
        self.transport.packetizer.start_handshake = _no_handshake_timer
        # OpenSSH sends a debug message with every accepted key ("key options: ..."), which
        # paramiko escapes byte by byte for a DEBUG log line nobody sees.
        self.transport._parse_debug = _skip_debug_message
        _prefer_cheap_algorithms(self.transport)
        self.transport.banner_timeout = self.remaining()
        self.transport.handshake_timeout = self.remaining()
        known = (self.checker or self.ctx.hostkeys_for(self.target)).known_types(self.target.known_hosts_name)
        if known:
            _prefer_key_types(self.transport, known)
        try:
            self.transport.start_client(timeout=self.remaining())
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if self.guard.expired or time.monotonic() >= self.deadline:
                raise self.timed_out() from None
            if self.guard.flooded:
                raise ConnectError(f"SSH handshake with {self.where} failed: the server sent more than "
                                   f"{PRE_AUTH_LIMIT // 1024} KiB without completing it (not an SSH "
                                   "server?)", "handshake") from None
            reason = str(exc) or "connection closed"
            raise ConnectError(f"SSH handshake with {self.where} failed: {reason}", "handshake") from None
        t = self.transport
        if not t.is_active() or t.remote_version is None or not t.host_key:
            # paramiko can return from a handshake that the deadline cut short
            if self.guard.expired or time.monotonic() >= self.deadline:
                raise self.timed_out()
            raise ConnectError(f"SSH handshake with {self.where} failed: the connection closed", "handshake")
        _leave_rekeying_to_the_server(t)

    def timed_out(self) -> ConnectError:
        return ConnectError(f"connection to {self.where} timed out after {self.timeout:g}s (--connect-timeout)",
                            "timeout")

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self.timed_out()
        return left

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.guard.close()


class SSHConnection(Connection):
    def __init__(self, transport, target: Target, guard: GuardedSocket, ctx: WorkerContext):
        self.transport = transport
        self.target = target
        self.guard = guard
        self.ctx = ctx
        self._fs = None
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
                               "(hostops keys scan) and update known_hosts before sending it a password",
                               "hostkey-changed")
        command, prompt = sudo_prelude(command, opts, sudo, stdin)
        try:
            chan = self.transport.open_session(timeout=opts.connect_timeout)
            chan.exec_command(with_pid_report(command))
            if stdin is None and prompt is None:
                chan.shutdown_write()
        except (paramiko.SSHException, EOFError, OSError) as exc:
            why = str(exc) or ("the connection closed" if not self.transport.is_active() else type(exc).__name__)
            raise ConnectError(f"cannot start the command on {self.target.hostname}: {why}", "channel") from None
        feeder = _feed_stdin(chan, stdin) if stdin is not None else None
        try:
            return _read_channel(self, chan, timeout, on_output, prompt, sudo)
        finally:
            chan.close()
            if feeder is not None:
                feeder.join(5)

    def alive(self) -> bool:
        return self.transport.is_active()

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
        except Exception as exc:  # the connection may be the thing that failed
            return (f"not stopped: the kill could not be sent ({exc or type(exc).__name__}); the remote command "
                    "may still be running")
        return kill_note(code, refused, errtext, grace)

    def files(self):
        if self._fs is None:
            from hostops.remotefs import SFTPFileSystem

            try:
                self._fs = SFTPFileSystem(self.transport.open_sftp_client())
            except Exception as exc:
                raise ConnectError(f"cannot open SFTP on {self.target.hostname}: {exc} (is the sftp "
                                   "subsystem enabled in its sshd_config?)", "sftp") from None
        return self._fs

    def close(self) -> None:
        if self._fs is not None:
            try:
                self._fs.close()
            except Exception:
                pass
        self.transport.close()


def _feed_stdin(chan, path: str) -> threading.Thread:
    """Send a local file to the command's stdin on a thread (output is read meanwhile), then EOF."""
    from hostops.remotefs import chunk_cache

    def feed() -> None:
        try:
            for chunk in chunk_cache().iter_file(path):
                chan.sendall(chunk)
            chan.shutdown_write()
        except Exception:  # the command exited without reading it all
            pass

    t = threading.Thread(target=feed, name="stdin-feeder", daemon=True)
    t.start()
    return t


def _tunnel(via: "SSHConnection", target: Target, remaining: Callable[[], float]):
    """A direct-tcpip channel from the jump host to the target: the target's TCP stream."""
    import paramiko

    try:
        return via.transport.open_channel("direct-tcpip", (target.hostname, target.port), ("127.0.0.1", 0),
                                          timeout=remaining())
    except paramiko.ChannelException as exc:
        raise ConnectError(f"jump host {via.target.hostname} cannot reach {target.hostname}:{target.port}: "
                           f"{exc.text or exc}", "connect") from None
    except (paramiko.SSHException, EOFError, OSError) as exc:
        raise ConnectError(f"jump host {via.target.hostname} cannot open a tunnel to {target.hostname}:"
                           f"{target.port}: {exc or 'connection closed'}", "connect") from None


def _tcp_connect(target: Target, ctx: WorkerContext, deadline: float) -> socket.socket:
    where = f"{target.hostname}:{target.port}"
    timeout = target.connect_timeout or ctx.options.connect_timeout
    infos = ctx.resolve(target.hostname, target.port, max(0.001, deadline - time.monotonic()))
    last: Optional[OSError] = None
    for family, kind, proto, _name, addr in infos:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(left)
            sock.connect(addr)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except socket.timeout:
            sock.close()
            last = None
            break
        except OSError as exc:
            sock.close()
            last = exc
    if last is None:
        raise ConnectError(f"connection to {where} timed out after {timeout:g}s (--connect-timeout)", "timeout")
    raise ConnectError(f"cannot connect to {where}: {last.strerror or last}", "connect")


#: AEAD ciphers first: no separate HMAC, and no per-byte MAC comparison in Python (paramiko's
#: constant-time compare was the client's top CPU cost with the default aes-ctr + hmac).
CHEAP_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


def _prefer_cheap_algorithms(transport) -> None:
    """Offer the cheapest safe algorithms first (the server still picks among what both know)."""
    opts = transport.get_security_options()
    ciphers = list(opts.ciphers)
    opts.ciphers = tuple([c for c in CHEAP_CIPHERS if c in ciphers] + [c for c in ciphers if c not in CHEAP_CIPHERS])


#: When the client itself asks for a new key exchange (paramiko: every 2^29 bytes or packets),
#: a channel close that the server sent just before seeing the request makes paramiko's
#: transport thread wait for the exchange it alone can finish: the host fails 30 s later
#: with "Key-exchange timed out" (seen with ~1 in 10 one-GiB outputs on a busy machine).
#: A server-initiated exchange has no such window, and OpenSSH starts one long before these
#: bounds (2^32 blocks of a 128-bit block cipher, RFC 4344's limit; 2^31 packets likewise).
REKEY_BYTES = 2 ** 36
REKEY_PACKETS = 2 ** 31


def _leave_rekeying_to_the_server(transport) -> None:
    """Raise paramiko's own re-key thresholds to the cipher's safe bound (128-bit block
    ciphers only; anything else keeps paramiko's)."""
    info = getattr(transport, "_cipher_info", {})
    sizes = [info.get(name, {}).get("block-size", 0) for name in (transport.local_cipher, transport.remote_cipher)]
    if min(sizes, default=0) >= 16:
        transport.packetizer.REKEY_BYTES = REKEY_BYTES
        transport.packetizer.REKEY_PACKETS = REKEY_PACKETS


def _prefer_key_types(transport, known: List[str]) -> None:
    """Offer the key types known_hosts holds first, so the server shows a key we can check."""
    opts = transport.get_security_options()
    base = {"rsa-sha2-512": "ssh-rsa", "rsa-sha2-256": "ssh-rsa"}
    order = list(opts.key_types)
    first = [k for k in order if base.get(k, k) in known]
    opts.key_types = tuple(first + [k for k in order if k not in first])


def warn_user(message: str) -> None:
    """A warning on the terminal from wherever this runs (a worker process shares the CLI's
    stderr): one write per line, so lines from many hosts never interleave."""
    try:
        clear = "\r\x1b[K" if os.isatty(2) else ""  # over the progress line, which is redrawn after
        os.write(2, f"{clear}hostops: warning: {message}\n".encode("utf-8", "replace"))
    except OSError:
        pass


def _authenticate(transport, target: Target, ctx: WorkerContext, remaining: Callable[[], float],
                  password_withheld: Optional[str] = None) -> None:
    """Public keys, then the --ask-pass password, never a prompt: ssh-agent, then identity
    files, then default keys. ``password_withheld``: why the password must not be sent
    (the host key changed and was accepted under --host-key-policy off)."""
    import paramiko

    tried: List[str] = []
    notes: List[str] = []
    agent = None
    candidates: List[Tuple[str, object]] = []
    if os.environ.get("SSH_AUTH_SOCK") and not target.identities_only:
        try:
            agent = paramiko.Agent()
            candidates += [(f"agent key {k.get_name()}", k) for k in agent.get_keys()]
        except paramiko.SSHException as exc:
            notes.append(f"ssh-agent: {exc}")
    explicit = list(target.identity_files)
    defaults = [] if target.identities_only else [os.path.expanduser(f"~/.ssh/{n}") for n in DEFAULT_KEYS]
    for path in explicit + [p for p in defaults if p not in explicit]:
        if path not in explicit and not os.path.exists(path):
            continue
        key, why = ctx.load_key(path)
        if key is None:
            notes.append(why or path)
        else:
            candidates.append((path, key))
    try:
        for label, key in candidates:
            transport.auth_timeout = remaining()
            tried.append(label)
            try:
                transport.auth_publickey(target.user, key)
            except paramiko.BadAuthenticationType as exc:
                if "password" in exc.allowed_types and ctx.options.secrets.ssh_password:
                    if password_withheld:
                        raise ConnectError(f"authentication failed for {target.user}@{target.hostname}: the "
                                           f"server accepts only {', '.join(exc.allowed_types)}, and the password "
                                           f"was not sent: {password_withheld}", "auth") from None
                    break  # the password is tried below
                raise ConnectError(f"authentication failed for {target.user}@{target.hostname}: the server "
                                   f"accepts only {', '.join(exc.allowed_types)}, hostops uses SSH keys "
                                   "(or a password with --ask-pass)", "auth") from None
            except paramiko.AuthenticationException:
                continue
            except paramiko.SSHException as exc:
                raise ConnectError(f"authentication with {target.hostname} failed: {exc}", "auth") from None
            if transport.is_authenticated():
                return
    finally:
        if agent is not None:
            agent.close()
    password = ctx.options.secrets.ssh_password
    if password and password_withheld:  # as OpenSSH: no password to a host that may be a man in the middle
        notes.append(f"the --ask-pass password ({password_withheld}: password authentication is disabled to "
                     "avoid man-in-the-middle attacks)")
        password = None
    if password:  # --ask-pass: after every key, as OpenSSH does
        transport.auth_timeout = remaining()
        tried.append("password")
        try:
            transport.auth_password(target.user, password)
        except paramiko.AuthenticationException:
            pass
        except paramiko.SSHException as exc:
            raise ConnectError(f"authentication with {target.hostname} failed: {exc}", "auth") from None
        if transport.is_authenticated():
            return
    if not candidates and not password:
        detail = "no SSH key to offer (no ssh-agent, no -k/identity_file, no ~/.ssh/id_*)"
    else:
        detail = f"the server refused {len(tried)} key(s): {', '.join(tried)}"
    if notes:
        detail += "; skipped " + "; ".join(notes)
    raise ConnectError(f"authentication failed for {target.user}@{target.hostname}: {detail}. "
                       f"Check the user (-u) and that the public key is in its authorized_keys", "auth")


def _silence_clock_waits(on_output: OutputCallback, guard: GuardedSocket) -> OutputCallback:
    """--stream back-pressure: while ``on_output`` waits for a slow reader we do not read the
    channel, so the peer (its window full) rightly says nothing: that silence is ours, and
    must not count against the keepalive (a paused ``| less`` would drop the connection)."""
    def call(stream: str, data: bytes) -> None:
        began = time.monotonic()
        on_output(stream, data)
        if time.monotonic() - began > 0.5:
            guard.last_recv = max(guard.last_recv, time.monotonic())
    return call


def _read_channel(conn: SSHConnection, chan, timeout: Optional[float], on_output: Optional[OutputCallback],
                  prompt: Optional[str] = None, sudo: bool = False) -> CommandOutcome:
    """Read stdout and stderr together (neither can fill up and stall the other) until the
    command exits, ``timeout`` passes, the peer stops answering, or the run is aborted."""
    import paramiko

    ctx = conn.ctx
    opts = ctx.options
    deadline = time.monotonic() + timeout if timeout else None
    out = OutputBuffer(opts.max_output, opts.secrets)  # masked before any --max-output cut
    err = StderrWithPid(opts.max_output, opts.secrets)
    watch = PromptWatch(prompt.encode()) if prompt else None
    auth_failed = False

    def stderr_piece(data: bytes) -> bytes:
        """Strip the pid marker and sudo's prompt, answering the prompt: once with the password;
        a second prompt means it was wrong (stdin is then closed, so sudo gives up at once)."""
        nonlocal auth_failed
        visible = err.strip(data)
        if watch is not None:
            visible, prompts = watch.feed(visible)
            if prompts and watch.count == 1:
                chan.sendall((opts.secrets.sudo_password + "\n").encode())
            elif prompts and not auth_failed:
                auth_failed = True
                chan.shutdown_write()
        err.add(visible)
        return visible

    keepalive = conn.target.keepalive or opts.keepalive or None
    if on_output is not None:
        on_output = _silence_clock_waits(on_output, conn.guard)
    last_probe = time.monotonic()
    poller = select.poll()
    poller.register(chan.fileno(), select.POLLIN)
    poller.register(ctx.abort_fd, select.POLLIN)

    def stop(exc_type, note_prefix: str):
        # The pid is the first thing the command says; if we stop it sooner than that, wait
        # a moment for it rather than leave the command running.
        until = time.monotonic() + 3.0
        while err.pid is None and err.pending and not chan.closed and time.monotonic() < until:
            if chan.recv_stderr_ready():
                err.feed(chan.recv_stderr(READ_SIZE))
            elif chan.recv_ready():
                out.add(chan.recv(READ_SIZE))
            else:
                poller.poll(100)
        note = conn.kill_remote(err.pid, sudo)
        raise exc_type(out.getvalue(), err.getvalue(), f"{note_prefix}; {note}")

    try:
        while True:
            got = False
            if chan.recv_ready():
                data = chan.recv(READ_SIZE)
                if data:
                    got = True
                    out.add(data)
                    if on_output:
                        on_output("stdout", data)
            if chan.recv_stderr_ready():
                data = chan.recv_stderr(READ_SIZE)
                if data:
                    got = True
                    shown = stderr_piece(data)
                    if on_output and shown:
                        on_output("stderr", shown)
            if got and not ctx.abort.is_set() and (deadline is None or time.monotonic() < deadline):
                continue  # (a host that never stops printing still meets its deadline and Ctrl-C)
            now = time.monotonic()
            if ctx.abort.is_set():
                stop(CommandAborted, "interrupted")
            left = None if deadline is None else deadline - now
            if left is not None and left <= 0:
                stop(CommandTimeout, f"timed out after {timeout:g}s (--timeout)")
            if chan.eof_received or chan.closed:
                # All output is in; the exit status follows EOF on the wire.
                if chan.status_event.wait(min(left, 1.0) if left is not None else 1.0) or chan.closed:
                    if chan.recv_ready() or chan.recv_stderr_ready():
                        continue
                    break
                continue
            wait = left
            if keepalive:
                silent = now - conn.guard.last_recv
                if silent > keepalive * KEEPALIVE_COUNT:
                    conn.transport.close()
                    raise ConnectError(
                        f"{conn.target.hostname} stopped answering during the command (no reply to "
                        f"{KEEPALIVE_COUNT} keepalives in {silent:.0f}s); the connection was dropped and the "
                        "remote command may still be running", "keepalive")
                if silent > keepalive and now - last_probe > keepalive:
                    _send_keepalive(conn.transport, paramiko)
                    last_probe = now
                wait = keepalive if wait is None else min(wait, keepalive)
            poller.poll(None if wait is None else max(1, int(wait * 1000)))
    except (paramiko.SSHException, EOFError, OSError) as exc:
        # the connection failed under us: keep what was read, and say what happened
        return CommandOutcome(None, out.getvalue(), err.getvalue(),
                              f"the connection failed during the command ({exc or type(exc).__name__}); the "
                              "remote command may still be running")
    extra = err.finish()
    if watch is not None:
        held = watch.flush()
        err.add(held)
        extra += held
    if on_output and extra:
        on_output("stderr", extra)
    status = chan.exit_status
    if auth_failed:
        return CommandOutcome(status if status is not None and status >= 0 else None, out.getvalue(),
                              err.getvalue(), SUDO_AUTH_FAILED)
    if status is None or status < 0:
        if conn.transport.is_active():
            # paramiko closes the channels a moment before it marks a dropped transport inactive
            conn.transport.join(0.5)
        if not conn.transport.is_active():
            # sshd (or the network) went away: nothing says the command ended with it
            return CommandOutcome(None, out.getvalue(), err.getvalue(), "the connection dropped during the "
                                  "command (no exit status); the remote command may still be running")
        return CommandOutcome(None, out.getvalue(), err.getvalue(), "the command was killed by a signal (sshd "
                              "reported no exit status)")
    return CommandOutcome(status, out.getvalue(), err.getvalue())


def _send_keepalive(transport, paramiko) -> None:
    """A global request that wants a reply (OpenSSH answers 'failure'): any answer proves the
    peer is alive. paramiko's own keepalive wants no reply, so it cannot detect a dead peer."""
    try:
        m = paramiko.Message()
        m.add_byte(bytes([paramiko.common.MSG_GLOBAL_REQUEST]))
        m.add_string("keepalive@openssh.com")
        m.add_boolean(True)
        transport._send_user_message(m)
    except Exception:
        pass


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


# ---------------------------------------------------------------------------- local
class LocalConnection(Connection):
    """``connection: local``: run the command on this machine through ``/bin/sh``."""

    def __init__(self, ctx: Optional[WorkerContext] = None):
        self.ctx = ctx

    def run(self, command: str, timeout: Optional[float] = None, on_output: Optional[OutputCallback] = None,
            stdin: Optional[str] = None, sudo: bool = False) -> CommandOutcome:
        opts = self.ctx.options if self.ctx else Options()
        command, prompt = sudo_prelude(command, opts, sudo, stdin)
        stdin_file = open(stdin, "rb") if stdin is not None else (subprocess.PIPE if prompt else subprocess.DEVNULL)
        try:
            proc = subprocess.Popen(["/bin/sh", "-c", command], stdin=stdin_file, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True)
        finally:
            if stdin is not None:
                stdin_file.close()  # type: ignore[union-attr]
        cap = opts.max_output
        deadline = time.monotonic() + timeout if timeout else None
        bufs = {"stdout": OutputBuffer(cap, opts.secrets), "stderr": OutputBuffer(cap, opts.secrets)}
        watch = PromptWatch(prompt.encode()) if prompt else None
        auth_failed = False
        streams = {proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr"}  # type: ignore[union-attr]
        poller = select.poll()
        for fd in streams:
            poller.register(fd, select.POLLIN)
        if self.ctx is not None:
            poller.register(self.ctx.abort_fd, select.POLLIN)

        def stop(exc_type, note_prefix: str):
            note = _kill_group(proc, opts.kill_grace)
            raise exc_type(bufs["stdout"].getvalue(), bufs["stderr"].getvalue(), f"{note_prefix}; {note}")

        def answer(prompts: int) -> None:
            nonlocal auth_failed
            if not prompts or proc.stdin is None or proc.stdin.closed:
                return
            if watch.count == 1:  # type: ignore[union-attr]
                try:
                    proc.stdin.write((opts.secrets.sudo_password + "\n").encode())
                    proc.stdin.flush()
                except OSError:
                    pass
            else:
                auth_failed = True
                proc.stdin.close()

        try:
            while streams:
                if self.ctx is not None and self.ctx.abort.is_set():
                    stop(CommandAborted, "interrupted")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    stop(CommandTimeout, f"timed out after {timeout:g}s (--timeout)")
                for fd, _event in poller.poll(None if left is None else max(1, int(left * 1000))):
                    name = streams.get(fd)
                    if name is None:
                        continue
                    data = os.read(fd, READ_SIZE)
                    if not data:
                        poller.unregister(fd)
                        del streams[fd]
                        continue
                    if watch is not None and name == "stderr":
                        data, prompts = watch.feed(data)
                        answer(prompts)
                    bufs[name].add(data)
                    if on_output and data:
                        on_output(name, data)
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                code = proc.wait(left)
            except subprocess.TimeoutExpired:
                stop(CommandTimeout, f"timed out after {timeout:g}s (--timeout)")
        finally:
            for f in (proc.stdout, proc.stderr, proc.stdin):
                if f is not None and not f.closed:
                    f.close()
        if watch is not None:
            bufs["stderr"].add(watch.flush())
        stdout, stderr = bufs["stdout"].getvalue(), bufs["stderr"].getvalue()
        if auth_failed:
            return CommandOutcome(code if code >= 0 else None, stdout, stderr, SUDO_AUTH_FAILED)
        if code < 0:
            return CommandOutcome(None, stdout, stderr, f"the command was killed by signal {-code}")
        return CommandOutcome(code, stdout, stderr)

    def files(self):
        from hostops.remotefs import LocalFileSystem

        return LocalFileSystem()


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


__all__ = ["connect", "Connection", "CommandOutcome", "WorkerContext", "wrap_command", "HostKeyError",
           "CommandTimeout"]
