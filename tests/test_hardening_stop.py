"""Stopping commands, and saying only what is true about it (issue 11).

Against the real sshd: a timed-out root command is stopped through the same sudo password
exchange as the command itself; a runbook step's own ``timeout:`` and ``sudo:`` govern its
watchdog and its kill; a connection that dies says "may still be running"; two SIGINTs at
once (GNU ``timeout -s INT``) are one Ctrl-C; killing the fork server under
``--start-method forkserver`` neither stops the hosts nor duplicates their records.
Remote processes are found by a unique marker and killed by PID when a test ends.
"""
from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import List, Optional

import pytest

from conftest import ROOT
from sshlab import SSHD
from test_faults import (Live, Remote, _stat, alive, cmdline, launch,  # noqa: F401
                         log_records, remote, start_sleepers, unique, wait_until)

STOP_USER = "hostopsstop"  # not test_trust's user: both files may run at once, each owns its sudoers rule
STOP_PASSWORD = "St0p-the-r00t-command"
RULE = f"/etc/sudoers.d/{STOP_USER}"


def uid_of(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


# ------------------------------------------------------------------ a user whose sudo needs its password
@pytest.fixture(scope="module")
def sudo_lab(tmp_path_factory):
    """An sshd for a non-root user whose sudo asks for a password (see :func:`sudo_rule`)."""
    if os.geteuid() != 0 or not shutil.which("sudo") or not shutil.which("useradd"):
        pytest.skip("needs root, sudo and useradd to create a user whose sudo asks for a password")
    try:
        pwd.getpwnam(STOP_USER)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", STOP_USER], check=True, timeout=30)
    subprocess.run(["chpasswd"], input=f"{STOP_USER}:{STOP_PASSWORD}\n", text=True, check=True, timeout=30)
    base = Path(tempfile.mkdtemp(prefix="hostops-stop-", dir="/tmp"))  # the sshd reads it as that user
    os.chmod(base, 0o755)
    server = SSHD(str(base / "lab"))
    server.user = STOP_USER
    server.start()
    os.chmod(server.workdir, 0o755)
    os.chmod(os.path.join(server.workdir, "authorized_keys"), 0o644)
    kh = str(base / "known_hosts")
    server.write_known_hosts(kh)
    inv = server.write_inventory(str(base / "inv.yml"), 2)
    yield server, inv, kh
    server.stop()
    if os.path.exists(RULE):
        os.remove(RULE)
    shutil.rmtree(base, ignore_errors=True)


def sudo_rule(nopasswd: bool) -> None:
    with open(RULE, "w") as fh:
        tag = "NOPASSWD: " if nopasswd else ""
        fh.write(f"Defaults:{STOP_USER} !lecture, passwd_tries=3\n{STOP_USER} ALL=(ALL) {tag}ALL\n")
    os.chmod(RULE, 0o440)


def root_leftovers(remote: Remote, marker: str, timeout: float) -> List[str]:
    left = remote.wait_gone(re.escape(marker), timeout)
    return [f"{pid} uid={uid_of(pid)} {cmd}" for pid, cmd in left]


@pytest.mark.timeout(120)
def test_timeout_with_a_sudo_password_stops_the_root_command(launch, remote, sudo_lab):
    """The kill goes through the same password exchange as the command: before, it ran
    ``sudo -n``, which refused, and hostops said the command 'survived TERM and KILL'."""
    server, inv, kh = sudo_lab
    sudo_rule(nopasswd=False)
    marker = remote.track(f"600.{unique()}")
    run = launch("exec", f"sleep {marker}", "--sudo", "--sudo-pass-env", "STOP_PW", "-i", inv, "--known-hosts", kh,
                 "-t", "2", "--kill-grace", "2", "--json", env={"STOP_PW": STOP_PASSWORD})
    running = remote.wait_running(rf"^sleep {re.escape(marker)}$", 2, 30)
    assert running == 2, run
    assert {uid_of(p) for p in remote.procs(rf"^sleep {re.escape(marker)}$")} == {0}  # really root's
    run.finish(60)
    assert run.code == 3, run
    for r in run.json_lines():
        assert r["status"] == "timeout", r
        assert "survived TERM and KILL" not in r["error"], r
        assert re.search(r"the remote command was (stopped \(TERM\)|killed \(KILL)", r["error"]), r
    assert root_leftovers(remote, marker, 10) == []
    assert STOP_PASSWORD not in run.text + run.errtext


@pytest.mark.timeout(120)
def test_a_kill_that_sudo_refuses_says_not_stopped_and_why(launch, remote, sudo_lab):
    """The password changes while the command runs: the kill's sudo refuses it. The host says
    'not stopped: sudo refused the password', and it is true: the root command still runs."""
    server, inv, kh = sudo_lab
    sudo_rule(nopasswd=False)
    marker = remote.track(f"600.{unique()}")
    run = launch("exec", f"sleep {marker}", "--sudo", "--sudo-pass-env", "STOP_PW", "-i", inv, "--known-hosts", kh,
                 "--kill-grace", "1", "--json", env={"STOP_PW": STOP_PASSWORD})
    try:
        assert remote.wait_running(rf"^sleep {re.escape(marker)}$", 2, 30) == 2, run
        subprocess.run(["chpasswd"], input=f"{STOP_USER}:changed-{unique()}\n", text=True, check=True, timeout=30)
        os.kill(run.proc.pid, signal.SIGINT)
        run.finish(60)
    finally:
        subprocess.run(["chpasswd"], input=f"{STOP_USER}:{STOP_PASSWORD}\n", text=True, check=True, timeout=30)
    assert run.code == 130, run
    for r in run.json_lines():
        assert r["status"] == "interrupted", r
        assert "not stopped: sudo refused the password" in r["error"], r
        assert "may still be running" in r["error"] and "TERM" not in r["error"], r
    assert remote.count(rf"^sleep {re.escape(marker)}$") == 2  # still there, as reported


@pytest.mark.timeout(120)
def test_a_runbook_steps_own_sudo_governs_its_kill(launch, remote, sudo_lab, tmp_path):
    """A step with ``sudo: true`` in a run without --sudo: its timeout kills it as root."""
    server, inv, kh = sudo_lab
    sudo_rule(nopasswd=True)
    marker = remote.track(f"600.{unique()}")
    book = tmp_path / "book.yml"
    book.write_text(textwrap.dedent(f"""\
        name: stop a root step
        steps:
          - name: hang
            exec: sleep {marker}
            sudo: true
            timeout: 2
        """))
    run = launch("run", str(book), "-i", inv, "--known-hosts", kh, "--kill-grace", "2", "--json")
    assert remote.wait_running(rf"^sleep {re.escape(marker)}$", 2, 30) == 2, run
    run.finish(60)
    assert run.code == 3, run
    records = [r for r in run.json_lines() if r.get("status")]
    assert records and all(r["status"] == "timeout" for r in records), run
    for r in records:
        assert "survived TERM and KILL" not in r["error"], r
        assert re.search(r"the remote command was (stopped \(TERM\)|killed \(KILL)", r["error"]), r
    assert root_leftovers(remote, marker, 10) == []


# ------------------------------------------------------------------ a step's own timeout: the watchdog
@pytest.mark.timeout(60)
def test_a_steps_own_timeout_governs_the_watchdog(monkeypatch):
    """An action whose own timeout is 60 s is healthy 3 s in, though the run's -t is 0.5 s: the
    parent's watchdog (-t + connect timeout + kill grace + slack) used to report it stuck."""
    from hostops import pool as pool_module
    from hostops.api import run
    from hostops.settings import Options, Target
    from hostops.worker import ExecAction

    monkeypatch.setattr(pool_module, "PARENT_SLACK", 1.0)  # with -t: overdue after 0.5 + 0.5 + 0 + 1 = 2 s
    targets = [Target("slow", "localhost", connection="local")]
    options = Options(timeout=0.5, connect_timeout=0.5, kill_grace=0, forks=1, processes=1, start_method="fork")
    (result,) = list(run(targets, ExecAction("sleep 3; echo done", timeout=60), options))
    assert result.status == "ok" and result.stdout == b"done\n", result


@pytest.mark.timeout(90)
def test_runbook_step_timeout_beats_the_runs_timeout(monkeypatch, lab, inventory, known_hosts, tmp_path, capsys):
    """`hostops run` (in this process, so the watchdog's slack can be shortened) with -t 0.5:
    a step with ``timeout: 60`` that takes 4 s is ok, not 'stuck past every deadline'."""
    from hostops import cli
    from hostops import pool as pool_module

    monkeypatch.setattr(pool_module, "PARENT_SLACK", 1.0)  # the run's: 1 + 0.5 + 0 + 1 = 2.5 s
    book = tmp_path / "book.yml"
    book.write_text("name: slow step\nsteps:\n  - name: slow\n    exec: sleep 4; echo done\n    timeout: 60\n")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", str(book), "-i", inventory(2), "--known-hosts", known_hosts, "-t", "0.5",
                  "--connect-timeout", "1", "--kill-grace", "0", "--start-method", "fork", "--json"])
    out, err = capsys.readouterr()
    assert exit_.value.code == 0, (out, err)
    assert "past every deadline" not in out + err
    assert out.count('"status": "ok"') == 2, out


