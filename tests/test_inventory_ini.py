"""INI inventories, checked against ansible-core's own reading of the same files."""
from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_listing import ANSIBLE_INVENTORY, ansible_env, assert_same_as_ansible
from hostops.errors import InventoryError
from hostops.exitcodes import ExitCode
from hostops.inventory import Inventory
from hostops.inventory_ini import _Reader, looks_like_ini


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


EVERY_CONSTRUCT = """\
    # a comment
    ; another comment
    lone1 a=1
    lone2:2201

    [web]
    web[01:03]:2222 x=1 y="2" z='[1, 2]' s=hello t="a b" u=True v=yes w={'k':1} q=1.5 e=... c=1j n=None
    web10 x=2 # trailing comment
    web[a:c]-e ansible_host=10.0.0.9

    [web:vars]
    g_int=1
    g_quoted="quoted"
    g_words=hello world # not a comment here
    g_list=[1,2]
    g_spaced = spaced
    g_bool=True
    shared=web

    [prod:children]
    web
    db        # children named before they are defined

    [prod:vars]
    shared=prod
    only_prod='p'
    ansible_group_priority=5

    [db]
    db1 ansible_port=2200 shared=db1host
    [fe80::1]:2300
    10.0.0.[1:10:3]

    [all:vars]
    shared=all
    ansible_user=deploy

    [empty]

    [canary]
    web01

    [canary:vars]
    shared=canary
    """


def test_every_construct_reads_as_ansible_reads_it(tmp_path):
    path = write(tmp_path, "hosts.ini", EVERY_CONSTRUCT)
    inv = assert_same_as_ansible([path], tmp_path)
    # the fixture exercises precedence: web (depth 2) beats canary and prod (depth 1, priority 5)
    assert inv.host_vars("web01")["shared"] == "web"
    assert inv.host_vars("db1")["shared"] == "db1host"
    assert inv.host_vars("10.0.0.4")["shared"] == "prod"
    assert inv.host_vars("lone2")["ansible_port"] == 2201
    assert "empty" in inv.groups


def test_values_keep_their_file_and_line(tmp_path):
    path = write(tmp_path, "hosts", EVERY_CONSTRUCT)
    inv = Inventory.load([path])
    merged, sources = inv.host_vars_with_sources("web02")
    lines = Path(path).read_text().splitlines()
    for key, needle in (("g_list", "g_list="), ("x", "web[01:03]"), ("ansible_user", "ansible_user=")):
        assert sources[key].file == path
        assert needle in lines[sources[key].line - 1], key
    assert merged["x"] == 1


@pytest.mark.parametrize("text", [
    # the same group named in several sections, vars before the group, nested children
    """\
    [a:vars]
    v=a
    [a]
    h1
    [b:children]
    a
    [b:vars]
    v=b
    w=b
    [c:children]
    b
    [c]
    h2 w=host
    """,
    # a host in several groups with conflicting inline vars: the later line wins
    """\
    [g1]
    h1 v=1 only1=x
    [g2]
    h1 v=2
    [g3]
    h1:2022
    """,
    # host:port forms: addresses, bracketed and bare IPv6, ranges, a name with a colon that is no port
    """\
    [g]
    10.0.0.1:2201
    [::1]:2202
    ::2
    fe80::3%eth0
    web[1:2]:2203
    h-x.example.com:2204
    host_a:bc
    """,
    # [all] and [ungrouped] sections, comment after a section header
    """\
    [all]
    a1
    [ungrouped] # loose hosts
    u1
    [other]
    a1
    """,
])
def test_more_layouts_match_ansible(tmp_path, text):
    assert_same_as_ansible([write(tmp_path, "inv", text)], tmp_path)


ERRORS = [
    ("undefined child", "[prod:children]\nweb\n", 2, "defined nowhere"),
    ("vars of undefined group", "[web:vars]\nx=1\n", 1, "defined nowhere"),
    ("space in a section", "[web servers]\nh1\n", 1, "invalid section header"),
    ("unknown section kind", "[web:hosts2]\nh1\n", 1, "unknown type"),
    ("host ending in a colon", "[web]\nh1:\n", 2, "ends in ':'"),
    ("bare word after a host", "[web]\nh1 ansible_user\n", 2, "expected key=value"),
    ("unclosed quote", "[web]\nh1 x=\"a b\n", 2, "No closing quotation"),
    ("vars line without =", "[web]\nh1\n[web:vars]\njustaword\n", 4, "expected key=value"),
    ("yaml document marker", "[web]\n---\n", 2, "YAML"),
]


