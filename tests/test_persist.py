"""``--persist``: warm runs against a real sshd that logs every login (issue 15).

Each test has its own keeper directory (XDG_RUNTIME_DIR) and stops the keeper it started."""
from __future__ import annotations

import os

import pytest

from persistlab import keeper_pid, loud_lab, runtime, setup, wait_until  # noqa: F401  (fixtures)

pytestmark = pytest.mark.timeout(240)


def _outcome(run):
    return sorted((r["host"], r["status"], r["exit_code"], r["stdout"], r["stderr"], r["error"])
                  for r in run.json_lines())


def test_warm_run_logs_in_nowhere_and_matches_a_cold_run(hostops, loud_lab, runtime, setup):
    inv, kh = setup
    command = "echo out $((6*7)); echo err >&2; exit 3"
    cold = hostops("exec", command, "-i", inv, "--known-hosts", kh, "--json")
    assert cold.code == 5, cold
    assert keeper_pid(runtime) is None  # without --persist no keeper is started
    first = hostops("exec", command, "-i", inv, "--known-hosts", kh, "--json", "--persist", "5m")
    assert first.code == 5, first
    pid = keeper_pid(runtime)
    assert pid is not None
    before = loud_lab.count_logins()
    warm = hostops("exec", command, "-i", inv, "--known-hosts", kh, "--json", "--persist", "5m")
    assert warm.code == 5, warm
    assert loud_lab.count_logins() == before  # not one new login
    assert _outcome(warm) == _outcome(cold) == _outcome(first)
    assert len(_outcome(warm)) == 6
    assert keeper_pid(runtime) == pid  # the same keeper served it
    assert "6 hosts: 0 ok, 6 failed" in warm.err


def test_warm_run_keeps_the_log_and_stream(hostops, loud_lab, runtime, setup, tmp_path):
    inv, kh = setup
    log = str(tmp_path / "run.jsonl")
    hostops("exec", "true", "-i", inv, "--known-hosts", kh, "--persist", "5m")
    before = loud_lab.count_logins()
    run = hostops("exec", "echo one; echo two", "-i", inv, "--known-hosts", kh, "--persist", "5m", "--stream",
                  "--log", log)
    assert run.code == 0, run
    assert loud_lab.count_logins() == before
    assert sorted(line for line in run.out.splitlines()) == sorted(
        [f"h00{i}: one" for i in range(1, 7)] + [f"h00{i}: two" for i in range(1, 7)])
    import json

    with open(log) as fh:
        records = [json.loads(line) for line in fh]
    assert [r["event"] for r in records].count("host") == 6
    assert records[0]["event"] == "start" and records[-1]["event"] == "end"
    assert oct(os.stat(log).st_mode & 0o777) == "0o600"


def test_keeper_files_are_private(hostops, runtime, setup):
    inv, kh = setup
    run = hostops("exec", "true", "-i", inv, "--known-hosts", kh, "--persist", "5m")
    assert run.code == 0, run
    directory = os.path.join(runtime, "hostops")
    assert os.stat(directory).st_mode & 0o777 == 0o700
    assert os.stat(os.path.join(directory, "keeper.sock")).st_mode & 0o777 == 0o600
    assert os.stat(os.path.join(directory, "keeper.log")).st_mode & 0o777 == 0o600
    with open(f"/proc/{keeper_pid(runtime)}/net/unix") as fh:  # no network socket: only the unix one
        assert any(os.path.join(directory, "keeper.sock") in line for line in fh)
    inode_lines = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        with open(f"/proc/{keeper_pid(runtime)}/net/{table}") as fh:
            inode_lines += fh.read().splitlines()[1:]
    fds = os.listdir(f"/proc/{keeper_pid(runtime)}/fd")
    socket_inodes = {os.readlink(f"/proc/{keeper_pid(runtime)}/fd/{fd}") for fd in fds}
    network = [line.split()[9] for line in inode_lines]  # any TCP or UDP socket, listening or not
    assert not [i for i in network if f"socket:[{i}]" in socket_inodes]


def test_keeper_exits_by_itself_after_persist(hostops, runtime, setup):
    inv, kh = setup
    run = hostops("exec", "true", "-i", inv, "--known-hosts", kh, "--persist", "2s")
    assert run.code == 0, run
    sock = os.path.join(runtime, "hostops", "keeper.sock")
    assert wait_until(lambda: keeper_pid(runtime) is None and not os.path.exists(sock), 90)
    with open(os.path.join(runtime, "hostops", "keeper.log")) as fh:
        assert "idle past --persist" in fh.read()


def test_connections_list_close_stop(hostops, runtime, setup):
    inv, kh = setup
    assert "no connection keeper is running" in hostops("connections").err
    hostops("exec", "true", "-i", inv, "--known-hosts", kh, "--persist", "5m")
    listed = hostops("connections", "list", "--json")
    assert listed.code == 0, listed
    assert sorted(r["host"] for r in listed.json_lines()) == [f"h00{i}" for i in range(1, 7)]
    assert all(r["runs"] == 1 and r["user"] for r in listed.json_lines())
    closed = hostops("connections", "close", "h00[12]")
    assert "closed 2 connections" in closed.err, closed
    assert sorted(r["host"] for r in hostops("connections", "list", "--json").json_lines()) == [
        f"h00{i}" for i in range(3, 7)]
    pid = keeper_pid(runtime)
    stopped = hostops("connections", "stop")
    assert "keeper stopped" in stopped.err, stopped
    assert wait_until(lambda: keeper_pid(runtime) is None, 60), pid