def test_the_watchdog_allows_for_retries():
    from hostops.pool import PARENT_SLACK, Pool
    from hostops.runbook import RetryAction
    from hostops.settings import Options, Target
    from hostops.worker import ExecAction, Job

    pool = Pool(Options(timeout=1, connect_timeout=2, kill_grace=3), host_count=1)
    target = Target("h", "localhost")
    assert pool.overdue_after(Job(0, target, ExecAction("true", timeout=10))) == 2 + 10 + 3 + PARENT_SLACK
    assert pool.overdue_after(Job(0, target, RetryAction(ExecAction("true", timeout=10), 2, 5.0))) \
        == 2 + 3 * (10 + 3) + 2 * 5 + PARENT_SLACK
    assert Pool(Options(), 1).overdue_after(Job(0, target, ExecAction("true"))) is None


# ------------------------------------------------------------------ the kill's own failures, in words
class _FakeChannel:
    """Enough of a paramiko channel for the kill: stderr pieces, then an exit status."""

    def __init__(self, pieces: List[bytes], code: int):
        self.pieces = list(pieces)
        self.code = code
        self.sent: List[bytes] = []
        self.closed_write = False
        import threading

        self.status_event = threading.Event()

    def recv_stderr_ready(self) -> bool:
        return bool(self.pieces)

    def recv_stderr(self, n: int) -> bytes:
        return self.pieces.pop(0)

    def sendall(self, data: bytes) -> None:
        self.sent.append(data)

    def shutdown_write(self) -> None:
        self.closed_write = True

    def exit_status_ready(self) -> bool:
        return not self.pieces

    def recv_exit_status(self) -> int:
        return self.code


