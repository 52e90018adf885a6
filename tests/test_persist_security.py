"""The keeper's one door (issue 15): its directory and socket, and who may talk to it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from hostops import keepersock
from hostops.errors import UsageError
from persistlab import keeper_pid, runtime, wait_until  # noqa: F401  (fixtures)

pytestmark = pytest.mark.timeout(240)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_args(inventory, known_hosts):
    return ("exec", "echo ok", "-i", inventory(2), "--known-hosts", known_hosts, "--persist", "5m")


def test_symlink_at_the_keeper_directory_is_refused(hostops, runtime, inventory, known_hosts, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    os.symlink(str(elsewhere), os.path.join(runtime, "hostops"))
    run = hostops(*_run_args(inventory, known_hosts))
    assert run.code == 2, run
    assert "is a symlink" in run.err and os.path.join(runtime, "hostops") in run.err
    assert os.listdir(str(elsewhere)) == []  # nothing made through the link
    assert keeper_pid(runtime) is None


def test_symlink_at_the_socket_path_is_refused(hostops, runtime, inventory, known_hosts, tmp_path):
    directory = os.path.join(runtime, "hostops")
    os.mkdir(directory, 0o700)
    os.symlink(str(tmp_path / "target.sock"), os.path.join(directory, "keeper.sock"))
    run = hostops(*_run_args(inventory, known_hosts))
    assert run.code == 2, run
    assert "keeper.sock" in run.err and "is a symlink" in run.err
    assert not os.path.exists(str(tmp_path / "target.sock"))


def test_open_mode_directory_is_refused(hostops, runtime, inventory, known_hosts):
    directory = os.path.join(runtime, "hostops")
    os.mkdir(directory)
    os.chmod(directory, 0o755)
    run = hostops(*_run_args(inventory, known_hosts))
    assert run.code == 2 and "chmod 700" in run.err, run


@pytest.mark.skipif(os.getuid() != 0, reason="making a directory another user owns needs root")
def test_foreign_owned_directory_is_refused(hostops, runtime, inventory, known_hosts):
    directory = os.path.join(runtime, "hostops")
    os.mkdir(directory, 0o700)
    os.chown(directory, 65534, 65534)
    run = hostops(*_run_args(inventory, known_hosts))
    assert run.code == 2, run
    assert "owned by uid 65534" in run.err
    assert keeper_pid(runtime) is None


@pytest.mark.skipif(os.getuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_another_uid_is_refused_even_with_the_door_open(hostops, runtime, inventory, known_hosts):
    """SO_PEERCRED, not only file modes: with the directory and socket opened to everyone,
    a process of another uid still gets no answer, and the refusal is logged."""
    run = hostops(*_run_args(inventory, known_hosts))
    assert run.code == 0, run
    directory = os.path.join(runtime, "hostops")
    sock = os.path.join(directory, "keeper.sock")
    os.chmod(runtime, 0o711)
    os.chmod(directory, 0o711)
    os.chmod(sock, 0o666)
    probe = ("import socket, pickle, struct\n"
             "from multiprocessing.connection import Connection\n"
             "from hostops.wire import Control\n"
             f"s = socket.socket(socket.AF_UNIX); s.connect({sock!r}); s.settimeout(30)\n"
             "c = Connection(s.detach())\n"
             "try:\n"
             "    c.send(Control('list'))\n"
             "    print('ANSWER', c.recv())\n"
             "except (EOFError, OSError) as exc:\n"
             "    print('REFUSED', type(exc).__name__)\n")
    env = dict(os.environ, PYTHONPATH=ROOT, HOME="/tmp")
    out = subprocess.run(["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups",
                          sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, env=env)
    assert "REFUSED" in out.stdout, (out.stdout, out.stderr)
    assert "ANSWER" not in out.stdout
    with open(os.path.join(directory, "keeper.log")) as fh:
        assert "uid 65534" in fh.read()
    assert keeper_pid(runtime) is not None  # and it keeps serving its own user
    assert hostops("connections", "list", "--json").code == 2  # while the door stays open, hostops refuses it
    os.chmod(directory, 0o700)
    assert hostops("connections", "list", "--json").code == 0


def test_stale_socket_is_replaced(hostops, runtime, inventory, known_hosts):
    import signal

    assert hostops(*_run_args(inventory, known_hosts)).code == 0
    pid = keeper_pid(runtime)
    os.kill(pid, signal.SIGKILL)  # no cleanup: the socket file stays behind
    assert wait_until(lambda: keeper_pid(runtime) is None, 30)
    assert os.path.exists(os.path.join(runtime, "hostops", "keeper.sock"))
    run = hostops(*_run_args(inventory, known_hosts))
    assert run.code == 0, run
    assert keeper_pid(runtime) not in (None, pid)


def test_duration_parsing():
    assert keepersock.parse_duration("90") == 90
    assert keepersock.parse_duration("10m") == 600
    assert keepersock.parse_duration("2h") == 7200
    assert keepersock.parse_duration(None) == 0 and keepersock.parse_duration("off") == 0
    for bad in ("soon", "-5m", "nan", "1x", "inf"):
        with pytest.raises(UsageError):
            keepersock.parse_duration(bad)
