"""A hostile SSH/SFTP server for the tests: paramiko's server side on 127.0.0.1 (free port).

It accepts any public key, serves only the ``sftp`` subsystem, and answers from a small
virtual tree in which directory listings hold names a real file system never returns:
``../../evil``, ``a/b``, ``.``, ``..``, the empty name. Opening such a name would fetch
attacker-chosen bytes; the server records every path it was asked to open, so a test can
check the client never asked.

    with HostileSFTP(workdir) as server:
        ... known_hosts line: server.known_hosts_line() ...
        ... connect to 127.0.0.1:server.port, get -r /tree ...
        assert server.opened == ["/tree/ok.txt"]

Opening any name with ``slow`` in it gets no answer (for up to 60 s, or until the server
stops), as OpenSSH's sftp-server does when it opens a FIFO.

Every thread is a daemon and every wait is bounded; :meth:`HostileSFTP.stop` returns promptly.
"""
from __future__ import annotations

import os
import socket
import stat
import threading
from typing import List, Tuple

import paramiko

from sshlab import keygen

EVIL = b"EVIL: written by a hostile server\n"
FINE = b"fine\n"

#: path -> entries (name, "file" | "dir") of the virtual tree's one real directory.
HOSTILE_NAMES: List[Tuple[str, str]] = [
    ("ok.txt", "file"),
    ("../../evil", "file"),
    ("a/b", "file"),
    ("/abs-evil", "file"),
    ("../updir", "dir"),
    (".", "dir"),
    ("..", "dir"),
    ("", "file"),
]


def _attrs(name: str, kind: str, size: int = 0) -> paramiko.SFTPAttributes:
    a = paramiko.SFTPAttributes()
    a.filename = name
    a.st_mode = (stat.S_IFDIR | 0o755) if kind == "dir" else (stat.S_IFREG | 0o644)
    a.st_size = size
    a.st_uid = os.getuid()
    a.st_gid = os.getgid()
    a.st_atime = a.st_mtime = 0
    return a


class _Handle(paramiko.SFTPHandle):
    def __init__(self, data: bytes):
        super().__init__()
        self.data = data

    def read(self, offset: int, length: int) -> bytes:
        return self.data[offset:offset + length]

    def stat(self) -> paramiko.SFTPAttributes:
        return _attrs("", "file", len(self.data))


class _SFTP(paramiko.SFTPServerInterface):
    def __init__(self, server, owner: "HostileSFTP", *args, **kwargs):
        super().__init__(server, *args, **kwargs)
        self.owner = owner

    def _content(self, path: str) -> bytes:
        return FINE if path == "/tree/ok.txt" else EVIL

    def list_folder(self, path: str):
        if path == "/tree":
            return [_attrs(n, k, len(EVIL) if k == "file" else 0) for n, k in HOSTILE_NAMES]
        return [_attrs("pwned.txt", "file", len(EVIL))]  # whatever a client reached by following ../

    def stat(self, path: str):
        if path == "/tree" or path.endswith(("updir", "/.", "/..")):
            return _attrs(os.path.basename(path), "dir")
        return _attrs(os.path.basename(path), "file", len(self._content(path)))

    lstat = stat

    def open(self, path: str, flags: int, attr):
        with self.owner.lock:
            self.owner.opened.append(path)
        if "slow" in path:  # as sftp-server opening a FIFO: no answer until a writer comes
            self.owner._stop.wait(60)
        if flags & (os.O_WRONLY | os.O_RDWR):
            return paramiko.SFTP_PERMISSION_DENIED
        return _Handle(self._content(path))

    def canonicalize(self, path: str) -> str:
        return path if path.startswith("/") else "/" + path


class _Server(paramiko.ServerInterface):
    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key) -> int:
        return paramiko.AUTH_SUCCESSFUL

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED


class HostileSFTP:
    def __init__(self, workdir: str, address: str = "127.0.0.1"):
        if not address.startswith("127."):
            raise ValueError("the hostile server only listens on loopback")
        os.makedirs(workdir, exist_ok=True)
        key_path = os.path.join(workdir, "hostile_host_key")
        self.host_pub = keygen(key_path, "hostile-sftp-host")
        self.host_key = paramiko.Ed25519Key.from_private_key_file(key_path)
        self.address = address
        self.port = 0
        self.opened: List[str] = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._listener: socket.socket = socket.socket()
        self._transports: List[paramiko.Transport] = []
        self.errors: List[str] = []

    def known_hosts_line(self) -> str:
        keytype, b64 = self.host_pub.split()[:2]
        return f"[{self.address}]:{self.port} {keytype} {b64}"

    def start(self) -> "HostileSFTP":
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((self.address, 0))
        self._listener.listen(16)
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, name="hostile-sftp", daemon=True).start()
        return self

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                t = paramiko.Transport(sock)
                t.add_server_key(self.host_key)
                t.set_subsystem_handler("sftp", paramiko.SFTPServer, _SFTP, self)
                with self.lock:
                    self._transports.append(t)
                t.start_server(server=_Server())
            except Exception as exc:  # reported to the test, never raised in this thread
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def stop(self) -> None:
        self._stop.set()
        try:
            self._listener.close()
        except OSError:
            pass
        with self.lock:
            transports, self._transports = list(self._transports), []
        for t in transports:
            t.close()

    def __enter__(self) -> "HostileSFTP":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


__all__ = ["HostileSFTP", "HOSTILE_NAMES", "EVIL", "FINE"]
