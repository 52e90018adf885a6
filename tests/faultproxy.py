"""A small fault-injecting TCP server / proxy on 127.0.0.1 for the fault tests.

Modes (one per proxy):

``blackhole``    accepts TCP connections and never sends a byte.
``slow_banner``  sends ``SSH-2.0-`` one byte every 0.5 s, then keeps trickling bytes (no newline), forever.
``huge_banner``  sends 10 MB without a newline, then keeps the socket open.
``cut``          forwards to ``upstream``; :meth:`FaultProxy.cut` (or ``cut_after`` bytes from the server)
                 closes both sides of every connection.
``stall``        forwards to ``upstream`` until :meth:`FaultProxy.stall`, then forwards nothing more in
                 either direction but keeps both sockets open: a half-open peer.

Everything runs on daemon threads and every wait is bounded (short ``select`` timeouts that
re-check a stop event), so :meth:`FaultProxy.stop` always returns promptly::

    with FaultProxy("stall", upstream=("127.0.0.1", lab.port)) as proxy:
        ... connect to ("127.0.0.1", proxy.port) ...
        proxy.stall()
"""
from __future__ import annotations

import select
import socket
import threading
import time
from typing import List, Optional, Tuple

MODES = ("blackhole", "slow_banner", "huge_banner", "cut", "stall")
TICK = 0.1                     # how often loops re-check the stop/stall/cut events
SLOW_BANNER = b"SSH-2.0-"
SLOW_INTERVAL = 0.5
HUGE_SIZE = 10 * 1000 * 1000


