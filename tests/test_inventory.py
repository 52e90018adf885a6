"""hostops.inventory: Ansible YAML inventories, plain host lists, precedence and errors."""
from __future__ import annotations

import textwrap

import pytest

from hostops.errors import InventoryError
from hostops.exitcodes import ExitCode
from hostops.inventory import Inventory, connection_vars


def write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def lineno(path: str, needle: str) -> int:
    """1-based number of the only line of ``path`` containing ``needle``."""
    with open(path, encoding="utf-8") as fh:
        hits = [i for i, line in enumerate(fh, 1) if needle in line]
    assert len(hits) == 1, f"{needle!r} should occur once in {path}, found on lines {hits}"
    return hits[0]


def load_error(*paths: str, hosts=()) -> InventoryError:
    with pytest.raises(InventoryError) as info:
        Inventory.load(paths, hosts)
    assert info.value.exit_code == ExitCode.USAGE == 2
    return info.value


def assert_error_at(err: InventoryError, path: str, line: int) -> None:
    assert err.file == path
    assert err.line == line
    assert str(err).startswith(f"{path}:{line}: "), str(err)


# ------------------------------------------------------------------ structure
NESTED = """\
all:
  vars:
    ansible_user: deploy
  hosts:
    bastion:
  children:
    prod:
      children:
        web:
          children:
            web_eu:
              hosts:
                web[01:03].eu.example.com:
            web_us:
              hosts:
                web01.us.example.com:
                  ansible_host: 10.1.0.1
        db:
          hosts:
            db01:
    monitored:
      hosts:
        db01:
        web01.us.example.com:
"""


@pytest.fixture
def nested(tmp_path):
    return Inventory.load([write(tmp_path, "nested.yml", NESTED)])


def test_nested_groups_three_deep(nested):
    assert nested.groups["web"].parents == ["prod"]
    assert nested.groups["web_eu"].parents == ["web"]
    assert set(nested.groups["prod"].children) == {"web", "db"}
    assert nested.ancestors("web_eu") == ["web_eu", "web", "prod", "all"]
    assert nested.depth("web_eu") == 3


def test_group_hosts_include_descendants_in_inventory_order(nested):
    assert nested.group_hosts("prod") == [
        "web01.eu.example.com", "web02.eu.example.com", "web03.eu.example.com", "web01.us.example.com", "db01",
    ]
    assert nested.group_hosts("web_us") == ["web01.us.example.com"]


def test_all_contains_every_host_in_file_order(nested):
    assert list(nested.hosts) == [
        "bastion", "web01.eu.example.com", "web02.eu.example.com", "web03.eu.example.com",
        "web01.us.example.com", "db01",
    ]
    assert nested.group_hosts("all") == list(nested.hosts)
    assert len(nested) == 6


def test_host_in_several_groups(nested):
    assert nested.hosts["db01"].groups == ["db", "monitored"]
    assert nested.group_hosts("monitored") == ["web01.us.example.com", "db01"]
    # Defined once, whatever the number of groups.
    assert list(nested.hosts).count("db01") == 1


def test_ranges_in_host_names_expand(nested):
    assert nested.group_hosts("web_eu") == ["web01.eu.example.com", "web02.eu.example.com", "web03.eu.example.com"]


def test_hosts_only_under_all_land_in_ungrouped(nested):
    assert nested.hosts["bastion"].groups == ["ungrouped"]
    assert nested.groups["ungrouped"].hosts == ["bastion"]
    assert "bastion" not in nested.groups["all"].hosts
    assert "ungrouped" in nested.groups["all"].children


def test_host_under_all_and_in_a_group_is_not_ungrouped(tmp_path):
    path = write(tmp_path, "inv.yml", """\
        all:
          hosts:
            h1:
            h2:
          children:
            web:
              hosts:
                h1:
        """)
    inv = Inventory.load([path])
    assert inv.groups["ungrouped"].hosts == ["h2"]
    assert "ungrouped" not in inv.hosts["h1"].groups


