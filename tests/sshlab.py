"""A real OpenSSH ``sshd`` on loopback for tests and benchmarks.

Keys are generated per lab in a temporary directory; the daemon listens on 127.0.0.x
on a free port with MaxStartups raised, no PAM, and ``HOME`` pointed at an empty
directory so the login shell reads no rc files. Inventories with many hosts can point
at one daemon. The benchmark (bench/fleet.py) imports this module too.
"""
from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from typing import Iterable, List, Optional, Sequence

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd", "/usr/bin/sshd")


def find_sshd() -> Optional[str]:
    for path in SSHD_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("sshd")


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def keygen(path: str, comment: str = "hostops-test") -> str:
    """An ed25519 key pair at ``path`` (no passphrase); returns the public key line."""
    if not os.path.exists(path):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path],
                       check=True, stdin=subprocess.DEVNULL, timeout=30)
    with open(path + ".pub") as fh:
        return fh.read().strip()


class SSHD:
    """One sshd process. ``addresses`` are loopback addresses it listens on (same port)."""

    def __init__(self, workdir: str, addresses: Sequence[str] = ("127.0.0.1",), user_key: Optional[str] = None,
                 host_key_name: str = "ssh_host_ed25519_key", extra_config: str = "", log_level: str = "ERROR",
                 wrap: Sequence[str] = (), port: int = 0):
        self.workdir = workdir
        self.wrap = list(wrap)  # a command sshd runs under, e.g. ["ip", "netns", "exec", NS]
        self.fixed_port = port  # 0: a free port, found at start
        self.addresses = list(addresses)
        self.user = getpass.getuser()
        os.makedirs(workdir, exist_ok=True)
        self.home = os.path.join(workdir, "home")
        os.makedirs(self.home, exist_ok=True)
        self.host_key = os.path.join(workdir, host_key_name)
        self.user_key = user_key or os.path.join(workdir, "id_ed25519")
        self.extra_config = extra_config
        self.log_level = log_level  # INFO logs each login, which count_logins() counts
        self.port = 0
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = os.path.join(workdir, "sshd.log")

    # ------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 15.0) -> "SSHD":
        sshd = find_sshd()
        if sshd is None:
            raise RuntimeError("sshd not found: install openssh-server (apt-get install openssh-server)")
        self.host_pub = keygen(self.host_key, "hostops-test-host")
        self.user_pub = keygen(self.user_key, "hostops-test-user")
        auth = os.path.join(self.workdir, "authorized_keys")
        with open(auth, "w") as fh:
            fh.write(self.user_pub + "\n")
        os.chmod(auth, 0o600)
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation dir
        last_error = ""
        for _attempt in range(1 if self.fixed_port else 5):  # a free port can be taken between probe and bind
            self.port = self.fixed_port or free_port(self.addresses[0])
            config = self._write_config()
            log = open(self.log_path, "ab")
            self.proc = subprocess.Popen([*self.wrap, sshd, "-D", "-e", "-f", config], stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log)
            log.close()
            if self._wait_ready(timeout):
                return self
            last_error = self.read_log()
            self.stop()
        raise RuntimeError(f"sshd did not start on {self.addresses[0]}; its log:\n{last_error}")

    def _write_config(self) -> str:
        lines = [f"Port {self.port}"]
        lines += [f"ListenAddress {a}" for a in self.addresses]
        lines += [
            f"HostKey {self.host_key}",
            f"PidFile {os.path.join(self.workdir, 'sshd.pid')}",
            f"AuthorizedKeysFile {os.path.join(self.workdir, 'authorized_keys')}",
            "StrictModes no", "UsePAM no", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes", "PermitRootLogin prohibit-password", "MaxStartups 2000",
            "MaxSessions 100", "LoginGraceTime 60", "UseDNS no", "PrintMotd no", "PrintLastLog no",
            f"SetEnv HOME={self.home}", "Subsystem sftp internal-sftp", f"LogLevel {self.log_level}",
            f"AllowUsers {self.user}",
        ]
        if self.extra_config:
            lines.append(self.extra_config)
        path = os.path.join(self.workdir, "sshd_config")
        with open(path, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        return path

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection((self.addresses[0], self.port), timeout=1.0) as s:
                    s.settimeout(2.0)
                    if s.recv(64).startswith(b"SSH-"):
                        return True
            except OSError:
                time.sleep(0.05)
        return False

    def read_log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as fh:
                return fh.read()[-4000:]
        except OSError:
            return ""

    def count_logins(self) -> int:
        """Successful logins so far (needs log_level="INFO" or more)."""
        try:
            with open(self.log_path, errors="replace") as fh:
                return sum(1 for line in fh if "Accepted publickey" in line)
        except OSError:
            return 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> "SSHD":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------ helpers for tests
    def known_hosts_line(self, address: Optional[str] = None) -> str:
        keytype, b64 = self.host_pub.split()[:2]
        return f"[{address or self.addresses[0]}]:{self.port} {keytype} {b64}"

    def write_known_hosts(self, path: str, addresses: Optional[Iterable[str]] = None) -> str:
        with open(path, "w") as fh:
            for a in addresses or self.addresses:
                fh.write(self.known_hosts_line(a) + "\n")
        return path

    def host_entries(self, count: int, prefix: str = "h", addresses: Optional[Sequence[str]] = None) -> List[dict]:
        addrs = list(addresses or self.addresses)
        return [{"name": f"{prefix}{i:03d}", "ansible_host": addrs[(i - 1) % len(addrs)],
                 "ansible_port": self.port} for i in range(1, count + 1)]

    def write_inventory(self, path: str, count: int, prefix: str = "h", extra_hosts: Sequence[dict] = (),
                        addresses: Optional[Sequence[str]] = None) -> str:
        """An Ansible YAML inventory: ``count`` hosts (group ``lab``) all served by this sshd."""
        import yaml

        hosts = {}
        for entry in self.host_entries(count, prefix, addresses) + list(extra_hosts):
            entry = dict(entry)
            hosts[entry.pop("name")] = entry
        data = {"all": {"vars": {"ansible_user": self.user, "ansible_ssh_private_key_file": self.user_key},
                        "children": {"lab": {"hosts": hosts}}}}
        with open(path, "w") as fh:
            yaml.safe_dump(data, fh, sort_keys=False)
        return path
