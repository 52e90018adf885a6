"""Inventory scripts and ``ansible-inventory --list`` JSON files, checked against ansible-core
running the same scripts."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ansible_listing import ANSIBLE_INVENTORY, ansible_env, assert_same_as_ansible, hostops_view
from hostops import inventory_script
from hostops.errors import InventoryError
from hostops.exitcodes import ExitCode
from hostops.inventory import Inventory


def script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body), encoding="utf-8")
    path.chmod(0o755)
    return str(path)


LISTING = {
    "web": {"hosts": ["web1", "web2"], "vars": {"tier": "web", "ansible_user": "deploy"}},
    "db": {"hosts": ["db1"], "vars": {"tier": "db"}},
    "prod": {"children": ["web", "db"], "vars": {"tier": "prod", "env": "prod"}},
    "canary": ["web1"],
}
HOSTVARS = {"web1": {"ansible_host": "10.0.0.1", "ansible_port": 2201}, "db1": {"tier": "db1"}}

WITH_META = f"""\
import json, sys
data = {json.dumps(dict(LISTING, _meta={"hostvars": HOSTVARS}))!r}
if sys.argv[1:] == ["--list"]:
    print(data)
else:
    sys.exit("unexpected arguments: " + repr(sys.argv[1:]))
"""

WITHOUT_META = f"""\
import json, sys
listing = {json.dumps(LISTING)!r}
hostvars = {json.dumps(HOSTVARS)!r}
if sys.argv[1:] == ["--list"]:
    print(listing)
elif sys.argv[1] == "--host":
    print(json.dumps(json.loads(hostvars).get(sys.argv[2], {{}})))
"""


@pytest.mark.parametrize("body", [WITH_META, WITHOUT_META], ids=["with _meta", "--host per host"])
def test_script_reads_as_ansible_reads_it(tmp_path, body):
    path = script(tmp_path, "inventory.py", body)
    inv = assert_same_as_ansible([path], tmp_path)
    assert inv.host_vars("web1")["ansible_port"] == 2201
    assert inv.host_vars("db1")["tier"] == "db1"


def test_saved_ansible_inventory_list_is_a_source(tmp_path):
    """What `ansible-inventory --list` prints, saved to a file, gives back the same inventory."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "hosts.ini").write_text("[web]\nw1 a=1\nw2:2222\n[db]\nd1\n[prod:children]\nweb\ndb\n"
                                   "[prod:vars]\nenv=prod\n")
    (src / "group_vars").mkdir()
    (src / "group_vars" / "web.yml").write_text("tier: web\n")
    if not ANSIBLE_INVENTORY.exists():
        pytest.skip("ansible-core is not installed")
    proc = subprocess.run([str(ANSIBLE_INVENTORY), "-i", str(src / "hosts.ini"), "--list"], cwd=str(tmp_path),
                          env=ansible_env(tmp_path), capture_output=True, text=True, timeout=300, check=True)
    for name in ("listing.json", "listing"):  # by extension, and detected by content
        saved = tmp_path / name
        saved.write_text(proc.stdout)
        got = hostops_view(Inventory.load([str(saved)]))
        direct = hostops_view(Inventory.load([str(src / "hosts.ini")]))
        assert got == direct
        assert got["hostvars"]["w1"] == {"a": 1, "env": "prod", "tier": "web"}


def load_error(*paths: str) -> InventoryError:
    with pytest.raises(InventoryError) as info:
        Inventory.load(paths)
    err = info.value
    assert err.exit_code == ExitCode.USAGE
    assert "\n" not in str(err)
    return err


def test_failing_script_is_one_line_with_its_stderr(tmp_path):
    path = script(tmp_path, "inv.py", """\
        import sys
        sys.stderr.write("Traceback (most recent call last):\\n  ...\\nKeyError: 'token'\\n")
        sys.exit(3)
        """)
    err = load_error(path)
    assert str(err).startswith(f"{path}: inventory script '{path} --list' failed with exit status 3")
    assert "KeyError: 'token'" in str(err)


