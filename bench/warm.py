"""Warm rows for bench/fleet.py: each tool's second run over connections it already holds.

A warm measurement is: one unmeasured priming run (it logs in everywhere and leaves the
connections held), then the measured run, then the held connections are closed. What holds
the connections lives outside the measured process tree, so its CPU and memory are measured
apart and added to the client's figures:

- hostops-warm: ``--persist``; the keeper (pid in its runtime dir) and its workers.
- pssh-warm: parallel-ssh with OpenSSH ``ControlMaster auto`` / ``ControlPersist``; the
  background ``ssh`` masters (found by the warm ssh_config path in their command line).
- ansible-warm: ``ansible -m raw`` with its default ControlPersist (here 30m), masters as above.

sshd's CPU is its whole process tree's (fleet.Lab.cpu): the master's own and reaped children's
plus every live session's, so sessions that stay open are counted too. Logins are counted
from sshd's log (LogLevel INFO: one "Accepted publickey" line each).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional, Tuple

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
PERSIST = "30m"


def _stat(pid: int) -> Optional[List[str]]:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _kids(pid: int) -> List[int]:
    out: List[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                out += [int(x) for x in fh.read().split()]
    except OSError:
        pass
    return out


def tree(pid: int) -> List[int]:
    seen, todo = [], [pid]
    while todo:
        p = todo.pop()
        seen.append(p)
        todo += _kids(p)
    return seen


def tree_cpu(pids: List[int]) -> float:
    """CPU seconds of these processes and their descendants: each live one's own plus what it
    reaped (a process that exits moves into its parent's reaped share: the sum stays whole)."""
    total = 0.0
    for root in pids:
        for p in tree(root):
            f = _stat(p)
            if f is not None:
                total += sum(int(x) for x in f[11:15]) / TICK
    return total


def tree_rss(pids: List[int]) -> int:
    total = 0
    for root in pids:
        for p in tree(root):
            try:
                with open(f"/proc/{p}/statm") as fh:
                    total += int(fh.read().split()[1]) * PAGE
            except (OSError, IndexError, ValueError):
                pass
    return total


def _with_marker(marker: str) -> List[int]:
    """Processes whose command line holds ``marker`` (a path only this bench's runs use)."""
    found = []
    needle = marker.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                if needle in fh.read():
                    found.append(int(entry))
        except OSError:
            pass
    return found


def _wait_gone(pids: List[int], limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and any(_stat(p) is not None and _stat(p)[0] not in ("Z", "X")
                                                for p in pids):
        time.sleep(0.1)


def _reap(pids: List[int], limit: float = 10.0) -> None:
    """Reap the holders that came to the harness (a subreaper) when their parent left (the
    keeper's double fork, ssh's ControlPersist daemon): their CPU was measured already, and
    fleet.reap_adopted would otherwise count it again as sshd's orphans."""
    deadline = time.monotonic() + limit
    todo = list(pids)
    while todo and time.monotonic() < deadline:
        for p in list(todo):
            try:
                done, _ = os.waitpid(p, os.WNOHANG)
            except ChildProcessError:  # not ours (its parent reaps it), or already reaped
                todo.remove(p)
                continue
            if done:
                todo.remove(p)
        if todo:
            time.sleep(0.05)


class Warm:
    """How one warm tool primes, what holds its connections, and how they are closed."""

    def __init__(self, name: str):
        self.name = name

    def env(self, lab) -> Dict[str, str]:  # noqa: ARG002
        return {}

    def prime(self, argv: List[str], lab, env: Dict[str, str]) -> Tuple[int, float]:
        """Run the tool once, unmeasured: (exit code, seconds)."""
        t0 = time.perf_counter()
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**env, **self.env(lab)}, timeout=900, start_new_session=True)
        return proc.returncode, time.perf_counter() - t0

    def holders(self, lab) -> List[int]:
        raise NotImplementedError

    def teardown(self, lab, env: Dict[str, str]) -> None:  # noqa: ARG002
        pids = self.holders(lab)
        for p in pids:
            try:
                os.kill(p, signal.SIGTERM)
            except ProcessLookupError:
                pass
        _wait_gone(pids)
        _reap(pids)


