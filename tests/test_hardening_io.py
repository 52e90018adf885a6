"""Issue 11, closed pipes and full disks, --lock, and --stream under endless output: the real
CLI (a subprocess) against the lab sshd, with its stdout or stderr closed, its --log and -o on a
tiny tmpfs, names planted under -o, and a reader that stops reading.

Promises checked: the run is never an internal error (exit 1); every host has its log record
and the end record tells the truth; the @failed state file is written; a record is whole or
absent; a planted name is refused, its target untouched; --lock leaves the locked file alone;
--stream stays in bounded memory and still meets -t.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import stat
import subprocess
import sys
import threading
import time
from typing import Dict, Iterator, List, Optional, Sequence

import pytest

from conftest import ROOT
from test_faults import descendants, log_records, remote, rss_kb, unique  # noqa: F401  (remote: a fixture)

from hostops import log as hostops_log


# ============================================================== helpers
def cli_env(home) -> dict:
    env = dict(os.environ)
    env.pop("SSH_AUTH_SOCK", None)
    env.pop("HOSTOPS_START_METHOD", None)
    env["HOME"] = str(home)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def popen(home, args: Sequence[str], **kw) -> subprocess.Popen:
    """The CLI in its own session (killed by the test if it outlives it)."""
    kw.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.Popen([sys.executable, "-m", "hostops", *args], env=cli_env(home), cwd=str(home),
                            start_new_session=True, **kw)


def shell(home, script: str, args: Sequence[str], timeout: float = 90) -> subprocess.CompletedProcess:
    """``bash -c script`` where "$@" is ``python -m hostops ARGS``: to close fds with >&- / 2>&-."""
    return subprocess.run(["bash", "-c", script, "bash", sys.executable, "-m", "hostops", *args],
                          env=cli_env(home), cwd=str(home), capture_output=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, 9)
        except OSError:
            pass
        proc.wait(10)


def read_line(stream, timeout: float) -> bytes:
    """One line from a pipe, waiting at most ``timeout`` seconds."""
    fd = stream.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in buf and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            chunk = os.read(fd, 1)
            if not chunk:
                break
            buf += chunk
    return buf


def check_record(log_path, hosts: Sequence[str]) -> Dict[str, dict]:
    """Every host has one record; the end record's counts match those records."""
    records = log_records(log_path)
    assert records[0]["event"] == "start", records[0]
    by_host = {r["host"]: r for r in records if r["event"] == "host"}
    assert sorted(by_host) == sorted(hosts), records
    assert len([r for r in records if r["event"] == "host"]) == len(hosts)
    end = records[-1]
    assert end["event"] == "end", records[-1]
    summary = end["summary"]
    for status in ("ok", "failed", "unreachable", "timeout", "interrupted"):
        assert summary["counts"][status] == sum(1 for r in by_host.values() if r["status"] == status), (status,
                                                                                                     summary)
    assert summary["interrupted"] is any(r["status"] == "interrupted" for r in by_host.values()), summary
    return by_host


def state_of(log_path) -> Dict[str, str]:
    with open(f"{log_path}.last-run.json") as fh:
        return json.load(fh)["hosts"]


@pytest.fixture
def lab_args(known_hosts):
    def make(inv: str) -> List[str]:
        return ["-i", inv, "--known-hosts", known_hosts]
    return make


@contextlib.contextmanager
def tmpfs(path, size: str) -> Iterator[str]:
    """A small tmpfs mounted for the test (root only; skipped where mounting is not allowed)."""
    os.makedirs(path, exist_ok=True)
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield str(path)
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, timeout=20).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=20)


# ============================================================== stdout / stderr closed
LONG_STREAM = "for i in $(seq 1 300); do echo line$i; sleep 0.1; done # {marker}"


