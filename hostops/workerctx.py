"""The per-worker-process context, and :func:`connect`, the one way a worker gets a
connection to a host.

A worker keeps one :class:`WorkerContext` (known_hosts and private keys, parsed once per
process; the DNS threads; the jump connections shared by the hosts behind them; the
connection and handshake slots, whose number :mod:`hostops.limiter` adapts; the abort
flag every command polls) and asks :func:`connect` for a :class:`Connection` per host.

Deadlines: DNS, TCP connect, banner, key exchange, auth and channel open all share one
``--connect-timeout`` budget, enforced by :class:`hostops.handshake.GuardedSocket`
underneath paramiko (which on its own lets a server trickle a banner forever).

Imports the connections (ssh, local); nothing in the connection layer imports this at run
time. Must not import paramiko at import time.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import os
import socket
import threading
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

from hostops.auth import read_key
from hostops.connection import Connection
from hostops.errors import ConnectError
from hostops.limiter import HandshakeLimiter
from hostops.local import LocalConnection
from hostops.settings import Options, Target
from hostops.ssh import SSHConnection

if TYPE_CHECKING:
    from hostops.held import HeldStore

MAX_HANDSHAKES_PER_WORKER = 256  # the adaptive limit's ceiling (hostops.limiter)
CONNECTIONS_PER_WORKER = 64  # hosts from TCP connect to logged in, per worker (connection_slot)


class WorkerContext:
    """Per-process state shared by all the connections a worker makes."""

    def __init__(self, options: Options, held: Optional["HeldStore"] = None):
        self.options = options
        #: In a keeper's worker (--persist): the connections held between runs, shared by
        #: every run's context in the process (None in an ordinary run).
        self.held = held
        self.persist = 0.0  # seconds this run's connections stay held once idle (keeper only)
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
        host of this worker behind the same jump chain; opened on first use. In a keeper's
        worker the jump connections are held between runs too (keyed by their identity, their
        host key checked again before reuse)."""
        jumps: Dict[Any, SSHConnection] = self._jumps
        locks: Dict[Any, threading.Lock] = self._jump_locks
        key: Any = hops
        if self.held is not None:
            from hostops.held import identity

            jumps, locks, key = self.held.jumps, self.held.jump_locks, (hops, identity(hops[-1], self.options))
        with self._lock:
            lock = locks.setdefault(key, threading.Lock())
        with lock:
            conn = jumps.get(key)
            if conn is not None and conn.alive() and self._still_trusted(conn, hops[-1]):
                return conn
            via = self.jump_connection(hops[:-1]) if len(hops) > 1 else None
            conn = SSHConnection.open(hops[-1], self, via=via)
            if self.held is not None:
                conn.ctx = self.held.base_ctx  # held past this run: no run's secrets through it
            jumps[key] = conn
            return conn

    def _still_trusted(self, conn: "SSHConnection", hop: Target) -> bool:
        if self.held is None:
            return True
        from hostops.held import still_trusted

        return still_trusted(conn, hop, self)

    def close(self) -> None:
        """A run's context in a keeper's worker is done: its wake-up pipe and DNS threads go."""
        self._dns.shutdown(wait=False)
        for fd in (self._abort_r, self._abort_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def close_jumps(self) -> None:
        for conn in list(self._jumps.values())[::-1]:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing at exit: one bad jump must not keep the rest open
                pass
        self._jumps.clear()

    def load_key(self, path: str) -> Tuple[Optional[object], Optional[str]]:
        """A private key from ``path`` (cached per process), or why it cannot be used."""
        with self._lock:
            if path not in self._keys:
                self._keys[path] = read_key(path)
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


def connect(target: Target, ctx: WorkerContext) -> Connection:
    if target.connection == "local":
        return LocalConnection(ctx)
    return SSHConnection.open(target, ctx)
