"""Transports: how one host's command runs. SSH through paramiko, or ``local`` (no SSH).

A worker keeps one :class:`WorkerContext` (known_hosts and private keys, parsed once per
process) and asks :func:`connect` for a :class:`Connection` per host. paramiko is
imported here only, inside functions, so the CLI starts fast.
"""
from __future__ import annotations

import os
import select
import shlex
import socket
import subprocess
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

from hostops.errors import CommandTimeout, ConnectError, HostKeyError
from hostops.settings import Options, Target

OutputCallback = Callable[[str, bytes], None]
READ_SIZE = 65536
DEFAULT_KEYS = ("id_ed25519", "id_ecdsa", "id_rsa")


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


def wrap_command(command: str, sudo: bool) -> str:
    """``sudo -n`` never prompts: a password request becomes a failure, not a hang."""
    if not sudo:
        return command
    return f"sudo -n -- sh -c {shlex.quote(command)}"


class WorkerContext:
    """Per-process state shared by all the connections a worker makes."""

    def __init__(self, options: Options):
        self.options = options
        self._hostkeys = None
        self._keys: Dict[str, object] = {}
        self._lock = threading.Lock()

    @property
    def hostkeys(self):
        with self._lock:
            if self._hostkeys is None:
                from hostops.hostkeys import HostKeyChecker

                self._hostkeys = HostKeyChecker(self.options.known_hosts_files(), self.options.host_key_policy)
            return self._hostkeys

    def load_key(self, path: str) -> Tuple[Optional[object], Optional[str]]:
        """A private key from ``path`` (cached per process), or why it cannot be used."""
        with self._lock:
            if path not in self._keys:
                self._keys[path] = _read_key(path)
            return self._keys[path]  # type: ignore[return-value]


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
            stdin: Optional[str] = None) -> CommandOutcome:
        """Run ``command``; ``stdin`` is a local file whose bytes are fed to it."""
        raise NotImplementedError

    def files(self):
        """The host's file system (:mod:`hostops.remotefs`), opened on first use."""
        raise NotImplementedError

    def close(self) -> None:
        pass


def connect(target: Target, ctx: WorkerContext) -> Connection:
    if target.connection == "local":
        return LocalConnection()
    return SSHConnection.open(target, ctx)


# ---------------------------------------------------------------------------- SSH
class SSHConnection(Connection):
    def __init__(self, transport, target: Target):
        self.transport = transport
        self.target = target
        self._fs = None

    @classmethod
    def open(cls, target: Target, ctx: WorkerContext) -> "SSHConnection":
        import paramiko

        timeout = ctx.options.connect_timeout
        deadline = time.monotonic() + timeout
        where = f"{target.hostname}:{target.port}"

        def remaining() -> float:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ConnectError(f"connection to {where} timed out after {timeout:g}s "
                                   "(--connect-timeout)", "timeout")
            return left

        sock = _tcp_connect(target, timeout)
        transport = None
        try:
            transport = paramiko.Transport(sock)
            transport.banner_timeout = remaining()
            transport.handshake_timeout = remaining()
            known = ctx.hostkeys.known_types(target.known_hosts_name)
            if known:
                _prefer_key_types(transport, known)
            try:
                transport.start_client(timeout=remaining())
            except paramiko.SSHException as exc:
                raise ConnectError(f"SSH handshake with {where} failed: {exc}", "handshake") from None
            except (EOFError, OSError) as exc:
                raise ConnectError(f"SSH handshake with {where} failed: connection closed ({exc})",
                                   "handshake") from None
            ctx.hostkeys.check(target.known_hosts_name, transport.get_remote_server_key())
            _authenticate(transport, target, ctx, remaining)
            return cls(transport, target)
        except BaseException:
            if transport is not None:
                transport.close()
            sock.close()
            raise

    def run(self, command: str, timeout: Optional[float] = None, on_output: Optional[OutputCallback] = None,
            stdin: Optional[str] = None) -> CommandOutcome:
        import paramiko

        try:
            chan = self.transport.open_session(timeout=30)
            chan.exec_command(command)
            if stdin is None:
                chan.shutdown_write()
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise ConnectError(f"cannot start the command on {self.target.hostname}: {exc}", "channel") from None
        feeder = _feed_stdin(chan, stdin) if stdin is not None else None
        try:
            return _read_channel(chan, timeout, on_output)
        finally:
            chan.close()
            if feeder is not None:
                feeder.join(5)

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
            self._fs.close()
        self.transport.close()


