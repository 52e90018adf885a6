"""Fleet benchmark: hostops against its peers on N hosts served by one real sshd on loopback.

    python bench/fleet.py --hosts 500 [--rtt-ms 50] [--tools hostops,asyncssh,...] [--rounds 3] [--forks 500]

Starts an OpenSSH sshd lab on 127.0.0.1 (tests/sshlab.py), writes an inventory of hosts
h001..hNNN all pointing at it (or at a latency proxy in front of it with --rtt-ms), then runs
``echo ok`` on every host with each installed tool, round-robin within each round. For every
run it measures wall time, the client's CPU (whole process tree, from wait4's rusage), the sshd
master's CPU delta (its own + reaped children's, from /proc/<pid>/stat), the client tree's peak
RSS and peak summed RSS (sampled from /proc every ~50 ms) and how many hosts answered ``ok``.
Prints a table of medians and writes every run's figures to bench/results/<timestamp>.json.
See bench/README.md.
"""
from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import os
import platform
import re
import resource
import select
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, os.path.join(ROOT, "tests"))
from sshlab import SSHD  # noqa: E402  (reused: the lab sshd, inventory and known_hosts writers)
sys.path.insert(0, BENCH)
import warm  # noqa: E402  (the warm rows: --persist, ControlPersist)

PEERS = os.path.join(BENCH, "peers")
RESULTS = os.path.join(BENCH, "results")
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
CORES = os.cpu_count() or 1
ALL_TOOLS = ("hostops", "asyncssh", "pssh-lib", "fabric", "naive-pool", "pssh", "clush",
             "hostops-warm", "pssh-warm", "ansible-warm")
COMMAND = "echo ok"


# ------------------------------------------------------------------ /proc helpers
def proc_cpu(pid: int) -> Tuple[float, float]:
    """(own, own + reaped children) CPU seconds of ``pid``: utime+stime, utime+stime+cutime+cstime."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    # after the ")" field 3 (state) is index 0, so utime (14) is index 11
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime) / TICK, (utime + stime + cutime + cstime) / TICK


def children(pid: int, all_threads: bool) -> List[int]:
    """Direct children of ``pid`` (/proc/PID/task/TID/children: those of the main thread only,
    or of every thread)."""
    tids = [str(pid)]
    if all_threads:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            return []
    kids: List[int] = []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                kids += [int(x) for x in fh.read().split()]
        except OSError:
            pass
    return kids


def descendants(pid: int, all_threads: bool = True, limit: int = 100000) -> List[int]:
    seen: List[int] = []
    todo = [pid]
    while todo and len(seen) < limit:
        p = todo.pop()
        seen.append(p)
        todo += children(p, all_threads)
    return seen


def rss_bytes(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return None


def process_group_members(pgid: int) -> List[int]:
    """PIDs whose process group is ``pgid`` (the tool's session: it was started with setsid)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == pgid:
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            found.append(int(entry))
    return found


def cpu_times() -> Dict[str, float]:
    """The machine's CPU seconds (all cores) by kind, from /proc/stat."""
    with open("/proc/stat") as fh:
        f = [int(x) / TICK for x in fh.readline().split()[1:9]]
    return dict(zip(("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"), f))


def system_busy() -> float:
    """CPU seconds this machine's processes and kernel spent busy (all cores; steal, the time the
    hypervisor gave to other guests, is not counted: it is recorded apart)."""
    t = cpu_times()
    return t["user"] + t["nice"] + t["system"] + t["irq"] + t["softirq"]


def wait_quiet(max_seconds: float, threshold: float = 0.15) -> Tuple[float, float]:
    """Wait (at most ``max_seconds``) until the machine is quiet: under ``threshold`` cores busy over
    one second. Between runs nothing of ours is working, so busy CPU then is someone else's.
    Returns (seconds waited, cores busy in the last second)."""
    t0 = time.monotonic()
    load = 0.0
    while True:
        b0, w0 = system_busy(), time.monotonic()
        time.sleep(1.0)
        load = (system_busy() - b0) / (time.monotonic() - w0)
        if load < threshold or time.monotonic() - t0 >= max_seconds:
            return time.monotonic() - t0, load


def become_subreaper() -> bool:
    """Make this process the child subreaper of everything it starts: a descendant whose parent
    exits without reaping it (clush leaves some of its ssh processes so) comes to us instead of
    to init, and its CPU can still be counted (see reap_adopted)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0   # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def _stat_fields(pid: int) -> Optional[List[str]]:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def reap_adopted(tool_sid: int, keep: set, max_seconds: float = 10.0) -> Tuple[float, int, float, int]:
    """Reap the processes we adopted as subreaper (our children but for ``keep``: sshd, the proxy).
    Those of the tool's session (it ran under setsid, so sid == its PID) are killed if still
    running and counted as the tool's; zombies of any other session (sshd's orphans) are counted
    as sshd's. Returns (tool CPU s, tool processes, other CPU s, other processes); bounded."""
    tool_cpu = other_cpu = 0.0
    n_tool = n_other = 0
    deadline = time.monotonic() + max_seconds
    while time.monotonic() < deadline:
        pending = False
        for p in children(os.getpid(), all_threads=True):
            if p in keep:
                continue
            fields = _stat_fields(p)
            if fields is None:
                continue
            mine = int(fields[3]) == tool_sid
            if mine and fields[0] != "Z":
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            elif not mine and fields[0] != "Z":
                continue   # someone else's orphan still at work: reaped by a later call
            try:
                pid, _status, ru = os.wait4(p, os.WNOHANG)
            except ChildProcessError:
                continue
            if pid == 0:
                pending = True
                continue
            if mine:
                tool_cpu += ru.ru_utime + ru.ru_stime
                n_tool += 1
            else:
                other_cpu += ru.ru_utime + ru.ru_stime
                n_other += 1
        if not pending:
            break
        time.sleep(0.05)
    return tool_cpu, n_tool, other_cpu, n_other


