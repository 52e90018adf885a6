"""The YAML reader against ansible-core itself: for each inventory below, ``hostops inventory
--json`` and ``--graph`` must show what ``ansible-inventory --list`` and ``--graph`` show (the
same groups, children, hosts and merged variables), and what ansible-core refuses hostops
refuses, with the file and line.

ansible-core comes with the test extra (``pip install -e .[test]``); the real CLIs of both
tools run in subprocesses, in the test's own HOME.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any, Dict, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostops.inventory import Inventory, connection_vars

ANSIBLE_BIN = os.path.dirname(sys.executable)


def ansible(tool: str, *args: str, cwd: str) -> subprocess.CompletedProcess:
    path = os.path.join(ANSIBLE_BIN, tool)
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} not found: install the test extra (pip install -e .[test]) for ansible-core")
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_INVENTORY_ENABLED="yaml",
               ANSIBLE_INVENTORY_UNPARSED_FAILED="1", ANSIBLE_LOCAL_TEMP=os.path.join(cwd, ".ansible-tmp"),
               ANSIBLE_HOME=os.path.join(cwd, ".ansible"))
    return subprocess.run([path, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def write(tmp_path, text: str, name: str = "inv.yml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def both_lists(hostops, tmp_path, path: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(ansible-inventory --list, hostops inventory --json), each with its hostvars reduced to
    the variables (hostops_connection dropped, hosts without variables left out as Ansible does)."""
    theirs = ansible("ansible-inventory", "-i", path, "--list", cwd=str(tmp_path))
    assert theirs.returncode == 0, theirs.stderr
    ours = hostops("inventory", "-i", path, "--json")
    assert ours.code == 0, ours
    a, h = json.loads(theirs.stdout), json.loads(ours.out)
    a["_meta"].pop("profile", None)
    for hv in h["_meta"]["hostvars"].values():
        del hv["hostops_connection"]
    h["_meta"]["hostvars"] = {k: v for k, v in h["_meta"]["hostvars"].items() if v}
    return a, h


