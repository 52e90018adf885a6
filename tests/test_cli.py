"""The CLI's contract: bad input → one line and exit 2 with nothing run; --version/--help;
the inventory command; Ctrl-C prints what finished."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT

pytestmark = pytest.mark.timeout(120)

BAD_INVENTORIES = {
    "yaml_syntax.yml": ("all:\n  hosts:\n    a: [\n", ":4:"),
    "hosts_list.yml": ("all:\n  hosts:\n    - a\n    - b\n", ":2:"),
    "wrong_type.yml": ("all:\n  children:\n    web: just-a-string\n", ":3:"),
    "host_and_group.yml": ("all:\n  hosts:\n    web:\n  children:\n    web:\n      hosts: {a: }\n", ":5:"),
    "unclosed_range.yml": ("all:\n  hosts:\n    web[01:20:\n", ":3:"),
    "cycle.yml": ("a:\n  children:\n    b:\n      children:\n        a:\n", ":5:"),
    "password.yml": ("all:\n  hosts:\n    a:\n      ansible_password: hunter2\n", ":4:"),
    "bad_port.yml": ("all:\n  hosts:\n    a:\n      ansible_port: http\n", ":4:"),
}


@pytest.mark.parametrize("name", sorted(BAD_INVENTORIES))
def test_bad_inventory_one_line_exit_2_nothing_run(hostops, tmp_path, name):
    text, line = BAD_INVENTORIES[name]
    path = tmp_path / name
    path.write_text(text)
    marker = tmp_path / "marker"
    run = hostops("exec", f"touch {marker}", "-i", str(path), "-H", "localhost")
    assert run.code == 2, run
    assert run.out == ""
    lines = run.err.strip().splitlines()
    assert len(lines) == 1, run
    assert lines[0].startswith("hostops: error: ") and f"{path}{line}" in lines[0], run
    assert "hunter2" not in run.err
    assert not marker.exists()


@pytest.mark.parametrize("args, needle", [
    (["-i", "/nonexistent/inv.yml"], "no such inventory file"),
    (["-l", "nosuchgroup"], "no host matched 'nosuchgroup'"),
    (["-l", "~web[("], "bad regular expression"),
    (["--json", "-b"], "cannot be combined"),
    (["-f", "0"], "-f"),
    (["--host-key-policy", "maybe"], "--host-key-policy"),
    (["--connect-timeout", "-1"], "--connect-timeout"),
    (["-H", "bad host name"], "is not a host"),
])
def test_bad_usage_one_line_exit_2_nothing_run(hostops, tmp_path, args, needle):
    marker = tmp_path / "marker"
    inv = tmp_path / "local.yml"
    inv.write_text("all:\n  hosts:\n    localhost: {ansible_connection: local}\n")
    base = [] if "-i" in args or "-H" in args else ["-i", str(inv)]
    run = hostops("exec", f"touch {marker}", *base, *args)
    assert run.code == 2, run
    assert needle in run.err, run
    assert not marker.exists()
    assert len([ln for ln in run.err.splitlines() if ln.strip() and not ln.startswith(("Usage:", "Try "))]) == 1


@pytest.mark.parametrize("how", [["-l", "localhost"], ["-i", os.path.join(ROOT, "inventories", "localhost.yml")]])
def test_embedded_default_inventory_runs_locally_when_named(hostops, how):
    """No inventory is exit 2 (tests/test_safe_defaults.py); this machine is still one name away."""
    run = hostops("exec", "echo local-$((40+2))", *how, "--json")
    assert run.code == 0, run
    (line,) = run.json_lines()
    assert line["host"] == "localhost" and line["stdout"] == "local-42\n"


def test_version_and_help_do_not_import_paramiko():
    code = ("import sys; from hostops.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "assert 'paramiko' not in sys.modules, 'paramiko imported'\n"
            "assert 'cryptography' not in sys.modules, 'cryptography imported'\nprint('clean')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0 and "clean" in proc.stdout, proc.stderr
    assert "Exit codes" in proc.stdout
    ver = subprocess.run([sys.executable, "-m", "hostops", "--version"], capture_output=True, text=True, cwd=ROOT,
                         timeout=60)
    assert ver.returncode == 0 and "hostops, version" in ver.stdout


def test_inventory_command_lists_json_and_graph(hostops, tmp_path):
    inv = tmp_path / "inv.yml"
    inv.write_text("all:\n  vars: {ansible_user: deploy}\n  children:\n    web:\n      hosts:\n"
                   "        web[01:03]: {ansible_host: 10.0.0.1}\n    db:\n      hosts:\n"
                   "        db1: {ansible_port: 2222}\n")
    listing = hostops("inventory", "-i", str(inv), "-l", "web")
    assert listing.code == 0, listing
    assert listing.out.splitlines() == [f"web0{i}  deploy@10.0.0.1:22" for i in (1, 2, 3)]
    as_json = hostops("inventory", "-i", str(inv), "--json")
    data = json.loads(as_json.out)
    assert data["web"]["hosts"] == ["web01", "web02", "web03"]
    assert data["_meta"]["hostvars"]["db1"]["hostops_connection"]["port"] == 2222
    graph = hostops("inventory", "-i", str(inv), "--graph")
    # exactly what ansible-inventory --graph (2.19) prints for this file, the empty ungrouped included
    assert graph.out.splitlines() == ["@all:", "  |--@ungrouped:", "  |--@web:", "  |  |--web01", "  |  |--web02",
                                      "  |  |--web03", "  |--@db:", "  |  |--db1"]


def test_ctrl_c_prints_what_finished_and_exits_130(lab, inventory, known_hosts, isolated_home, tmp_path):
    inv = inventory(6, addresses=["127.0.0.1", "127.0.0.2"])
    started = tmp_path / "started"
    started.mkdir()
    # the slow hosts say they run (a file each) before sleeping: Ctrl-C comes once they all do, so on a
    # loaded machine no slow host is still connecting (it would be "not started", with no record)
    cmd = (f'set -- $SSH_CONNECTION; if [ "$3" = 127.0.0.1 ]; then echo fast; '
           f'else mktemp {started}/XXXXXX >/dev/null; sleep 60; fi')
    env = dict(os.environ, HOME=str(isolated_home), PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, "-m", "hostops", "exec", cmd, "-i", inv, "--known-hosts",
                             known_hosts, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    try:
        seen = []
        deadline = time.monotonic() + 60
        while len(seen) < 3 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(json.loads(line))
        while len(os.listdir(started)) < 3 and time.monotonic() < deadline:  # bounded: a hang guard
            time.sleep(0.05)
        assert len(os.listdir(started)) == 3, "the three slow hosts never started their command"
        assert {r["host"] for r in seen} == {"h001", "h003", "h005"}, seen
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C goes to the whole process group
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    records = [json.loads(line) for line in out.splitlines()]  # the stopped hosts, after cleanup
    assert {r["host"]: r["status"] for r in records} == {"h002": "interrupted", "h004": "interrupted",
                                                         "h006": "interrupted"}
    assert all("the remote command was stopped" in r["error"] for r in records), records
    assert "interrupted while running (3): h[002,004,006]" in err
    assert "6 hosts: 3 ok, 0 failed, 0 unreachable, 0 timeout, 3 interrupted" in err and "(interrupted)" in err
