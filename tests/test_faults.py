"""Fault injection: the real CLI against a real sshd, with the network, the workers, the
signals, the output and the open-file limit all misbehaving.

Every test starts the CLI in a subprocess (its own session, so the test can signal the
whole group and always kill what it started), bounds every wait, and asserts on outcomes:
statuses, exit codes, elapsed seconds, peak RSS, and whether remote processes survived.
Remote processes are found by a unique marker (``sleep 30.417293``) among the lab sshd's
descendants, and any leftover is killed by PID at the end of the test.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import pytest

from conftest import ROOT
from hostops.results import record_bytes
from faultproxy import FaultProxy

RSS_LIMIT_MB = 150       # huge banner: per hostops process
RSS_LIMIT_BIG_MB = 200   # 1 GiB of output: per hostops process


# ============================================================== helpers: /proc
def _stat(pid: int) -> Optional[Tuple[str, int, str]]:
    """(state, ppid, starttime) of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read().decode(errors="replace")
    except OSError:
        return None
    rest = data[data.rfind(")") + 2:].split()
    return rest[0], int(rest[1]), rest[19]


def _all_pids() -> List[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def descendants(root: int) -> List[int]:
    """Every live descendant of ``root`` (scanning /proc for parent links)."""
    children: Dict[int, List[int]] = {}
    for pid in _all_pids():
        st = _stat(pid)
        if st is not None:
            children.setdefault(st[1], []).append(pid)
    out: List[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def alive(pid: int, starttime: str) -> bool:
    """The very process recorded earlier (same start time: not a recycled PID), not a zombie."""
    st = _stat(pid)
    return st is not None and st[2] == starttime and st[0] not in ("Z", "X")


def rss_kb(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.05):
    """Poll ``predicate`` until it is truthy or ``timeout`` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


# ============================================================== helpers: remote processes
def unique() -> str:
    """Six random digits: ``sleep 30.<unique>`` is a command line no one else runs."""
    return f"{random.randrange(10 ** 5, 10 ** 6)}"


class Remote:
    """Processes the lab sshd runs for us, found by a unique marker in their command line
    (even once orphaned: a remote command that outlived its session is handed to PID 1);
    leftovers are killed by PID at the end of the test."""

    def __init__(self, lab):
        self.lab = lab
        self.markers: List[str] = []

    def procs(self, pattern: str) -> List[int]:
        """PIDs whose command line matches ``pattern`` (an ERE), hostops itself left out (the
        CLI, and fork workers, carry the command in their own command line)."""
        proc = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, timeout=10)
        return [int(p) for p in proc.stdout.split() if " -m hostops " not in cmdline(int(p))]

    def count(self, pattern: str) -> int:
        return len(self.procs(pattern))

    def wait_running(self, pattern: str, n: int, timeout: float) -> int:
        wait_until(lambda: self.count(pattern) >= n, timeout, 0.2)
        return self.count(pattern)

    def wait_gone(self, pattern: str, timeout: float) -> List[Tuple[int, str]]:
        """[] once nothing matches; else (pid, command line) of what is still there when
        ``timeout`` passes."""
        left: List[int] = []

        def gone() -> bool:
            left[:] = self.procs(pattern)
            return not left

        wait_until(gone, timeout, 0.1)
        return [(p, cmdline(p)) for p in left]

    def track(self, marker: str) -> str:
        self.markers.append(marker)
        return marker

    def cleanup(self) -> None:
        for marker in self.markers:
            for pid in self.procs(re.escape(marker)):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass


@pytest.fixture
def remote(lab):
    r = Remote(lab)
    yield r
    r.cleanup()


# ============================================================== helpers: the CLI
class Live:
    """The real CLI in its own session: stdout/stderr read on threads, the process tree's RSS
    sampled every 50 ms, and killed (its whole group) if the test ends while it runs."""

    def __init__(self, args: Sequence[str], home: str, env: Optional[dict] = None, preexec_fn=None,
                 sample: bool = True):
        full_env = dict(os.environ)
        full_env.pop("SSH_AUTH_SOCK", None)
        full_env.pop("HOSTOPS_START_METHOD", None)
        full_env["HOME"] = home
        full_env["PYTHONPATH"] = ROOT + os.pathsep + full_env.get("PYTHONPATH", "")
        if env:
            full_env.update(env)
        self.args = list(args)
        self.out = bytearray()
        self.err = bytearray()
        self.code: Optional[int] = None
        self.elapsed: Optional[float] = None
        self.peak: Dict[int, Tuple[str, int]] = {}   # pid -> (command line, peak VmRSS kB)
        self.seen: Dict[int, str] = {}               # every descendant seen: pid -> start time
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "hostops", *self.args], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env, cwd=home,
                                     start_new_session=True, preexec_fn=preexec_fn)
        self._threads = [threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
                         threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True)]
        if sample:
            self._threads.append(threading.Thread(target=self._sample, daemon=True))
        for t in self._threads:
            t.start()

    @staticmethod
    def _read(stream, buf: bytearray) -> None:
        while True:
            chunk = stream.read1(1 << 20)
            if not chunk:
                return
            buf += chunk

    def _sample(self) -> None:
        while self.proc.poll() is None:
            for pid in [self.proc.pid] + descendants(self.proc.pid):
                kb = rss_kb(pid)
                if kb is None:
                    continue
                if pid != self.proc.pid and pid not in self.seen:
                    st = _stat(pid)
                    if st:
                        self.seen[pid] = st[2]
                old = self.peak.get(pid)
                if old is None or kb > old[1]:
                    self.peak[pid] = (old[0] if old else cmdline(pid)[:120], kb)
            time.sleep(0.05)

    # ---------------------------------------------------------------- waiting
    def wait_for(self, needle: bytes, timeout: float, stream: str = "out") -> bool:
        buf = self.out if stream == "out" else self.err
        wait_until(lambda: needle in buf or self.proc.poll() is not None, timeout)
        return needle in buf

    def finish(self, timeout: float) -> "Live":
        """Wait for the exit (bounded); a hang kills the group and fails the test."""
        try:
            self.code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"hostops still running after {timeout}s: {self!r}") from None
        self.elapsed = time.monotonic() - self.t0
        for t in self._threads:
            t.join(10)
        return self

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the session this test started
            except OSError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass

    def children(self) -> List[int]:
        """The parent's direct children (worker processes, resource tracker)."""
        return [p for p in _all_pids() if (_stat(p) or ("", 0, ""))[1] == self.proc.pid]

    def workers(self) -> List[int]:
        return [p for p in self.children() if "resource_tracker" not in cmdline(p)
                and "forkserver" not in cmdline(p)]

    # ---------------------------------------------------------------- results
    @property
    def text(self) -> str:
        return self.out.decode("utf-8", errors="replace")

    @property
    def errtext(self) -> str:
        return self.err.decode("utf-8", errors="replace")

    def json_lines(self) -> List[dict]:
        return [json.loads(line) for line in self.out.splitlines() if line.strip()]

    def by_host(self) -> Dict[str, dict]:
        return {r["host"]: r for r in self.json_lines()}

    def peak_mb(self) -> Dict[int, Tuple[str, float]]:
        return {pid: (cmd, kb / 1024) for pid, (cmd, kb) in self.peak.items()}

    def __repr__(self) -> str:
        return (f"<hostops {' '.join(self.args)[:200]} code={self.code} elapsed={self.elapsed}\n"
                f"stdout: {bytes(self.out[-2000:])!r}\nstderr: {bytes(self.err[-3000:])!r}>")


@pytest.fixture
def launch(isolated_home):
    started: List[Live] = []

    def start(*args: str, **kw) -> Live:
        live = Live(args, str(isolated_home), **kw)
        started.append(live)
        return live

    yield start
    for live in started:
        live.kill()


def trust(known_hosts: str, lab, port: int, address: str = "127.0.0.1") -> str:
    """Also trust the lab's host key at ``address:port`` (where a proxy listens)."""
    keytype, b64 = lab.host_pub.split()[:2]
    with open(known_hosts, "a") as fh:
        fh.write(f"[{address}]:{port} {keytype} {b64}\n")
    return known_hosts


def proxied(name: str, proxy: FaultProxy) -> dict:
    return {"name": name, "ansible_host": proxy.address, "ansible_port": proxy.port}


def log_records(path) -> List[dict]:
    """Every line of a --log file parsed as JSON (a torn or merged line fails the test)."""
    raw = open(path, "rb").read()
    assert raw.endswith(b"\n"), raw[-200:]
    return [json.loads(line) for line in raw.split(b"\n")[:-1]]


# ============================================================== 2. connect deadlines
BAD_HOSTS = 8  # several per run: a race that loses one time in three still shows
KNOWN_RACE = "unexpected error while connecting: SSHException: No existing session"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["blackhole", "slow_banner", "huge_banner"])
def test_connect_deadline_bounds_a_bad_server(launch, inventory, known_hosts, mode):
    """A server that accepts and says nothing, trickles its banner, or floods 10 MB without a
    newline: each such host is unreachable within --connect-timeout, the run ends in bounded
    time, a good host beside them is fine, and (flood) no hostops process balloons."""
    with FaultProxy(mode) as proxy:
        bad = [proxied(f"bad{i}", proxy) for i in range(BAD_HOSTS)]
        inv = inventory(1, extra_hosts=bad, addresses=["127.0.0.1"])
        run = launch("exec", "echo ran", "-i", inv, "--known-hosts", known_hosts, "--connect-timeout", "2",
                     "--json").finish(40)
        assert proxy.connections == BAD_HOSTS
        assert wait_until(lambda: proxy.hangups == BAD_HOSTS, 5), proxy.hangups  # hostops closed every one
        assert not proxy.errors
    hosts = run.by_host()
    assert run.code == 4, run
    assert hosts.pop("h001")["stdout"] == "ran\n"
    assert len(hosts) == BAD_HOSTS
    assert {r["status"] for r in hosts.values()} == {"unreachable"}, hosts
    assert all(r["stdout"] == "" and r["error"] for r in hosts.values())
    # bounded by finish(40): a blackhole would otherwise hold the run forever (no tighter bound:
    # the per-host errors above say the 2 s connect deadline fired)
    assert "Traceback" not in run.errtext, run
    errors = {r["error"] for r in hosts.values()}
    assert all("\n" not in e for e in errors)
    if mode in ("blackhole", "slow_banner"):
        timed_out = f"connection to 127.0.0.1:{proxy.port} timed out after 2s (--connect-timeout)"
        if mode == "slow_banner":  # (blackhole loses the race below most of the time)
            assert timed_out in errors, errors
        assert errors == {timed_out}, errors
    if mode == "huge_banner":
        assert errors == {f"SSH handshake with 127.0.0.1:{proxy.port} failed: the server sent more than 256 KiB "
                          "without completing it (not an SSH server?)"}, errors
        assert proxy.bytes_to_client < BAD_HOSTS * 10 * 1000 * 1000  # it hung up rather than read 10 MB
        peaks = run.peak_mb()
        assert len(peaks) >= 2, peaks  # the parent and at least one worker were sampled
        assert all(mb < RSS_LIMIT_MB for _cmd, mb in peaks.values()), peaks
    print(f"{mode}: {BAD_HOSTS} hosts unreachable, run took {run.elapsed:.2f}s; peak RSS "
          f"{max(mb for _c, mb in run.peak_mb().values()):.0f} MB; errors {sorted(errors)}")


@pytest.mark.timeout(60)
def test_blackhole_is_reported_as_a_connect_timeout(launch, inventory, known_hosts):
    with FaultProxy("blackhole") as proxy:
        bad = [proxied(f"bad{i}", proxy) for i in range(12)]  # each loses the race ~2 times in 3
        inv = inventory(0, extra_hosts=bad)
        run = launch("exec", "echo ran", "-i", inv, "--known-hosts", known_hosts, "--connect-timeout", "2",
                     "--json").finish(40)
    errors = {r["error"] for r in run.json_lines()}
    assert run.code == 4, run
    assert errors == {f"connection to 127.0.0.1:{proxy.port} timed out after 2s (--connect-timeout)"}, errors


@pytest.mark.timeout(60)
def test_silent_servers_do_not_hold_up_the_hosts_behind_them(launch, lab, inventory, known_hosts):
    """More silent servers than a worker's first handshake limit (hostops.limiter), listed
    first, in one worker: the good hosts behind them still finish before any silent one
    times out, since a handshake that hangs stops holding its slot."""
    from hostops import limiter

    with FaultProxy("blackhole") as proxy:
        bad = [proxied(f"bad{i:02d}", proxy) for i in range(limiter.INITIAL + 4)]
        good = lab.host_entries(6, prefix="good")
        inv = inventory(0, extra_hosts=bad + good)
        run = launch("exec", "echo ran", "-i", inv, "--known-hosts", known_hosts, "--connect-timeout", "6",
                     "--processes", "1", "--json").finish(40)
    order = [r["host"] for r in run.json_lines()]
    assert run.code == 4, run
    assert sorted(order) == sorted(h["name"] for h in bad + good), order
    assert all(h.startswith("good") for h in order[:6]), order
    assert {r["status"] for r in run.json_lines() if r["host"].startswith("good")} == {"ok"}, run


CUT_POINTS = list(range(100, 2600, 100))  # bytes from the server: banner, key exchange, auth, channel open


def run_with_handshake_cuts(launch, lab, inventory, known_hosts) -> Tuple[Live, Dict[str, dict]]:
    """One host per cut point, each behind its own proxy that cuts after that many server bytes."""
    with contextlib.ExitStack() as stack:
        proxies = {n: stack.enter_context(FaultProxy("cut", upstream=("127.0.0.1", lab.port), cut_after=n))
                   for n in CUT_POINTS}
        for proxy in proxies.values():
            trust(known_hosts, lab, proxy.port)
        inv = inventory(0, extra_hosts=[proxied(f"cut{n:04d}", p) for n, p in proxies.items()])
        run = launch("exec", "echo ran", "-i", inv, "--known-hosts", known_hosts, "--connect-timeout", "5",
                     "--json").finish(40)
    return run, run.by_host()


@pytest.mark.timeout(60)
def test_connection_cut_during_handshake_is_unreachable(launch, lab, inventory, known_hosts):
    """The server's side goes away after its first N bytes, for N across the whole handshake."""
    run, hosts = run_with_handshake_cuts(launch, lab, inventory, known_hosts)
    assert run.code == 4, run
    assert sorted(hosts) == [f"cut{n:04d}" for n in CUT_POINTS]
    table = {h: (r["status"], r["stdout"], r["error"]) for h, r in hosts.items()}
    for name, r in hosts.items():
        if r["status"] == "unreachable":
            assert r["stdout"] == "" and r["error"], table  # the command never ran
        elif r["status"] == "ok":  # the whole session fitted before the cut (AES-GCM packets are small)
            assert r["stdout"] == "ran\n" and r["exit_code"] == 0, table
        else:  # cut after the command ran: it is not reported ok, and why is said
            assert r["status"] == "failed" and r["exit_code"] is None, table
            assert "no exit status" in r["error"] and "connection dropped" in r["error"], table
            assert "may still be running" in r["error"], table  # nothing says it ended
    assert all(hosts[f"cut{n:04d}"]["status"] == "unreachable" for n in CUT_POINTS if n <= 1000), table
    assert "Traceback" not in run.errtext, run
    print({h: v[0] for h, v in sorted(table.items())}, f"run {run.elapsed:.1f}s")


@pytest.mark.timeout(60)
def test_connection_cut_during_handshake_says_the_connection_dropped(launch, lab, inventory, known_hosts):
    run, hosts = run_with_handshake_cuts(launch, lab, inventory, known_hosts)
    bad = {h: r["error"] for h, r in hosts.items() if r["status"] != "ok" and (
           "unexpected error" in r["error"] or "refused" in r["error"] or r["error"].endswith(": ")
           or not re.search(r"connection (closed|dropped|lost|reset|failed)|closed the connection", r["error"]))}
    assert not bad, bad


# ============================================================== 3. the network fails mid-command
PROXIED_ADDRESS = "127.0.0.5"  # the proxy forwards to the lab on this address; direct hosts use .1/.2


def only_through_proxy(proxied_cmd: str, direct_cmd: str) -> str:
    """A command that does one thing on the host reached through the proxy, another elsewhere."""
    return f'set -- $SSH_CONNECTION; if [ "$3" = {PROXIED_ADDRESS} ]; then {proxied_cmd}; else {direct_cmd}; fi'


@pytest.mark.timeout(60)
def test_half_open_peer_mid_command_is_dropped_by_keepalive(launch, lab, inventory, known_hosts, remote, tmp_path):
    marker = remote.track(f"60.{unique()}")
    log = tmp_path / "run.jsonl"
    with FaultProxy("stall", upstream=(PROXIED_ADDRESS, lab.port)) as proxy:
        trust(known_hosts, lab, proxy.port)
        inv = inventory(2, extra_hosts=[proxied("stalled", proxy)], addresses=["127.0.0.1", "127.0.0.2"])
        cmd = only_through_proxy(f"echo started; sleep {marker}", "sleep 3; echo fine")
        run = launch("exec", cmd, "-i", inv, "--known-hosts", known_hosts, "--keepalive", "1", "--stream",
                     "--log", str(log))
        assert run.wait_for(b"stalled: started\n", 30), run
        stalled_at = time.monotonic()
        proxy.stall()
        run.finish(45)
        dropped_after = time.monotonic() - stalled_at
        assert not proxy.errors
    records = {r["host"]: r for r in log_records(log) if r["event"] == "host"}
    assert run.code == 4, run
    assert records["stalled"]["status"] == "unreachable", records["stalled"]
    assert "stopped answering" in records["stalled"]["error"]
    assert "stalled | UNREACHABLE" in run.errtext and "stopped answering" in run.errtext
    assert {records[h]["status"] for h in ("h001", "h002")} == {"ok"}
    assert "h001: fine\n" in run.text and "h002: fine\n" in run.text
    # dropped by the keepalive ("stopped answering", above), within run.finish's 45 s: the
    # command sleeps 60 s, so nothing waited for it (no tighter wall-clock bound: a loaded
    # machine must not fail this)
    print(f"half-open peer dropped {dropped_after:.1f}s after the stall (--keepalive 1)")


@pytest.mark.timeout(60)
def test_connection_cut_mid_command_reports_that_host_others_finish(launch, lab, inventory, known_hosts, remote,
                                                                     tmp_path):
    marker = remote.track(f"60.{unique()}")
    log = tmp_path / "run.jsonl"
    with FaultProxy("cut", upstream=(PROXIED_ADDRESS, lab.port)) as proxy:
        trust(known_hosts, lab, proxy.port)
        inv = inventory(4, extra_hosts=[proxied("cut", proxy)], addresses=["127.0.0.1", "127.0.0.2"])
        cmd = only_through_proxy(f"echo started; sleep {marker}", "sleep 3; echo fine")
        run = launch("exec", cmd, "-i", inv, "--known-hosts", known_hosts, "--stream", "--log", str(log))
        assert run.wait_for(b"cut: started\n", 30), run
        cut_at = time.monotonic()
        proxy.cut()
        run.finish(45)
        reported_after = time.monotonic() - cut_at
    records = {r["host"]: r for r in log_records(log) if r["event"] == "host"}
    assert run.code in (4, 5), run
    cut = records["cut"]
    assert cut["status"] in ("unreachable", "failed"), cut
    assert cut["error"] and re.search(r"connection (dropped|closed)|stopped answering", cut["error"]), cut
    assert cut["stdout"] == "started\n"
    assert {records[f"h00{i}"]["status"] for i in range(1, 5)} == {"ok"}, records
    print(f"cut reported {reported_after:.1f}s after the cut (bounded by run.finish(45); the command sleeps 60s)")
    print(f"cut host reported {cut['status']} {reported_after:.1f}s after the cut: {cut['error']}")


# ============================================================== 4. remote cleanup on --timeout
@pytest.mark.timeout(60)
def test_timeout_stops_the_remote_command_and_its_children(launch, inventory, known_hosts, remote):
    u = unique()
    remote.track(u)
    cmd = f"sleep 3001.{u} & sleep 3002.{u} & sleep 3003.{u}; wait"
    run = launch("exec", cmd, "-i", inventory(3), "--known-hosts", known_hosts, "-t", "2", "--json").finish(40)
    assert run.code == 3, run
    results = run.json_lines()
    assert len(results) == 3
    for r in results:
        assert r["status"] == "timeout", r
        assert "timed out after 2s" in r["error"] and "the remote command was stopped" in r["error"], r
    left = remote.wait_gone(rf"300[123]\.{u}", 5)
    assert left == [], f"still running on the host after the timeout: {left}"
    print(f"-t 2: 3 hosts timeout, remote children gone, run {run.elapsed:.1f}s")


def orphans_are_reaped_slowly(within: float = 0.5) -> bool:
    """Is a SIGKILLed orphan still a zombie ``within`` seconds later on this machine? (Orphans
    go to PID 1, or a subreaper; a container's init may reap them late.)"""
    proc = subprocess.run(["sh", "-c", f"sleep 1000.{unique()} >/dev/null 2>&1 & echo $!"], capture_output=True,
                          text=True, timeout=10)
    pid = int(proc.stdout)
    os.kill(pid, signal.SIGKILL)
    time.sleep(within)
    st = _stat(pid)
    lingering = st is not None and st[0] == "Z"
    wait_until(lambda: _stat(pid) is None, 5)
    return lingering


@pytest.mark.timeout(60)
def test_timeout_kills_children_that_ignore_term(launch, inventory, known_hosts, remote):
    u = unique()
    remote.track(u)
    cmd = f"trap '' TERM; sleep 3004.{u} & sleep 3005.{u}; wait"  # ignored signals survive exec
    run = launch("exec", cmd, "-i", inventory(2), "--known-hosts", known_hosts, "-t", "1", "--kill-grace", "1",
                 "--json").finish(40)
    assert run.code == 3, run
    for r in run.json_lines():
        assert r["status"] == "timeout", r
        assert r["error"].startswith("timed out after 1s (--timeout); "), r
    assert remote.wait_gone(rf"300[45]\.{u}", 5) == []  # KILL after the grace period got them
    # the commands sleep 3000 s: finish(40) bounds the run, no wall-clock bound beside it


@pytest.mark.timeout(60)
def test_timeout_reports_children_killed_after_the_grace(request, launch, inventory, known_hosts, remote):
    u = unique()
    remote.track(u)
    cmd = f"trap '' TERM; sleep 3006.{u} & sleep 3007.{u}; wait"
    run = launch("exec", cmd, "-i", inventory(2), "--known-hosts", known_hosts, "-t", "1", "--kill-grace", "1",
                 "--json").finish(40)
    assert run.code == 3, run
    errors = {r["error"] for r in run.json_lines()}
    assert errors == {"timed out after 1s (--timeout); the remote command was killed (KILL after 1s)"}, errors


# ============================================================== 5. signals
SIGNAL_HOSTS = 50


def start_sleepers(launch, remote, inventory, known_hosts, count: int, method: str, *extra: str,
                   ignore_term: bool = False):
    """``ignore_term``: the remote commands ignore SIGTERM, so stopping them takes the kill grace."""
    marker = remote.track(f"30.{unique()}")
    inv = inventory(count)
    command = f"trap '' TERM; sleep {marker}" if ignore_term else f"sleep {marker}"
    run = launch("exec", command, "-i", inv, "--known-hosts", known_hosts, "-f", str(count), "--json",
                 "--start-method", method, "--connect-timeout", "30", *extra)
    running = remote.wait_running(rf"^sleep {re.escape(marker)}$", count, 60)
    assert running == count, (running, run)
    return run, marker


def assert_interrupted_cleanly(run: Live, remote: Remote, marker: str, count: int) -> None:
    assert run.code == 130, run
    records = run.json_lines()
    assert len(records) == count, run
    assert {r["status"] for r in records} == {"interrupted"}, records[:3]
    assert all("the remote command was stopped" in r["error"] for r in records), records[:3]
    assert f"interrupted while running ({count}): h[001-{count:03d}]" in run.errtext, run
    assert f"{count} hosts: 0 ok, 0 failed, 0 unreachable, 0 timeout, {count} interrupted" in run.errtext, run
    assert "(interrupted)" in run.errtext
    left = remote.wait_gone(re.escape(marker), 10)
    assert left == [], f"remote commands left running: {left}"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_sigint_to_the_process_group_stops_every_host(launch, remote, inventory, known_hosts, method):
    run, marker = start_sleepers(launch, remote, inventory, known_hosts, SIGNAL_HOSTS, method)
    sent = time.monotonic()
    os.killpg(run.proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group
    run.finish(40)
    took = time.monotonic() - sent
    assert_interrupted_cleanly(run, remote, marker, SIGNAL_HOSTS)  # bounded by run.finish(40)
    print(f"{method}: SIGINT -> exit 130 in {took:.1f}s, {SIGNAL_HOSTS} hosts interrupted, no remote leftovers")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_sigterm_to_the_parent_only_stops_every_host(launch, remote, inventory, known_hosts, method):
    run, marker = start_sleepers(launch, remote, inventory, known_hosts, SIGNAL_HOSTS, method)
    sent = time.monotonic()
    os.kill(run.proc.pid, signal.SIGTERM)
    run.finish(40)
    took = time.monotonic() - sent
    assert_interrupted_cleanly(run, remote, marker, SIGNAL_HOSTS)  # bounded by run.finish(40)
    print(f"{method}: SIGTERM -> exit 130 in {took:.1f}s, no remote leftovers")


def pgrp(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read().decode(errors="replace")
    except OSError:
        return None
    return int(data[data.rfind(")") + 2:].split()[2])


def cleanup_running(remote: Remote, groups) -> bool:
    """Is hostops' kill script (``p=PGID; if ! kill -s TERM …``) running for one of ``groups``?"""
    return any(remote.count(rf"p={g}; if ! kill") for g in groups if g)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_second_sigint_aborts_at_once(launch, remote, inventory, known_hosts, method):
    # Remote commands that ignore TERM keep the first Ctrl-C's cleanup busy for the kill grace
    # (60 s), so the second one arrives while it runs (a quick cleanup could end the run first),
    # and "at once" is run.finish(30) < the grace: no wall-clock bound a loaded machine can miss.
    # A second interrupt within ABORT_WINDOW of the first is the same one delivered twice
    # (GNU timeout signals hostops and then its group): wait until the first one's cleanup is
    # seen on the host, then past the window, before the second.
    from hostops.api import ABORT_WINDOW

    run, marker = start_sleepers(launch, remote, inventory, known_hosts, SIGNAL_HOSTS, method,
                                 "--kill-grace", "60", ignore_term=True)
    groups = {pgrp(pid) for pid in remote.procs(rf"^sleep {re.escape(marker)}$")}
    os.killpg(run.proc.pid, signal.SIGINT)
    assert wait_until(lambda: cleanup_running(remote, groups), 30), run
    time.sleep(ABORT_WINDOW + 0.2)
    sent = time.monotonic()
    os.killpg(run.proc.pid, signal.SIGINT)
    run.finish(30)
    took = time.monotonic() - sent
    assert run.code == 130, run
    # Aborted at once, not after the 60 s kill grace: the hosts still being cleaned up say so.
    assert any("aborted while running" in (r["error"] or "") for r in run.json_lines()), run
    # Every host was running: each is reported interrupted (stopped, or abandoned mid-cleanup),
    # none as "not started"; whatever finished first was printed as valid JSON lines.
    assert f"interrupted while running ({SIGNAL_HOSTS}): h[001-{SIGNAL_HOSTS:03d}]" in run.errtext, run
    assert f"{SIGNAL_HOSTS} hosts: 0 ok, 0 failed, 0 unreachable, 0 timeout, {SIGNAL_HOSTS} interrupted in " \
        in run.errtext and "(interrupted)" in run.errtext, run
    assert "not started" not in run.errtext, run
    assert {r["status"] for r in run.json_lines()} <= {"interrupted"}
    left_workers = wait_until(lambda: not [p for p, t in run.seen.items() if alive(p, t)], 5)
    assert left_workers, {p: cmdline(p) for p, t in run.seen.items() if alive(p, t)}
    # "Abort at once" may leave remote commands behind (the fixture kills them); say how many.
    left = remote.procs(re.escape(marker))
    print(f"{method}: second SIGINT -> exit 130 in {took:.1f}s; {len(run.json_lines())} hosts reported, "
          f"{len(left)} remote processes left running")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_sigkill_of_the_parent_leaves_no_worker_behind(launch, remote, inventory, known_hosts, method):
    run, marker = start_sleepers(launch, remote, inventory, known_hosts, 20, method, "--processes", "2")
    workers = {pid: (_stat(pid) or ("", 0, ""))[2] for pid in run.workers()}
    assert len(workers) == 2, (workers, {p: cmdline(p) for p in run.children()})
    os.kill(run.proc.pid, signal.SIGKILL)
    killed = time.monotonic()
    run.finish(10)
    assert run.code == -signal.SIGKILL
    still = wait_until(lambda: not [p for p, t in workers.items() if alive(p, t)], 10, 0.1)
    left = {p: cmdline(p) for p, t in workers.items() if alive(p, t)}
    assert still and not left, f"workers alive 10s after the parent was SIGKILLed: {left}"
    gone_after = time.monotonic() - killed
    # The workers were told (PDEATHSIG) and stopped the remote commands before exiting.
    assert remote.wait_gone(re.escape(marker), 10) == []
    print(f"{method}: workers gone {gone_after:.1f}s after SIGKILL of the parent; remote sleeps stopped")


# ============================================================== 6. a worker dies
@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_worker_sigkilled_mid_run(launch, remote, inventory, known_hosts, tmp_path, method):
    marker = remote.track(f"5.{unique()}")  # `sleep 5; echo done`: long enough to see all 30 running
    log = tmp_path / "run.jsonl"
    run = launch("exec", f"sleep {marker}; echo done", "-i", inventory(30), "--known-hosts", known_hosts,
                 "--processes", "2", "--log", str(log), "--json", "--connect-timeout", "30",
                 env={"HOSTOPS_START_METHOD": method})
    assert remote.wait_running(rf"^sleep {re.escape(marker)}$", 30, 30) == 30, run
    workers = run.workers()
    assert len(workers) == 2, workers
    victim = workers[0]
    os.kill(victim, signal.SIGKILL)
    run.finish(60)
    assert run.code == 5, run
    results = run.by_host()
    assert sorted(results) == [f"h{i:03d}" for i in range(1, 31)]
    crashed = {h: r for h, r in results.items() if r["status"] != "ok"}
    ok = {h: r for h, r in results.items() if r["status"] == "ok"}
    assert len(crashed) == 15 and len(ok) == 15, {h: r["status"] for h, r in results.items()}
    for r in crashed.values():
        assert r["status"] == "failed" and "worker crashed (killed by signal 9)" in r["error"], r
    assert all(r["stdout"] == "done\n" for r in ok.values())
    assert "30 hosts: 15 ok, 15 failed, 0 unreachable, 0 timeout" in run.errtext
    records = log_records(log)
    assert records[0]["event"] == "start" and len(records[0]["hosts"]) == 30
    assert records[-1]["event"] == "end" and records[-1]["summary"]["counts"]["failed"] == 15
    host_records = [r for r in records if r["event"] == "host"]
    assert sorted(r["host"] for r in host_records) == sorted(results), "one log record per host"
    assert {r["host"]: r["status"] for r in host_records} == {h: r["status"] for h, r in results.items()}
    assert len(records) == 32
    print(f"{method}: worker {victim} SIGKILLed; 15 failed 'worker crashed', 15 ok, 32 log lines, "
          f"run {run.elapsed:.1f}s")


# ============================================================== 7. output volume
def zeros(size: int, char: str) -> str:
    return f"head -c {size} /dev/zero | tr '\\0' {char}"


@pytest.mark.timeout(90)
def test_ten_megabytes_on_both_streams_at_once(launch, inventory, known_hosts):
    size = 10_000_000
    cmd = f"{zeros(size, 'e')} >&2 & {zeros(size, 'o')}; wait"
    run = launch("exec", cmd, "-i", inventory(1), "--known-hosts", known_hosts, "--max-output", "32M",
                 "--json").finish(60)
    assert run.code == 0, run
    (r,) = run.json_lines()
    assert r["status"] == "ok"
    assert len(r["stdout"]) == size and set(r["stdout"]) == {"o"}
    assert len(r["stderr"]) == size and set(r["stderr"]) == {"e"}
    print(f"2 x 10 MB at once: {run.elapsed:.1f}s")


@pytest.mark.timeout(240)
def test_one_gibibyte_of_output_is_capped_in_bounded_memory(launch, inventory, known_hosts):
    cmd = "head -c 1073741824 /dev/zero"
    run = launch("exec", cmd, "-i", inventory(1), "--known-hosts", known_hosts, "--json").finish(200)
    assert run.code == 0, run
    (r,) = run.json_lines()
    assert r["status"] == "ok"
    out = r["stdout"]
    marker = re.search(r"\n\[hostops: (\d+) bytes of output dropped here;[^\]]*\]\n", out)
    assert marker, out[:200]
    kept = len(out) - len(marker.group(0))
    assert kept + int(marker.group(1)) == 1073741824  # every byte is either kept or counted as dropped
    assert 4 * 1024 * 1024 <= kept <= 4 * 1024 * 1024 + 128 * 1024  # the cap (plus at most one read)
    assert set(out[:3 * 1024 * 1024]) == {"\0"}
    peaks = run.peak_mb()
    assert len(peaks) >= 2, peaks
    assert all(mb < RSS_LIMIT_BIG_MB for _cmd, mb in peaks.values()), peaks
    print(f"1 GiB: {run.elapsed:.1f}s, peak RSS {max(mb for _c, mb in peaks.values()):.0f} MB")


@pytest.mark.timeout(90)
def test_twenty_megabyte_line_in_stream_mode(launch, inventory, known_hosts):
    size = 20_000_000
    run = launch("exec", f"{zeros(size, 'x')}; echo; echo after", "-i", inventory(1), "--known-hosts",
                 known_hosts, "--stream").finish(60)
    assert run.code == 0, run
    assert run.out.count(b"x") == size
    lines = run.out.split(b"\n")
    assert all(line.startswith(b"h001: ") for line in lines if line)
    assert lines[-2] == b"h001: after"
    # Sent in pieces (at most the 64 KiB held back plus one 64 KiB read), never held whole.
    assert max(len(line) for line in lines) <= 2 * 64 * 1024 + 16
    peaks = run.peak_mb()
    assert all(mb < RSS_LIMIT_BIG_MB for _cmd, mb in peaks.values()), peaks
    print(f"20 MB line streamed in {run.elapsed:.1f}s, peak RSS {max(mb for _c, mb in peaks.values()):.0f} MB")


# ============================================================== 8. hostile output
HOSTILE = (b"csi:\x1b[2J\x1b[31mred\x1b[0m\n"
           b"osc52:\x1b]52;c;ZXZpbA==\x07\n"
           b"osc8:\x1b]8;;http://evil.example/\x1b\\click\x1b]8;;\x1b\\\n"
           b"c1:\xc2\x9b31m raw:\x9b\n"
           b"cr:safe\rEVIL\n"
           b"bidi:\xe2\x80\xaeevil\xe2\x80\xac\n"
           b"h002 | OK | rc=0 | 0.01s\n")
ESCAPED = [rb"csi:\x1b[2J\x1b[31mred\x1b[0m", rb"osc52:\x1b]52;c;ZXZpbA==\x07",
           b"osc8:\\x1b]8;;http://evil.example/\\x1b\\click\\x1b]8;;\\x1b\\",
           rb"c1:\x9b31m raw:\x9b", rb"cr:safe\x0dEVIL", rb"bidi:\u202eevil\u202c"]
DANGEROUS = [b"\x1b", b"\x07", b"\x9b", b"\r", b"\xe2\x80\xae", b"\xe2\x80\xac"]


@pytest.fixture
def hostile_file(tmp_path):
    path = tmp_path / "hostile.bin"
    path.write_bytes(HOSTILE)
    return str(path)


def assert_defanged(data: bytes) -> None:
    for bad in DANGEROUS:
        assert bad not in data, (bad, data)
    for good in ESCAPED:
        assert good in data, (good, data)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["default", "--gather", "--stream"])
def test_hostile_output_is_shown_escaped(launch, inventory, known_hosts, hostile_file, mode):
    args = [] if mode == "default" else [mode]
    run = launch("exec", f"cat {hostile_file}; cat {hostile_file} >&2", "-i", inventory(1), "--known-hosts",
                 known_hosts, *args).finish(40)
    assert run.code == 0, run
    if mode == "--stream":
        assert_defanged(bytes(run.out))      # stdout lines
        assert_defanged(bytes(run.err))      # stderr lines go to stderr
        assert b"h001: h002 | OK | rc=0 | 0.01s\n" in run.out
    else:
        assert_defanged(bytes(run.out))
        assert run.out.count(b"\\h002 | OK | rc=0 | 0.01s\n") == 2  # stdout and stderr
        assert not re.search(rb"^h002 ", bytes(run.out), re.M)
        real = re.findall(rb"^(\w\S*)(?: \(\d+\))? \| OK \| rc=0", bytes(run.out), re.M)
        assert real == [b"h001"], real


@pytest.mark.timeout(60)
def test_hostile_output_cannot_forge_a_gather_header(launch, inventory, known_hosts, tmp_path):
    fake = tmp_path / "fake.txt"
    fake.write_bytes(b"---------------\nh[002-009] (8) | OK | rc=0\n---------------\nall good\n")
    run = launch("exec", f"cat {fake}", "-i", inventory(1), "--known-hosts", known_hosts, "--gather").finish(40)
    assert run.code == 0, run
    # the forged line is still printed, but escaped: it starts with a backslash, never a host name
    headers = re.findall(rb"^([^\\\s]\S*) \(\d+\) \| OK", bytes(run.out), re.M)
    assert headers == [b"h001"], run
    assert b"\\h[002-009] (8) | OK" in bytes(run.out), run


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["default", "--stream"])
def test_raw_passes_output_through_byte_for_byte(launch, inventory, known_hosts, hostile_file, mode):
    args = ["--raw"] + ([] if mode == "default" else [mode])
    run = launch("exec", f"cat {hostile_file}; cat {hostile_file} >&2", "-i", inventory(1), "--known-hosts",
                 known_hosts, *args).finish(40)
    assert run.code == 0, run
    if mode == "default":
        body = HOSTILE.rstrip(b"\n")
        assert re.match(rb"h001 \| OK \| rc=0 \| \d+\.\d\ds\n", bytes(run.out)), run
        assert bytes(run.out).endswith(b"\n" + body + b"\n[stderr]\n" + body + b"\n"), run
    else:
        expected = b"".join(b"h001: " + line + b"\n" for line in HOSTILE.split(b"\n")[:-1])
        assert bytes(run.out) == expected, run
        assert expected in bytes(run.err)


@pytest.mark.timeout(60)
def test_log_stays_one_json_record_per_line_with_hostile_output(launch, inventory, known_hosts, hostile_file,
                                                                  tmp_path):
    log = tmp_path / "run.jsonl"
    run = launch("exec", f"cat {hostile_file}; cat {hostile_file} >&2; printf 'no newline\\r'", "-i",
                 inventory(3), "--known-hosts", known_hosts, "--log", str(log), "-q").finish(40)
    assert run.code == 0, run
    raw = log.read_bytes()
    assert all(b < 0x80 for b in raw)  # ensure_ascii: no control byte, no raw newline inside a record
    records = log_records(log)
    assert [r["event"] for r in records] == ["start", "host", "host", "host", "end"]
    # HOSTILE holds a byte that is not UTF-8 (a raw C1 \x9b): the text has U+FFFD for it, and
    # the exact bytes are in the _b64 field beside it (results.json_bytes)
    expected = HOSTILE.decode("utf-8", errors="replace")
    for r in records[1:-1]:
        assert r["stdout"] == expected + "no newline\r" and r["stderr"] == expected, r
        assert record_bytes(r, "stdout") == HOSTILE + b"no newline\r" and record_bytes(r, "stderr") == HOSTILE


# ============================================================== 9. a low open-file limit
def _low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


@pytest.mark.timeout(120)
def test_low_open_file_limit_lowers_forks_and_every_host_succeeds(launch, inventory, known_hosts):
    run = launch("exec", "echo ok", "-i", inventory(100), "--known-hosts", known_hosts, "-f", "100", "--json",
                 "--connect-timeout", "30", preexec_fn=_low_nofile).finish(100)
    assert run.code == 0, run
    assert re.search(r"lowering -f from 100 to \d+: the open-file limit is 256", run.errtext), run
    results = run.json_lines()
    assert len(results) == 100 and {r["status"] for r in results} == {"ok"}, run
    assert "100 hosts: 100 ok" in run.errtext
    print(f"{run.errtext.splitlines()[0]} ; 100 ok in {run.elapsed:.1f}s")


# ============================================================== the parent's last resort
@pytest.mark.timeout(60)
def test_a_stuck_worker_is_reported_overdue_and_logged(monkeypatch, tmp_path):
    """A worker stuck on a host past every deadline: the parent reports the host 'timeout'
    itself (and logs it, since no worker will), the other hosts finish, the run ends."""
    from fakes import SleepAction

    from hostops import pool as pool_module
    from hostops.api import run
    from hostops.settings import Options, Target

    monkeypatch.setattr(pool_module, "PARENT_SLACK", 1.0)  # overdue after 0.5 + 0.5 + 0 + 1 = 2 s
    # the stuck host sleeps 600 s: the run can only end within this test's timeout (a hang
    # guard) if the parent gives up on it, so no wall-clock bound is needed
    log = tmp_path / "run.jsonl"
    targets = [Target(n, "localhost", connection="local") for n in ("stuck", "fast1", "fast2")]
    options = Options(timeout=0.5, connect_timeout=0.5, kill_grace=0, forks=3, processes=1,
                      start_method="fork", log=str(log))
    t0 = time.monotonic()
    results = {r.host: r for r in run(targets, SleepAction({"stuck": 600.0}), options)}
    elapsed = time.monotonic() - t0
    assert sorted(results) == ["fast1", "fast2", "stuck"]
    assert results["fast1"].ok and results["fast2"].ok
    assert results["stuck"].status == "timeout", results["stuck"]
    assert "past every deadline" in results["stuck"].error
    records = log_records(log)
    assert [r["event"] for r in records][0] == "start" and records[-1]["event"] == "end"
    assert sorted(r["host"] for r in records if r["event"] == "host") == ["fast1", "fast2", "stuck"]
    print(f"stuck host reported overdue; run ended in {elapsed:.1f}s")


# ============================================================== an SSH error in the middle of the output
@pytest.mark.timeout(60)
def test_ssh_error_mid_output_keeps_what_was_read(lab, known_hosts, monkeypatch):
    """In-process, against the real sshd: paramiko fails on the second read of the channel."""
    import paramiko

    from hostops.settings import Options, Target
    from hostops.workerctx import WorkerContext
    from hostops.worker import ExecAction, Job, execute

    real_recv = paramiko.Channel.recv
    reads = []

    def failing_recv(self, nbytes):
        if reads:
            raise paramiko.SSHException("Key-exchange timed out waiting for key negotiation")
        data = real_recv(self, nbytes)
        reads.append(data)
        return data

    monkeypatch.setattr(paramiko.Channel, "recv", failing_recv)
    ctx = WorkerContext(Options(known_hosts=(known_hosts,), connect_timeout=20))
    target = Target("h001", "127.0.0.1", lab.port, lab.user, (lab.user_key,))
    result = execute(Job(0, target, ExecAction("echo partial; sleep 1; echo more")), ctx)
    assert reads == [b"partial\n"], reads  # the fault fired where intended
    assert result.status in ("failed", "unreachable"), result
    assert result.stdout.startswith(b"partial\n"), result
    assert "unexpected error" not in (result.error or ""), result


def test_the_client_leaves_key_re_exchange_to_the_server(lab, known_hosts, monkeypatch):
    """A re-key that paramiko starts itself can deadlock its transport thread against a channel
    close that crossed it (the host then fails after 30 s: "Key-exchange timed out"). With
    paramiko's thresholds scaled down from 512 MiB to 1 MiB, 8 MiB of output would start
    eight; hostops starts none beyond the first exchange."""
    import paramiko

    from hostops.settings import Options, Target
    from hostops.workerctx import WorkerContext
    from hostops.worker import ExecAction, Job, execute

    monkeypatch.setattr(paramiko.packet.Packetizer, "REKEY_BYTES", 1 << 20)
    monkeypatch.setattr(paramiko.packet.Packetizer, "REKEY_PACKETS", 1 << 20)
    real = paramiko.Transport._send_kex_init
    exchanges = []

    def counting(self):
        exchanges.append(self)
        return real(self)

    monkeypatch.setattr(paramiko.Transport, "_send_kex_init", counting)
    ctx = WorkerContext(Options(known_hosts=(known_hosts,), connect_timeout=20))
    target = Target("h001", "127.0.0.1", lab.port, lab.user, (lab.user_key,))
    result = execute(Job(0, target, ExecAction("head -c 8388608 /dev/zero; echo done >&2")), ctx)
    assert result.status == "ok" and result.stderr == b"done\n", result
    assert len(exchanges) == 1, f"{len(exchanges)} key exchanges started by the client"