class FaultProxy:
    def __init__(self, mode: str, upstream: Optional[Tuple[str, int]] = None, cut_after: Optional[int] = None,
                 address: str = "127.0.0.1", huge_size: int = HUGE_SIZE):
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {', '.join(MODES)}")
        if mode in ("cut", "stall") and upstream is None:
            raise ValueError(f"mode {mode!r} forwards: give upstream=(host, port)")
        if not address.startswith("127."):
            raise ValueError("the fault proxy only listens on loopback (127.0.0.0/8)")
        self.mode = mode
        self.upstream = upstream
        self.cut_after = cut_after
        self.address = address
        self.huge_size = huge_size
        self.port = 0
        self._listener: Optional[socket.socket] = None
        self._stop = threading.Event()
        self._stalled = threading.Event()
        self._cut = threading.Event()
        self._lock = threading.Lock()
        self._threads: List[threading.Thread] = []
        self._sockets: List[socket.socket] = []
        # What the tests can look at.
        self.connections = 0          # TCP connections accepted
        self.bytes_to_client = 0      # bytes sent to the client (generated or forwarded from the server)
        self.bytes_from_client = 0    # bytes forwarded from the client to the server
        self.hangups = 0              # connections the client closed (or reset) on its own
        self.errors: List[str] = []   # unexpected exceptions in handler threads

    # ------------------------------------------------------------ lifecycle
    def start(self) -> "FaultProxy":
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.address, 0))
        listener.listen(128)
        listener.settimeout(TICK)
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._spawn(self._accept_loop, "faultproxy-accept")
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close every socket and wait (bounded) for the threads."""
        self._stop.set()
        if self._listener is not None:
            self._close(self._listener)
        with self._lock:
            socks, self._sockets = list(self._sockets), []
            threads = list(self._threads)
        for s in socks:
            self._close(s)
        deadline = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------ fault controls
    def stall(self) -> None:
        """Stop forwarding in both directions; keep every socket open."""
        self._stalled.set()

    def cut(self) -> None:
        """Close both sides of every forwarded connection now."""
        self._cut.set()
        with self._lock:
            socks = list(self._sockets)
        for s in socks:
            self._close(s)

    def wait_connections(self, n: int = 1, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.connections >= n:
                return True
            time.sleep(0.02)
        return self.connections >= n

    @property
    def where(self) -> Tuple[str, int]:
        return self.address, self.port

    # ------------------------------------------------------------ internals
    def _spawn(self, target, name: str, *args) -> None:
        t = threading.Thread(target=self._guarded, args=(target,) + args, name=name, daemon=True)
        with self._lock:
            self._threads = [x for x in self._threads if x.is_alive()]
            self._threads.append(t)
        t.start()

    def _guarded(self, target, *args) -> None:
        try:
            target(*args)
        except OSError:
            pass  # a peer closing on us is the normal end of a fault
        except Exception as exc:  # pragma: no cover - reported to the test
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def _track(self, s: socket.socket) -> None:
        with self._lock:
            self._sockets.append(s)
        if self._stop.is_set():
            self._close(s)

    @staticmethod
    def _close(s: socket.socket) -> None:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            s.close()
        except OSError:
            pass

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                client, _addr = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.connections += 1
            self._track(client)
            handler = {"blackhole": self._blackhole, "slow_banner": self._slow_banner,
                       "huge_banner": self._huge_banner, "cut": self._forward, "stall": self._forward}[self.mode]
            self._spawn(handler, f"faultproxy-{self.mode}", client)

    def _hold_open(self, client: socket.socket) -> None:
        """Keep the connection open, reading and discarding what the client says."""
        while not self._stop.is_set():
            try:
                r, _, _ = select.select([client], [], [], TICK)
            except (OSError, ValueError):
                return
            if r:
                try:
                    if not client.recv(65536):
                        self._hung_up()  # the client closed
                        return
                except OSError:
                    self._hung_up()
                    return

    def _hung_up(self) -> None:
        with self._lock:
            self.hangups += 1

    def _blackhole(self, client: socket.socket) -> None:
        self._hold_open(client)

    def _slow_banner(self, client: socket.socket) -> None:
        i = 0
        while not self._stop.wait(SLOW_INTERVAL):
            byte = SLOW_BANNER[i:i + 1] if i < len(SLOW_BANNER) else b"x"
            i += 1
            if not self._send_all(client, byte):
                return
            self.bytes_to_client += 1

    def _huge_banner(self, client: socket.socket) -> None:
        chunk = b"A" * 65536
        left = self.huge_size
        while left > 0 and not self._stop.is_set():
            piece = chunk[:min(left, len(chunk))]
            if not self._send_all(client, piece):
                return
            left -= len(piece)
            self.bytes_to_client += len(piece)
        self._hold_open(client)

    def _send_all(self, sock: socket.socket, data: bytes, interruptible: bool = False) -> bool:
        """Send everything, re-checking the stop (and, when ``interruptible``, stall/cut) events."""
        view = memoryview(data)
        while view:
            if self._stop.is_set() or (interruptible and self._cut.is_set()):
                return False
            if interruptible and self._stalled.is_set():
                self._stop.wait(TICK)  # a stalled peer holds on to what it has
                continue
            try:
                _, w, _ = select.select([], [sock], [], TICK)
                if not w:
                    continue
                sent = sock.send(view)
            except (OSError, ValueError):
                if not self._stop.is_set() and not self._cut.is_set():
                    self._hung_up()
                return False
            view = view[sent:]
        return True

    def _forward(self, client: socket.socket) -> None:
        assert self.upstream is not None
        try:
            server = socket.create_connection(self.upstream, timeout=5)
        except OSError as exc:
            self.errors.append(f"upstream connect: {exc}")
            self._close(client)
            return
        self._track(server)
        server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = {client: server, server: client}
        try:
            while not self._stop.is_set() and not self._cut.is_set():
                if self._stalled.is_set():
                    self._stop.wait(TICK)  # half-open: read nothing, send nothing, close nothing
                    continue
                try:
                    readable, _, _ = select.select([client, server], [], [], TICK)
                except (OSError, ValueError):
                    return
                for src in readable:
                    if self._stalled.is_set():
                        break
                    data = src.recv(65536)
                    if not data:
                        return  # one side closed: close both (below)
                    if src is server and self.cut_after is not None:
                        room = self.cut_after - self.bytes_to_client
                        if len(data) >= room:
                            if room > 0 and self._send_all(client, data[:room], True):
                                self.bytes_to_client += room
                            self._cut.set()
                            return
                    if not self._send_all(peer[src], data, True):
                        return
                    if src is server:
                        self.bytes_to_client += len(data)
                    else:
                        self.bytes_from_client += len(data)
        finally:
            self._close(client)
            self._close(server)
