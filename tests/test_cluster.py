"""--cluster local:N end to end: the same per-host results, log records and exit codes as the
local engine (ok, remote failure, unreachable), results streamed as hosts finish, the install
hint without distributed, and a plain run that never imports distributed."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from sshlab import free_port

pytest.importorskip("distributed")
from clusterlab import host_records, log_hosts  # noqa: E402  (after importorskip)

pytestmark = pytest.mark.timeout(600)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the lab's sshd answers on 127.0.0.1-8: hosts on 127.0.0.2 fail, the others succeed
MIXED = 'case "$SSH_CONNECTION" in *" 127.0.0.2 "*) echo bad; echo worse >&2; exit 3;; *) echo ok;; esac'


def _summary(err: str) -> str:
    line = [x for x in err.splitlines() if " hosts: " in x][-1]
    return re.sub(r" in [0-9.]+s$", "", line)


def test_two_hundred_hosts_same_results_log_and_exit_code(hostops, inventory, known_hosts, tmp_path):
    closed = [{"name": f"closed{i}", "ansible_host": "127.0.0.1", "ansible_port": free_port()} for i in range(2)]
    inv = inventory(200, extra_hosts=closed)
    common = ["exec", MIXED, "-i", inv, "--known-hosts", known_hosts, "-f", "100", "--json",
              "--connect-timeout", "60"]
    local = hostops(*common, "--log", str(tmp_path / "local.jsonl"), timeout=300)
    dask = hostops(*common, "--log", str(tmp_path / "dask.jsonl"), "--cluster", "local:2", timeout=400)
    assert local.code == 4, local
    assert dask.code == local.code, dask
    mine, theirs = host_records(dask.json_lines()), host_records(local.json_lines())
    assert len(theirs) == 202
    assert mine == theirs
    statuses = sorted({v[0] for v in mine.values()})
    assert statuses == ["failed", "ok", "unreachable"]  # all three cases are compared
    assert log_hosts(str(tmp_path / "dask.jsonl")) == log_hosts(str(tmp_path / "local.jsonl")) == theirs
    assert _summary(dask.err) == _summary(local.err)
    with open(tmp_path / "dask.jsonl") as fh:
        events = [json.loads(line)["event"] for line in fh]
    assert events[0] == "start" and events[-1] == "end" and events.count("host") == 202


def test_results_stream_before_the_shard_ends(lab, inventory, known_hosts, tmp_path, isolated_home):
    """Hosts on 127.0.0.1 answer at once; the others wait for a gate file the test creates only
    after it has read a first result. Without streaming, no result could come first: the
    bounded wait below would fail."""
    gate = tmp_path / "gate"
    command = (f'case "$SSH_CONNECTION" in *" 127.0.0.1 "*) echo fast;; *) '
               f'while [ ! -e {gate} ]; do sleep 0.1; done; echo slow;; esac')
    inv = inventory(16)
    env = dict(os.environ, HOME=str(isolated_home), PYTHONPATH=ROOT, HOSTOPS_CLUSTER="local:2")
    proc = subprocess.Popen([sys.executable, "-m", "hostops", "exec", command, "-i", inv, "--known-hosts",
                             known_hosts, "--json", "--shard-size", "8", "-t", "240"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(isolated_home))
    try:
        first = json.loads(proc.stdout.readline())  # a hang here is caught by the test's timeout
        assert first["stdout"] == "fast\n", first
        assert proc.poll() is None  # the run (both shards) is still under way
        gate.touch()
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    lines = [first] + [json.loads(x) for x in out.splitlines() if x.strip()]
    assert proc.returncode == 0, err
    assert sorted(r["host"] for r in lines) == [f"h{i:03d}" for i in range(1, 17)]
    assert sum(r["stdout"] == "fast\n" for r in lines) == 2 and sum(r["stdout"] == "slow\n" for r in lines) == 14


def test_without_distributed_cluster_exits_2_with_the_install_hint(hostops, inventory, known_hosts, tmp_path):
    fake = tmp_path / "nodask" / "distributed"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named distributed (test)')\n")
    run = hostops("exec", "echo ok", "-i", inventory(2), "--known-hosts", known_hosts, "--cluster", "local:2",
                  env={"PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path / 'nodask'}"})
    assert run.code == 2, run
    assert "pip install 'hostops[dask]'" in run.err
    assert "Traceback" not in run.err


def test_plain_run_never_imports_distributed(hostops, inventory, known_hosts):
    run = hostops("exec", "echo ok", "-i", inventory(3), "--known-hosts", known_hosts,
                  env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert run.code == 0, run
    imported = {line.split("|")[-1].strip() for line in run.err.splitlines() if line.startswith("import time:")}
    assert "hostops.cli.cluster" in imported  # the option module is there, and the trace works
    assert not {m for m in imported if m.split(".")[0] in ("distributed", "dask")}
    assert "hostops.cluster" not in imported and "hostops.shard" not in imported


@pytest.mark.parametrize("flag", ["--retry-lost", "--allow-rerun", "--send-secrets", "--shard-size=5"])
def test_cluster_flags_need_cluster(hostops, inventory, known_hosts, flag):
    run = hostops("exec", "echo ok", "-i", inventory(1), "--known-hosts", known_hosts, flag)
    assert run.code == 2, run
    assert "needs --cluster" in run.err


def test_bad_local_spec_is_a_usage_error(hostops, inventory, known_hosts):
    run = hostops("exec", "echo ok", "-i", inventory(1), "--known-hosts", known_hosts, "--cluster", "local:zero")
    assert run.code == 2, run
    assert "local:N" in run.err


def test_stream_output_is_the_same_through_the_cluster(hostops, inventory, known_hosts):
    inv = inventory(6)
    args = ["exec", "echo one; echo two >&2; echo three", "-i", inv, "--known-hosts", known_hosts, "--stream"]
    local = hostops(*args)
    dask = hostops(*args, "--cluster", "local:2")
    assert local.code == dask.code == 0, dask
    assert sorted(dask.out.splitlines()) == sorted(local.out.splitlines())
    assert len(dask.out.splitlines()) == 12  # stdout lines, "host: line"
    assert sorted(x for x in dask.err.splitlines() if ": two" in x) == sorted(
        x for x in local.err.splitlines() if ": two" in x)


def test_put_script_and_get_through_the_cluster(hostops, inventory, known_hosts, tmp_path):
    inv = inventory(4)
    src = tmp_path / "payload.txt"
    src.write_text("payload\n")
    remote = tmp_path / "remote"
    remote.mkdir()
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\necho \"script $1\"\n")
    common = ["-i", inv, "--known-hosts", known_hosts, "--cluster", "local:2", "--json"]
    put = hostops("put", str(src), f"{remote}/payload.txt", *common)
    assert put.code == 0, put
    assert (remote / "payload.txt").read_text() == "payload\n"
    ran = hostops("script", str(script), "arg", *common)
    assert ran.code == 0, ran
    assert {r["stdout"] for r in ran.json_lines()} == {"script arg\n"}
    dest = tmp_path / "got"
    got = hostops("get", f"{remote}/payload.txt", str(dest), *common)
    assert got.code == 0, got
    fetched = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert len(fetched) == 4 and all((dest / f).read_text() == "payload\n" for f in fetched), fetched


def test_the_config_file_key_cluster_is_read(hostops, inventory, known_hosts, tmp_path):
    cfg = tmp_path / "hostops.yml"
    cfg.write_text("cluster: local:zero\n")
    run = hostops("exec", "echo ok", "-i", inventory(1), "--known-hosts", known_hosts,
                  env={"HOSTOPS_CONFIG": str(cfg)})
    assert run.code == 2, run
    assert "--cluster local:zero" in run.err  # the config's value reached --cluster
    shown = hostops("config", env={"HOSTOPS_CONFIG": str(cfg)})
    assert "cluster" in shown.out, shown


def test_persist_is_ignored_with_cluster_and_says_so(hostops, inventory, known_hosts, tmp_path):
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    run = hostops("exec", "echo ok", "-i", inventory(2), "--known-hosts", known_hosts, "--cluster", "local:1",
                  "--persist", "1m", env={"XDG_RUNTIME_DIR": str(runtime)})
    assert run.code == 0, run
    assert "--persist is ignored with --cluster" in run.err
    assert not (runtime / "hostops").exists()  # no keeper was started on this machine