def test_top_level_groups_become_children_of_all(tmp_path):
    path = write(tmp_path, "inv.yml", """\
        web:
          hosts:
            w1:
        db:
          hosts:
            d1:
        """)
    inv = Inventory.load([path])
    assert inv.groups["web"].parents == ["all"]
    assert inv.groups["db"].parents == ["all"]
    assert {"web", "db"} <= set(inv.groups["all"].children)
    assert inv.select("all") == ["w1", "d1"]


def test_empty_file_is_an_empty_inventory(tmp_path):
    inv = Inventory.load([write(tmp_path, "empty.yml", "")])
    assert len(inv) == 0


# ------------------------------------------------------------------ variables
PRECEDENCE = """\
all:
  vars:
    v_all: all
    v1: all
    v2: all
    v3: all
    v4: all
  children:
    prod:
      vars:
        v1: prod
        v2: prod
        v3: prod
        v4: prod
      children:
        web:
          vars:
            v2: web
            v3: web
            v4: web
          hosts:
            web1:
              v3: host
"""


def test_precedence_all_parent_child_host(tmp_path):
    inv = Inventory.load([write(tmp_path, "inv.yml", PRECEDENCE)])
    assert inv.host_vars("web1") == {"v_all": "all", "v1": "prod", "v2": "web", "v3": "host", "v4": "web"}


def test_precedence_independent_of_definition_order(tmp_path):
    # The child group's vars appear before the parent's in the file: depth still decides.
    path = write(tmp_path, "inv.yml", """\
        web:
          vars:
            v: web
          hosts:
            web1:
        prod:
          vars:
            v: prod
          children:
            web:
        all:
          vars:
            v: all
        """)
    inv = Inventory.load([path])
    assert inv.depth("web") == 2
    assert inv.host_vars("web1")["v"] == "web"


def test_same_depth_groups_merge_in_name_order(tmp_path):
    # Ansible: equal depth and priority → sorted by name; the later (b_grp) wins.
    path = write(tmp_path, "inv.yml", """\
        b_grp:
          vars:
            v: b
          hosts:
            h1:
        a_grp:
          vars:
            v: a
          hosts:
            h1:
        """)
    inv = Inventory.load([path])
    assert inv.host_vars("h1")["v"] == "b"


def test_group_priority_raises_a_group(tmp_path):
    path = write(tmp_path, "inv.yml", """\
        a_grp:
          vars:
            v: a
            ansible_group_priority: 10
          hosts:
            h1:
        b_grp:
          vars:
            v: b
          hosts:
            h1:
        c_grp:
          vars:
            v: c
            ansible_group_priority: 5
          hosts:
            h1:
        """)
    inv = Inventory.load([path])
    assert inv.host_vars("h1")["v"] == "a"


def test_priority_does_not_beat_depth(tmp_path):
    path = write(tmp_path, "inv.yml", """\
        parent:
          vars:
            v: parent
            ansible_group_priority: 100
          children:
            child:
              vars:
                v: child
              hosts:
                h1:
        """)
    inv = Inventory.load([path])
    assert inv.host_vars("h1")["v"] == "child"


def test_several_files_merge_later_host_vars_win(tmp_path):
    first = write(tmp_path, "a.yml", """\
        web:
          vars:
            g: 1
          hosts:
            w1:
              ansible_user: first
              only_first: yes
        """)
    second = write(tmp_path, "b.yml", """\
        web:
          vars:
            g: 2
          hosts:
            w1:
              ansible_user: second
            w2:
        db:
          hosts:
            d1:
        """)
    inv = Inventory.load([first, second])
    assert inv.sources == [first, second]
    assert list(inv.hosts) == ["w1", "w2", "d1"]
    hv = inv.host_vars("w1")
    assert hv["ansible_user"] == "second"
    assert hv["only_first"] is True
    assert hv["g"] == 2
    assert inv.hosts["w1"].groups == ["web"]
    assert inv.group_hosts("web") == ["w1", "w2"]