def listen_overflows() -> int:
    """TcpExt ListenOverflows: connections a full accept queue turned away (machine-wide)."""
    try:
        with open("/proc/net/netstat") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return 0
    for head, vals in zip(lines[::2], lines[1::2]):
        if head.startswith("TcpExt:"):
            table = dict(zip(head.split()[1:], (int(v) for v in vals.split()[1:])))
            return table.get("ListenOverflows", 0)
    return 0


class TreeSampler(threading.Thread):
    """Samples the RSS of a process tree every ``interval`` s until stopped (bounded)."""

    def __init__(self, root: int, interval: float, max_seconds: float):
        super().__init__(daemon=True, name="rss-sampler")
        self.root = root
        self.interval = interval
        self.max_samples = int(max_seconds / interval) + 10
        self.stop_event = threading.Event()
        self.peak_sum = 0
        self.peak_one = 0
        self.peak_procs = 0
        self.samples = 0
        self.busy = 0.0   # seconds this thread spent sampling

    def run(self) -> None:
        known: set = set()
        while not self.stop_event.is_set() and self.samples < self.max_samples:
            t0 = time.perf_counter()
            # every 10th sample look at the children of every thread (a threaded tool may fork
            # from any thread); in between, only main threads', which is cheap
            full = self.samples % 10 == 0
            tree = set(descendants(self.root, all_threads=full))
            if not full:
                tree |= {p for p in known if os.path.exists(f"/proc/{p}")}
                for p in list(tree - {self.root}):
                    tree |= set(descendants(p, all_threads=False))
            known = tree
            total = 0
            for p in tree:
                r = rss_bytes(p)
                if r:
                    total += r
                    self.peak_one = max(self.peak_one, r)
            self.peak_sum = max(self.peak_sum, total)
            self.peak_procs = max(self.peak_procs, len(tree))
            self.samples += 1
            self.busy += time.perf_counter() - t0
            self.stop_event.wait(self.interval)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(5.0)


