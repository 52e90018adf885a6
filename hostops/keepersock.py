"""Where the connection keeper (``--persist``) listens, and who may talk to it.

The keeper holds logged-in (often root) sessions to a fleet, so its one door is guarded:

- a Unix socket, never a network address, in ``$XDG_RUNTIME_DIR/hostops/`` (or
  ``~/.hostops/run/`` when that is unset), a directory that must be a real directory (not a
  symlink), owned by the user, mode 0700; anything else there and hostops refuses to start a
  keeper and says why (:class:`KeeperRefused`, exit 2);
- the socket itself 0600, and a path that is either absent, or a socket of ours;
- every connection's peer checked with ``SO_PEERCRED`` on both ends, before a byte of it is
  unpickled: the keeper serves only its own uid, a client talks only to a keeper of its uid.

Messages are pickles framed by :class:`multiprocessing.connection.Connection` (safe only
because both ends are the same user, checked above). A client and a keeper also run the same
hostops code (:func:`code_id`): a keeper started before an upgrade would read new options with
old code, and ignore what it does not know. Must not import: keeper, keeperclient, pool,
worker, api, cli.
"""
from __future__ import annotations

import functools
import hashlib
import os
import socket
import stat
import struct
from multiprocessing.connection import Connection
from typing import Optional, Tuple

from hostops.errors import UsageError

SOCKET_NAME = "keeper.sock"
LOCK_NAME = "keeper.lock"
LOG_NAME = "keeper.log"


@functools.lru_cache(maxsize=1)
def code_id() -> str:
    """Which hostops code this process runs: its version, and each module's name, size and
    modification time (an upgrade, or an edited checkout, changes it). A keeper takes it once,
    at its start."""
    import hostops

    digest = hashlib.sha256(hostops.__version__.encode())
    root = os.path.dirname(os.path.abspath(hostops.__file__))
    for dirpath, dirnames, files in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(dirpath, name)
            try:
                st = os.stat(path)
            except OSError:
                continue
            digest.update(f"{os.path.relpath(path, root)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


class KeeperRefused(UsageError):
    """The keeper's directory or socket path is not safe to use (exit 2, nothing ran)."""


def runtime_dir() -> str:
    """The keeper's directory: ``$XDG_RUNTIME_DIR/hostops``, else ``~/.hostops/run``."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base:
        return os.path.join(base, "hostops")
    return os.path.join(os.path.expanduser("~"), ".hostops", "run")


def _check_dir(path: str, create: bool) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if not create:
            raise KeeperRefused(f"{path} does not exist") from None
        parent = os.path.dirname(path)
        if not os.path.isdir(parent):
            os.makedirs(parent, mode=0o700, exist_ok=True)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        st = os.lstat(path)
    uid = os.getuid()
    what = f"refusing to use {path} for the connection keeper: "
    if stat.S_ISLNK(st.st_mode):
        raise KeeperRefused(what + f"it is a symlink (to {os.readlink(path)}); remove it, hostops makes its own "
                            "0700 directory there")
    if not stat.S_ISDIR(st.st_mode):
        raise KeeperRefused(what + "it is not a directory; remove it")
    if st.st_uid != uid:
        raise KeeperRefused(what + f"it is owned by uid {st.st_uid}, not by you (uid {uid}); remove it, or set "
                            "XDG_RUNTIME_DIR to a directory of yours")
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise KeeperRefused(what + f"its mode is {stat.S_IMODE(st.st_mode):04o}, other users could reach the "
                            f"keeper; chmod 700 {path}")


def secure_dir(create: bool = True) -> str:
    """The keeper's directory, made (0700) or checked: :class:`KeeperRefused` when unsafe."""
    path = runtime_dir()
    _check_dir(path, create)
    return path


def socket_path(directory: str) -> str:
    """The socket's path in ``directory``; refuses a path that is there but is no socket of ours."""
    path = os.path.join(directory, SOCKET_NAME)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return path
    what = f"refusing to use {path} for the connection keeper: "
    if stat.S_ISLNK(st.st_mode):
        raise KeeperRefused(what + "it is a symlink; remove it")
    if not stat.S_ISSOCK(st.st_mode):
        raise KeeperRefused(what + "it is not a socket; remove it")
    if st.st_uid != os.getuid():
        raise KeeperRefused(what + f"it is owned by uid {st.st_uid}, not by you; remove it")
    return path


def peer_uid(sock: socket.socket) -> Tuple[int, int]:
    """(pid, uid) of the process at the other end of a Unix socket (``SO_PEERCRED``)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    return pid, uid


def listen(path: str) -> socket.socket:
    """Bind the keeper's socket, 0600 from the start (the umask covers the bind)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(64)
    return sock


def send_timeout(sock: socket.socket, seconds: int) -> None:
    """A peer that stops reading blocks a send at most ``seconds`` (then OSError)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", seconds, 0))


def wrap(sock: socket.socket) -> Connection:
    """A checked socket as a message connection (pickles, length-framed)."""
    return Connection(sock.detach())


def connect(path: str, timeout: float = 5.0) -> Optional[Connection]:
    """A connection to the keeper at ``path``, checked to be of our uid; None when no keeper
    listens there (absent, or a stale socket left by a dead keeper)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None
    except OSError:
        sock.close()
        raise
    _pid, uid = peer_uid(sock)
    if uid != os.getuid():
        sock.close()
        raise KeeperRefused(f"the process listening on {path} runs as uid {uid}, not as you; refusing to talk "
                            "to it")
    sock.settimeout(None)
    return wrap(sock)


def parse_duration(text: Optional[str]) -> float:
    """``--persist`` / ``$HOSTOPS_PERSIST``: ``90``, ``90s``, ``10m``, ``2h``, ``1d`` → seconds
    (``0``/``off``/empty: no keeper). A bad value: UsageError (exit 2)."""
    value = (text or "").strip().lower()
    if value in ("", "0", "off", "no", "false"):
        return 0.0
    scale = {"s": 1, "m": 60, "h": 3600, "d": 86400}.get(value[-1:], 0)
    digits = value[:-1] if scale else value
    try:
        seconds = float(digits) * (scale or 1)
    except ValueError:
        seconds = -1.0
    if not seconds > 0 or seconds != seconds or seconds == float("inf"):
        raise UsageError(f"--persist {text!r} is not a duration such as 90s, 10m or 2h (or 0 for none)")
    return seconds