def test_var_sources_remember_file_and_line(tmp_path):
    path = write(tmp_path, "inv.yml", PRECEDENCE)
    inv = Inventory.load([path])
    _merged, sources = inv.host_vars_with_sources("web1")
    assert sources["v3"].file == path and sources["v3"].line == lineno(path, "v3: host")
    assert sources["v2"].line == lineno(path, "v2: web")
    assert sources["v_all"].line == lineno(path, "v_all: all")


# ------------------------------------------------------------------ plain host lists and ad-hoc hosts
def test_plain_text_host_file(tmp_path):
    path = write(tmp_path, "hosts", """\
        # production web servers

        alice@web1.example.com:2200
        web2.example.com   # trailing comment
          bob@db[1:2]:2222

        node[01:03]
        """)
    inv = Inventory.load([path])
    # a line with a user or a port is a host named as written (user@address:port identifies it)
    assert list(inv.hosts) == ["alice@web1.example.com:2200", "web2.example.com", "bob@db1:2222", "bob@db2:2222",
                               "node01", "node02", "node03"]
    assert inv.host_vars("alice@web1.example.com:2200") == {
        "ansible_host": "web1.example.com", "ansible_user": "alice", "ansible_port": 2200}
    assert inv.host_vars("web2.example.com") == {}
    assert inv.host_vars("bob@db2:2222") == {"ansible_host": "db2", "ansible_user": "bob", "ansible_port": 2222}
    assert all(h.groups == ["ungrouped"] for h in inv.hosts.values())
    conn = connection_vars(inv.host_vars("alice@web1.example.com:2200"))
    assert conn == {"host": "web1.example.com", "user": "alice", "port": 2200}


def test_plain_text_bad_line_names_file_and_line(tmp_path):
    path = write(tmp_path, "hosts", """\
        web1
        # comment
        web2 extra words
        """)
    err = load_error(path)
    assert_error_at(err, path, 3)
    assert "web2 extra words" in str(err)


def test_adhoc_host_specs():
    inv = Inventory.load(hosts=["alice@h1:2200", "h[2:3]", "h4"])
    assert list(inv.hosts) == ["alice@h1:2200", "h2", "h3", "h4"]
    assert inv.host_vars("alice@h1:2200") == {"ansible_host": "h1", "ansible_user": "alice", "ansible_port": 2200}
    assert inv.host_vars("h4") == {}
    assert inv.select("ungrouped") == ["alice@h1:2200", "h2", "h3", "h4"]


def test_adhoc_hosts_merge_with_files(tmp_path):
    path = write(tmp_path, "inv.yml", """\
        web:
          hosts:
            w1:
        """)
    inv = Inventory.load([path], ["w1", "extra"])
    assert list(inv.hosts) == ["w1", "extra"]
    assert inv.hosts["w1"].groups == ["web"], "a host with a real group is not also ungrouped"
    assert inv.groups["ungrouped"].hosts == ["extra"]


def test_bad_adhoc_host_spec():
    err = load_error(hosts=["not a host"])
    assert "not a host" in str(err)
    assert err.file == "--host"


# ------------------------------------------------------------------ connection variables
def test_connection_vars_ansible_names():
    conn = connection_vars({
        "ansible_host": "10.0.0.1", "ansible_port": "2222", "ansible_user": "deploy",
        "ansible_ssh_private_key_file": "~/.ssh/id", "ansible_connection": "ssh", "unrelated": 1,
    })
    assert conn == {"host": "10.0.0.1", "port": 2222, "user": "deploy", "identity_file": "~/.ssh/id",
                    "connection": "ssh"}
    assert isinstance(conn["port"], int)


def test_connection_vars_legacy_ansible_ssh_names():
    conn = connection_vars({"ansible_ssh_host": "h", "ansible_ssh_port": 22, "ansible_ssh_user": "u"})
    assert conn == {"host": "h", "port": 22, "user": "u"}