# ------------------------------------------------------------------ the lab
class Lab:
    """sshd (+ optional latency proxy) and every file the tools need."""

    def __init__(self, hosts: int, rtt_ms: float, workdir: str, ssh_kex: str = ""):
        self.hosts = hosts
        self.ssh_kex = ssh_kex
        self.rtt_ms = rtt_ms
        self.workdir = workdir
        self.sshd = SSHD(os.path.join(workdir, "sshd"), log_level="INFO")  # INFO: logins are counted
        self.proxy: Optional[subprocess.Popen] = None
        self.port = 0

    def start(self) -> "Lab":
        self.sshd.start()
        self.cpu_group = warm.CpuGroup.make("sshd")  # ns-precise sshd CPU, sessions alive or not
        if self.cpu_group is not None:
            self.cpu_group.add([self.sshd.proc.pid])  # before any connection: every session inherits it
        self.port = self.sshd.port
        if self.rtt_ms > 0:
            self._start_proxy()
        # the tools connect to self.port (sshd's, or the proxy's): a copy of the SSHD object with
        # that port writes the inventory and the known_hosts entry [127.0.0.1]:<port>
        view = copy.copy(self.sshd)
        view.port = self.port
        self.inventory = view.write_inventory(os.path.join(self.workdir, "inventory.yml"), self.hosts, prefix="h")
        self.known_hosts = view.write_known_hosts(os.path.join(self.workdir, "known_hosts"))
        self.names = [e["name"] for e in view.host_entries(self.hosts, prefix="h")]
        self.hostfile = os.path.join(self.workdir, "hosts.txt")
        with open(self.hostfile, "w") as fh:
            fh.write("\n".join(self.names) + "\n")
        self.ssh_config = os.path.join(self.workdir, "ssh_config")
        with open(self.ssh_config, "w") as fh:
            fh.write("\n".join([
                "Host h*",
                "  HostName 127.0.0.1",
                f"  Port {self.port}",
                f"  User {self.sshd.user}",
                f"  IdentityFile {self.sshd.user_key}",
                "  IdentitiesOnly yes",
                "  IdentityAgent none",
                f"  UserKnownHostsFile {self.known_hosts}",
                "  GlobalKnownHostsFile /dev/null",
                "  StrictHostKeyChecking yes",
                "  UpdateHostKeys no",
                "  BatchMode yes",
                "  ControlMaster no",
                "  ControlPath none",
                "  ConnectTimeout 60",
                "  LogLevel ERROR",
            ] + ([f"  KexAlgorithms {self.ssh_kex}"] if self.ssh_kex else [])) + "\n")
        self.ssh_config_warm = warm.write_warm_ssh_config(self)
        self.ansible_hosts = warm.write_ansible_inventory(self)
        self.fleet = os.path.join(self.workdir, "fleet.json")
        with open(self.fleet, "w") as fh:
            json.dump({"user": self.sshd.user, "key": self.sshd.user_key, "known_hosts": self.known_hosts,
                       "command": COMMAND,
                       "hosts": [{"name": n, "host": "127.0.0.1", "port": self.port} for n in self.names]}, fh)
        return self

    def _start_proxy(self) -> None:
        self.proxy = subprocess.Popen(
            [sys.executable, os.path.join(BENCH, "latency_proxy.py"), "--target-port", str(self.sshd.port),
             "--rtt-ms", str(self.rtt_ms)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=open(os.path.join(self.workdir, "proxy.err"), "wb"),
            text=True)
        ready, _, _ = select.select([self.proxy.stdout], [], [], 15)
        line = self.proxy.stdout.readline() if ready else ""
        m = re.match(r"PORT (\d+)", line)
        if not m:
            self.stop()
            raise RuntimeError(f"latency proxy did not start (said {line!r})")
        self.port = int(m.group(1))

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Wait (bounded) until sshd has no per-connection children left: their CPU is then in
        the master's cutime/cstime."""
        deadline = time.monotonic() + timeout
        pid = self.sshd.proc.pid
        while time.monotonic() < deadline:
            if not children(pid, all_threads=False):
                return True
            time.sleep(0.05)
        return False

    def own_pids(self) -> set:
        pids = {self.sshd.proc.pid} if self.sshd.proc is not None else set()
        if self.proxy is not None:
            pids.add(self.proxy.pid)
        return pids

    def cpu(self) -> Dict[str, float]:
        """sshd's whole tree: what it reaped and every live session (warm tools keep some open)."""
        group = getattr(self, "cpu_group", None)
        out = {"sshd": group.seconds() if group is not None else warm.tree_cpu([self.sshd.proc.pid])}
        if self.proxy is not None:
            out["proxy"] = proc_cpu(self.proxy.pid)[0]
        return out

    def stop(self) -> None:
        if self.proxy is not None:
            if self.proxy.poll() is None:
                self.proxy.terminate()
                try:
                    out, _ = self.proxy.communicate(timeout=10)
                    self.proxy_counters = out.strip().splitlines()[-1] if out.strip() else ""
                except subprocess.TimeoutExpired:
                    self.proxy.kill()
                    self.proxy.wait(5)
            self.proxy = None
        self.sshd.stop()
        if getattr(self, "cpu_group", None) is not None:
            time.sleep(0.5)
            self.cpu_group.remove()


# ------------------------------------------------------------------ tools
class Tool:
    def __init__(self, name: str, argv: Callable[["Lab", argparse.Namespace], List[str]],
                 parse: Callable[[str, str], Tuple[int, List[str]]], available: Callable[[], Optional[str]],
                 note: str = "", warm_side: Optional["warm.Warm"] = None):
        self.warm = warm_side  # a warm row: primed before, its connection holders measured apart
        self.name = name
        self.argv = argv
        self.parse = parse
        self.available = available
        self.note = note


def _module_missing(module: str) -> Callable[[], Optional[str]]:
    def check() -> Optional[str]:
        import importlib.util

        if importlib.util.find_spec(module) is None:
            return f"python module {module!r} not installed (run bench/setup)"
        return None
    return check


def _command_missing(command: str, package: str) -> Callable[[], Optional[str]]:
    def check() -> Optional[str]:
        if shutil.which(command) is None:
            return f"command {command!r} not found (apt-get install {package}; or run bench/setup)"
        return None
    return check


def parse_hostops(out: str, err: str) -> Tuple[int, List[str]]:
    ok, reasons = set(), []
    for line in out.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("status") == "ok" and str(rec.get("stdout", "")).strip() == "ok":
            ok.add(rec.get("host"))
        else:
            reasons.append(f"{rec.get('status')}: {rec.get('error') or rec.get('stderr') or rec.get('stdout')}")
    return len(ok), reasons


def parse_peer(out: str, err: str) -> Tuple[int, List[str]]:
    ok, reasons = set(), []
    for line in out.splitlines():
        if line.startswith("OK "):
            ok.add(line[3:].strip())
        elif line.startswith("FAIL "):
            reasons.append(line.split(" ", 2)[2] if line.count(" ") >= 2 else line)
    return len(ok), reasons


PSSH_HEAD = re.compile(r"^\[\d+\] \S+ \[(SUCCESS|FAILURE)\] (\S+)(.*)$")


def parse_pssh(out: str, err: str) -> Tuple[int, List[str]]:
    """parallel-ssh -i: a header per host, ``[n] time [SUCCESS] host``, then its output."""
    ok, reasons = set(), []
    current, status, body = None, None, []

    def close() -> None:
        if current is None:
            return
        if status == "SUCCESS" and any(b.strip() == "ok" for b in body):
            ok.add(current)
        else:
            reasons.append(f"{status} {tail_text} {' '.join(body)[:120]}".strip())

    tail_text = ""
    for line in out.splitlines():
        m = PSSH_HEAD.match(line)
        if m:
            close()
            status, current, tail_text, body = m.group(1), m.group(2), m.group(3).strip(), []
        else:
            body.append(line)
    close()
    return len(ok), reasons


def parse_clush(out: str, err: str) -> Tuple[int, List[str]]:
    ok, reasons = set(), []
    for line in out.splitlines():
        name, sep, rest = line.partition(": ")
        if sep and rest.strip() == "ok":
            ok.add(name)
    for line in err.splitlines():
        if line.strip():
            reasons.append(line.strip())
    return len(ok), reasons


def tools(args: argparse.Namespace) -> Dict[str, Tool]:
    py = sys.executable
    t = args.peer_timeout or args.run_timeout
    return {t_.name: t_ for t_ in [
        Tool("hostops", lambda lab, a: [py, "-m", "hostops", "exec", COMMAND, "-i", lab.inventory,
                                        "--known-hosts", lab.known_hosts, "-f", str(a.forks), "--json"]
             + shlex.split(a.hostops_args),
             parse_hostops, _module_missing("hostops")),
        Tool("asyncssh", lambda lab, a: [py, os.path.join(PEERS, "asyncssh_peer.py"), lab.fleet,
                                         "--forks", str(a.forks), "--timeout", str(t)],
             parse_peer, _module_missing("asyncssh")),
        Tool("pssh-lib", lambda lab, a: [py, os.path.join(PEERS, "pssh_lib_peer.py"), lab.fleet,
                                         "--forks", str(a.forks), "--timeout", str(t)],
             parse_peer, _module_missing("pssh"), note="parallel-ssh does not check host keys"),
        Tool("fabric", lambda lab, a: [py, os.path.join(PEERS, "fabric_peer.py"), lab.fleet, "--timeout", str(t)],
             parse_peer, _module_missing("fabric"), note="one thread per host, all at once (--forks not used)"),
        Tool("naive-pool", lambda lab, a: [py, os.path.join(PEERS, "naive_pool_peer.py"), lab.fleet,
                                           "--processes", "64", "--timeout", str(t)],
             parse_peer, _module_missing("paramiko"), note="multiprocessing.Pool(64), one host per task"),
        Tool("pssh", lambda lab, a: ["parallel-ssh", "-h", lab.hostfile, "-p", str(a.forks), "-t", str(t),
                                     "-x", f"-F {lab.ssh_config}", "-i", COMMAND],
             parse_pssh, _command_missing("parallel-ssh", "pssh")),
        Tool("clush", lambda lab, a: ["clush", "--hostfile", lab.hostfile, "-f", str(a.forks),
                                      "-o", f"-F {lab.ssh_config}", "-t", str(t), "-u", str(a.run_timeout), COMMAND],
             parse_clush, _command_missing("clush", "clustershell")),
        Tool("hostops-warm", lambda lab, a: [py, "-m", "hostops", "exec", COMMAND, "-i", lab.inventory,
                                             "--known-hosts", lab.known_hosts, "-f", str(a.forks), "--json",
                                             "--persist", warm.PERSIST] + shlex.split(a.hostops_args),
             parse_hostops, _module_missing("hostops"), warm_side=warm.HostopsWarm("hostops-warm"),
             note="second run with --persist; the keeper's CPU and RSS are added to the client's"),
        Tool("pssh-warm", lambda lab, a: ["parallel-ssh", "-h", lab.hostfile, "-p", str(a.forks), "-t", str(t),
                                          "-x", f"-F {lab.ssh_config_warm}", "-i", COMMAND],
             parse_pssh, _command_missing("parallel-ssh", "pssh"), warm_side=warm.MasterWarm("pssh-warm", "cm"),
             note="second run with ControlMaster auto + ControlPersist; the ssh masters' CPU and RSS are added"),
        Tool("ansible-warm", lambda lab, a: [os.path.join(os.path.dirname(py), "ansible"), "all", "-i", lab.ansible_hosts,
                                             "-m", "raw", "-a", COMMAND, "-f", str(a.forks), "-o"],
             parse_ansible, _command_missing(os.path.join(os.path.dirname(py), "ansible"), "ansible-core"),
             warm_side=warm.AnsibleWarm("ansible-warm", "acp"),
             note="ansible -m raw, second run over its ControlPersist masters; their CPU and RSS are added"),
    ]}


def parse_ansible(out: str, err: str) -> Tuple[int, List[str]]:
    """ansible -o: ``host | CHANGED | rc=0 | (stdout) ok``."""
    ok, reasons = set(), []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(" | ")]
        if len(parts) >= 4 and parts[1] in ("CHANGED", "SUCCESS") and parts[2] == "rc=0" and "ok" in parts[3]:
            ok.add(parts[0])
        elif line.strip():
            reasons.append(line.strip()[:200])
    return len(ok), reasons