def _feed_stdin(chan, path: str) -> threading.Thread:
    """Send a local file to the command's stdin on a thread (output is read meanwhile), then EOF."""
    from hostops.remotefs import chunk_cache

    def feed() -> None:
        try:
            for chunk in chunk_cache().iter_file(path):
                chan.sendall(chunk)
            chan.shutdown_write()
        except (OSError, EOFError, Exception):  # the command exited without reading it all
            pass

    t = threading.Thread(target=feed, name="stdin-feeder", daemon=True)
    t.start()
    return t


def _tcp_connect(target: Target, timeout: float) -> socket.socket:
    where = f"{target.hostname}:{target.port}"
    try:
        return socket.create_connection((target.hostname, target.port), timeout=timeout)
    except socket.gaierror as exc:
        raise ConnectError(f"cannot resolve {target.hostname}: {exc.strerror}", "dns") from None
    except socket.timeout:
        raise ConnectError(f"connection to {where} timed out after {timeout:g}s (--connect-timeout)",
                           "timeout") from None
    except OSError as exc:
        raise ConnectError(f"cannot connect to {where}: {exc.strerror or exc}", "connect") from None


def _prefer_key_types(transport, known: List[str]) -> None:
    """Offer the key types known_hosts holds first, so the server shows a key we can check."""
    opts = transport.get_security_options()
    base = {"rsa-sha2-512": "ssh-rsa", "rsa-sha2-256": "ssh-rsa"}
    order = list(opts.key_types)
    first = [k for k in order if base.get(k, k) in known]
    opts.key_types = tuple(first + [k for k in order if k not in first])


def _authenticate(transport, target: Target, ctx: WorkerContext, remaining: Callable[[], float]) -> None:
    """Public keys only, never a prompt: ssh-agent, then identity files, then default keys."""
    import paramiko

    tried: List[str] = []
    notes: List[str] = []
    agent = None
    candidates: List[Tuple[str, object]] = []
    if os.environ.get("SSH_AUTH_SOCK"):
        try:
            agent = paramiko.Agent()
            candidates += [(f"agent key {k.get_name()}", k) for k in agent.get_keys()]
        except paramiko.SSHException as exc:
            notes.append(f"ssh-agent: {exc}")
    explicit = list(target.identity_files)
    defaults = [os.path.expanduser(f"~/.ssh/{n}") for n in DEFAULT_KEYS]
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
                raise ConnectError(f"authentication failed for {target.user}@{target.hostname}: the server "
                                   f"accepts only {', '.join(exc.allowed_types)}, hostops uses SSH keys",
                                   "auth") from None
            except paramiko.AuthenticationException:
                continue
            except paramiko.SSHException as exc:
                raise ConnectError(f"authentication with {target.hostname} failed: {exc}", "auth") from None
            if transport.is_authenticated():
                return
    finally:
        if agent is not None:
            agent.close()
    if not candidates:
        detail = "no SSH key to offer (no ssh-agent, no -k/identity_file, no ~/.ssh/id_*)"
    else:
        detail = f"the server refused {len(tried)} key(s): {', '.join(tried)}"
    if notes:
        detail += "; skipped " + "; ".join(notes)
    raise ConnectError(f"authentication failed for {target.user}@{target.hostname}: {detail}. "
                       f"Check the user (-u) and that the public key is in its authorized_keys", "auth")


