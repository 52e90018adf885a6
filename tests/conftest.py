"""Fixtures: an isolated HOME for every test, and one real sshd for the session.

Tests never see the developer's own ~/.ssh or ssh-agent. The sshd listens on several
loopback addresses (127.0.0.1-8) so host-key tests can tell hosts apart; inventories
with hundreds of hosts point at it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import List, Optional

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from sshlab import SSHD, find_sshd  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAB_ADDRESSES = [f"127.0.0.{i}" for i in range(1, 9)]


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    for name in ("HOSTOPS_INVENTORY", "HOSTOPS_CONFIG", "HOSTOPS_FORKS", "HOSTOPS_USER", "HOSTOPS_IDENTITY",
                 "HOSTOPS_KNOWN_HOSTS", "HOSTOPS_LOG", "HOSTOPS_STATE_DIR", "XDG_CONFIG_HOME",
                 "HOSTOPS_CLUSTER"):
        monkeypatch.delenv(name, raising=False)  # the developer's own defaults stay out of the tests
    monkeypatch.delenv("NO_COLOR", raising=False)
    return home


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    """The session's sshd. Missing sshd fails loudly: CI must install openssh-server."""
    if find_sshd() is None:
        pytest.fail("sshd not found: install openssh-server (the .ci/run script does)")
    server = SSHD(str(tmp_path_factory.mktemp("sshd")), addresses=LAB_ADDRESSES)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def known_hosts(lab, tmp_path):
    """A known_hosts file trusting the lab on all its addresses."""
    return lab.write_known_hosts(str(tmp_path / "known_hosts"))


@pytest.fixture
def inventory(lab, tmp_path):
    """Factory: an inventory of ``count`` lab hosts (h001…)."""
    def make(count: int = 10, extra_hosts=(), addresses=None, name: str = "inv.yml") -> str:
        return lab.write_inventory(str(tmp_path / name), count, extra_hosts=extra_hosts, addresses=addresses)
    return make


class Run:
    def __init__(self, proc: subprocess.CompletedProcess):
        self.code = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr

    def json_lines(self) -> List[dict]:
        return [json.loads(line) for line in self.out.splitlines() if line.strip()]

    def __repr__(self) -> str:
        return f"<Run code={self.code}\nstdout:\n{self.out[-3000:]}\nstderr:\n{self.err[-3000:]}>"


@pytest.fixture
def hostops(isolated_home):
    """Run the real CLI in a subprocess, as a user would: ``hostops(*args) -> Run``."""
    def run(*args: str, timeout: float = 120, env: Optional[dict] = None, input: Optional[str] = None) -> Run:
        full_env = dict(os.environ)
        full_env.pop("SSH_AUTH_SOCK", None)
        full_env["HOME"] = str(isolated_home)
        full_env["PYTHONPATH"] = ROOT + os.pathsep + full_env.get("PYTHONPATH", "")
        if env:
            full_env.update(env)
        proc = subprocess.run([sys.executable, "-m", "hostops", *args], capture_output=True, text=True,
                              timeout=timeout, env=full_env, input=input, cwd=str(isolated_home))
        return Run(proc)
    return run