@pytest.mark.parametrize("what,text,line,needle", ERRORS, ids=[e[0] for e in ERRORS])
def test_errors_name_file_and_line_where_ansible_also_fails(tmp_path, what, text, line, needle):
    path = write(tmp_path, "hosts.ini", text)
    with pytest.raises(InventoryError) as info:
        Inventory.load([path])
    err = info.value
    assert err.exit_code == ExitCode.USAGE
    assert str(err).startswith(f"{path}:{line}: "), str(err)
    assert needle in str(err)
    assert "\n" not in str(err)
    if ANSIBLE_INVENTORY.exists():  # ansible-core refuses the same file
        proc = subprocess.run([str(ANSIBLE_INVENTORY), "-i", path, "--list"], cwd=str(tmp_path),
                              env=ansible_env(tmp_path), capture_output=True, text=True, timeout=300)
        assert proc.returncode != 0, what


def test_password_in_ini_is_refused_with_its_line(tmp_path):
    path = write(tmp_path, "hosts.ini", "[web]\nh1\n[web:vars]\nansible_user=x\nansible_password=hunter2\n")
    with pytest.raises(InventoryError) as info:
        Inventory.load([path])
    assert str(info.value).startswith(f"{path}:5: ansible_password is refused")
    assert "hunter2" not in str(info.value)


def test_too_many_hosts_is_refused_before_expanding(tmp_path):
    path = write(tmp_path, "hosts.ini", "[web]\nh[1:3]\nbig[1:99999]x[1:99]\n")
    with pytest.raises(InventoryError) as info:
        Inventory.load([path])
    assert str(info.value).startswith(f"{path}:3: ")


def test_deeply_nested_value_is_refused(tmp_path):
    path = write(tmp_path, "hosts.ini", "[web]\nh1 deep=" + "[" * 150 + "]" * 150 + "\n")
    with pytest.raises(InventoryError) as info:
        Inventory.load([path])
    assert str(info.value).startswith(f"{path}:2: ") and "nests deeper" in str(info.value)


def test_cycle_of_children_is_refused(tmp_path):
    path = write(tmp_path, "hosts.ini", "[a:children]\nb\n[b:children]\na\n")
    with pytest.raises(InventoryError) as info:
        Inventory.load([path])
    assert "cycle" in str(info.value) and str(info.value).startswith(f"{path}:")


@pytest.mark.parametrize("text,ini", [
    ("[web]\nh1\n", True),
    ("h1 ansible_host=10.0.0.1\n", True),
    ("[web:vars]\n", True),
    ("[bad section]\n", True),  # read as INI so its error says so
    ("h1\nh2:2222\n# comment\n", False),
    ("deploy@h1:2222\nh[1:3]\n", False),
    ("", False),
])
def test_which_text_files_are_ini(text, ini):
    assert looks_like_ini(text) is ini


def test_sectionless_host_list_gives_ansible_s_hosts(tmp_path):
    """A file of bare names is read as a pssh-style list; without user@ it gives Ansible's hosts."""
    path = write(tmp_path, "hosts", "# fleet\nh1\nh2\nweb[01:03]\n")
    inv = Inventory.load([path])
    assert sorted(inv.hosts) == ["h1", "h2", "web01", "web02", "web03"]
    assert_same_as_ansible([path], tmp_path)


def test_ini_line_that_parses_as_yaml_is_still_ini(tmp_path):
    path = write(tmp_path, "hosts", 'h1 msg="a: b"\nh2 ansible_host=10.0.0.2\n')
    inv = assert_same_as_ansible([path], tmp_path)
    assert inv.host_vars("h1") == {"msg": "a: b"}


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_.\-]{0,12}\Z"), st.from_regex(r"\A[0-9]{1,3}(\.[0-9]{1,3}){2,4}\Z"),
                 st.from_regex(r"\A(0|[1-9][0-9]{0,17})\Z"), st.sampled_from(["True", "False", "None", "None.x", "a-1j"])))
def test_value_fast_paths_agree_with_literal_eval(text):
    """value() skips ast.literal_eval for plain names, addresses and integers; the result is
    the one the general path (Ansible's rule) gives."""
    reader = _Reader(Inventory(), "hosts")
    assert reader.value(text) == reader.literal(text)
    assert type(reader.value(text)) is type(reader.literal(text))
