"""Property-based tests (Hypothesis): whatever text an inventory file holds, whatever YAML
structure, whatever host pattern, hostops answers with a result or its own error
(InventoryError / HostopsError) quickly, never with another exception or a huge expansion.

Runs are derandomized (the same examples every time, no example database), so a failure
here is reproducible and never flaky. Inputs known to break the rule are listed in the
strict-xfail tests at the end, one per bug, with the reason.
"""
from __future__ import annotations

import os
import subprocess
import sys
import re
import textwrap
from unittest import mock

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT
from hostops import hostlist, inventory as inventory_module
from hostops.errors import HostopsError, InventoryError
from hostops.inventory import Inventory
from hostops.selection import split_pattern

pytestmark = pytest.mark.timeout(120)

PROPS = settings(derandomize=True, database=None, deadline=None, max_examples=150,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                        HealthCheck.filter_too_much])
# No wall-clock bounds (a loaded machine made a 5 s bound fail): hangs are caught by the timeout
# above, blow-ups by bounds on the work done (hosts made, regexes compiled, memory allocated).


def load_text(directory: str, text: str, suffix: str) -> Inventory:
    path = os.path.join(directory, "inventory" + suffix)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return Inventory.load([path])


def foreign(exc: BaseException) -> str:
    """A short description of an exception hostops should not have let through (reported with
    pytrace=False after the except block: a RecursionError's 1000-frame traceback would take
    pytest seconds to format)."""
    return f"{type(exc).__name__} escaped: {str(exc)[:200]}"


def loads_or_inventory_error(directory: str, text: str, suffix: str) -> None:
    escaped = None
    try:
        inv = load_text(directory, text, suffix)
    except InventoryError as exc:
        assert str(exc)  # a message the CLI can print on one line
    except Exception as exc:
        escaped = foreign(exc)
    else:
        assert isinstance(inv.hosts, dict)
        assert len(inv.hosts) <= inventory_module.MAX_HOSTS
        assert inv.host_entries <= inventory_module.MAX_HOST_ENTRIES
        assert inv.select("all") == list(inv.hosts)
    if escaped:
        pytest.fail(f"{escaped} (input {text[:80]!r}, suffix {suffix!r})", pytrace=False)


# ---------------------------------------------------------------- strategies
TEXT = st.characters(blacklist_categories=("Cs",))  # anything UTF-8 can hold
NAMES = st.sampled_from(["all", "ungrouped", "web", "db", "prod", "web01", "db1", "h[01:05]", "h[a:c]", "h[1:3:2]",
                         "h[1:999999999]", "h[5:1]", "h[01:5]", "h[", "h]", "x[1:3]y[1:2]", "", " ", "-", "@x", "~x"])
KEYS = st.sampled_from(["hosts", "vars", "children", "ansible_host", "ansible_port", "ansible_user",
                        "ansible_connection", "ansible_ssh_private_key_file", "ansible_group_priority", "port", "host",
                        "user", "connection", "identity_file", "ansible_password", "password"])
SCALARS = (st.none() | st.booleans() | st.integers(-2 ** 40, 2 ** 40) | st.floats(allow_nan=True)
           | st.text(TEXT, max_size=12) | NAMES | st.sampled_from(["22", "65536", "0", "ssh", "local", "telnet"]))
TREES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS | NAMES | st.text(TEXT, max_size=8), inner,
                                                                max_size=4),
    max_leaves=25)
YAML_LINES = st.lists(st.sampled_from([
    "all:", "  hosts:", "    a:", "    web[01:03]:", "  children:", "    web:", "      hosts:", "        b:",
    "  vars:", "    ansible_port: 22", "    ansible_port: x", "    ansible_user: [1]", "- a", "  - b", "a: [",
    "? [a]", ": b", "&x {hosts: {c: }}", "*x", "<<: *x", "!!binary aGk=", "%YAML 1.1", "---", "...", "\t",
    "web01", "user@h1:22", "[web]", "h[1:2]:99", "#", "'", '"', "{", "}"]), max_size=12).map("\n".join)


# ---------------------------------------------------------------- inventory files
@PROPS
@given(text=st.text(TEXT, max_size=300), suffix=st.sampled_from([".yml", ".txt", ""]))
def test_any_text_loads_or_raises_inventory_error(tmp_path, text, suffix):
    loads_or_inventory_error(str(tmp_path), text, suffix)


