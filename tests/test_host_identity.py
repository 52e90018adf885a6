"""Every host the user named, exactly once: a host is its inventory name; a ``-H`` entry or a
host-list line given with a user or a port is named ``user@address:port`` as written, so two
entries that differ in user or port are two hosts, and only an exact repeat is one (with a
warning naming it). Checked in the model, then end to end against the real sshd: both hosts
run, and the output, the --log, the -o files and the get directories keep them apart.
"""
from __future__ import annotations

import json
import os
import textwrap

import pytest

from hostops.inventory import Inventory, connection_vars
from hostops.localnames import local_name

pytestmark = pytest.mark.timeout(180)


# ------------------------------------------------------------------ the model
def test_same_address_different_ports_are_two_hosts():
    inv = Inventory.load(hosts=["10.0.0.5:2222", "10.0.0.5:2223"])
    assert list(inv.hosts) == ["10.0.0.5:2222", "10.0.0.5:2223"]
    assert connection_vars(inv.host_vars("10.0.0.5:2223")) == {"host": "10.0.0.5", "port": 2223}
    assert inv.warnings == []


def test_same_address_different_users_are_two_hosts():
    inv = Inventory.load(hosts=["root@h", "deploy@h", "h"])
    assert list(inv.hosts) == ["root@h", "deploy@h", "h"]
    assert connection_vars(inv.host_vars("deploy@h")) == {"host": "h", "user": "deploy"}
    assert inv.host_vars("h") == {}


def test_exact_repeats_collapse_with_a_warning_naming_them(tmp_path):
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("web1\nroot@db1:2200\n# again\nweb1\nnode[1:3]\nnode2\n")
    inv = Inventory.load([str(hosts)], ["root@db1:2200", "web9"])
    assert list(inv.hosts) == ["web1", "root@db1:2200", "node1", "node2", "node3", "web9"]
    assert len(inv.warnings) == 1, inv.warnings
    warning = inv.warnings[0]
    assert warning.startswith("hosts listed more than once, run once: "), warning
    assert f"web1 ({hosts}:1, {hosts}:4)" in warning
    assert f"root@db1:2200 ({hosts}:2, --host)" in warning
    assert f"node2 ({hosts}:5, {hosts}:6)" in warning
    assert "web9" not in warning


def test_ipv6_entries_as_openssh_and_ansible_write_them():
    inv = Inventory.load(hosts=["[::1]:2222", "deploy@[::1]:2222", "::1", "fe80::1%eth0"])
    assert list(inv.hosts) == ["[::1]:2222", "deploy@[::1]:2222", "::1", "fe80::1%eth0"]
    assert connection_vars(inv.host_vars("[::1]:2222")) == {"host": "::1", "port": 2222}
    assert connection_vars(inv.host_vars("deploy@[::1]:2222")) == {"host": "::1", "port": 2222, "user": "deploy"}
    assert inv.host_vars("::1") == {}


def test_ranges_with_a_user_and_port_name_each_host():
    inv = Inventory.load(hosts=["ops@web[1:2]:2200"])
    assert list(inv.hosts) == ["ops@web1:2200", "ops@web2:2200"]
    assert connection_vars(inv.host_vars("ops@web2:2200")) == {"host": "web2", "port": 2200, "user": "ops"}


def test_an_entry_naming_an_inventory_host_is_that_host(tmp_path):
    inv_file = tmp_path / "inv.yml"
    inv_file.write_text(textwrap.dedent("""\
        web:
          hosts:
            w1: {ansible_port: 2201}
        """))
    inv = Inventory.load([str(inv_file)], ["w1", "deploy@w1"])
    assert list(inv.hosts) == ["w1", "deploy@w1"]
    assert inv.hosts["w1"].groups == ["web"] and inv.host_vars("w1") == {"ansible_port": 2201}
    assert any(f"w1 ({inv_file}:3, --host)" in w for w in inv.warnings), inv.warnings


