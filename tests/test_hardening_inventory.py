"""Inventories an attacker writes (issue 11): alias bombs, alias x range bombs, long chains and
cycles of groups are refused with ``file:line`` and exit 2, in bounded work and memory; and
pattern selection with a glob and ranges costs one regex compile, not one per expanded name.

No wall-clock bounds here: work is bounded by counting calls, memory by running the CLI under
an address-space limit (an unbounded loader dies with MemoryError instead of refusing), hangs
by the pytest and subprocess timeouts.
"""
from __future__ import annotations

import fnmatch
import functools
import os
import re
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import ROOT
from hostops import inventory as inventory_module, selection, yamlfile
from hostops.errors import InventoryError
from hostops.inventory import Inventory

pytestmark = pytest.mark.timeout(180)

#: Address space the CLI may use when it loads a bomb: far above what loading any of these
#: inventories properly takes (about 50 MB), far below what expanding them would.
MEMORY_LIMIT = 400 * 1024 * 1024


def write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def lineno(text: str, needle: str) -> int:
    hits = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    assert len(hits) == 1, (needle, hits)
    return hits[0]


def laughs(levels: int = 9) -> str:
    """The "billion laughs": nine lists of nine aliases of the list before, 9**9 values in vars."""
    lines = ["all:", "  vars:", "    l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        lines.append(f"    l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    lines += ["  hosts:", "    h1:"]
    return "\n".join(lines) + "\n"


def alias_range_bomb(uses: int = 300) -> str:
    """One group of 99,999 hosts, aliased ``uses`` times under other group names."""
    lines = ["all:", "  children:", '    g0: &G {hosts: {"h[1:99999]": }}']
    lines += [f"    g{i}: *G" for i in range(1, uses)]
    return "\n".join(lines) + "\n"


def flat_chain(length: int) -> str:
    """g0 -> g1 -> ... -> g<length>, each group at the top level naming the next as its child."""
    lines = []
    for i in range(length):
        lines += [f"g{i}:", "  children:", f"    g{i + 1}:"]
    lines += [f"g{length}:", "  hosts:", "    h1:"]
    return "\n".join(lines) + "\n"


def nested_chain(length: int) -> str:
    """The same chain written as YAML nesting: children inside children, ``length`` deep."""
    lines, indent = ["all:", "  children:"], "    "
    for i in range(length):
        lines += [f"{indent}g{i}:", f"{indent}  children:"]
        indent += "    "
    lines += [f"{indent}leaf:", f"{indent}  hosts:", f"{indent}    h1:"]
    return "\n".join(lines) + "\n"


class Counted:
    """Wraps a function, counts its calls, and stops the caller (base code that would run for
    minutes) with an error once it has been called more than ``stop_after`` times."""

    def __init__(self, func, stop_after: int):
        self.func, self.stop_after, self.calls = func, stop_after, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls > self.stop_after:
            raise RuntimeError(f"still working after {self.stop_after} calls: the work is unbounded")
        return self.func(*args, **kwargs)

    def __get__(self, obj, objtype=None):  # patched onto a class: bind like the method it wraps
        return self if obj is None else functools.partial(self, obj)


def cli_limited(tmp_path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The real CLI in ``tmp_path`` under an address-space limit (so 'bounded memory' is a
    MemoryError away from failing, not a machine swapping)."""
    def limit_memory() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("HOSTOPS_INVENTORY", None)
    try:
        return subprocess.run([sys.executable, "-m", "hostops", *args], capture_output=True, text=True,
                              cwd=str(tmp_path), env=env, timeout=timeout, preexec_fn=limit_memory)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hostops {' '.join(args)} still running after {timeout}s (unbounded work)", pytrace=False)


def assert_refused_at(proc: subprocess.CompletedProcess, name: str, line: int, *words: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    err = proc.stderr.strip()
    assert "\n" not in err, err
    assert err.startswith(f"hostops: error: {name}:{line}: "), err
    for word in words:
        assert word in err, err
    assert proc.stdout == ""


# ------------------------------------------------------------------ alias bombs
def test_billion_laughs_in_vars_is_refused_before_construction(tmp_path, monkeypatch):
    text = laughs()
    path = write(tmp_path, "bomb.yml", text)
    construct = Counted(yamlfile.LineLoader.construct_object, stop_after=10_000)
    monkeypatch.setattr(yamlfile.LineLoader, "construct_object", construct)
    with pytest.raises(InventoryError) as info:
        Inventory.load([path])
    # l6 is the first list past the limit: 9**7 values
    assert info.value.file == path and info.value.line == lineno(text, "l6:"), str(info.value)
    assert "alias" in str(info.value) and str(yamlfile.MAX_NODES) in str(info.value)
    assert construct.calls == 0, "the loader built values before refusing"


@pytest.mark.parametrize("extra", [[], ["--json"], ["--graph"]])
def test_cli_refuses_billion_laughs_in_bounded_memory(tmp_path, extra):
    text = laughs()
    write(tmp_path, "bomb.yml", text)
    proc = cli_limited(tmp_path, "inventory", "-i", "bomb.yml", *extra)
    assert_refused_at(proc, "bomb.yml", lineno(text, "l6:"), "alias")


def test_alias_range_bomb_is_refused_before_any_host_is_added(tmp_path, monkeypatch):
    text = alias_range_bomb()
    path = write(tmp_path, "bomb.yml", text)
    add_host = Counted(Inventory.add_host, stop_after=inventory_module.MAX_HOST_ENTRIES)
    monkeypatch.setattr(Inventory, "add_host", add_host)
    with pytest.raises(InventoryError) as info:
        Inventory.load([path])
    assert info.value.line == lineno(text, "&G"), str(info.value)  # the anchored group's range
    assert str(inventory_module.MAX_HOST_ENTRIES) in str(info.value)
    assert add_host.calls == 0


def test_cli_refuses_alias_range_bomb_in_bounded_memory(tmp_path):
    text = alias_range_bomb()
    write(tmp_path, "bomb.yml", text)
    proc = cli_limited(tmp_path, "inventory", "-i", "bomb.yml")
    assert_refused_at(proc, "bomb.yml", lineno(text, "&G"), "host entries", "limit")


def test_alias_inside_itself_is_refused_with_its_line(tmp_path):
    text = "all:\n  hosts:\n    h1:\n  vars:\n    loop: &loop [1, [*loop]]\n"
    with pytest.raises(InventoryError) as info:
        Inventory.load([write(tmp_path, "inv.yml", text)])
    assert info.value.line == 5 and "contains it" in str(info.value)


def test_many_range_lines_in_a_host_file_are_bounded(tmp_path, monkeypatch):
    """Not only YAML: a host list of range lines is counted before each line expands."""
    monkeypatch.setattr(inventory_module, "MAX_HOST_ENTRIES", 1000)
    add_host = Counted(Inventory.add_host, stop_after=1000)
    monkeypatch.setattr(Inventory, "add_host", add_host)
    path = write(tmp_path, "hosts.txt", "h[1:300]\n" * 5)
    with pytest.raises(InventoryError) as info:
        Inventory.load([path])
    assert info.value.line == 4 and "1000" in str(info.value)
    assert add_host.calls == 900


def test_total_hosts_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(inventory_module, "MAX_HOSTS", 500)
    text = "web:\n  hosts:\n    a[1:300]:\n    b[1:300]:\n"
    with pytest.raises(InventoryError) as info:
        Inventory.load([write(tmp_path, "inv.yml", text)])
    assert info.value.line == 4 and "more than 500 hosts" in str(info.value)


def test_an_ordinary_inventory_with_aliases_still_loads(tmp_path):
    text = textwrap.dedent("""\
        all:
          vars:
            common: &common {ansible_user: deploy, ntp: [a, b]}
          children:
            web:
              hosts:
                web[01:50]: *common
            db:
              hosts:
                db[1:3]:
                  <<: *common
                  ansible_port: 2222
        """)
    inv = Inventory.load([write(tmp_path, "inv.yml", text)])
    assert len(inv.hosts) == 53
    assert inv.host_vars("db2")["ansible_port"] == 2222 and inv.host_vars("web07")["ntp"] == ["a", "b"]


def expanded_size(levels: int) -> int:
    """Values in laughs(levels) with every alias expanded, by arithmetic."""
    lists, size = 0, 10  # l0: the list and its nine scalars
    for _ in range(levels):
        lists += 1 + size  # the key and the list
        size = 1 + 9 * size
    return 5 + lists + 4  # all: {vars: {...}, hosts: {h1: null}}: the mappings and their keys


def test_yaml_size_is_counted_without_expanding():
    """check_size memoizes on the composed nodes: 9**9 values are counted, not visited."""
    loader = yamlfile.LineLoader(laughs(9))
    try:
        node = loader.get_single_node()
    finally:
        loader.dispose()
    children = Counted(yamlfile._children, stop_after=1000)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(yamlfile, "_children", children)
        assert yamlfile.check_size(node, max_nodes=10 ** 12) == expanded_size(9) > 9 ** 9
    assert children.calls < 200


# ------------------------------------------------------------------ chains and cycles of groups
def test_chain_at_the_depth_limit_loads_and_graphs(tmp_path):
    depth = inventory_module.MAX_GROUP_DEPTH
    text = flat_chain(depth - 1)
    inv = Inventory.load([write(tmp_path, "chain.yml", text)])
    assert inv.depth(f"g{depth - 1}") == depth
    assert inv.host_groups("h1")[-1] == f"g{depth - 1}" and len(inv.host_groups("h1")) == depth + 1
    proc = cli_limited(tmp_path, "inventory", "-i", "chain.yml", "--graph")
    assert proc.returncode == 0, proc.stderr
    assert set(re.findall(r"@(g\d+):", proc.stdout)) == {f"g{i}" for i in range(depth)}
    assert "|  " * depth + "|--h1" in proc.stdout  # h1 drawn under the whole chain


@pytest.mark.parametrize("length", [500, 5000])
def test_chain_deeper_than_the_limit_is_refused_not_a_recursion_error(tmp_path, length):
    text = flat_chain(length)
    write(tmp_path, "chain.yml", text)
    limit = inventory_module.MAX_GROUP_DEPTH
    proc = cli_limited(tmp_path, "inventory", "-i", "chain.yml", "--graph")
    # g<limit> is the first group past the limit; it is first named as g<limit-1>'s child
    assert_refused_at(proc, "chain.yml", 3 * limit, f"'g{limit}'", f"limit is {limit}")


@pytest.mark.parametrize("length", [300, 500])
def test_deeply_nested_children_are_refused_with_a_line(tmp_path, length):
    write(tmp_path, "nested.yml", nested_chain(length))
    proc = cli_limited(tmp_path, "inventory", "-i", "nested.yml")
    assert proc.returncode == 2, proc.stderr
    assert re.fullmatch(r"hostops: error: nested\.yml:\d+: .*(deep|nesting depth).*", proc.stderr.strip()), \
        proc.stderr


def test_nested_children_within_the_yaml_depth_load(tmp_path):
    inv = Inventory.load([write(tmp_path, "nested.yml", nested_chain(40))])
    assert inv.depth("leaf") == 41 and inv.group_hosts("g0") == ["h1"]


def test_cycle_of_three_groups_names_them_at_the_closing_link(tmp_path):
    text = "a:\n  children:\n    b:\nb:\n  children:\n    c:\nc:\n  children:\n    a:\n"
    write(tmp_path, "cycle.yml", text)
    proc = cli_limited(tmp_path, "inventory", "-i", "cycle.yml")
    assert_refused_at(proc, "cycle.yml", 9, "a -> b -> c -> a")


def test_naming_a_link_twice_records_it_once(tmp_path):
    text = "all:\n  children:\n    ungrouped:\n    web:\n      hosts:\n        h1:\nweb:\n  hosts:\n    h2:\n"
    inv = Inventory.load([write(tmp_path, "inv.yml", text)])
    assert inv.groups["all"].children == ["ungrouped", "web"] and inv.groups["web"].parents == ["all"]
    assert inv.groups["ungrouped"].parents == ["all"] and inv.depth("web") == 1


def test_cycle_across_two_files_is_reported_in_the_second(tmp_path):
    first = write(tmp_path, "a.yml", "a:\n  children:\n    b:\n")
    second = write(tmp_path, "b.yml", "b:\n  hosts:\n    h1:\n  children:\n    a:\n")
    with pytest.raises(InventoryError) as info:
        Inventory.load([first, second])
    assert info.value.file == second and info.value.line == 5
    assert "a -> b -> a" in str(info.value)


def test_cycle_at_the_end_of_a_long_chain_is_found_once(tmp_path, monkeypatch):
    """Cycles are looked for once per file, not at every link (quadratic in a long chain)."""
    text = flat_chain(150) + "  children:\n    g0:\n"
    calls = Counted(Inventory._find_cycle, stop_after=10)
    monkeypatch.setattr(Inventory, "_find_cycle", calls)
    with pytest.raises(InventoryError) as info:
        Inventory.load([write(tmp_path, "inv.yml", text)])
    assert "groups form a cycle: g0 -> g1 -> " in str(info.value) and "g150 -> g0;" in str(info.value)
    assert info.value.line == len(text.splitlines())
    assert calls.calls == 1


# ------------------------------------------------------------------ selection: globs with brackets
@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    path = tmp_path_factory.mktemp("inv") / "fleet.yml"
    path.write_text("all:\n  children:\n    web:\n      hosts:\n        web[01:20]:\n    db:\n      hosts:\n"
                    "        db[1:3]:\n        xdb12db7all:\n        db100db1all:\n        ydb9db1all:\n")
    return Inventory.load([str(path)])


def test_glob_with_brackets_compiles_one_regex(fleet, mocker):
    """In a glob, brackets are a character class, as in Ansible ([1:99] is one of '1', ':', '9');
    a term costs one compile whatever it holds (reading them as ranges once cost 9,801)."""
    spy = mocker.spy(re, "compile")
    chosen = fleet.select("*db[1:99]db[1:99]all")
    assert chosen == ["ydb9db1all"]
    assert spy.call_count == 1, f"{spy.call_count} regexes compiled for one pattern"


def test_glob_with_brackets_matches_groups_too(fleet):
    assert fleet.select("?e[a:b]") == fleet.select("web")
    assert fleet.select("w*[01:02]") == ["web02", "web03"]  # a subscript of what w* matches


NAMES = st.text("ab12x0", min_size=1, max_size=6)
TOKENS = st.sampled_from(["*", "?", "a", "b", "1", "x", "[1:12]", "[2:123]", "[0:3]", "[a:b]", "[01:12]", "[ab]",
                          "[!a]", "2", "l", "[0]"])


@settings(derandomize=True, database=None, deadline=None, max_examples=300)
@given(hosts=st.lists(NAMES, min_size=1, max_size=30, unique=True), term=st.lists(TOKENS, min_size=1, max_size=5))
def test_glob_term_selects_what_fnmatch_selects(hosts, term):
    """A term without a subscript selects the hosts of every group whose name it fnmatches and
    every host whose name it fnmatches (Ansible's _enumerate_matches), nothing else."""
    term = "".join(term)
    if selection._SUBSCRIPT.match(term):
        return
    inv = Inventory.load(hosts=hosts)
    groups = [g for g in inv.groups if fnmatch.fnmatchcase(g, term)]
    expected = {h for g in groups for h in inv.group_hosts(g)} | {h for h in inv.hosts if fnmatch.fnmatchcase(h, term)}
    chosen = selection.match_term(inv, term)
    assert set(chosen) == expected, term