def test_short_names_are_ordinary_variables():
    """``port``, ``user``, ``host``, ``identity_file``, ``connection`` are an application's
    variables, as in Ansible: they set nothing."""
    assert connection_vars({"host": "h", "port": 2200, "user": "u", "identity_file": "k", "connection": "local"}) == {}


def test_connection_vars_ansible_ssh_names_win():
    """As Ansible's ssh plugin: ansible_ssh_host/port/user/private_key_file beat the shorter names."""
    conn = connection_vars({"ansible_host": "a", "ansible_ssh_host": "b", "ansible_port": 1, "ansible_ssh_port": 2,
                            "ansible_user": "u1", "ansible_ssh_user": "u2",
                            "ansible_private_key_file": "k1", "ansible_ssh_private_key_file": "k2", "user": "x"})
    assert conn == {"host": "b", "port": 2, "user": "u2", "identity_file": "k2"}
    assert connection_vars({"ansible_private_key_file": "~/.ssh/k"}) == {"identity_file": "~/.ssh/k"}


def test_connection_vars_empty():
    assert connection_vars({"foo": "bar"}) == {}


def test_connection_vars_through_inventory(tmp_path):
    path = write(tmp_path, "inv.yml", """\
        all:
          vars:
            ansible_user: deploy
          hosts:
            h1:
              ansible_port: 2201
              port: 8080
            h2:
              ansible_connection: local
        """)
    inv = Inventory.load([path])
    assert connection_vars(inv.host_vars("h1")) == {"user": "deploy", "port": 2201}
    assert inv.host_vars("h1")["port"] == 8080
    assert inv.warnings == [], "ansible_port is set: the application's port changes nothing, no warning"
    assert connection_vars(inv.host_vars("h2")) == {"user": "deploy", "connection": "local"}


# ------------------------------------------------------------------ errors: file and line
def test_yaml_syntax_error(tmp_path):
    path = write(tmp_path, "inv.yml", """\
        all:
          hosts:
            a:
           b: 1
        """)
    err = load_error(path)
    assert_error_at(err, path, 4)
    assert "YAML syntax error" in str(err)


def test_yaml_syntax_error_unclosed_flow(tmp_path):
    path = write(tmp_path, "inv.yml", """\
        all:
          vars: {a: 1
          hosts:
            h1:
        """)
    err = load_error(path)
    assert err.file == path
    assert err.line is not None and err.line >= 2
    assert "YAML syntax error" in str(err)


def test_top_level_list(tmp_path):
    path = write(tmp_path, "inv.yml", """\
        - web1
        - web2
        """)
    err = load_error(path)
    assert_error_at(err, path, 1)
    assert "top level must be a mapping" in str(err)
    assert "a list" in str(err)


def test_top_level_list_after_comments_points_at_the_list(tmp_path):
    path = write(tmp_path, "inv.yml", """\
        # My inventory
        # (a header comment)
        - web1
        - web2
        """)
    err = load_error(path)
    assert_error_at(err, path, lineno(path, "- web1"))


def test_top_level_scalar(tmp_path):
    path = write(tmp_path, "inv.yml", "just a string\n")
    err = load_error(path)
    assert_error_at(err, path, 1)
    assert "a string" in str(err)


def test_hosts_given_as_a_list(tmp_path):
    path = write(tmp_path, "inv.yml", """\
        all:
          children:
            web:
              hosts:
                - web1
                - web2
        """)
    err = load_error(path)
    assert_error_at(err, path, lineno(path, "hosts:"))
    assert "hosts of group 'web' must be a mapping" in str(err)
    assert "a list" in str(err)


def test_group_body_a_string(tmp_path):
    path = write(tmp_path, "inv.yml", """\
        all:
          children:
            web: web1
        """)
    err = load_error(path)
    assert_error_at(err, path, 3)
    assert "group 'web' must be a mapping" in str(err)