def test_ssh_config_still_translates_an_entry_with_a_user_or_port(tmp_path):
    """``-H deploy@alias-1`` is named as written, and its address is looked up in ssh_config as
    ssh's own command line would be: HostName (and Port when none was given) still apply."""
    from hostops.settings import Options, resolve

    cfg = tmp_path / "ssh_config"
    cfg.write_text("Host alias-1\n  HostName 127.0.0.5\n  Port 2299\n")
    inv_file = tmp_path / "inv.yml"
    inv_file.write_text("all:\n  hosts:\n    pinned: {ansible_host: alias-1}\n")
    inv = Inventory.load([str(inv_file)], ["deploy@alias-1", "alias-1:2222"])
    targets = {t.name: t for t in resolve(inv, list(inv.hosts), Options(ssh_config=str(cfg)))}
    assert (targets["deploy@alias-1"].hostname, targets["deploy@alias-1"].port,
            targets["deploy@alias-1"].user) == ("127.0.0.5", 2299, "deploy")
    assert (targets["alias-1:2222"].hostname, targets["alias-1:2222"].port) == ("127.0.0.5", 2222)
    # an inventory's ansible_host keeps the documented precedence (inventory > ssh_config)
    assert targets["pinned"].hostname == "alias-1"


# ------------------------------------------------------------------ end to end, against the lab's sshd
def lab_entries(lab):
    """Three names for the one sshd: the bare address (port from -p), address:port, and
    user@address:port (the lab's one user, spelled out): three hosts by name, one daemon."""
    return ["127.0.0.1", f"127.0.0.1:{lab.port}", f"{lab.user}@127.0.0.1:{lab.port}"]


def lab_args(lab, known_hosts, entries):
    args = ["-p", str(lab.port), "-k", lab.user_key, "--known-hosts", known_hosts]
    for entry in entries:
        args += ["-H", entry]
    return args


def test_every_named_host_runs_once_and_stays_apart(hostops, lab, known_hosts, tmp_path):
    names = lab_entries(lab)
    log = tmp_path / "run.log"
    outdir = tmp_path / "out"
    # the second 127.0.0.1:PORT is an exact repeat: one host, one warning
    run = hostops("exec", "echo from-$SSH_CONNECTION", *lab_args(lab, known_hosts, names + [names[1]]),
                  "--json", "--log", str(log), "-o", str(outdir))
    assert run.code == 0, run
    records = run.json_lines()
    assert sorted(r["host"] for r in records) == sorted(names), "each named host runs exactly once"
    assert all(r["status"] == "ok" and r["stdout"].startswith("from-127.0.0.1 ") for r in records)
    assert f"listed more than once, run once: 127.0.0.1:{lab.port} (--host, --host)" in run.err, run
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(r["host"] for r in logged if r.get("host") and r.get("status")) == sorted(names), logged
    assert sorted(os.listdir(outdir)) == sorted(f"{local_name(n)}{suffix}" for n in names for suffix in (".out", ".err"))
    for name in names:
        out = outdir / f"{local_name(name)}.out"
        assert out.read_text().startswith("from-127.0.0.1 "), name


def test_get_keeps_hosts_sharing_an_address_apart(hostops, lab, known_hosts, tmp_path):
    names = lab_entries(lab)
    src = tmp_path / "report.txt"
    src.write_text("same file, three hosts\n")
    dest = tmp_path / "collected"
    run = hostops("get", str(src), str(dest), *lab_args(lab, known_hosts, names), "--json")
    assert run.code == 0, run
    assert sorted(os.listdir(dest)) == sorted(local_name(n) for n in names)
    for name in names:
        assert (dest / local_name(name) / "report.txt").read_text() == "same file, three hosts\n"


def test_inventory_lists_each_entry_with_its_connection(hostops, lab):
    names = lab_entries(lab)
    run = hostops("inventory", "-p", str(lab.port), *[a for n in names for a in ("-H", n)], "--json")
    assert run.code == 0, run
    data = json.loads(run.out)
    assert data["ungrouped"]["hosts"] == names
    conns = {n: data["_meta"]["hostvars"][n]["hostops_connection"] for n in names}
    assert {(c["hostname"], c["port"], c["user"]) for c in conns.values()} == {("127.0.0.1", lab.port, lab.user)}