@PROPS
@given(text=YAML_LINES, suffix=st.sampled_from([".yml", ".txt"]))
def test_inventory_like_lines_load_or_raise_inventory_error(tmp_path, text, suffix):
    loads_or_inventory_error(str(tmp_path), text, suffix)


@PROPS
@given(tree=TREES, suffix=st.sampled_from([".yml", ".hosts"]))
def test_any_yaml_structure_loads_or_raises_inventory_error(tmp_path, tree, suffix):
    loads_or_inventory_error(str(tmp_path), yaml.safe_dump(tree, allow_unicode=True), suffix)


@PROPS
@given(groups=st.dictionaries(NAMES | KEYS, TREES, max_size=4))
def test_any_group_tree_loads_or_raises_inventory_error(tmp_path, groups):
    """Random trees placed where groups go, so hosts/vars/children parsing is exercised."""
    loads_or_inventory_error(str(tmp_path), yaml.safe_dump({"all": {"children": groups}}, allow_unicode=True), ".yml")


# ---------------------------------------------------------------- host patterns
@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    path = tmp_path_factory.mktemp("inv") / "fleet.yml"
    path.write_text("all:\n  children:\n    web:\n      hosts:\n        web[01:20]:\n    db:\n      hosts:\n"
                    "        db[1:3]:\n    prod:\n      children:\n        web:\n        db:\n  hosts:\n    solo:\n")
    return Inventory.load([str(path)])


PATTERN_TOKENS = st.sampled_from(["all", "*", "web", "db", "prod", "solo", "web01", "web[01:05]", "web[0]", "web[-1]",
                                  "web[0:2]", "db[1:99]", "~web\\d+", "~(", "web*", "?b*", "[", "]", ":", ",", "&",
                                  "!", "@", "~", "h[1:999999999]", "web[a:c]", "web[5:1]", "nosuch", ""])


@PROPS
@given(pattern=st.text(TEXT, max_size=60) | st.lists(PATTERN_TOKENS, max_size=8).map("".join))
def test_select_returns_hosts_or_raises_hostops_error(fleet, pattern):
    """...and compiles at most one regex per term (a glob with ranges such as
    '*db[1:99]db[1:99]all' once compiled one per expanded name: 9,801)."""
    escaped = None
    try:
        with mock.patch.object(re, "compile", wraps=re.compile) as compiles:
            chosen = fleet.select(pattern)
    except HostopsError as exc:
        assert str(exc)
    except Exception as exc:
        escaped = foreign(exc)
    else:
        assert isinstance(chosen, list)
        assert set(chosen) <= set(fleet.hosts) and len(set(chosen)) == len(chosen)
        assert compiles.call_count <= len(split_pattern(pattern)), (pattern, compiles.call_count)
    if escaped:
        pytest.fail(f"{escaped} (pattern {pattern[:80]!r})", pytrace=False)


@pytest.mark.parametrize("pattern", ["*db[1:99]db[1:99]all", "web[01:20]*", "*[1:99]*[1:99]*", "w?b[01:20]:&*[1:3]"])
def test_glob_with_ranges_compiles_one_regex_per_term(fleet, pattern):
    """The pattern that made the wall-clock bound above fail on a loaded machine, as a work bound."""
    with mock.patch.object(re, "compile", wraps=re.compile) as compiles:
        fleet.select(pattern)
    assert compiles.call_count <= len(split_pattern(pattern))


# ---------------------------------------------------------------- host-name ranges
@PROPS
@given(parts=st.lists(st.tuples(st.text("abc-", max_size=2), st.integers(0, 10 ** 12), st.integers(0, 10 ** 12),
                                st.integers(1, 10 ** 6)), min_size=1, max_size=3))
def test_range_expansion_is_bounded(parts):
    name = "".join(f"{prefix}[{a}:{b}:{step}]" for prefix, a, b, step in parts)
    try:
        names = hostlist.expand(name)
    except InventoryError:
        pass
    else:
        assert 1 <= len(names) <= hostlist.MAX_EXPANSION
        assert len(names) == hostlist.count(name)


@pytest.mark.parametrize("name", ["h[1:999999999]", "h[0:99999999999999999999]", "web[001:999999999]",
                                  "h[1:999999999:1]", "x[1:3]h[1:999999999]"])
def test_one_huge_range_fails_at_once(name):
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(InventoryError, match="expands to"):
            hostlist.expand(name)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024, peak  # refused before building the names