def test_children_given_as_a_list(tmp_path):
    path = write(tmp_path, "inv.yml", """\
        prod:
          hosts:
            h1:
          children:
            - web
        """)
    err = load_error(path)
    assert_error_at(err, path, 4)
    assert "children of group 'prod'" in str(err)


def test_group_vars_not_a_mapping(tmp_path):
    path = write(tmp_path, "inv.yml", """\
        web:
          hosts:
            w1:
          vars:
            - ansible_user=x
        """)
    err = load_error(path)
    assert_error_at(err, path, 4)
    assert "vars of group 'web' must be a mapping" in str(err)


def test_host_vars_not_a_mapping(tmp_path):
    path = write(tmp_path, "inv.yml", """\
        web:
          hosts:
            w1:
            w2: 10.0.0.2
        """)
    err = load_error(path)
    assert_error_at(err, path, 4)
    assert "variables of host 'w2' must be a mapping" in str(err)


@pytest.mark.parametrize("line, words", [
    ("ansible_port: ssh", "must be a port number"),
    ("ansible_port: 22.5", "must be a port number"),
    ("ansible_port: true", "must be a port number"),
    ("ansible_port: 70000", "out of range"),
    ("ansible_ssh_port: 0", "out of range"),
])
def test_bad_port(tmp_path, line, words):
    path = write(tmp_path, "inv.yml", f"""\
        web:
          hosts:
            w1:
              {line}
        """)
    err = load_error(path)
    assert_error_at(err, path, 4)
    assert words in str(err)


def test_port_as_digit_string_is_accepted(tmp_path):
    path = write(tmp_path, "inv.yml", """\
        web:
          hosts:
            w1:
              ansible_port: "2222"
        """)
    inv = Inventory.load([path])
    assert connection_vars(inv.host_vars("w1"))["port"] == 2222


def test_bad_port_in_group_vars(tmp_path):
    path = write(tmp_path, "inv.yml", """\
        web:
          vars:
            ansible_user: deploy
            ansible_port: 99999
          hosts:
            w1:
        """)
    err = load_error(path)
    assert_error_at(err, path, 4)


@pytest.mark.parametrize("key", ["ansible_connection"])
def test_unsupported_connection(tmp_path, key):
    path = write(tmp_path, "inv.yml", f"""\
        web:
          hosts:
            w1:
              ansible_user: x
              {key}: winrm
        """)
    err = load_error(path)
    assert_error_at(err, path, 5)
    assert "winrm" in str(err)
    assert "not supported" in str(err)


@pytest.mark.parametrize("conn", ["ssh", "paramiko", "smart", "local"])
def test_supported_connections(tmp_path, conn):
    path = write(tmp_path, "inv.yml", f"""\
        web:
          hosts:
            w1:
              ansible_connection: {conn}
        """)
    assert connection_vars(Inventory.load([path]).host_vars("w1"))["connection"] == conn


def test_empty_user_refused(tmp_path):
    path = write(tmp_path, "inv.yml", """\
        web:
          hosts:
            w1:
              ansible_user: ""
        """)
    err = load_error(path)
    assert_error_at(err, path, 4)


def test_host_then_group_with_the_same_name(tmp_path):
    path = write(tmp_path, "inv.yml", """\
        web:
          hosts:
            db:
        db:
          hosts:
            d1:
        """)
    err = load_error(path)
    assert_error_at(err, path, 4)
    assert "'db' is both a host and a group" in str(err)


def test_group_then_host_with_the_same_name(tmp_path):
    path = write(tmp_path, "inv.yml", """\
        db:
          hosts:
            d1:
        web:
          hosts:
            w1:
            db:
        """)
    err = load_error(path)
    assert_error_at(err, path, 7)
    assert "'db' is both a host and a group" in str(err)


def test_host_group_clash_across_files_names_second_file(tmp_path):
    first = write(tmp_path, "a.yml", """\
        db:
          hosts:
            d1:
        """)
    second = write(tmp_path, "b.yml", """\
        web:
          hosts:
            w1:
            db:
        """)
    err = load_error(first, second)
    assert_error_at(err, second, 4)