def test_persist_from_the_environment_and_bad_values(hostops, loud_lab, runtime, setup):
    inv, kh = setup
    bad = hostops("exec", "true", "-i", inv, "--known-hosts", kh, "--persist", "soon")
    assert bad.code == 2 and "not a duration" in bad.err, bad
    hostops("exec", "true", "-i", inv, "--known-hosts", kh, env={"HOSTOPS_PERSIST": "5m"})
    assert keeper_pid(runtime) is not None
    before = loud_lab.count_logins()
    run = hostops("exec", "true", "-i", inv, "--known-hosts", kh, env={"HOSTOPS_PERSIST": "5m"})
    assert run.code == 0 and loud_lab.count_logins() == before, run


def test_runbook_put_script_get_warm_with_relative_paths(hostops, loud_lab, runtime, setup, isolated_home, tmp_path):
    """Runbooks, batches and transfers are unchanged under --persist; local paths relative to
    the client's directory mean what they mean without it (the keeper runs elsewhere)."""
    inv, kh = setup
    remote = tmp_path / "remote"
    remote.mkdir()
    (isolated_home / "app.conf").write_text("setting = 1\n")
    (isolated_home / "check.sh").write_text('#!/bin/sh\necho "checked $1 $(cat "$2")"\n')
    book = isolated_home / "book.yml"
    book.write_text(
        "name: warm\nbatch: 2\nsteps:\n"
        f"  - name: push\n    put: {{src: app.conf, dest: \"{remote}/{{{{ inventory_hostname }}}}.conf\"}}\n"
        f"  - name: check\n    script: {{src: check.sh, args: [\"{{{{ inventory_hostname }}}}\", "
        f"\"{remote}/{{{{ inventory_hostname }}}}.conf\"]}}\n"
        f"  - name: fetch\n    get: {{src: \"{remote}/{{{{ inventory_hostname }}}}.conf\", dest: fetched}}\n")
    first = hostops("run", "book.yml", "-i", inv, "--known-hosts", kh, "--persist", "5m", "--json")
    assert first.code == 0, first
    before = loud_lab.count_logins()
    (isolated_home / "app.conf").write_text("setting = 2\n")
    run = hostops("run", "book.yml", "-i", inv, "--known-hosts", kh, "--persist", "5m", "--json")
    assert run.code == 0, run
    assert loud_lab.count_logins() == before
    results = run.json_lines()
    assert len([r for r in results if r.get("host")]) == 18
    checks = {r["host"]: r["stdout"] for r in results if r.get("step") == "check"}
    assert checks == {f"h00{i}": f"checked h00{i} setting = 2\n" for i in range(1, 7)}
    for i in range(1, 7):
        assert (isolated_home / "fetched" / f"h00{i}" / f"h00{i}.conf").read_text() == "setting = 2\n"
    put = hostops("put", "app.conf", str(remote / "plain.conf"), "-i", inv, "--known-hosts", kh, "--persist", "5m")
    assert put.code == 0 and (remote / "plain.conf").read_text() == "setting = 2\n", put
    assert loud_lab.count_logins() == before


def test_a_keeper_running_other_hostops_code_is_not_used(hostops, runtime, setup, tmp_path):
    """After an upgrade, the keeper still running was started by the old code: it would read the
    new run's options with old code. The run is refused (exit 2, saying what to do) instead;
    `connections stop` works across versions, and the next run starts a keeper of its own."""
    import shutil

    from conftest import ROOT

    inv, kh = setup
    upgraded = tmp_path / "upgraded"
    shutil.copytree(os.path.join(ROOT, "hostops"), upgraded / "hostops",
                    ignore=shutil.ignore_patterns("__pycache__"))
    with open(upgraded / "hostops" / "output.py", "a") as fh:
        fh.write("\n# upgraded\n")  # another size and mtime: other code
    new = {"PYTHONPATH": str(upgraded)}
    first = hostops("exec", "true", "-i", inv, "--known-hosts", kh, "--persist", "5m")
    assert first.code == 0, first
    old_pid = keeper_pid(runtime)
    assert old_pid is not None
    refused = hostops("exec", "true", "-i", inv, "--known-hosts", kh, "--persist", "5m", env=new)
    assert refused.code == 2, refused
    assert "runs another hostops" in refused.err and "hostops connections stop" in refused.err, refused
    assert refused.json_lines() == [] and "h001" not in refused.out
    assert hostops("connections", "stop", env=new).code == 0
    assert wait_until(lambda: keeper_pid(runtime) is None, 60), old_pid
    again = hostops("exec", "true", "-i", inv, "--known-hosts", kh, "--persist", "5m", env=new)
    assert again.code == 0, again
    assert keeper_pid(runtime) not in (None, old_pid)
    # and the same code reuses it (the check is not a refusal of everyone)
    assert hostops("exec", "true", "-i", inv, "--known-hosts", kh, "--persist", "5m", env=new).code == 0