class HostopsWarm(Warm):
    def runtime(self, lab) -> str:
        path = os.path.join(lab.workdir, "rt")
        os.makedirs(path, mode=0o700, exist_ok=True)
        return path

    def env(self, lab) -> Dict[str, str]:
        return {"XDG_RUNTIME_DIR": self.runtime(lab)}

    def holders(self, lab) -> List[int]:
        try:
            with open(os.path.join(self.runtime(lab), "hostops", "keeper.pid")) as fh:
                return [int(fh.read().strip())]
        except (OSError, ValueError):
            return []

    def teardown(self, lab, env: Dict[str, str]) -> None:
        pids = self.holders(lab)
        everything = [p for root in pids for p in tree(root)]
        subprocess.run([sys.executable, "-m", "hostops", "connections", "stop"], env={**env, **self.env(lab)},
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
        _wait_gone(everything, 60)
        _reap(everything)


class MasterWarm(Warm):
    """OpenSSH masters (ControlPersist), found by their control socket's directory: a master
    renames itself "ssh: <ControlPath> [mux]" once it is in the background."""

    def __init__(self, name: str, subdir: str):
        super().__init__(name)
        self.subdir = subdir

    def holders(self, lab) -> List[int]:
        return _with_marker(os.path.join(lab.workdir, self.subdir) + "/")


def write_warm_ssh_config(lab) -> str:
    """The lab's ssh_config with connection sharing on (what Ansible does by default)."""
    path = os.path.join(lab.workdir, "ssh_config_warm")
    cm = os.path.join(lab.workdir, "cm")
    os.makedirs(cm, mode=0o700, exist_ok=True)
    with open(lab.ssh_config) as fh:
        text = fh.read()
    text = text.replace("  ControlMaster no\n", "  ControlMaster auto\n")
    # %n (the name given, h001…), not %C: every lab host is the same address, port and user, and
    # a path from those would share one master among all hosts, which 500 real hosts never could
    text = text.replace("  ControlPath none\n", f"  ControlPath {cm}/%n\n  ControlPersist {PERSIST}\n")
    with open(path, "w") as fh:
        fh.write(text)
    return path


def write_ansible_inventory(lab) -> str:
    path = os.path.join(lab.workdir, "ansible_hosts.ini")
    with open(path, "w") as fh:
        fh.write("[lab]\n" + "\n".join(lab.names) + "\n")
    return path


class AnsibleWarm(MasterWarm):
    """ansible's own ssh connection plugin: ControlPersist on, through the warm ssh_config."""

    def env(self, lab) -> Dict[str, str]:
        cp = os.path.join(lab.workdir, "acp")
        os.makedirs(cp, mode=0o700, exist_ok=True)
        return {"ANSIBLE_SSH_ARGS": f"-F {lab.ssh_config_warm} -o ControlMaster=auto -o ControlPersist={PERSIST}",
                "ANSIBLE_SSH_CONTROL_PATH_DIR": cp, "ANSIBLE_HOST_KEY_CHECKING": "True",
                "ANSIBLE_PIPELINING": "True", "ANSIBLE_GATHERING": "explicit", "ANSIBLE_LOCAL_TEMP": cp,
                "ANSIBLE_REMOTE_USER": lab.sshd.user, "ANSIBLE_PRIVATE_KEY_FILE": lab.sshd.user_key,
                "ANSIBLE_STDOUT_CALLBACK": "minimal", "ANSIBLE_LOAD_CALLBACK_PLUGINS": "True"}


# ------------------------------------------------------------------ precise CPU: a cpuacct cgroup
CPUACCT = "/sys/fs/cgroup/cpuacct"


class CpuGroup:
    """A cgroup-v1 cpuacct group of our own: CPU of its processes and all their descendants
    (reaped or alive) in nanoseconds. /proc's per-process figures are in clock ticks, and
    summed over hundreds of held sessions their rounding (up to a tick per process and field)
    would drown a warm command's few milliseconds. None of this when the machine has no
    writable cpuacct hierarchy (then fleet falls back to /proc ticks and says so)."""

    def __init__(self, name: str):
        self.path = os.path.join(CPUACCT, f"hostops-bench-{os.getpid()}-{name}")
        os.mkdir(self.path)

    @classmethod
    def make(cls, name: str) -> Optional["CpuGroup"]:
        try:
            return cls(name)
        except OSError:
            return None

    def add(self, pids: List[int]) -> None:
        for p in pids:
            try:
                with open(os.path.join(self.path, "cgroup.procs"), "w") as fh:
                    fh.write(str(p))
            except OSError:
                pass  # gone meanwhile

    def seconds(self) -> float:
        with open(os.path.join(self.path, "cpuacct.usage")) as fh:
            return int(fh.read()) / 1e9

    def remove(self) -> None:
        """Hand what is left back to the root group, then remove ours."""
        try:
            with open(os.path.join(self.path, "cgroup.procs")) as fh:
                left = [int(x) for x in fh.read().split()]
            for p in left:
                try:
                    with open(os.path.join(CPUACCT, "cgroup.procs"), "w") as fh:
                        fh.write(str(p))
                except OSError:
                    pass
            os.rmdir(self.path)
        except OSError:
            pass