@pytest.mark.timeout(120)
def test_stdout_reader_gone_stops_the_run_and_keeps_the_record(isolated_home, inventory, lab_args, remote,
                                                               tmp_path):
    """``hostops exec … --stream | head -1``: the reader goes away after one line. The run stops as
    a first Ctrl-C does (remote commands stopped), exits 141, and every host is logged, the end
    record true, the state file written (all @failed: interrupted)."""
    marker = remote.track(unique())
    log = tmp_path / "run.jsonl"
    proc = popen(isolated_home, ["exec", LONG_STREAM.format(marker=marker), *lab_args(inventory(3)), "--stream",
                                 "--log", str(log)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        seen = set()
        for _ in range(200):  # until every host runs (a host not yet begun would be "not started")
            line = read_line(proc.stdout, 60)
            assert b": line" in line, line
            seen.add(line.split(b":")[0])
            if len(seen) == 3:
                break
        proc.stdout.close()  # the reader goes away, like head
        err = proc.stderr.read()  # ends when hostops exits
        code = proc.wait(60)
    finally:
        kill_group(proc)
    assert code == 141, (code, err)
    assert b"internal error" not in err and b"Traceback" not in err, err
    assert b"standard output was closed" in err, err
    by_host = check_record(log, ["h001", "h002", "h003"])
    assert {r["status"] for r in by_host.values()} == {"interrupted"}, by_host
    end = log_records(log)[-1]["summary"]
    assert end["interrupted"] is True and end["exit_code"] == 141 and end.get("output_closed") is True, end
    assert state_of(log) == {"h001": "interrupted", "h002": "interrupted", "h003": "interrupted"}
    assert remote.wait_gone(marker, 20) == [], "remote commands left running"


@pytest.mark.timeout(120)
def test_stdout_reader_gone_between_host_blocks(isolated_home, inventory, lab_args, tmp_path):
    """Blocks mode: h001 prints at once, h002 a moment later, after the reader left: writing
    h002's block finds the pipe closed and stops the run while h003 still runs (it sleeps far
    longer, so this holds on a loaded machine too). No internal error; exit 141; every host
    logged with a true end record; state written."""
    log = tmp_path / "run.jsonl"
    cmd = 'set -- $SSH_CONNECTION; case "$3" in 127.0.0.1) ;; 127.0.0.2) sleep 3 ;; *) sleep 90 ;; esac; echo done'
    proc = popen(isolated_home, ["exec", cmd, *lab_args(inventory(3)), "--log", str(log)],
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = read_line(proc.stdout, 60)
        assert first.startswith(b"h001 | OK"), first
        proc.stdout.close()
        err = proc.stderr.read()
        code = proc.wait(60)
    finally:
        kill_group(proc)
    assert code == 141, (code, err)
    assert b"internal error" not in err and b"Traceback" not in err, err
    by_host = check_record(log, ["h001", "h002", "h003"])
    assert by_host["h001"]["status"] == "ok", by_host
    # h002 is ok when writing its block found the pipe closed, interrupted when the rest of
    # h001's block already did: either way the run stopped before h003 ended.
    assert by_host["h002"]["status"] in ("ok", "interrupted"), by_host
    assert by_host["h003"]["status"] == "interrupted", by_host  # stopped, not left to run its 90 s
    assert set(state_of(log)) == {"h001", "h002", "h003"}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["-q", "--stream", "--json"])
def test_stdout_closed_from_the_start_runs_normally(isolated_home, inventory, lab_args, tmp_path, mode):
    """``hostops … >&-`` (cron with a closed stdout): nothing to print to, the run goes on, exit
    code is the hosts' code."""
    log = tmp_path / "run.jsonl"
    proc = shell(isolated_home, 'exec "$@" >&-', ["exec", "echo hi; exit 3", *lab_args(inventory(3)), mode,
                                                  "--log", str(log)])
    assert proc.returncode == 5, proc
    assert b"internal error" not in proc.stderr and b"Traceback" not in proc.stderr, proc.stderr
    by_host = check_record(log, ["h001", "h002", "h003"])
    assert {r["status"] for r in by_host.values()} == {"failed"}
    assert state_of(log) == {"h001": "failed", "h002": "failed", "h003": "failed"}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["-q", "--stream"])
def test_stderr_closed_warnings_and_summary_do_not_crash(isolated_home, inventory, lab_args, tmp_path, mode):
    """``2>&-``: the summary, warnings and stderr lines have nowhere to go; the run is unharmed."""
    log = tmp_path / "run.jsonl"
    proc = shell(isolated_home, 'exec "$@" 2>&-', ["exec", "echo out; echo err >&2; exit 3", *lab_args(inventory(3)),
                                                   mode, "--log", str(log), "--host-key-policy", "off"])
    assert proc.returncode == 5, proc
    assert proc.stdout.count(b"out") == 3, proc.stdout
    check_record(log, ["h001", "h002", "h003"])
    assert state_of(log) == {"h001": "failed", "h002": "failed", "h003": "failed"}


# ============================================================== --log on a full disk
BIG = 'head -c 20000 /dev/zero | tr "\\0" x'


def test_log_record_cut_short_is_removed(tmp_path, monkeypatch):
    """A record the disk has no room for is truncated back out: the file holds whole lines only."""
    path = str(tmp_path / "run.jsonl")
    log = hostops_log.RunLog(path)
    log.write({"event": "start"})
    real_write = os.write

    def full_disk(fd, data):
        if fd == log._fd:
            real_write(fd, bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(hostops_log.os, "write", full_disk)
    with pytest.raises(OSError):
        log.write({"event": "host", "host": "h1", "stdout": "x" * 5000})
    monkeypatch.setattr(hostops_log.os, "write", real_write)
    log.write({"event": "end"})
    log.close()
    assert [r["event"] for r in log_records(path)] == ["start", "end"]


@pytest.mark.timeout(120)
def test_log_on_a_full_disk_marks_the_hosts_and_the_run_goes_on(isolated_home, inventory, lab_args, tmp_path):
    hosts = ["h001", "h002", "h003", "h004"]
    with tmpfs(tmp_path / "small", "40k") as small:
        log = os.path.join(small, "run.jsonl")
        proc = subprocess.run([sys.executable, "-m", "hostops", "exec", BIG, *lab_args(inventory(4)), "--json",
                               "--log", log], env=cli_env(isolated_home), cwd=str(isolated_home),
                              capture_output=True, text=True, timeout=90)
        assert proc.returncode == 0, proc
        assert "internal error" not in proc.stderr, proc.stderr
        records = log_records(log)  # whole lines only: a torn record fails here
        logged = {r["host"] for r in records if r.get("event") == "host"}
        results = {r["host"]: r for r in map(json.loads, proc.stdout.splitlines())}
        marked = {h for h, r in results.items() if "could not write log" in (r["error"] or "")}
        assert sorted(results) == hosts
        assert marked and logged, (marked, logged)
        assert logged | marked == set(hosts) and not (logged & marked), (logged, marked)
        assert f"could not write log ({len(marked)})" in proc.stderr, proc.stderr
        assert "4 hosts: 4 ok" in proc.stderr, proc.stderr
        assert not [n for n in os.listdir(small) if n.endswith(".tmp")], os.listdir(small)


# ============================================================== -o: a full disk, planted names
@pytest.mark.timeout(120)
def test_outdir_on_a_full_disk_marks_those_hosts(isolated_home, inventory, lab_args, tmp_path):
    hosts = ["h001", "h002", "h003", "h004"]
    with tmpfs(tmp_path / "small", "40k") as small:
        outdir = os.path.join(small, "out")
        proc = subprocess.run([sys.executable, "-m", "hostops", "exec", BIG, *lab_args(inventory(4)), "--json",
                               "-o", outdir], env=cli_env(isolated_home), cwd=str(isolated_home),
                              capture_output=True, text=True, timeout=90)
        assert proc.returncode == 0, proc
        assert "internal error" not in proc.stderr, proc.stderr
        results = {r["host"]: r for r in map(json.loads, proc.stdout.splitlines())}
        assert sorted(results) == hosts
        marked = {h for h, r in results.items() if "could not write -o file" in (r["error"] or "")}
        assert marked and marked != set(hosts), results
        for host in hosts:
            path = os.path.join(outdir, f"{host}.out")
            if host in marked:
                assert not os.path.exists(path) or os.path.getsize(path) in (0, 20000), path  # never half
            else:
                with open(path) as fh:
                    assert fh.read() == "x" * 20000
        assert f"could not write -o files ({len(marked)})" in proc.stderr, proc.stderr


@pytest.mark.timeout(120)
def test_outdir_refuses_planted_names_and_leaves_their_targets_alone(isolated_home, inventory, lab_args, tmp_path):
    """A symlink, a FIFO and a hard link planted at DIR/<host>.out: those hosts are marked, their
    targets untouched (never followed, never blocked on), the other host's files written."""
    outdir = tmp_path / "out"
    outdir.mkdir(mode=0o700)
    victim_link, victim_hard = tmp_path / "victim-link", tmp_path / "victim-hard"
    victim_link.write_text("keep me\n")
    victim_hard.write_text("keep me too\n")
    os.symlink(victim_link, outdir / "h001.out")
    os.mkfifo(outdir / "h002.out")
    os.link(victim_hard, outdir / "h003.out")
    proc = subprocess.run([sys.executable, "-m", "hostops", "exec", "echo new", *lab_args(inventory(4)), "--json",
                           "-o", str(outdir)], env=cli_env(isolated_home), cwd=str(isolated_home),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc
    assert "internal error" not in proc.stderr, proc.stderr
    errors = {r["host"]: r["error"] or "" for r in map(json.loads, proc.stdout.splitlines())}
    assert "symbolic link" in errors["h001"], errors
    assert "not a regular file" in errors["h002"], errors
    assert "hard links" in errors["h003"], errors
    assert errors["h004"] == "", errors
    assert victim_link.read_text() == "keep me\n"
    assert victim_hard.read_text() == "keep me too\n"
    assert os.path.islink(outdir / "h001.out")
    assert stat.S_ISFIFO(os.lstat(outdir / "h002.out").st_mode)
    assert (outdir / "h004.out").read_text() == "new\n"
    assert "could not write -o files (3)" in proc.stderr, proc.stderr


# ============================================================== --lock
def _held(path) -> bool:
    """Someone holds a flock on ``path`` (read from /proc/locks: trying the lock ourselves could
    make the run under test find it taken)."""
    st = os.stat(path)
    with open("/proc/locks") as fh:
        for line in fh:
            fields = line.split()
            if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].split(":")[-1] == str(st.st_ino):
                return True
    return False


@pytest.mark.timeout(120)
def test_lock_never_modifies_the_locked_file(isolated_home, inventory, lab_args, tmp_path, hostops):
    """Locking the script itself (flock(1)'s idiom): its content and mtime stay; a second run while
    the first holds it still exits 6 and names the holder."""
    script = tmp_path / "deploy.sh"
    script.write_text("#!/bin/sh\necho deploying\n")
    os.utime(script, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    before = os.stat(script)
    inv = inventory(1)
    first = popen(isolated_home, ["exec", "sleep 4", *lab_args(inv), "--lock", str(script), "-q"],
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not _held(script) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _held(script), "the first run never took the lock"
        second = hostops("exec", "true", *lab_args(inv), "--lock", str(script), timeout=60)
        assert second.code == 6, second
        assert f"(pid {first.pid})" in second.err, second.err
        out, err = first.communicate(timeout=60)
    finally:
        kill_group(first)
    assert first.returncode == 0, err
    after = os.stat(script)
    assert script.read_text() == "#!/bin/sh\necho deploying\n"
    assert (after.st_mtime_ns, after.st_size, after.st_ino) == (before.st_mtime_ns, before.st_size, before.st_ino)

    fresh = tmp_path / "fresh.lock"  # a missing lock file is created empty and private, as flock(1) does
    assert hostops("exec", "true", *lab_args(inv), "--lock", str(fresh), "-q").code == 0
    assert os.path.getsize(fresh) == 0 and stat.S_IMODE(os.stat(fresh).st_mode) == 0o600


# ============================================================== --stream under endless output
RSS_BOUND_MB = 150


class TreeRss:
    """Samples the summed VmRSS of a process and its descendants until stopped."""

    def __init__(self, pid: int):
        self.pid = pid
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            total = sum(rss_kb(p) or 0 for p in [self.pid] + descendants(self.pid))
            self.peak_kb = max(self.peak_kb, total)
            self._stop.wait(0.2)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(10)
        return self.peak_kb / 1024


def drain(stream, sink: Optional[List[bytes]] = None) -> threading.Thread:
    def run() -> None:
        while True:
            chunk = stream.read1(1 << 16) if hasattr(stream, "read1") else stream.read(1 << 16)
            if not chunk:
                return
            if sink is not None:
                sink.append(chunk)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.timeout(120)
@pytest.mark.parametrize("stall", [6.0, 0.0], ids=["stalled-reader", "fast-reader"])
def test_stream_of_endless_output_stays_in_bounded_memory(isolated_home, inventory, lab_args, stall):
    """``hostops exec yes --stream -t 8`` on two hosts, its stdout not read for a while (or read and
    thrown away): hostops and its workers stay under 150 MB in all, and -t still ends the run."""
    proc = popen(isolated_home, ["exec", "yes", *lab_args(inventory(2)), "--stream", "-t", "8"],
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    errs: List[bytes] = []
    drain(proc.stderr, errs)
    rss = TreeRss(proc.pid)
    try:
        time.sleep(stall)
        drain(proc.stdout)
        code = proc.wait(60)
    finally:
        peak = rss.stop()
        kill_group(proc)
    err = b"".join(errs).decode(errors="replace")
    assert peak < RSS_BOUND_MB, f"peak RSS of hostops and its workers: {peak:.0f} MB"
    assert code == 3, (code, err[-2000:])
    assert err.count("timed out after 8s") == 2, err[-2000:]
    print(f"yes --stream ({'stalled' if stall else 'fast'} reader): peak {peak:.0f} MB")


@pytest.mark.timeout(120)
def test_stream_back_pressure_loses_nothing_and_keepalive_survives_a_pause(isolated_home, inventory, lab_args):
    """The reader pauses longer than three keepalive intervals while the host, its output all
    sent, sits idle: the quiet was ours (we were not reading), so the host is not dropped as
    silent, and every line arrives, in order (back-pressure drops nothing)."""
    count = 50_000
    proc = popen(isolated_home, ["exec", f"seq 1 {count}; sleep 10", *lab_args(inventory(1)), "--stream",
                                 "--keepalive", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out: List[bytes] = []
    errs: List[bytes] = []
    drain(proc.stderr, errs)
    try:
        time.sleep(5)
        reader = drain(proc.stdout, out)
        code = proc.wait(90)
        reader.join(10)
    finally:
        kill_group(proc)
    err = b"".join(errs).decode(errors="replace")
    assert code == 0, (code, err[-2000:])
    lines = b"".join(out).split(b"\n")[:-1]
    assert len(lines) == count, (len(lines), err[-2000:])
    assert lines[0] == b"h001: 1" and lines[-1] == f"h001: {count}".encode()