def expand_in_child(name: str, wall: float = 50.0) -> dict:
    """Expand ``name`` in a fresh interpreter (a 1 GiB address space; ``wall`` seconds only
    against a hang, generous for a loaded machine) with tracemalloc on: its outcome and the
    peak bytes allocated."""
    code = textwrap.dedent("""
        import json, sys, tracemalloc
        from hostops import hostlist
        from hostops.errors import InventoryError
        tracemalloc.start()
        try:
            hostlist.expand(sys.argv[1])
            outcome = "expanded"
        except InventoryError as exc:
            outcome = "InventoryError: " + str(exc)
        peak = tracemalloc.get_traced_memory()[1]
        print(json.dumps({"outcome": outcome, "peak_mb": peak / 1048576}))
    """)

    def limit_memory() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    env = dict(os.environ, PYTHONPATH=ROOT)
    try:
        proc = subprocess.run([sys.executable, "-c", code, name], capture_output=True, text=True, timeout=wall,
                              env=env, preexec_fn=limit_memory)
    except subprocess.TimeoutExpired:
        return {"outcome": f"still expanding after {wall}s", "peak_mb": None}
    if proc.returncode != 0:
        return {"outcome": f"crashed: {proc.stderr.strip().splitlines()[-1:]}", "peak_mb": None}
    import json

    return json.loads(proc.stdout)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["h[1:99999]x[1:99999]y[1:99999]", "h" + "[1:99999]" * 40])
def test_several_huge_ranges_fail_without_expanding(name):
    result = expand_in_child(name)
    assert result["outcome"].startswith("InventoryError"), result
    assert result["peak_mb"] < 4, result


@pytest.mark.timeout(120)
def test_one_huge_range_in_child_is_refused_small():
    """The same measurement on a single huge range, which is refused before expanding."""
    result = expand_in_child("h[1:999999999]")
    assert result["outcome"].startswith("InventoryError") and "expands to 999999999 names" in result["outcome"]
    assert result["peak_mb"] < 4, result


# ---------------------------------------------------------------- known breakers (bugs)
def _xfail(reason: str):
    return pytest.mark.xfail(strict=True, reason=reason)


INVENTORY_BREAKERS = [
    pytest.param("all:\n  hosts:\n    a: {ansible_port: '\u00b2'}\n", ".yml", id="superscript-port"),
    pytest.param("all:\n  vars:\n    big: " + "9" * 5000 + "\n", ".yml", id="yaml-int-over-4300-digits"),
    pytest.param("all:\n  hosts:\n    a: {ansible_port: '" + "9" * 5000 + "'}\n", ".yml", id="port-string-5000-digits"),
    pytest.param("[" * 1000, ".yml", id="nested-flow-sequences"),
    pytest.param("[" * 1000, ".txt", id="nested-flow-sequences-host-file"),
    pytest.param("h[1:" + "9" * 5000 + "]\n", ".txt", id="range-bound-5000-digits"),
    pytest.param("a:" + "9" * 5000 + "\n", ".txt", id="host-file-port-5000-digits"),
]


@pytest.mark.parametrize("text, suffix", INVENTORY_BREAKERS)
def test_known_breakers_raise_inventory_error(tmp_path, text, suffix):
    loads_or_inventory_error(str(tmp_path), text, suffix)


@pytest.mark.parametrize("spec", ["a:99999999", "a:0"])
def test_host_file_port_out_of_range_is_an_inventory_error(tmp_path, spec):
    with pytest.raises(InventoryError):
        load_text(str(tmp_path), spec + "\n", ".txt")


SELECT_BREAKERS = [
    pytest.param("@a\x00b", id="file-name-with-nul"),
    pytest.param("@BINARY", id="binary-host-list-file"),
    pytest.param("~a{99999999999}", id="regex-repeat-overflow"),
    pytest.param("~" + "(" * 1000 + ")" * 1000, id="regex-nesting"),
    pytest.param("h[1:" + "9" * 5000 + "]", id="range-bound-5000-digits"),
]


@pytest.mark.parametrize("pattern", SELECT_BREAKERS)
def test_known_pattern_breakers_raise_hostops_error(fleet, tmp_path, pattern):
    if pattern == "@BINARY":
        binary = tmp_path / "hosts.bin"
        binary.write_bytes(b"\xff\xfe web01\n")
        pattern = f"@{binary}"
    escaped = None
    try:
        fleet.select(pattern)
    except HostopsError:
        pass
    except Exception as exc:
        escaped = foreign(exc)
    if escaped:
        pytest.fail(escaped, pytrace=False)