# ------------------------------------------------------------------ one run
def kill_tree(pid: int) -> int:
    """SIGKILL a tool and all its descendants, each by PID (only processes this run started)."""
    victims = descendants(pid, all_threads=True)
    for p in victims:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(victims)


def run_one(tool: Tool, lab: Lab, args: argparse.Namespace, rnd: int, env: Dict[str, str], attempt: int = 0) -> dict:
    argv = tool.argv(lab, args)
    out_path = os.path.join(lab.workdir, f"{tool.name}-r{rnd}-a{attempt}.out")
    err_path = os.path.join(lab.workdir, f"{tool.name}-r{rnd}-a{attempt}.err")
    lab.wait_idle(30)
    primed = tool.warm.prime(argv, lab, env) if tool.warm else None
    if tool.warm:
        env = {**env, **tool.warm.env(lab)}
    reap_adopted(-1, lab.own_pids())   # strays from before this run: not this run's
    waited, load_before = wait_quiet(args.settle_max) if args.settle_max > 0 else (0.0, 0.0)
    times0 = cpu_times()
    busy0 = system_busy()
    cpu0 = lab.cpu()
    logins0 = lab.sshd.count_logins()
    held_group = warm.CpuGroup.make(f"held-{rnd}-{attempt}") if tool.warm else None
    if held_group is not None:  # the processes holding the connections, from here on
        held_group.add([p for root in tool.warm.holders(lab) for p in warm.tree(root)])
    held0 = (held_group.seconds() if held_group else warm.tree_cpu(tool.warm.holders(lab))) if tool.warm else 0.0
    overflow0 = listen_overflows()
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    timed_out = threading.Event()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=ROOT, env=env,
                                start_new_session=True)
        sampler = TreeSampler(proc.pid, args.sample_ms / 1000.0, args.run_timeout + 30)
        sampler.start()

        def on_timeout() -> None:
            timed_out.set()
            kill_tree(proc.pid)

        watchdog = threading.Timer(args.run_timeout, on_timeout)
        watchdog.daemon = True
        watchdog.start()
        # wait for the exit without reaping, so the PID (and its group) cannot be reused while we
        # stop the watchdog and clean up what the tool left behind in its session
        try:
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        except BaseException:   # Ctrl-C / SIGTERM: take the tool down with us, then re-raise
            watchdog.cancel()
            sampler.stop()
            kill_tree(proc.pid)
            os.wait4(proc.pid, 0)
            proc.returncode = -9
            raise
        wall = time.perf_counter() - t0
        watchdog.cancel()
        sampler.stop()
        leftovers = process_group_members(proc.pid)
        for p in leftovers:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _pid, status, ru = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)   # reaped here: Popen must not wait again
    logins = lab.sshd.count_logins() - logins0
    held_cpu = held_rss = 0.0
    if tool.warm:  # measured before the held connections close (closing them is not the run's cost)
        held = tool.warm.holders(lab)
        held_cpu = (held_group.seconds() if held_group else warm.tree_cpu(held)) - held0
        held_rss = warm.tree_rss(held)
        cpu_warm = lab.cpu()
        tool.warm.teardown(lab, env)
        if held_group is not None:
            held_group.remove()
    idle = lab.wait_idle(60)
    # descendants the tool did not reap were adopted by us (subreaper): count them too
    orphan_cpu, orphans, sshd_orphan_cpu, sshd_orphans = reap_adopted(proc.pid, lab.own_pids())
    cpu1 = cpu_warm if tool.warm else lab.cpu()
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    busy1 = system_busy()
    times1 = cpu_times()
    with open(out_path, errors="replace") as fh:
        stdout = fh.read()
    with open(err_path, errors="replace") as fh:
        stderr = fh.read()
    ok, reasons = tool.parse(stdout, stderr)
    sshd_cpu = cpu1["sshd"] - cpu0["sshd"] + sshd_orphan_cpu
    client_user, client_sys = ru.ru_utime, ru.ru_stime
    floor = sshd_cpu / CORES
    rec = {
        "tool": tool.name, "round": rnd, "argv": argv, "exit_code": proc.returncode,
        "timed_out": timed_out.is_set(), "wall_s": round(wall, 3),
        "client_user_s": round(client_user, 3), "client_sys_s": round(client_sys, 3),
        "client_cpu_s": round(client_user + client_sys + orphan_cpu + held_cpu, 3),
        "held_cpu_s": round(held_cpu, 3), "held_rss_mb": round(held_rss / 2**20, 1), "logins": logins,
        "primed": list(primed) if primed else None,
        "client_unreaped_cpu_s": round(orphan_cpu, 3), "client_unreaped_processes": orphans,
        "sshd_orphans_cpu_s": round(sshd_orphan_cpu, 3), "sshd_orphans": sshd_orphans,
        "sshd_cpu_s": round(sshd_cpu, 3), "floor_s": round(floor, 3),
        "wall_over_floor": round(wall / floor, 2) if floor > 0 else None,
        "peak_rss_mb": round(max(ru.ru_maxrss * 1024, sampler.peak_one) / 2**20, 1),
        "peak_rss_sampled_mb": round(sampler.peak_one / 2**20, 1),
        "summed_rss_mb": round((sampler.peak_sum + held_rss) / 2**20, 1),
        "peak_processes": sampler.peak_procs, "rss_samples": sampler.samples,
        "hosts": lab.hosts, "hosts_ok": ok,
        "failures": len(reasons), "failure_examples": sorted(set(reasons))[:5],
        "stderr_tail": stderr[-1500:] if (ok < lab.hosts or proc.returncode) else "",
        "leftover_processes_killed": len(leftovers), "sshd_idle_after": idle,
        "listen_overflows": listen_overflows() - overflow0,
        "harness_cpu_s": round((self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime), 3),
        "sampler_busy_s": round(sampler.busy, 3),
    }
    if "proxy" in cpu1:
        rec["proxy_cpu_s"] = round(cpu1["proxy"] - cpu0["proxy"], 3)
    # whatever else the machine did meanwhile (another job's tests, say): busy CPU not ours
    ours = rec["client_cpu_s"] + sshd_cpu + rec["harness_cpu_s"] + rec.get("proxy_cpu_s", 0.0)
    rec["other_cpu_s"] = round(max(0.0, (busy1 - busy0) - ours), 3)
    rec["machine_cpu_s"] = {k: round(times1[k] - times0[k], 2) for k in times0}
    rec["settle_wait_s"] = round(waited, 1)
    rec["load_before"] = round(load_before, 2)
    # a run is "disturbed" when others took more than 10% of the machine during it
    rec["disturbed"] = rec["other_cpu_s"] > 0.10 * CORES * wall + 0.5
    return rec