def test_unclosed_range_in_host_name(tmp_path):
    path = write(tmp_path, "inv.yml", """\
        web:
          hosts:
            w0:
            web[01:03:
        """)
    err = load_error(path)
    assert_error_at(err, path, 4)
    assert "unclosed" in str(err)


def test_huge_range_in_inventory_is_refused(tmp_path):
    path = write(tmp_path, "inv.yml", """\
        web:
          hosts:
            h[1:999999999]:
        """)
    err = load_error(path)
    assert_error_at(err, path, 3)
    assert "limit" in str(err)


def test_cycle_of_two_groups(tmp_path):
    path = write(tmp_path, "inv.yml", """\
        all:
          children:
            a:
              children:
                b:
                  children:
                    a:
        """)
    err = load_error(path)
    assert_error_at(err, path, 7)
    assert "cycle" in str(err)
    assert "a -> b -> a" in str(err)


def test_cycle_across_top_level_groups(tmp_path):
    path = write(tmp_path, "inv.yml", """\
        a:
          children:
            b:
        b:
          children:
            a:
        """)
    err = load_error(path)
    assert_error_at(err, path, 6)
    assert "cycle" in str(err)


def test_self_cycle(tmp_path):
    path = write(tmp_path, "inv.yml", """\
        a:
          hosts:
            h1:
          children:
            a:
        """)
    err = load_error(path)
    assert_error_at(err, path, 5)
    assert "a -> a" in str(err)


def test_all_cannot_be_a_child(tmp_path):
    path = write(tmp_path, "inv.yml", """\
        web:
          children:
            all:
        """)
    err = load_error(path)
    assert_error_at(err, path, 3)


@pytest.mark.parametrize("key", ["ansible_password", "ansible_ssh_pass"])
def test_password_in_host_vars_refused(tmp_path, key):
    path = write(tmp_path, "inv.yml", f"""\
        web:
          hosts:
            w1:
              ansible_user: deploy
              {key}: hunter2
        """)
    err = load_error(path)
    assert_error_at(err, path, 5)
    assert key in str(err)
    assert "password" in str(err).lower()
    assert "hunter2" not in str(err), "the secret itself must not be echoed"


@pytest.mark.parametrize("key", ["ansible_password", "ansible_ssh_pass"])
def test_password_in_group_vars_refused(tmp_path, key):
    path = write(tmp_path, "inv.yml", f"""\
        all:
          vars:
            {key}: hunter2
          hosts:
            w1:
        """)
    err = load_error(path)
    assert_error_at(err, path, 3)
    assert "password" in str(err).lower()
    assert "hunter2" not in str(err)


def test_missing_file(tmp_path):
    path = str(tmp_path / "nope.yml")
    err = load_error(path)
    assert err.file == path
    assert str(err).startswith(f"{path}: ")
    assert "no such" in str(err)


def test_non_hashable_key(tmp_path):
    path = write(tmp_path, "inv.yml", """\
        web:
          hosts:
            w1:
            [a, b]: 1
        """)
    err = load_error(path)
    assert_error_at(err, path, 4)


def test_error_is_reported_before_anything_partial_is_returned(tmp_path):
    good = write(tmp_path, "good.yml", """\
        web:
          hosts:
            w1:
        """)
    bad = write(tmp_path, "bad.yml", """\
        db:
          hosts: [d1]
        """)
    err = load_error(good, bad)
    assert_error_at(err, bad, 2)


def test_unknown_group_key_is_a_warning_with_line(tmp_path):
    path = write(tmp_path, "inv.yml", """\
        web:
          hosts:
            w1:
          host_vars:
            w1: {}
        """)
    inv = Inventory.load([path])
    assert len(inv.warnings) == 1
    assert inv.warnings[0].startswith(f"{path}:4:")
    assert "host_vars" in inv.warnings[0]