def test_invalid_json_names_the_script_and_line(tmp_path):
    path = script(tmp_path, "inv.py", "print('{\"web\": {\"hosts\": [\"a\"]},')\nprint('oops')\n")
    err = load_error(path)
    assert str(err).startswith(f"{path} --list:2: not valid JSON")


def test_host_call_failure_names_the_host(tmp_path):
    path = script(tmp_path, "inv.py", """\
        import sys
        if sys.argv[1] == "--list":
            print('{"web": ["w1"]}')
        else:
            sys.exit("no vars for " + sys.argv[2])
        """)
    err = load_error(path)
    assert f"'{path} --host w1' failed" in str(err)
    assert "no vars for w1" in str(err)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as fh:  # a zombie not yet reaped by init is gone too
        return fh.read().split(")")[-1].split()[0] == "Z"


def test_hanging_script_and_its_children_are_killed(tmp_path, monkeypatch):
    monkeypatch.setattr(inventory_script, "SCRIPT_TIMEOUT", 1.0)
    pidfile = tmp_path / "child.pid"
    path = script(tmp_path, "inv.py", f"""\
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        open({str(pidfile)!r}, "w").write(str(child.pid))
        time.sleep(600)
        """)
    err = load_error(path)
    assert "did not finish within 1 seconds; it was killed" in str(err)
    pid = int(pidfile.read_text())
    for _ in range(300):  # hang guard only: the child dies with the script's process group
        if _gone(pid):
            break
        time.sleep(0.1)
    assert _gone(pid)


def test_output_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(inventory_script, "MAX_SCRIPT_OUTPUT", 10_000)
    path = script(tmp_path, "inv.py", "import sys\nwhile True:\n    sys.stdout.write('x' * 4096)\n")
    err = load_error(path)
    assert "printed more than 10000 bytes; it was killed" in str(err)


def test_script_gets_no_stdin_and_no_shell(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "shell-ran"
    path = script(tmp_path, "inv;touch shell-ran", """\
        import json, sys
        data = sys.stdin.read()
        hostvars = {"h1": {"stdin": data, "argv": sys.argv[1:]}}
        print(json.dumps({"g": {"hosts": ["h1"]}, "_meta": {"hostvars": hostvars}}))
        """)
    inv = Inventory.load([path])
    assert inv.host_vars("h1") == {"stdin": "", "argv": ["--list"]}
    assert not marker.exists()


def test_password_from_a_script_is_refused(tmp_path):
    path = script(tmp_path, "inv.py", "print('{\"g\": {\"hosts\": [\"h\"], \"vars\": {\"ansible_password\": \"x\"}}}')\n")
    err = load_error(path)
    assert "ansible_password is refused" in str(err) and str(err).startswith(f"{path} --list: ")


def test_executable_yaml_without_shebang_is_read_not_run(tmp_path):
    path = tmp_path / "hosts.yml"
    path.write_text("web:\n  hosts:\n    w1:\n")
    path.chmod(0o755)
    assert sorted(Inventory.load([str(path)]).hosts) == ["w1"]


@pytest.mark.parametrize("listing,needle", [
    ('{"web": {"hosts": "w1"}}', "hosts of group 'web' must be a list"),
    ('{"web": {"children": {"a": 1}}}', "children of group 'web' must be a list"),
    ('{"_meta": {"hostvars": []}}', "_meta.hostvars must be a mapping"),
    ('["w1"]', "must be a JSON object of groups"),
])
def test_malformed_script_output(tmp_path, listing, needle):
    """(A .json file of these shapes is read as Ansible's YAML format, whose reader refuses them.)"""
    path = script(tmp_path, "inv.py", f"print({listing!r})\n")
    err = load_error(path)
    assert needle in str(err) and str(err).startswith(f"{path} --list: "), str(err)


def test_host_only_in_meta_is_reported(tmp_path):
    path = tmp_path / "inv.json"
    path.write_text('{"web": ["w1"], "_meta": {"hostvars": {"w1": {"a": 1}, "lost": {"a": 2}}}}')
    inv = Inventory.load([str(path)])
    assert sorted(inv.hosts) == ["w1"]
    assert any("'lost'" in w and "no group" in w for w in inv.warnings)