# ------------------------------------------------------------------ report
def summarize(runs: List[dict], hosts: int) -> List[dict]:
    rows = []
    order: List[str] = []
    for r in runs:
        if r["tool"] not in order:
            order.append(r["tool"])
    for name in order:
        every = [r for r in runs if r["tool"] == name]
        # medians over the runs nobody else disturbed when there are at least two of them (one
        # alone is no median); else over every run, and the row is marked
        quiet = [r for r in every if not r.get("disturbed")]
        rs = quiet if len(quiet) >= 2 or len(quiet) == len(every) else every
        med = lambda k: statistics.median(r[k] for r in rs if r.get(k) is not None)  # noqa: E731
        oks = [r["hosts_ok"] for r in every]   # a failure in any run shows
        row = {"tool": name, "runs": len(rs), "runs_disturbed_excluded": len(every) - len(rs),
               "hosts_ok_every_run": [r["hosts_ok"] for r in every], "wall_s": med("wall_s"), "client_cpu_s": med("client_cpu_s"),
               "sshd_cpu_s": med("sshd_cpu_s"), "floor_s": med("floor_s"),
               "wall_over_floor": med("wall_over_floor") if any(r.get("wall_over_floor") for r in rs) else None,
               "peak_rss_mb": med("peak_rss_mb"), "summed_rss_mb": med("summed_rss_mb"),
               "client_ms_per_host": round(1000 * med("client_cpu_s") / hosts, 2),
               "sshd_ms_per_host": round(1000 * med("sshd_cpu_s") / hosts, 2),
               # both sides share the same cores here: (sshd + client CPU) / cores bounds wall too
               "cpu_floor_s": round(statistics.median((r["sshd_cpu_s"] + r["client_cpu_s"]) / CORES for r in rs), 3),
               "hosts_ok_min": min(oks), "hosts_ok_max": max(oks), "hosts": hosts,
               "timeouts": sum(r["timed_out"] for r in rs),
               "disturbed_runs_used": sum(bool(r.get("disturbed")) for r in rs),
               "other_cpu_s": med("other_cpu_s"), "listen_overflows": med("listen_overflows"),
               "logins": med("logins") if any("logins" in r for r in rs) else None,
               "held_rss_mb": med("held_rss_mb") if any("held_rss_mb" in r for r in rs) else None}
        if any("proxy_cpu_s" in r for r in rs):
            row["proxy_cpu_s"] = med("proxy_cpu_s")
        rows.append(row)
    return rows


