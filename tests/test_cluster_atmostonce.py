"""At most once through Dask: a Dask worker SIGKILLed mid-run never makes a command run twice.

Every host's command appends a line to its own ledger file (the lab's sshd runs on this
machine, so the test reads the ledgers directly): 0 lines means it never ran, 2 would mean
it ran twice. The run goes through a LocalCluster the test owns (2 workers, 1 thread each)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("distributed")
from clusterlab import LabCluster, dask_cluster, finish, wait_for  # noqa: E402,F401  (after importorskip; a fixture)

from hostops.cluster import LOST  # noqa: E402

pytestmark = pytest.mark.timeout(900)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ledger_runbook(tmp_path, ledger, sleep: float = 1.0) -> str:
    path = tmp_path / "ledger.yml"
    path.write_text("name: ledger\nhosts: all\nsteps:\n  - name: mark\n"
                    f"    exec: \"echo run >> {ledger}/{{{{ inventory_hostname }}}}; sleep {sleep}\"\n")
    return str(path)


def start_run(args, isolated_home) -> subprocess.Popen:
    env = dict(os.environ, HOME=str(isolated_home), PYTHONPATH=ROOT)
    env.pop("SSH_AUTH_SOCK", None)
    return subprocess.Popen([sys.executable, "-m", "hostops", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=str(isolated_home))


def ledger_counts(ledger, hosts):
    counts = {}
    for h in hosts:
        p = ledger / h
        counts[h] = len(p.read_text().splitlines()) if p.exists() else 0
    return counts


def test_sigkill_a_worker_mid_run_five_times_nothing_runs_twice(dask_cluster, lab, inventory, known_hosts, tmp_path,
                                                                 isolated_home):
    hosts = [f"h{i:03d}" for i in range(1, 61)]
    inv = inventory(60)
    lost_total = 0
    for attempt in range(5):
        dask_cluster.wait_workers(2)
        ledger = tmp_path / f"ledger{attempt}"
        ledger.mkdir()
        proc = start_run(["run", ledger_runbook(tmp_path, ledger), "-i", inv, "--known-hosts", known_hosts,
                          "-f", "4", "--json", "--cluster", dask_cluster.address], isolated_home)
        try:
            wait_for(lambda: len(os.listdir(ledger)) >= 8 or proc.poll() is not None, 300, "hosts to start")
            assert proc.poll() is None, finish(proc)
            dask_cluster.kill_one()
        finally:
            code, lines, err = finish(proc)
        results = {r["host"]: r for r in lines}
        assert sorted(results) == hosts, err
        counts = ledger_counts(ledger, hosts)
        assert max(counts.values()) == 1, {h: c for h, c in counts.items() if c > 1}  # never twice
        lost = {h for h, r in results.items() if r["status"] == "failed"}
        # claims go out in batches of free slots: at most -f hosts of the killed shard were claimed
        # and unfinished; every host it had not claimed yet ran elsewhere instead
        assert len(lost) <= 4, lost
        for h in lost:
            assert results[h]["error"] == LOST, results[h]
            assert counts[h] in (0, 1)   # "may have run"
        for h in set(hosts) - lost:
            assert results[h]["status"] == "ok", results[h]
            assert counts[h] == 1, h  # the others ran exactly once (some of them on the other worker)
        assert code == (5 if lost else 0), err
        lost_total += len(lost)
    assert lost_total > 0  # the kills hit hosts that had started


def test_a_scheduler_that_retries_lost_tasks_is_refused(lab, inventory, known_hosts, isolated_home, tmp_path):
    cluster = None
    try:
        cluster = LabCluster(1)
        cluster.cluster.scheduler.allowed_failures = 3  # as Dask's default scheduler: a lost task runs again
        inv = inventory(3)
        code, lines, err = finish(start_run(["exec", "echo ok", "-i", inv, "--known-hosts", known_hosts, "--json",
                                             "--cluster", cluster.address], isolated_home))
        assert code == 2, err
        assert "allowed-failures = 3" in err and "--allow-rerun" in err
        assert lines == []
        code, lines, err = finish(start_run(["exec", "echo ok", "-i", inv, "--known-hosts", known_hosts, "--json",
                                             "--cluster", cluster.address, "--allow-rerun"], isolated_home))
        assert code == 0, err
        assert [r["status"] for r in lines] == ["ok"] * 3
    finally:
        if cluster is not None:
            cluster.close()


def test_retry_lost_runs_the_lost_hosts_again(dask_cluster, lab, inventory, known_hosts, tmp_path, isolated_home):
    hosts = [f"h{i:03d}" for i in range(1, 41)]
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    proc = start_run(["run", ledger_runbook(tmp_path, ledger), "-i", inventory(40), "--known-hosts", known_hosts,
                      "-f", "4", "--json", "--cluster", dask_cluster.address, "--retry-lost"], isolated_home)
    try:
        wait_for(lambda: len(os.listdir(ledger)) >= 6 or proc.poll() is not None, 300, "hosts to start")
        assert proc.poll() is None
        dask_cluster.kill_one()
    finally:
        code, lines, err = finish(proc)
    assert code == 0, err
    assert sorted(r["host"] for r in lines) == hosts
    assert all(r["status"] == "ok" for r in lines), [r for r in lines if r["status"] != "ok"]
    counts = ledger_counts(ledger, hosts)
    assert set(counts.values()) <= {1, 2}
    assert 2 in counts.values()  # a host that had run (its worker lost) was run again, as asked
