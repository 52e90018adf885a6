"""Twenty consecutive 200-host --cluster runs on one LocalCluster complete, each with every host
ok (a stall would be caught by each run's bounded wait)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("distributed")
from clusterlab import dask_cluster, hostops_env  # noqa: E402,F401  (after importorskip; a fixture)

pytestmark = pytest.mark.timeout(2400)


def test_twenty_consecutive_two_hundred_host_runs(dask_cluster, inventory, known_hosts, isolated_home):
    inv = inventory(200)
    for i in range(20):
        proc = subprocess.run([sys.executable, "-m", "hostops", "exec", "echo ok", "-i", inv, "--known-hosts",
                               known_hosts, "--json", "-f", "100", "--connect-timeout", "60", "--cluster",
                               dask_cluster.address], capture_output=True, text=True, env=hostops_env(isolated_home),
                              cwd=str(isolated_home), timeout=300)
        lines = [json.loads(x) for x in proc.stdout.splitlines() if x.strip()]
        bad = [r for r in lines if r["status"] != "ok"]
        assert proc.returncode == 0, f"run {i + 1}: {bad[:5]} {proc.stderr[-3000:]}"
        assert len(lines) == 200 and all(r["status"] == "ok" for r in lines), f"run {i + 1}"
    # nothing left behind on the workers: no task of ours still held by the scheduler
    leftover = dask_cluster.client.run_on_scheduler(
        lambda dask_scheduler: [k for k in dask_scheduler.tasks if str(k).startswith("hostops-")])
    assert leftover == []
    topics = dask_cluster.client.run_on_scheduler(
        lambda dask_scheduler: [t for t in dask_scheduler._broker._topics if str(t).startswith("hostops-")])
    assert topics == []  # each run's events were dropped at its end
    assert dask_cluster.client.get_metadata(["hostops"], {}) == {}  # claims and control records dropped too