def format_table(rows: List[dict]) -> str:
    head = ["tool", "wall s", "client CPU s", "sshd CPU s", "floor s", "wall/floor", "peak RSS MB",
            "summed RSS MB", "logins", "hosts ok"]
    lines = []
    for r in rows:
        ok = f"{r['hosts_ok_min']}/{r['hosts']}" if r["hosts_ok_min"] == r["hosts_ok_max"] \
            else f"{r['hosts_ok_min']}-{r['hosts_ok_max']}/{r['hosts']}"
        if r["timeouts"]:
            ok += f" ({r['timeouts']} timed out)"
        name = r["tool"] + (" *" if r["disturbed_runs_used"] else "")
        wf = "-" if r["wall_over_floor"] is None else f"{r['wall_over_floor']:.2f}"
        lines.append([name, f"{r['wall_s']:.2f}", f"{r['client_cpu_s']:.2f}", f"{r['sshd_cpu_s']:.2f}",
                      f"{r['floor_s']:.2f}", wf, f"{r['peak_rss_mb']:.0f}", f"{r['summed_rss_mb']:.0f}",
                      "-" if r.get("logins") is None else f"{r['logins']:.0f}", ok])
    widths = [max(len(head[i]), *(len(l[i]) for l in lines)) for i in range(len(head))]
    fmt = lambda cells: "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                          for i, (c, w) in enumerate(zip(cells, widths))) + " |"
    sep = "|" + "|".join("-" * (w + 1) + ":" if i else ":" + "-" * (w + 1) for i, w in enumerate(widths)) + "|"
    return "\n".join([fmt(head), sep] + [fmt(l) for l in lines])


def print_notes(runs: List[dict], rows: List[dict]) -> None:
    disturbed = sum(bool(r.get("disturbed")) for r in runs)
    if disturbed:
        marked = [r["tool"] for r in rows if r["disturbed_runs_used"]]
        print(f"\n{disturbed} of {len(runs)} runs shared the machine with other work (over 10% of it; "
              "other_cpu_s in the JSON). Medians use the undisturbed runs where a tool has two or more"
              + (f"; * = medians over every run, disturbed ones included ({', '.join(marked)})" if marked else "")
              + ". hosts ok is over every run.")


