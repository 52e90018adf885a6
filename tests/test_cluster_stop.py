"""Stopping a --cluster run: Ctrl-C on the client stops the remote commands on every worker
(exit 130); a client that dies leaves nothing running unwatched (the shards notice the
missing heartbeat and stop)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

import pytest

pytest.importorskip("distributed")
from clusterlab import CliCluster, dask_cluster, finish, hostops_env, wait_for  # noqa: E402,F401  (after importorskip; a fixture)

from hostops.cluster import SCHEDULER_LOST  # noqa: E402
from hostops.shard import CLIENT_LOST_AFTER  # noqa: E402

pytestmark = pytest.mark.timeout(600)


def sleepers(tag: str) -> list:
    """Pids of the remote commands (the lab's sshd runs them on this machine)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if f"sleep {tag}" in cmd and "case" not in cmd:
            found.append(int(pid))
    return found


def start(args, home):
    return subprocess.Popen([sys.executable, "-m", "hostops", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=hostops_env(home), cwd=str(home))


def test_ctrl_c_stops_remote_commands_on_every_worker_exit_130(dask_cluster, inventory, known_hosts, isolated_home):
    tag = f"{300 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 10000}"  # a unique "sleep N.M"
    proc = start(["exec", f"sleep {tag}", "-i", inventory(12), "--known-hosts", known_hosts, "--json",
                  "--cluster", dask_cluster.address, "-f", "6", "--kill-grace", "2"], isolated_home)
    try:
        wait_for(lambda: len(sleepers(tag)) >= 12 or proc.poll() is not None, 300, "every host's command to start")
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
    finally:
        code, lines, err = finish(proc, 120)
    assert code == 130, err
    assert len(lines) == 12 and {r["status"] for r in lines} == {"interrupted"}, lines
    wait_for(lambda: not sleepers(tag), 60, "the remote commands to be stopped")


def test_a_client_that_dies_leaves_nothing_running(dask_cluster, inventory, known_hosts, isolated_home):
    tag = f"{300 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 10000}"
    proc = start(["exec", f"sleep {tag}", "-i", inventory(6), "--known-hosts", known_hosts, "--json",
                  "--cluster", dask_cluster.address, "--kill-grace", "2"], isolated_home)
    try:
        wait_for(lambda: len(sleepers(tag)) >= 6 or proc.poll() is not None, 300, "the commands to start")
        assert proc.poll() is None
    finally:
        proc.kill()  # SIGKILL: no cleanup of its own
        proc.communicate()
    # the shards stop after CLIENT_LOST_AFTER seconds without a heartbeat, then the kill grace
    wait_for(lambda: not sleepers(tag), CLIENT_LOST_AFTER + 90, "the shards to stop the remote commands")
    # and the workers are free again: a new run goes through at once
    run = subprocess.run([sys.executable, "-m", "hostops", "exec", "echo ok", "-i", inventory(2, name="two.yml"),
                          "--known-hosts", known_hosts, "--cluster", dask_cluster.address], capture_output=True,
                         text=True, env=hostops_env(isolated_home), cwd=str(isolated_home), timeout=300)
    assert run.returncode == 0, run.stderr


def test_a_lost_scheduler_gives_every_host_one_honest_record_and_stops_the_commands(tmp_path, inventory, known_hosts,
                                                                                     isolated_home):
    """The scheduler SIGKILLed mid-run: the client gives up in bounded time; each host gets one
    record (ok if it finished before, else failed "may have run", never retried); the shards,
    now without a scheduler, stop their remote commands."""
    tag = f"{300 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 10000}"
    cluster = CliCluster(str(tmp_path), ["x"])
    try:
        quick = inventory(4, name="quick.yml")
        code = subprocess.run([sys.executable, "-m", "hostops", "exec", "echo ok", "-i", quick, "--known-hosts",
                               known_hosts, "--cluster", cluster.address], capture_output=True, text=True,
                              env=hostops_env(isolated_home), cwd=str(isolated_home), timeout=300).returncode
        assert code == 0
        # the first host finishes at once, the others sleep until stopped
        book = tmp_path / "book.yml"
        book.write_text("name: sleepers\nhosts: all\nsteps:\n  - name: sleep\n"
                        f"    exec: \"case {{{{ inventory_hostname }}}} in h001) ;; *) sleep {tag};; esac\"\n")
        proc = start(["run", str(book), "-i", inventory(6), "--known-hosts", known_hosts, "--json", "--cluster", cluster.address,
                      "--kill-grace", "2"], isolated_home)
        try:
            wait_for(lambda: len(sleepers(tag)) >= 5 or proc.poll() is not None, 300, "the commands to start")
            assert proc.poll() is None
            cluster.procs[0].kill()  # the scheduler: SIGKILL, no goodbye to anyone
        finally:
            code, lines, err = finish(proc, 240)
        by_host = {r["host"]: r for r in lines}
        assert len(lines) == 6 and len(by_host) == 6, lines
        assert by_host["h001"]["status"] == "ok", by_host["h001"]
        for h in ("h002", "h003", "h004", "h005", "h006"):
            assert by_host[h]["status"] == "failed" and by_host[h]["error"] == SCHEDULER_LOST, by_host[h]
        assert code == 5, err
        wait_for(lambda: not sleepers(tag), CLIENT_LOST_AFTER + 90, "the shards to stop the remote commands")
    finally:
        cluster.close()
