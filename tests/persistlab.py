"""Helpers for the --persist tests: an sshd that logs each login (so logins can be counted),
a per-test keeper directory, and stopping the keeper a test started (by its pid file)."""
from __future__ import annotations

import os
import signal
import time
from typing import List, Optional

KEEPER_MODULE = b"hostops.keeper"


def keeper_pid(runtime: str) -> Optional[int]:
    """The pid of the keeper of this runtime dir, if it is alive and is a keeper."""
    try:
        with open(os.path.join(runtime, "hostops", "keeper.pid")) as fh:
            pid = int(fh.read().strip())
    except (OSError, ValueError):
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read()
    except OSError:
        return None
    with open(f"/proc/{pid}/stat", "rb") as fh:
        state = fh.read().rsplit(b")", 1)[1].split()[0]
    return pid if KEEPER_MODULE in cmdline and state not in (b"Z", b"X") else None


def children(pid: int) -> List[int]:
    out: List[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                out += [int(p) for p in fh.read().split()]
    except OSError:
        pass
    return out


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
    except OSError:
        return True


def wait_until(check, limit: float = 60.0, step: float = 0.1) -> bool:
    """Poll ``check`` until true; ``limit`` is a hang guard only."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(step)
    return bool(check())


def stop_keeper(runtime: str) -> None:
    """Stop the keeper this test started (SIGTERM, then SIGKILL), and its workers."""
    pid = keeper_pid(runtime)
    if pid is None:
        return
    workers = children(pid)
    os.kill(pid, signal.SIGTERM)
    if not wait_until(lambda: gone(pid), 30):
        os.kill(pid, signal.SIGKILL)
    for w in workers:
        if not wait_until(lambda w=w: gone(w), 10):
            try:
                os.kill(w, signal.SIGKILL)
            except ProcessLookupError:
                pass


# ------------------------------------------------------------------ fixtures (imported by the tests)
import shutil  # noqa: E402
import tempfile  # noqa: E402

import pytest  # noqa: E402

from sshlab import SSHD  # noqa: E402

ADDRESSES = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]


@pytest.fixture(scope="module")
def loud_lab(tmp_path_factory):
    """An sshd of our own at LogLevel INFO: its log has one "Accepted publickey" per login."""
    server = SSHD(str(tmp_path_factory.mktemp("loud-sshd")), addresses=ADDRESSES, log_level="INFO")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def runtime(monkeypatch):
    """A keeper directory for this test only (short: a socket path has ~100 bytes); the
    keeper the test started is stopped at its end."""
    path = tempfile.mkdtemp(prefix="hk", dir="/tmp")
    os.chmod(path, 0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", path)
    monkeypatch.delenv("HOSTOPS_PERSIST", raising=False)
    yield path
    stop_keeper(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def setup(loud_lab, tmp_path):
    """(inventory of 6 hosts on the loud sshd, known_hosts trusting it)."""
    inv = loud_lab.write_inventory(str(tmp_path / "inv.yml"), 6)
    kh = loud_lab.write_known_hosts(str(tmp_path / "known_hosts"))
    return inv, kh