def report(paths: List[str]) -> int:
    """Print the tables of saved runs again (bench/results/*.json)."""
    for path in paths:
        with open(path) as fh:
            d = json.load(fh)
        a = d["args"]
        rows = summarize(d["runs"], a["hosts"])
        print(f"\n{path}: {d.get('command', '')}\n{a['hosts']} hosts, --forks {a['forks']}, rtt {a['rtt_ms']:g} ms, "
              f"{a['rounds']} round(s), {d.get('cores')} cores; medians\n")
        print(format_table(rows))
        print_notes(d["runs"], rows)
        for name, note in d.get("notes", {}).items():
            print(f"note {name}: {note}")
    return 0


def machine_info() -> dict:
    def sh(cmd: str) -> str:
        try:
            return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""
    versions = {}
    for mod, dist in (("hostops", "hostops"), ("paramiko", "paramiko"), ("asyncssh", "asyncssh"),
                      ("pssh", "parallel-ssh"), ("fabric", "fabric"), ("ssh2", "ssh2-python")):
        try:
            from importlib.metadata import version

            versions[dist] = version(dist)
        except Exception:  # noqa: BLE001 - not installed
            pass
    versions["openssh"] = sh("ssh -V 2>&1")
    versions["pssh"] = sh("dpkg-query -W -f '${Version}' pssh 2>/dev/null")
    versions["clustershell"] = sh("dpkg-query -W -f '${Version}' clustershell 2>/dev/null")
    return {"nproc": sh("nproc"), "lscpu": sh("lscpu | head -15"), "kernel": sh("uname -r"),
            "python": platform.python_version(), "versions": versions,
            "somaxconn": sh("cat /proc/sys/net/core/somaxconn")}


def hostops_code() -> dict:
    """Which hostops was measured: HEAD, uncommitted changes under hostops/, and a hash of its files
    (the tree may change while a benchmark runs; each hostops run records the hash it ran)."""
    import hashlib

    digest = hashlib.sha256()
    pkg = os.path.join(ROOT, "hostops")
    for base, dirs, files in sorted(os.walk(pkg)):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for f in sorted(files):
            if f.endswith((".py", ".yml")):
                path = os.path.join(base, f)
                digest.update(os.path.relpath(path, pkg).encode() + b"\0")
                with open(path, "rb") as fh:
                    digest.update(fh.read())

    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""
    dirty = [l for l in git("status", "--porcelain", "--", "hostops").splitlines() if l.strip()]
    return {"head": git("rev-parse", "--short", "HEAD"), "uncommitted_files": len(dirty),
            "sha256": digest.hexdigest()[:16]}


# ------------------------------------------------------------------ main
def precompile_hostops() -> None:
    """Byte-compile the hostops that will run, as pip does for every installed peer: from a
    source checkout under PYTHONDONTWRITEBYTECODE, each run would otherwise compile every
    module again (0.1-0.2 s of CPU counted against hostops)."""
    import compileall
    import importlib.util

    spec = importlib.util.find_spec("hostops")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        compileall.compile_dir(folder, quiet=1)


