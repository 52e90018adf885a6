"""``--persist`` faults: the keeper killed mid-run, two clients at once, Ctrl-C (issue 15)."""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys

import pytest

from persistlab import gone, keeper_pid, loud_lab, runtime, setup, wait_until  # noqa: F401  (fixtures)

pytestmark = pytest.mark.timeout(240)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _client(isolated_home, *args, **kw):
    """The CLI in the background (the hostops fixture waits for its end)."""
    env = dict(os.environ, HOME=str(isolated_home), PYTHONPATH=ROOT)
    env.pop("SSH_AUTH_SOCK", None)
    return subprocess.Popen([sys.executable, "-m", "hostops", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=str(isolated_home), **kw)


def _pids(directory) -> list:
    out = []
    for path in glob.glob(os.path.join(directory, "p.*")):
        with open(path) as fh:
            text = fh.read().strip()
        if text:
            out.append(int(text))
    return out


def _sleeper(directory) -> str:
    """A remote command that records its shell's pid, then sleeps (the lab is this machine)."""
    return f"f=$(mktemp {directory}/p.XXXXXX); echo $$ > $f; sleep 120; echo late"


def _sleepers_on_a_warm_keeper(hostops, isolated_home, runtime, setup, tmp_path, *extra: str):
    """A keeper warmed by one run, then a client (started, not waited for) whose 6 hosts each
    run :func:`_sleeper`: (the keeper's pid, the directory of their pid files, the client)."""
    inv, kh = setup
    assert hostops("exec", "true", "-i", inv, "--known-hosts", kh, "--persist", "5m").code == 0
    pid = keeper_pid(runtime)
    marks = tmp_path / "marks"
    marks.mkdir()
    client = _client(isolated_home, "exec", _sleeper(marks), "-i", inv, "--known-hosts", kh, "--persist", "5m",
                     "--json", *extra)
    return pid, marks, client


def test_keeper_killed_mid_run_reports_hosts_and_next_run_starts_afresh(hostops, isolated_home, runtime, setup,
                                                                       tmp_path):
    inv, kh = setup
    pid, marks, client = _sleepers_on_a_warm_keeper(hostops, isolated_home, runtime, setup, tmp_path)
    try:
        assert wait_until(lambda: len(_pids(marks)) == 6, 60)
        os.kill(pid, signal.SIGKILL)
        out, err = client.communicate(timeout=60)  # a hang guard: it must not wait for the sleeps
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert client.returncode == 5, (out, err)
    lines = [json.loads(line) for line in out.splitlines()]
    assert sorted(r["host"] for r in lines) == [f"h00{i}" for i in range(1, 7)]
    assert all(r["status"] == "failed" and "may have run" in r["error"] and str(pid) in r["error"] for r in lines)
    # its workers die with it and stop the remote commands
    assert wait_until(lambda: all(gone(p) for p in _pids(marks)), 60)
    run = hostops("exec", "echo ok", "-i", inv, "--known-hosts", kh, "--persist", "5m", "--json")
    assert run.code == 0, run
    assert keeper_pid(runtime) not in (None, pid)


def test_two_clients_at_once_are_both_served_unmixed(hostops, isolated_home, runtime, setup):
    inv, kh = setup
    assert hostops("exec", "true", "-i", inv, "--known-hosts", kh, "--persist", "5m").code == 0
    clients = [_client(isolated_home, "exec", f"sleep 0.5; echo {word}", "-i", inv, "--known-hosts", kh,
                       "--persist", "5m", "--json") for word in ("alpha", "beta")]
    outs = []
    try:
        for c in clients:
            outs.append(c.communicate(timeout=120))
    finally:
        for c in clients:
            if c.poll() is None:
                c.kill()
                c.wait()
    for c, (out, err), word in zip(clients, outs, ("alpha", "beta")):
        assert c.returncode == 0, (out, err)
        lines = [json.loads(line) for line in out.splitlines()]
        assert sorted(r["host"] for r in lines) == [f"h00{i}" for i in range(1, 7)]
        assert {r["stdout"] for r in lines} == {f"{word}\n"}


def test_ctrl_c_stops_this_runs_commands_and_the_keeper_stays(hostops, loud_lab, isolated_home, runtime, setup,
                                                              tmp_path):
    inv, kh = setup
    pid, marks, client = _sleepers_on_a_warm_keeper(hostops, isolated_home, runtime, setup, tmp_path,
                                                    "--kill-grace", "1")
    try:
        assert wait_until(lambda: len(_pids(marks)) == 6, 60)
        client.send_signal(signal.SIGINT)
        out, err = client.communicate(timeout=90)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert client.returncode == 130, (out, err)
    lines = [json.loads(line) for line in out.splitlines()]
    assert sorted(r["host"] for r in lines) == [f"h00{i}" for i in range(1, 7)]
    assert {r["status"] for r in lines} == {"interrupted"}
    assert wait_until(lambda: all(gone(p) for p in _pids(marks)), 30)  # stopped on the hosts
    assert keeper_pid(runtime) == pid  # the keeper survived
    before = loud_lab.count_logins()
    run = hostops("exec", "echo ok", "-i", inv, "--known-hosts", kh, "--persist", "5m", "--json")
    assert run.code == 0, run
    assert loud_lab.count_logins() == before  # and its connections are still warm


def test_a_stopped_keeper_is_given_up_on_not_waited_for(loud_lab, runtime, setup, tmp_path, monkeypatch):
    """A keeper that is alive but silent (SIGSTOP) sends no heartbeat: the client reports the
    hosts it owes after KEEPER_SILENCE (shortened here) instead of hanging."""
    from hostops import keeperclient
    from hostops.actions import ExecAction
    from hostops.inventory import Inventory
    from hostops.settings import Options, resolve
    from hostops.wire import Done, Job, Started

    inv, kh = setup
    monkeypatch.setattr(keeperclient, "KEEPER_SILENCE", 5.0)
    options = Options(known_hosts=(kh,), persist=300.0)
    inventory = Inventory.load([inv])
    targets = resolve(inventory, inventory.select("all"), options)[:2]
    pool = keeperclient.KeeperPool(options, len(targets))
    pool.start()
    pid = keeper_pid(runtime)
    assert pid is not None
    jobs = [Job(i, t, ExecAction(_sleeper(tmp_path), None, False)) for i, t in enumerate(targets)]
    results = []
    stopped = False
    try:
        for event in pool.run(jobs):
            if isinstance(event, Started) and not stopped and len(_pids(tmp_path)) == 0:
                assert wait_until(lambda: len(_pids(tmp_path)) >= 1, 60)
                os.kill(pid, signal.SIGSTOP)
                stopped = True
            if isinstance(event, Done):
                results.append(event.result)
    finally:
        if stopped:
            os.kill(pid, signal.SIGCONT)
        pool.close()
    assert stopped
    assert sorted(r.host for r in results) == sorted(t.name for t in targets)
    assert all(r.status == "failed" and "has not answered for 5s" in r.error for r in results)
