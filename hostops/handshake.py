"""The way into an SSH server, up to a checked host key: TCP connect (DNS through the
worker's context) or a jump host's tunnel, the guarded socket under paramiko, banner and
key exchange within the connect timeout (:class:`Handshake`).

Must not import :mod:`hostops.ssh`, :mod:`hostops.auth` or :mod:`hostops.workerctx` at run
time (they import this; the context is only a type here), nor paramiko at import time.
"""
from __future__ import annotations

import errno
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, List, Optional

from hostops import _patches
from hostops.errors import ConnectError
from hostops.settings import Target

if TYPE_CHECKING:
    from hostops.ssh import SSHConnection
    from hostops.workerctx import WorkerContext

#: Bytes a server may send before the handshake is done: a banner, KEXINIT and the key
#: exchange reply fit in a few KiB. A server spewing more is refused, not buffered.
PRE_AUTH_LIMIT = 256 * 1024


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
        # paramiko's Transport.close reads ``sock._closed`` (a private name of Python's
        # socket); checked by tests/test_patches.py
        return getattr(self._sock, "_closed", False)

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


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
        self.transport: Any = None  # paramiko.Transport once negotiate() started
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
        _patches.skip_handshake_timer(self.transport)
        _patches.skip_debug_messages(self.transport)
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
        _patches.leave_rekeying_to_the_server(t)

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


def _prefer_key_types(transport, known: List[str]) -> None:
    """Offer the key types known_hosts holds first, so the server shows a key we can check."""
    opts = transport.get_security_options()
    base = {"rsa-sha2-512": "ssh-rsa", "rsa-sha2-256": "ssh-rsa"}
    order = list(opts.key_types)
    first = [k for k in order if base.get(k, k) in known]
    opts.key_types = tuple(first + [k for k in order if k not in first])
