"""Inventory directories, group_vars/ and host_vars/, several -i sources: checked against
ansible-core on the same layouts, and every vars file that is not applied reported."""
from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Dict

import pytest

from ansible_listing import assert_same_as_ansible
from hostops.errors import InventoryError
from hostops.exitcodes import ExitCode
from hostops.inventory import Inventory


def tree(root: Path, files: Dict[str, str]) -> Path:
    """Write ``files`` (relative path -> text; a text starting with '#!' is made executable)."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        text = textwrap.dedent(text)
        if text.startswith("#!"):
            text = f"#!{sys.executable}\n" + text.split("\n", 1)[1]
        path.write_text(text, encoding="utf-8")
        if text.startswith("#!"):
            path.chmod(0o755)
    return root


SCRIPT = """\
#!python
import json
print(json.dumps({"scripted": {"hosts": ["s1", "web1"], "vars": {"from": "script"}},
                  "_meta": {"hostvars": {"s1": {"ansible_host": "10.9.9.9"}}}}))
"""

LAYOUT = {
    "inv/01-hosts.ini": """\
        [web]
        web1 inline=web1
        web2:2222
        [db]
        db1
        [prod:children]
        web
        db
        [web:vars]
        v=web_ini
        a=web_ini
        [prod:vars]
        p=prod_ini
        """,
    "inv/02-more.yml": """\
        all:
          children:
            web:
              hosts:
                web3:
              vars:
                from_yaml: 1
            staging:
              hosts:
                st1:
        """,
    "inv/03-script.py": SCRIPT,
    "inv/04-extra.json": '{"extra": {"hosts": {"x1": {"j": 1}}}}',
    "inv/sub/05-nested.ini": "[nested]\nn1\n",
    "inv/README.md": "# not an inventory\nsome words here\n",
    "inv/hosts.bak": "[old]\nold1\n",
    "inv/ansible.cfg": "[defaults]\n",
    "inv/.hidden": "[hidden]\nh1\n",
    "inv/notes~": "[tilde]\nt1\n",
    "inv/group_vars/all.yml": "v: all_file\na: all_file\np: all_file\nonly_all: 1\n",
    "inv/group_vars/prod": "p: prod_file\n",
    "inv/group_vars/web/10-first.yml": "w: first\nz: 1\n",
    "inv/group_vars/web/20-second.yaml": "w: second\n",
    "inv/group_vars/web/sub/30-deeper.json": '{"deep": true}',
    "inv/group_vars/db.json": '{"tier": "db"}',
    "inv/group_vars/scripted.yml": "from: group_vars\n",
    "inv/host_vars/web1.yml": "inline: host_vars\n",
    "inv/host_vars/s1": "ansible_host: 10.8.8.8\n",
}


def test_directory_layout_reads_as_ansible_reads_it(tmp_path):
    root = tree(tmp_path, LAYOUT)
    inv = assert_same_as_ansible([str(root / "inv")], tmp_path)
    # and the fixture does exercise each rule (not only agreement on an empty result)
    web1 = inv.host_vars("web1")
    assert web1["v"] == "all_file"          # group_vars/all.yml beats a child group's inventory vars
    assert web1["p"] == "prod_file"         # group_vars/prod beats group_vars/all
    assert web1["w"] == "second" and web1["deep"] is True  # web/ files merged in lexical order
    assert web1["inline"] == "host_vars"    # host_vars beat inline host vars
    assert inv.host_vars("s1")["ansible_host"] == "10.8.8.8"
    assert inv.host_vars("web2")["ansible_port"] == 2222
    assert {"old", "hidden", "tilde"}.isdisjoint(inv.groups)
    assert "nested" in inv.groups


def test_values_from_files_keep_file_and_line(tmp_path):
    root = tree(tmp_path, LAYOUT)
    inv = Inventory.load([str(root / "inv")])
    _merged, sources = inv.host_vars_with_sources("web1")
    assert (sources["w"].file, sources["w"].line) == (str(root / "inv/group_vars/web/20-second.yaml"), 1)
    assert (sources["z"].file, sources["z"].line) == (str(root / "inv/group_vars/web/10-first.yml"), 2)
    assert sources["p"].file == str(root / "inv/group_vars/prod")


def test_group_vars_next_to_an_inventory_file(tmp_path):
    root = tree(tmp_path, {
        "hosts": "[web]\nw1 x=inline\n[web:vars]\ny=ini\n",
        "group_vars/web.yml": "y: file\n",
        "group_vars/all/main.yml": "ansible_user: deploy\nansible_port: 2200\n",
        "host_vars/w1/a.yml": "x: host_file\n",
    })
    inv = assert_same_as_ansible([str(root / "hosts")], tmp_path)
    assert inv.host_vars("w1") == {"x": "host_file", "y": "file", "ansible_user": "deploy", "ansible_port": 2200}


def test_several_sources_merge_in_order(tmp_path):
    """Later sources win for the same group or host; each source's group_vars apply, in -i
    order, per source before per group (so a shallow group's file in a later source beats a
    deeper group's file in an earlier one, as in ansible-core)."""
    root = tree(tmp_path, {
        "a/hosts.ini": "[web]\nw1 h=a\n[prod:children]\nweb\n[web:vars]\ng=a\n",
        "a/group_vars/web.yml": "f: a_web\n",
        "b/hosts.yml": "prod:\n  children:\n    web:\n      hosts:\n        w1:\n          h: b\n      vars:\n        g: b\n",
        "b/group_vars/prod.yml": "f: b_prod\n",
        "c/inv.py": SCRIPT,
    })
    sources = [str(root / "a/hosts.ini"), str(root / "b/hosts.yml"), str(root / "c/inv.py")]
    inv = assert_same_as_ansible(sources, tmp_path)
    assert inv.host_vars("w1")["h"] == "b" and inv.host_vars("w1")["g"] == "b"
    assert inv.host_vars("w1")["f"] == "b_prod"
    back = assert_same_as_ansible(list(reversed(sources)), tmp_path)
    assert back.host_vars("w1")["h"] == "a" and back.host_vars("w1")["f"] == "a_web"


def test_same_directory_twice_and_a_file_inside_it(tmp_path):
    root = tree(tmp_path, {
        "inv/hosts.ini": "[web]\nw1\n",
        "inv/group_vars/web.yml": "x: 1\n",
        "inv/group_vars/all.yml": "x: 0\ny: all\n",
    })
    assert_same_as_ansible([str(root / "inv"), str(root / "inv/hosts.ini")], tmp_path)


def warnings_for(files: Dict[str, str], tmp_path: Path, source: str = "inv") -> str:
    root = tree(tmp_path, files)
    inv = Inventory.load([str(root / source)])
    return "\n".join(inv.warnings)


BASE = {"inv/hosts.ini": "[web]\nw1\n"}


@pytest.mark.parametrize("extra,path,needle", [
    ({"inv/group_vars/nosuch.yml": "x: 1\n"}, "group_vars/nosuch.yml", "there is no group 'nosuch'"),
    ({"inv/host_vars/w2.yml": "x: 1\n"}, "host_vars/w2.yml", "there is no host 'w2'"),
    ({"inv/group_vars/web.yml.j2": "x: 1\n"}, "group_vars/web.yml.j2", "not a vars file name"),
    ({"inv/group_vars/web/notes.txt": "x: 1\n"}, "group_vars/web/notes.txt", "extension '.txt' is not read"),
    ({"inv/group_vars/web": "x: 1\n", "inv/group_vars/web.yml": "y: 1\n"}, "group_vars/web.yml",
     "group_vars/web is read for group 'web' instead"),
    ({"inv/group_vars/all/vault.yml": "$ANSIBLE_VAULT;1.1;AES256\n6162\n"}, "group_vars/all/vault.yml",
     "Ansible Vault"),
    ({"inv/sub/more.ini": "[db]\nd1\n", "inv/sub/group_vars/db.yml": "x: 1\n"}, "sub/group_vars",
     "only next to an -i source"),
])
def test_vars_present_but_not_applied_are_reported(tmp_path, extra, path, needle):
    text = warnings_for({**BASE, **extra}, tmp_path)
    line = next((w for w in text.splitlines() if path in w), "")
    assert needle in line, text
    assert line.startswith(str(tmp_path / "inv" / path))


def test_group_vars_that_is_a_file_is_reported(tmp_path):
    text = warnings_for({**BASE, "inv/group_vars": "x: 1\n"}, tmp_path)
    assert "group_vars: not a directory" in text


def test_hidden_files_and_editor_backups_are_ignored_quietly(tmp_path):
    text = warnings_for({**BASE, "inv/group_vars/.web.yml.swp": "x", "inv/group_vars/web.yml~": "x: 1\n",
                         "inv/group_vars/web.yml": "y: 1\n"}, tmp_path)
    assert text == ""


def test_group_vars_in_the_current_directory_with_only_adhoc_hosts(tmp_path, monkeypatch):
    tree(tmp_path, {"group_vars/all.yml": "ansible_user: deploy\n"})
    monkeypatch.chdir(tmp_path)
    inv = Inventory.load([], ["web1"])
    assert any(w.startswith("./group_vars/ is not read") for w in inv.warnings), inv.warnings
    assert "ansible_user" not in inv.host_vars("web1")


def test_empty_inventory_directory_is_reported(tmp_path):
    (tmp_path / "inv").mkdir()
    inv = Inventory.load([str(tmp_path / "inv")])
    assert len(inv) == 0 and "no inventory source in this directory" in inv.warnings[0]


def load_error(*paths: str) -> InventoryError:
    with pytest.raises(InventoryError) as info:
        Inventory.load(paths)
    assert info.value.exit_code == ExitCode.USAGE
    assert "\n" not in str(info.value)
    return info.value


@pytest.mark.parametrize("name,text,line,needle", [
    ("all.yml", "ansible_user: deploy\nansible_password: hunter2\n", 2, "ansible_password is refused"),
    ("web/main.yml", "ansible_port: not-a-port\n", 1, "ansible_port must be a port number"),
    ("web.yml", "- a\n- b\n", 1, "must be a mapping of names to values"),
    ("web.yml", "a: 1\nb: [\n", 3, "YAML syntax error"),
])
def test_bad_vars_files_are_errors_at_file_and_line(tmp_path, name, text, line, needle):
    root = tree(tmp_path, {"inv/hosts.ini": "[web]\nw1\n", f"inv/group_vars/{name}": text})
    err = load_error(str(root / "inv"))
    where = str(root / "inv/group_vars" / name)
    assert str(err).startswith(f"{where}:{line}: "), str(err)
    assert needle in str(err) and "hunter2" not in str(err)


def test_unreadable_vars_file_is_an_error(tmp_path):
    root = tree(tmp_path, {"inv/hosts.ini": "[web]\nw1\n"})
    bad = root / "inv/host_vars/w1.yml"
    bad.parent.mkdir()
    bad.write_bytes(b"x: \xff\xfe\n")  # not UTF-8: unreadable whoever runs the test (root reads 0000 files)
    err = load_error(str(root / "inv"))
    assert str(err).startswith(f"{bad}: cannot read variables file")


def test_comma_separated_host_list(tmp_path):
    inv = Inventory.load(["web1,web2,"])
    assert sorted(inv.hosts) == ["web1", "web2"]


def test_inventory_cli_applies_group_vars_and_prints_warnings(hostops, tmp_path):
    root = tree(tmp_path, {
        "inv/hosts.ini": "[web]\nw1\n",
        "inv/group_vars/web.yml": "ansible_user: deploy\nansible_port: 2200\n",
        "inv/group_vars/nosuch.yml": "x: 1\n",
    })
    run = hostops("inventory", "-i", str(root / "inv"), "--json")
    assert run.code == 0, run
    assert "nosuch.yml: there is no group 'nosuch'" in run.err
    assert "2200" in run.out and "deploy" in run.out
    json.loads(run.out)


def test_exec_connects_with_group_vars_settings(hostops, lab, known_hosts, tmp_path):
    """The issue's headline: user, port and key from group_vars/all.yml are what hostops uses.
    The INI file names only the hosts and their addresses; without group_vars/ the run could
    not reach the lab's sshd (not on port 22, not as root)."""
    hosts = "\n".join(f"h{i} ansible_host={addr}" for i, addr in enumerate(lab.addresses[:3], 1))
    root = tree(tmp_path, {
        "inv/hosts": "[lab]\n" + hosts + "\n",
        "inv/group_vars/all.yml": f"ansible_user: {lab.user}\nansible_port: {lab.port}\n"
                                  f"ansible_ssh_private_key_file: {lab.user_key}\n",
    })
    run = hostops("exec", "echo ok", "-i", str(root / "inv"), "--known-hosts", known_hosts, "--json")
    assert run.code == 0, run
    lines = run.json_lines()
    assert sorted(r["host"] for r in lines) == ["h1", "h2", "h3"]
    assert all(r["status"] == "ok" and r["stdout"] == "ok\n" for r in lines)


def test_fifo_in_an_inventory_directory_is_skipped_not_read(tmp_path):
    import os

    root = tree(tmp_path, BASE)
    os.mkfifo(root / "inv" / "pipe")  # opening it for reading would block forever
    inv = Inventory.load([str(root / "inv")])
    assert sorted(inv.hosts) == ["w1"]
    assert any("pipe: not a regular file" in w for w in inv.warnings)


def test_dangling_link_in_an_inventory_directory_is_an_error(tmp_path):
    root = tree(tmp_path, BASE)
    (root / "inv" / "gone").symlink_to(root / "nowhere")
    err = load_error(str(root / "inv"))
    assert str(err).startswith(f"{root / 'inv' / 'gone'}: no such inventory file")


def test_fifo_in_group_vars_is_reported_not_read(tmp_path):
    import os

    root = tree(tmp_path, BASE)
    (root / "inv" / "group_vars").mkdir()
    os.mkfifo(root / "inv" / "group_vars" / "web")
    inv = Inventory.load([str(root / "inv")])
    assert any("group_vars/web: not a regular file" in w for w in inv.warnings), inv.warnings


def test_group_vars_apply_to_groups_and_hosts_of_other_sources(tmp_path):
    """Vars files are matched against the whole inventory once every source is read."""
    root = tree(tmp_path, {
        "a/hosts.ini": "[web]\nw1\n",
        "a/group_vars/late.yml": "from_a: 1\n",
        "a/host_vars/l1.yml": "host_from_a: 1\n",
        "b/hosts.yml": "late:\n  hosts:\n    l1:\n    w1:\n",
    })
    inv = assert_same_as_ansible([str(root / "a/hosts.ini"), str(root / "b/hosts.yml")], tmp_path)
    assert inv.host_vars("l1") == {"from_a": 1, "host_from_a": 1}
    assert inv.warnings == []


def test_bad_address_from_host_vars_is_reported_at_its_file_and_line(hostops, tmp_path):
    root = tree(tmp_path, {
        "inv/hosts.ini": "[web]\nw1\n",
        "inv/host_vars/w1.yml": "a: 1\nansible_host: -oProxyCommand=touch_pwned\n",
    })
    run = hostops("inventory", "-i", str(root / "inv"))
    assert run.code == 2, run
    assert f"{root / 'inv/host_vars/w1.yml'}:2: address (ansible_host) '-oProxyCommand=touch_pwned'" in run.err