def _read_channel(chan, timeout: Optional[float], on_output: Optional[OutputCallback]) -> CommandOutcome:
    """Read stdout and stderr together (neither can fill up and stall the other) until the
    command exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout if timeout else None
    out: List[bytes] = []
    err: List[bytes] = []
    poller = select.poll()
    poller.register(chan.fileno(), select.POLLIN)
    while True:
        got = False
        if chan.recv_ready():
            data = chan.recv(READ_SIZE)
            if data:
                got = True
                out.append(data)
                if on_output:
                    on_output("stdout", data)
        if chan.recv_stderr_ready():
            data = chan.recv_stderr(READ_SIZE)
            if data:
                got = True
                err.append(data)
                if on_output:
                    on_output("stderr", data)
        if got:
            continue
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise CommandTimeout(b"".join(out), b"".join(err))
        if chan.eof_received or chan.closed:
            # All output is in; the exit status follows EOF on the wire.
            if chan.status_event.wait(left if left is not None else None) or chan.closed:
                if chan.recv_ready() or chan.recv_stderr_ready():
                    continue
                break
            continue
        poller.poll(None if left is None else max(1, int(left * 1000)))
    status = chan.exit_status
    stdout, stderr = b"".join(out), b"".join(err)
    if status is None or status < 0:
        return CommandOutcome(None, stdout, stderr, "the command ended without an exit status "
                                                    "(killed by a signal, or the connection dropped)")
    return CommandOutcome(status, stdout, stderr)


# ---------------------------------------------------------------------------- local
class LocalConnection(Connection):
    """``connection: local``: run the command on this machine through ``/bin/sh``."""

    def run(self, command: str, timeout: Optional[float] = None, on_output: Optional[OutputCallback] = None,
            stdin: Optional[str] = None) -> CommandOutcome:
        stdin_file = open(stdin, "rb") if stdin is not None else subprocess.DEVNULL
        try:
            proc = subprocess.Popen(["/bin/sh", "-c", command], stdin=stdin_file, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True)
        finally:
            if stdin is not None:
                stdin_file.close()  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout if timeout else None
        chunks: Dict[str, List[bytes]] = {"stdout": [], "stderr": []}
        streams = {proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr"}  # type: ignore[union-attr]
        poller = select.poll()
        for fd in streams:
            poller.register(fd, select.POLLIN)
        try:
            while streams:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    _kill_group(proc)
                    raise CommandTimeout(b"".join(chunks["stdout"]), b"".join(chunks["stderr"]))
                for fd, _event in poller.poll(None if left is None else max(1, int(left * 1000))):
                    data = os.read(fd, READ_SIZE)
                    name = streams.get(fd)
                    if name is None:
                        continue
                    if not data:
                        poller.unregister(fd)
                        del streams[fd]
                        continue
                    chunks[name].append(data)
                    if on_output:
                        on_output(name, data)
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                code = proc.wait(left)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                raise CommandTimeout(b"".join(chunks["stdout"]), b"".join(chunks["stderr"])) from None
        finally:
            proc.stdout.close()  # type: ignore[union-attr]
            proc.stderr.close()  # type: ignore[union-attr]
        stdout, stderr = b"".join(chunks["stdout"]), b"".join(chunks["stderr"])
        if code < 0:
            return CommandOutcome(None, stdout, stderr, f"the command was killed by signal {-code}")
        return CommandOutcome(code, stdout, stderr)


    def files(self):
        from hostops.remotefs import LocalFileSystem

        return LocalFileSystem()


def _kill_group(proc: subprocess.Popen) -> None:
    """Stop the command and everything it started (it runs in its own session)."""
    import signal

    for sig, grace in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


__all__ = ["connect", "Connection", "CommandOutcome", "WorkerContext", "wrap_command", "HostKeyError"]