def same(a: Any, b: Any) -> bool:
    """Equal as JSON text (NaN equals NaN there, as both tools print it)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def assert_same_as_ansible(hostops, tmp_path, text: str) -> Dict[str, Any]:
    path = write(tmp_path, text)
    theirs, ours = both_lists(hostops, tmp_path, path)
    assert same(theirs, ours), f"\nansible: {json.dumps(theirs, sort_keys=True)}\nhostops: {json.dumps(ours, sort_keys=True)}"
    graph_a = ansible("ansible-inventory", "-i", path, "--graph", cwd=str(tmp_path))
    graph_h = hostops("inventory", "-i", path, "--graph")
    assert graph_h.code == 0, graph_h
    assert graph_h.out.splitlines() == graph_a.stdout.splitlines()
    return ours


# ------------------------------------------------------------------ read as ansible-core reads them
HOST_PORT = """\
    # the host:port keys of Ansible's inventory documentation
    all:
      hosts:
        badwolf.example.com:5309:
        "web[1:3]:2222":
        "[::1]:2200":
        "10.0.0.5:2201":
        "fe80::1%eth0":
        db1:
          ansible_port: 3000
      children:
        ported:
          hosts:
            "db1:4000":
            "db9:4001":
              ansible_port: 4002
    """


def test_host_port_keys(hostops, tmp_path):
    ours = assert_same_as_ansible(hostops, tmp_path, HOST_PORT)
    hostvars = ours["_meta"]["hostvars"]
    assert hostvars["badwolf.example.com"] == {"ansible_port": 5309}
    assert hostvars["web2"] == {"ansible_port": 2222} and hostvars["::1"] == {"ansible_port": 2200}
    # a port in the key applies to a host met for the first time only; the host's own variable beats it
    assert hostvars["db1"] == {"ansible_port": 3000} and hostvars["db9"] == {"ansible_port": 4002}


def test_host_port_key_connects_there(tmp_path):
    inv = Inventory.load([write(tmp_path, HOST_PORT)])
    assert connection_vars(inv.host_vars("badwolf.example.com")) == {"port": 5309}
    assert "fe80::1%eth0" in inv.hosts, "not an address with a port: the whole key is the name, as in Ansible"


STRING_FORMS = """\
    web:
      hosts: web1
    app:
      hosts: {a1: }
    front:
      children: web
    all:
      children:
        db:
          hosts: db1
          vars: lonely
    """


def test_string_forms_and_top_level_groups(hostops, tmp_path):
    ours = assert_same_as_ansible(hostops, tmp_path, STRING_FORMS)
    assert ours["front"] == {"children": ["web"]}
    assert "web" not in ours["all"]["children"], "web has a parent: Ansible does not put it under all too"
    inv = Inventory.load([write(tmp_path, STRING_FORMS, "again.yml")])
    assert inv.host_vars("db1") == {"lonely": None}


def test_comma_in_a_string_form_is_one_host_as_in_ansible(hostops, tmp_path):
    """``hosts: "a1,a2"`` is ONE host named ``a1,a2`` in Ansible: hostops reads it so, warns, and
    refuses to connect to a name holding a comma (file:line, exit 2)."""
    path = write(tmp_path, "app:\n  hosts: \"a1,a2\"\n")
    theirs = ansible("ansible-inventory", "-i", path, "--list", cwd=str(tmp_path))
    assert json.loads(theirs.stdout)["app"] == {"hosts": ["a1,a2"]}
    inv = Inventory.load([path])
    assert list(inv.hosts) == ["a1,a2"] and inv.groups["app"].hosts == ["a1,a2"]
    assert any(w.startswith(f"{path}:2: hosts: 'a1,a2' is one host") for w in inv.warnings), inv.warnings
    run = hostops("inventory", "-i", path)
    assert run.code == 2 and f"{path}:2: host name 'a1,a2'" in run.err, run


PRECEDENCE = """\
    all:
      vars: {v: all, w: all}
      children:
        b_group:
          vars: {v: b, ansible_group_priority: 10}
          hosts: {h1: , h2: }
        a_group:
          vars: {v: a, w: a}
          hosts: {h1: }
        parent:
          children:
            child:
              hosts:
                h3: {x: from-child}
          hosts:
            h3: {x: from-parent, y: 1}
        later:
          hosts:
            h4: {x: 2}
          children:
            inner:
              hosts:
                h4: {x: 1}
        empty:
        also_empty: {}
    """


def test_precedence_priority_file_order_and_empty_groups(hostops, tmp_path):
    ours = assert_same_as_ansible(hostops, tmp_path, PRECEDENCE)
    hostvars = ours["_meta"]["hostvars"]
    assert hostvars["h1"]["v"] == "b", "ansible_group_priority 10 makes b_group win over a_group"
    assert all("ansible_group_priority" not in hv for hv in hostvars.values())
    assert hostvars["h3"]["x"] == "from-parent", "hosts after children in the file: read last, wins"
    assert hostvars["h4"]["x"] == 1, "children after hosts in the file: read last, wins"
    assert "empty" in ours["all"]["children"] and "empty" not in ours


def test_group_priority_must_be_a_number(tmp_path):
    path = write(tmp_path, """\
        all:
          children:
            g:
              vars:
                ansible_group_priority: high
              hosts: {a: }
        """)
    with pytest.raises(Exception) as info:
        Inventory.load([path])
    assert str(info.value).startswith(f"{path}:5: ansible_group_priority must be a whole number"), info.value
    proc = ansible("ansible-inventory", "-i", path, "--list", cwd=str(tmp_path))
    assert proc.returncode != 0 and "high" in proc.stderr, "ansible-core refuses it too"


TYPES = """\
    all:
      vars:
        day: 2024-01-01
        stamp: 2001-12-14t21:59:43.10-05:00
        pairs: !!omap [{x: 1}, {y: 2}]
        big: 123456789012345678901234567890
        infinite: .inf
        nothing: .nan
        nested: {"2024-01-02": [2024-01-03, 1.5, true, null], 7: seven}
      hosts:
        h1:
    """


def test_every_yaml_scalar_type_reaches_json(hostops, tmp_path):
    ours = assert_same_as_ansible(hostops, tmp_path, TYPES)
    hv = ours["_meta"]["hostvars"]["h1"]
    assert hv["day"] == "2024-01-01" and hv["stamp"] == "2001-12-14T21:59:43.100000-05:00"
    assert hv["nested"] == {"2024-01-02": ["2024-01-03", 1.5, True, None], "7": "seven"}


def test_a_set_is_a_sorted_list(hostops, tmp_path):
    """ansible-inventory lists a !!set in hash order (it changes between runs); hostops sorts it."""
    path = write(tmp_path, "all:\n  hosts:\n    h1: {members: !!set {b, c, a}}\n")
    theirs = ansible("ansible-inventory", "-i", path, "--list", cwd=str(tmp_path))
    run = hostops("inventory", "-i", path, "--json")
    assert run.code == 0, run
    ours = json.loads(run.out)["_meta"]["hostvars"]["h1"]["members"]
    assert ours == ["a", "b", "c"] == sorted(json.loads(theirs.stdout)["_meta"]["hostvars"]["h1"]["members"])


def test_binary_values_and_date_keys_are_json_too(hostops, tmp_path):
    """ansible-core 2.19 stops with a traceback on a !!binary value or a date as a mapping key;
    hostops prints the base64 text and the ISO date."""
    path = write(tmp_path, "all:\n  hosts:\n    h1: {blob: !!binary aGVsbG8=, by_day: {2024-01-02: x}}\n")
    run = hostops("inventory", "-i", path, "--json")
    assert run.code == 0, run
    hv = json.loads(run.out)["_meta"]["hostvars"]["h1"]
    assert hv["blob"] == "aGVsbG8=" and hv["by_day"] == {"2024-01-02": "x"}


NAMES = """\
    all:
      children:
        "123":
          hosts:
            "1234":
        web-servers:
          hosts:
            "hé.example":
              ansible_host: 10.0.0.9
    """


def test_names_ansible_accepts(hostops, tmp_path):
    assert_same_as_ansible(hostops, tmp_path, NAMES)


@pytest.mark.parametrize("text, line, words", [
    ("all:\n  hosts:\n    1234:\n", 3, "host name 1234 is a number"),
    ("all:\n  hosts:\n    web1:\n    1.5:\n", 4, "host name 1.5 is a number"),
    ("all:\n  hosts:\n    true:\n", 3, "host name True is true/false"),
    ("all:\n  children:\n    123:\n      hosts: {a: }\n", 3, "group name 123 is a number"),
    ("all:\n  hosts:\n    '':\n", 3, "host name cannot be empty"),
    ("all:\n  children:\n    g:\n      hosts: [a, b]\n", 4, "hosts of group 'g' must be a mapping"),
])
def test_names_and_shapes_ansible_refuses(hostops, tmp_path, text, line, words):
    path = write(tmp_path, text)
    theirs = ansible("ansible-inventory", "-i", path, "--list", cwd=str(tmp_path))
    assert theirs.returncode != 0, f"ansible-core accepted it:\n{theirs.stdout}"
    ours = hostops("inventory", "-i", path)
    assert ours.code == 2, ours
    assert ours.err.strip().startswith(f"hostops: error: {path}:{line}: "), ours.err
    assert words in ours.err and len(ours.err.strip().splitlines()) == 1, ours.err


# ------------------------------------------------------------------ variable names
def test_short_names_are_ordinary_variables(hostops, tmp_path):
    """``port: http``, ``user``, ``host``, ``password``… are an application's variables in
    Ansible: read, listed, no effect on the connection, never a refusal."""
    text = """\
        all:
          hosts:
            app1:
              ansible_host: 10.0.0.7
              ansible_port: 2222
              port: http
              user: appuser
              host: db.internal
              password: not-a-login
              identity_file: /srv/app.pem
              connection: pooled
        """
    ours = assert_same_as_ansible(hostops, tmp_path, text)
    assert ours["_meta"]["hostvars"]["app1"]["password"] == "not-a-login"
    run = hostops("inventory", "-i", str(tmp_path / "inv.yml"), "--json")
    conn = json.loads(run.out)["_meta"]["hostvars"]["app1"]["hostops_connection"]
    assert (conn["hostname"], conn["port"], conn["connection"]) == ("10.0.0.7", 2222, "ssh")
    assert conn["user"] != "appuser" and conn["identity_files"] == []
    # user and identity_file once set the connection and no Ansible name replaces them here: a
    # warning each; port (hostops refused 'http'), host (ansible_host is set) and connection
    # ('pooled' was refused) change nothing: no warning
    warned = sorted(ln.split("'")[1].split(":")[0] for ln in run.err.splitlines() if "ordinary variable" in ln)
    assert warned == ["identity_file", "user"], run.err


def test_old_short_names_warn_once_per_file(hostops, tmp_path):
    """An inventory written for hostops's old short names would now connect differently:
    one warning per file and name, naming the first line, never the value of a secret."""
    path = write(tmp_path, """\
        all:
          hosts:
            h1: {port: 2222, ansible_host: 10.0.0.1}
            h2: {port: 2223, ansible_host: 10.0.0.2}
            h3: {port: 2224, ansible_port: 22, ansible_host: 10.0.0.3}
            h4: {connection: local}
        """)
    run = hostops("inventory", "-i", path)
    assert run.code == 0, run
    warnings = [ln for ln in run.err.splitlines() if "ordinary variable" in ln]
    assert len(warnings) == 2, run.err
    assert warnings[0].startswith(f"hostops: warning: {path}:3: 'port: 2222' is an ordinary variable") \
        and "1 more line" in warnings[0] and "ansible_port" in warnings[0], warnings
    assert f"{path}:6: 'connection: local'" in warnings[1] and "ansible_connection" in warnings[1], warnings
    assert "10.0.0.1:22" in run.out and "10.0.0.3:22" in run.out


@pytest.mark.parametrize("key", ["ansible_password", "ansible_ssh_pass", "ansible_ssh_password"])
def test_login_passwords_still_refused(tmp_path, key):
    path = write(tmp_path, f"all:\n  hosts:\n    h1:\n      {key}: hunter2\n")
    with pytest.raises(Exception) as info:
        Inventory.load([path])
    assert str(info.value).startswith(f"{path}:4: {key} is refused") and "hunter2" not in str(info.value)


def test_ssh_names_win_as_in_the_ssh_plugin(hostops, tmp_path):
    """ansible_ssh_host/port/user/private_key_file beat ansible_host/…, wherever each is set
    (the ssh plugin reads the later name of its option's list)."""
    key = tmp_path / "id_app"
    path = write(tmp_path, f"""\
        all:
          vars:
            ansible_ssh_user: sshuser
            ansible_ssh_port: 2022
          hosts:
            h1:
              ansible_host: 10.0.0.1
              ansible_ssh_host: 10.0.0.2
              ansible_user: plain
              ansible_port: 2999
              ansible_private_key_file: {key}
            h2:
              ansible_private_key_file: {key}
        """)
    run = hostops("inventory", "-i", path, "--json")
    assert run.code == 0, run
    conn = json.loads(run.out)["_meta"]["hostvars"]
    h1, h2 = conn["h1"]["hostops_connection"], conn["h2"]["hostops_connection"]
    assert (h1["hostname"], h1["port"], h1["user"]) == ("10.0.0.2", 2022, "sshuser")
    assert h1["identity_files"][0] == str(key) and h2["identity_files"][0] == str(key)


def test_graph_of_a_diamond_is_bounded(tmp_path, monkeypatch):
    """A group reached by many paths is drawn once per path (as Ansible does): a diamond chain
    would ask for 2**40 lines; the drawing stops at MAX_GRAPH_LINES with an error."""
    from hostops import inventory_view
    from hostops.errors import InventoryError

    lines = ["all:", "  children:"]
    for i in range(40):
        lines += [f"    d{i}:", f"      children: {{l{i}: , r{i}: }}", f"    l{i}:", f"      children: {{d{i + 1}: }}",
                  f"    r{i}:", f"      children: {{d{i + 1}: }}"]
    lines += ["    d40:", "      hosts: {h: }"]
    inv = Inventory.load([write(tmp_path, "\n".join(lines) + "\n")])
    monkeypatch.setattr(inventory_view, "MAX_GRAPH_LINES", 5000)
    with pytest.raises(InventoryError, match="more than 5000 lines"):
        inventory_view.inventory_graph(inv, {"h"})


def test_json_of_a_selection_is_ansible_list_with_limit(hostops, tmp_path):
    """``-l PATTERN --json`` is ``ansible-inventory --list --limit PATTERN``: every group still
    names its children; only the selected hosts are listed and get variables."""
    path = write(tmp_path, PRECEDENCE)
    theirs = ansible("ansible-inventory", "-i", path, "--list", "--limit", "parent", cwd=str(tmp_path))
    assert theirs.returncode == 0, theirs.stderr
    ours = hostops("inventory", "-i", path, "-l", "parent", "--json")
    assert ours.code == 0, ours
    a, h = json.loads(theirs.stdout), json.loads(ours.out)
    a["_meta"].pop("profile", None)
    assert sorted(h["_meta"]["hostvars"]) == ["h3"]
    del h["_meta"]["hostvars"]["h3"]["hostops_connection"]
    assert same(a, h), f"\nansible: {json.dumps(a, sort_keys=True)}\nhostops: {json.dumps(h, sort_keys=True)}"


# ------------------------------------------------------------------ every value the YAML loader can give
_SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | st.binary(max_size=8)
            | st.dates() | st.datetimes() | st.datetimes(timezones=st.timezones()))
_KEYS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | st.dates()
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(_KEYS, inner, max_size=3)
                       | st.frozensets(_SCALARS, max_size=3) | st.tuples(inner, inner), max_leaves=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_VALUES)
def test_any_loaded_value_reaches_json(value):
    """Whatever a YAML or JSON reader hands over (dates, timestamps, binary, sets, odd keys),
    --json writes it: no internal error, and the JSON reads back."""
    from hostops.inventory_view import json_value

    text = json.dumps(json_value({"v": value}), sort_keys=True)
    assert "v" in json.loads(text)