def raise_nofile() -> Tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def report_run(rec: dict, rnd: int, args: argparse.Namespace) -> None:
    flag = "" if rec["hosts_ok"] == args.hosts else f"  <-- {rec['failures']} failed"
    if rec["timed_out"]:
        flag += f" (killed after {args.run_timeout}s)"
    if rec["disturbed"]:
        flag += f"  [disturbed: {rec['other_cpu_s']:.1f}s CPU used by other processes]"
    print(f"fleet: round {rnd + 1}/{args.rounds} {rec['tool']:<10} wall {rec['wall_s']:7.2f}s "
          f"client {rec['client_cpu_s']:7.2f}s sshd {rec['sshd_cpu_s']:7.2f}s "
          f"ok {rec['hosts_ok']}/{args.hosts} logins {rec.get('logins', '-')} rc={rec['exit_code']}{flag}",
          file=sys.stderr)
    if rec["hosts_ok"] < args.hosts and rec["failure_examples"]:
        print(f"fleet:   e.g. {rec['failure_examples'][0][:300]}", file=sys.stderr)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="hostops fleet benchmark against its peers (see bench/README.md). "
                                 "'fleet.py --report FILE.json...' prints saved results again.")
    ap.add_argument("--hosts", type=int, default=500, help="inventory hosts h001..hN, all on the lab sshd")
    ap.add_argument("--rtt-ms", type=float, default=0, help="add this round-trip time with a latency proxy")
    ap.add_argument("--tools", default=",".join(ALL_TOOLS), help=f"comma list from: {','.join(ALL_TOOLS)}")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; each runs every tool once (round-robin)")
    ap.add_argument("--forks", type=int, default=500, help="hosts in flight (each tool's parallelism knob)")
    ap.add_argument("--run-timeout", type=int, default=600, help="a run still going after this many s is killed")
    ap.add_argument("--sample-ms", type=float, default=50, help="RSS sampling period")
    ap.add_argument("--ssh-kex", default="", metavar="ALGS",
                    help="KexAlgorithms for the OpenSSH-based tools (pssh, clush); default: OpenSSH's own "
                         "(sntrup761x25519-sha512 on OpenSSH 9.x, far costlier than the curve25519-sha256 "
                         "the Python libraries use)")
    ap.add_argument("--hostops-args", default="", metavar="ARGS",
                    help="extra options for hostops exec, e.g. '--connect-timeout 60' (the peers wait up to "
                         "--run-timeout to connect; hostops's own default is 10 s)")
    ap.add_argument("--peer-timeout", type=int, default=0, metavar="S",
                    help="connect/command timeout given to the peers (default: --run-timeout); "
                         "10 matches hostops's default --connect-timeout")
    ap.add_argument("--settle-max", type=float, default=60, metavar="S",
                    help="before each run wait up to S seconds for the machine to be quiet (0: don't)")
    ap.add_argument("--redo-disturbed", type=int, default=1, metavar="N",
                    help="run again (up to N times) a run that other processes disturbed; medians skip "
                         "disturbed runs when a tool has undisturbed ones")
    ap.add_argument("--keep", action="store_true", help="keep the lab directory (tool outputs, configs)")
    ap.add_argument("--no-json", action="store_true", help="do not write bench/results/<timestamp>.json")
    args = ap.parse_args(argv)
    args.tool_list = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = [t for t in args.tool_list if t not in ALL_TOOLS]
    if unknown:
        ap.error(f"unknown tool(s) {', '.join(unknown)}; choose from {', '.join(ALL_TOOLS)}")
    if args.hosts < 1 or args.rounds < 1 or args.forks < 1:
        ap.error("--hosts, --rounds and --forks must be at least 1")
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--report":
        return report(argv[1:])
    args = parse_args(argv)
    nofile = raise_nofile()   # inherited by sshd, the proxy and every tool
    if not become_subreaper():
        print("fleet: note: could not become a child subreaper; CPU of processes a tool leaves "
              "unreaped is not counted", file=sys.stderr)
    registry = tools(args)
    chosen, skipped = [], {}
    for name in args.tool_list:
        why = registry[name].available()
        if why:
            skipped[name] = why
            print(f"fleet: skipping {name}: {why}", file=sys.stderr)
        else:
            chosen.append(registry[name])
    if not chosen:
        print("fleet: no tool to run", file=sys.stderr)
        return 2
    if args.rounds < 3:
        print(f"fleet: note: {args.rounds} round(s); medians are more trustworthy with 3 or more", file=sys.stderr)

    precompile_hostops()
    env = dict(os.environ)
    env.pop("SSH_AUTH_SOCK", None)      # keys come from files only, for every tool
    env["PYTHONUNBUFFERED"] = "1"
    env["NO_COLOR"] = "1"
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    workdir = tempfile.mkdtemp(prefix="hostops-bench-")
    lab = Lab(args.hosts, args.rtt_ms, workdir, args.ssh_kex)
    runs: List[dict] = []
    started = time.time()

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    interrupted = False
    try:
        lab.start()
        where = f"latency proxy :{lab.port} (+{args.rtt_ms:g} ms RTT) -> sshd :{lab.sshd.port}" \
            if args.rtt_ms else f"sshd 127.0.0.1:{lab.port}"
        print(f"fleet: {args.hosts} hosts via {where}; forks {args.forks}; {args.rounds} round(s); "
              f"tools {', '.join(t.name for t in chosen)}; RLIMIT_NOFILE {nofile[0]}; lab {workdir}",
              file=sys.stderr)
        for rnd in range(args.rounds):
            # round-robin, and each round starts one tool later, so no tool always runs first
            order = chosen[rnd % len(chosen):] + chosen[:rnd % len(chosen)]
            for tool in order:
                for attempt in range(1 + args.redo_disturbed):
                    code = hostops_code() if tool.name == "hostops" else None
                    rec = run_one(tool, lab, args, rnd, env, attempt)
                    rec["attempt"] = attempt
                    if code:
                        rec["hostops_code"] = code
                    runs.append(rec)
                    report_run(rec, rnd, args)
                    if not rec["disturbed"] or attempt == args.redo_disturbed:
                        break
                    print(f"fleet:   disturbed by other work ({rec['other_cpu_s']:.1f}s CPU not ours): "
                          "running it again", file=sys.stderr)
    except KeyboardInterrupt:
        interrupted = True
        print("fleet: interrupted; reporting the runs that finished", file=sys.stderr)
    finally:
        lab.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    rows = summarize(runs, args.hosts) if runs else []
    measured = {r["hostops_code"]["sha256"] for r in runs if "hostops_code" in r}
    if len(measured) > 1:
        print(f"fleet: warning: hostops/ changed during the benchmark ({len(measured)} versions ran); "
              "see hostops_code in the JSON", file=sys.stderr)
    title = (f"{args.hosts} hosts, --forks {args.forks}, rtt {args.rtt_ms:g} ms, {args.rounds} round(s), "
             f"{CORES} cores; medians")
    if rows:
        print(f"\n{title}\n")
        print(format_table(rows))
    print_notes(runs, rows)
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    for t in chosen:
        if t.note:
            print(f"note {t.name}: {t.note}")
    if not args.no_json:
        os.makedirs(RESULTS, exist_ok=True)
        path = os.path.join(RESULTS, f"{stamp}.json")
        with open(path, "w") as fh:
            json.dump({"timestamp": stamp, "command": " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
                       "args": {k: v for k, v in vars(args).items()}, "cores": CORES,
                       "elapsed_s": round(time.time() - started, 1), "interrupted": interrupted,
                       "machine": machine_info(), "hostops_code": hostops_code(), "skipped": skipped,
                       "notes": {t.name: t.note for t in chosen if t.note},
                       "proxy": getattr(lab, "proxy_counters", None),
                       "summary": rows, "runs": runs}, fh, indent=1)
        print(f"\nraw figures: {os.path.relpath(path, os.getcwd())}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