def test_a_refused_kill_says_not_stopped_and_why():
    from hostops.remotecmd import kill_note
    from hostops.ssh import _wait_kill

    prompt = "[hostops-sudo-0123]"
    chan = _FakeChannel([prompt.encode(), b"Sorry, try again.\n" + prompt.encode(),
                         b"sudo: 1 incorrect password attempt\n"], 1)
    code, refused, err = _wait_kill(chan, 5, prompt, "pw")
    assert chan.sent == [b"pw\n"] and chan.closed_write  # answered once, then no more
    note = kill_note(code, refused, err, 5)
    assert note.startswith("not stopped: sudo refused the password"), note
    assert "may still be running" in note and "TERM" not in note
    note = kill_note(1, False, "sudo: a password is required\n", 5)
    assert note.startswith("not stopped: sudo needs a password"), note
    note = kill_note(4, False, "", 5)
    assert note.startswith("not stopped: the kill was not permitted"), note
    assert kill_note(0, False, "", 5) == "the remote command was stopped (TERM)"


# ------------------------------------------------------------------ the connection dies under a command
def sshd_ancestors(pid: int, listener: int) -> List[int]:
    """The per-connection sshd processes above ``pid``, below the lab's listening sshd."""
    out = []
    st = _stat(pid)
    while st is not None and st[1] not in (0, 1, listener):
        parent = st[1]
        if cmdline(parent).startswith("sshd"):
            out.append(parent)
        st = _stat(parent)
    return out


@pytest.mark.timeout(90)
def test_connection_killed_mid_command_says_it_may_still_be_running(launch, lab, inventory, known_hosts, remote,
                                                                     tmp_path):
    marker = remote.track(f"60.{unique()}")
    log = tmp_path / "run.jsonl"
    run = launch("exec", f"echo started; sleep {marker}", "-i", inventory(1), "--known-hosts", known_hosts,
                 "--stream", "--log", str(log))
    assert run.wait_for(b"h001: started\n", 30), run
    (sleeper,) = remote.procs(rf"^sleep {re.escape(marker)}$")
    session = sshd_ancestors(sleeper, lab.proc.pid)
    assert session, f"no per-session sshd above {sleeper}: {cmdline(_stat(sleeper)[1])}"
    for pid in session:  # sshd for this one connection dies; the command does not
        os.kill(pid, signal.SIGKILL)
    run.finish(45)
    (record,) = [r for r in log_records(log) if r["event"] == "host"]
    assert record["status"] in ("failed", "unreachable"), record
    assert "may still be running" in record["error"], record
    assert "ended" not in record["error"], record
    assert remote.count(rf"^sleep {re.escape(marker)}$") == 1  # and it is true: it still runs


