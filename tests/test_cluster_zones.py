"""Zones, and the cluster `hostops cluster scheduler|worker` start: hosts whose inventory (here
group vars) sets ``hostops_zone`` run on that zone's worker only; a zone without a worker is
refused before anything runs; the wrappers start Dask with hostops's settings."""
from __future__ import annotations

import json
import os
import re
import subprocess

import pytest
import yaml

pytest.importorskip("distributed")
from clusterlab import CliCluster, hostops_env  # noqa: E402  (after importorskip)

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def zoned(tmp_path):
    cluster = CliCluster(str(tmp_path), ["a", "b"])
    try:
        yield cluster
    finally:
        cluster.close()


def zone_inventory(lab, path, zones=("a", "b"), ssh=6, local=3) -> str:
    children = {}
    n = 0
    for zone in zones:
        hosts = {f"{zone}-local{i}": {"ansible_connection": "local"} for i in range(1, local + 1)}
        for _ in range(ssh):
            n += 1
            hosts[f"{zone}-ssh{n:02d}"] = {"ansible_host": lab.addresses[n % len(lab.addresses)],
                                           "ansible_port": lab.port}
        children[f"zone_{zone}"] = {"vars": {"hostops_zone": zone}, "hosts": hosts}
    children["anywhere"] = {"hosts": {"free1": {"ansible_host": "127.0.0.1", "ansible_port": lab.port}}}
    data = {"all": {"vars": {"ansible_user": lab.user, "ansible_ssh_private_key_file": lab.user_key},
                    "children": children}}
    with open(path, "w") as fh:
        yaml.safe_dump(data, fh)
    return str(path)


def run(args, home, timeout=300):
    import sys

    proc = subprocess.run([sys.executable, "-m", "hostops", *args], capture_output=True, text=True, timeout=timeout,
                          env=hostops_env(home), cwd=str(home))
    return proc.returncode, [json.loads(x) for x in proc.stdout.splitlines() if x.strip()], proc.stderr


def test_group_vars_pin_hosts_to_their_zones_worker(zoned, lab, known_hosts, tmp_path, isolated_home):
    inv = zone_inventory(lab, tmp_path / "zones.yml")
    code, lines, err = run(["exec", 'echo "zone=${LAB_ZONE:-none}"', "-i", inv, "--known-hosts", known_hosts,
                            "--json", "--cluster", zoned.address, "--shard-size", "2"], isolated_home)
    assert code == 0, err + zoned.log_text()
    by_host = {r["host"]: r["stdout"] for r in lines}
    assert len(by_host) == 2 * 9 + 1
    for zone in ("a", "b"):
        for i in (1, 2, 3):
            assert by_host[f"{zone}-local{i}"] == f"zone={zone}\n"  # ran on that zone's worker, every shard
    assert all(out == "zone=none\n" for h, out in by_host.items() if "-ssh" in h or h == "free1")


def test_a_zone_without_a_worker_is_refused_before_anything_runs(zoned, lab, known_hosts, tmp_path, isolated_home):
    inv = zone_inventory(lab, tmp_path / "zones.yml", zones=("a", "c"))
    marks = tmp_path / "marks"
    marks.mkdir()
    code, lines, err = run(["exec", f"touch {marks}/ran", "-i", inv, "--known-hosts", known_hosts, "--json",
                            "--cluster", zoned.address], isolated_home)
    assert code == 2, err
    assert "no Dask worker serves zone 'c'" in err and "c-local" in err
    assert lines == [] and os.listdir(marks) == []
    # only zone a selected: fine
    code, lines, err = run(["exec", f"touch {marks}/ran", "-i", inv, "--known-hosts", known_hosts, "--json",
                            "--cluster", zoned.address, "-l", "zone_a"], isolated_home)
    assert code == 0, err
    assert len(lines) == 9


def _listening(pids):
    """(address, pid) of every listening TCP socket of ``pids``."""
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, timeout=30).stdout
    found = []
    for line in out.splitlines():
        fields = line.split()
        local = fields[3]
        for pid in re.findall(r"pid=(\d+)", line):
            if int(pid) in pids:
                found.append((local, int(pid)))
    return found


def test_the_wrappers_start_dask_with_hostops_settings(zoned):
    import dask  # noqa: F401

    client = zoned.client
    assert client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.allowed_failures) == 0
    facts = client.run(lambda: (__import__("multiprocessing").current_process().daemon,
                                __import__("dask").config.get("distributed.worker.profile.enabled"),
                                __import__("os").getpid()))
    assert [f[:2] for f in facts.values()] == [(False, False), (False, False)]
    resources = sorted(tuple(w["resources"]) for w in client.scheduler_info()["workers"].values())
    assert resources == [("hostops-zone-a",), ("hostops-zone-b",)]
    ttl = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.worker_ttl)
    assert ttl == 60
    pids = {p.pid for p in zoned.procs} | {f[2] for f in facts.values()}
    sockets = _listening(pids)
    assert sockets, "ss shows no listening socket of the cluster's processes"
    wildcard = [(a, p) for a, p in sockets if not a.startswith(("127.", "[::1]"))]
    assert wildcard == []  # the scheduler's port, and no dashboard or HTTP route on 0.0.0.0