# ------------------------------------------------------------------ two SIGINTs at once
@pytest.mark.timeout(120)
@pytest.mark.parametrize("method,gap", [("fork", 0.0), ("fork", 0.3), ("spawn", 0.3)])
def test_two_sigints_at_once_are_one_ctrl_c(launch, remote, inventory, known_hosts, method, gap):
    """GNU ``timeout -s INT`` signals hostops, then its whole process group: the two arrive
    together and must be one clean stop (remote commands stopped), not 'abort at once'.
    (Back to back, Python may run the handler once for both; ``gap`` makes it run twice,
    still well inside the one-second window.)"""
    count = 10
    # The commands ignore TERM, so the clean stop lasts the 2 s kill grace: the second signal
    # comes while it runs, as it does under GNU timeout.
    run, marker = start_sleepers(launch, remote, inventory, known_hosts, count, method, "--kill-grace", "2",
                                 ignore_term=True)
    os.kill(run.proc.pid, signal.SIGINT)
    if gap:
        time.sleep(gap)
    os.killpg(run.proc.pid, signal.SIGINT)
    run.finish(60)
    assert run.code == 130, run
    assert "aborted while running" not in run.text + run.errtext, run
    records = run.json_lines()
    assert len(records) == count and {r["status"] for r in records} == {"interrupted"}, run
    assert all("the remote command was killed (KILL after 2s)" in r["error"] for r in records), records[:3]
    assert f"interrupted while running ({count}): h[001-{count:03d}]" in run.errtext, run
    assert remote.wait_gone(re.escape(marker), 10) == []


@pytest.mark.timeout(120)
def test_timeout_s_int_stops_every_remote_command(remote, inventory, known_hosts, isolated_home):
    """The real GNU timeout(1) in front of hostops."""
    if not shutil.which("timeout"):
        pytest.skip("needs GNU timeout")
    marker = remote.track(f"30.{unique()}")
    env = dict(os.environ, HOME=str(isolated_home), PYTHONPATH=ROOT)
    env.pop("SSH_AUTH_SOCK", None)
    env.pop("HOSTOPS_START_METHOD", None)
    # The bound is for timeout(1), not an assertion: all 5 hosts start well within 20 s.
    proc = subprocess.Popen(["timeout", "-s", "INT", "20", sys.executable, "-m", "hostops", "exec",
                             f"sleep {marker}", "-i", inventory(5), "--known-hosts", known_hosts, "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 124, (proc.returncode, out, err)  # timeout(1) says it had to signal
    assert "interrupted while running (5): h[001-005]" in err, err
    assert "aborted while running" not in out + err, err
    assert remote.wait_gone(re.escape(marker), 10) == []


# ------------------------------------------------------------------ the fork server dies
def forkserver_of(run: Live) -> Optional[int]:
    found = [p for p in run.children() if "forkserver" in cmdline(p)]
    return found[0] if found else None


@pytest.mark.timeout(120)
def test_killing_the_forkserver_stops_no_host_and_logs_each_once(launch, remote, inventory, known_hosts, tmp_path):
    count = 6
    marker = remote.track(f"4.{unique()}")
    log = tmp_path / "run.jsonl"
    run = launch("exec", f"sleep {marker}; echo done", "-i", inventory(count), "--known-hosts", known_hosts,
                 "--start-method", "forkserver", "--processes", "2", "--log", str(log), "--json",
                 "--connect-timeout", "30")
    assert remote.wait_running(rf"^sleep {re.escape(marker)}$", count, 30) == count, run
    server = forkserver_of(run)
    assert server is not None, {p: cmdline(p) for p in run.children()}
    os.kill(server, signal.SIGKILL)
    run.finish(60)
    assert run.code == 0, run
    results = run.by_host()
    assert {h: r["status"] for h, r in results.items()} == {f"h{i:03d}": "ok" for i in range(1, count + 1)}, run
    assert all(r["stdout"] == "done\n" for r in results.values())
    records = log_records(log)
    hosts = sorted(r["host"] for r in records if r["event"] == "host")
    assert hosts == sorted(results), "exactly one log record per host"
    assert records[-1]["event"] == "end" and records[-1]["summary"]["counts"]["ok"] == count
    left = wait_until(lambda: not [p for p, t in run.seen.items() if alive(p, t)], 10)
    assert left, {p: cmdline(p) for p, t in run.seen.items() if alive(p, t)}


@pytest.mark.timeout(120)
def test_sigkill_of_the_parent_under_forkserver_leaves_nothing(launch, remote, inventory, known_hosts):
    """Under forkserver the workers no longer die with their parent (the fork server): they
    must still see the hostops process go (their inbox pipe closes) and stop their hosts."""
    run, marker = start_sleepers(launch, remote, inventory, known_hosts, 6, "forkserver", "--processes", "2")
    wait_until(lambda: len(run.seen) >= 4, 10)
    workers = dict(run.seen)
    os.kill(run.proc.pid, signal.SIGKILL)
    run.finish(10)
    gone = wait_until(lambda: not [p for p, t in workers.items() if alive(p, t)], 20, 0.1)
    assert gone, {p: cmdline(p) for p, t in workers.items() if alive(p, t)}
    assert remote.wait_gone(re.escape(marker), 10) == []
