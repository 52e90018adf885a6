"""hostops.selection: Ansible host patterns over a fixture inventory.

Every expected list here is what ansible-core 2.19 selects on the same inventory (its
InventoryManager.list_hosts, as `ansible PATTERN --list-hosts`); tests/test_ansible_compare.py
checks a battery of patterns against ansible-core itself."""
from __future__ import annotations

import textwrap

import pytest

from hostops.errors import SelectionError
from hostops.exitcodes import ExitCode
from hostops.inventory import Inventory
from hostops.selection import split_pattern

# Order of `all`: bastion, web01..web04, db01, db02 (all's own hosts, then its children's).
FIXTURE = """\
all:
  hosts:
    bastion:
  children:
    web:
      hosts:
        web[01:04]:
    db:
      hosts:
        db01:
        db02:
    prod:
      hosts:
        db01:
        web02:
        web01:
    staging:
      hosts:
        web03:
        web04:
        db02:
"""

ALL = ["bastion", "web01", "web02", "web03", "web04", "db01", "db02"]
WEB = ["web01", "web02", "web03", "web04"]
DB = ["db01", "db02"]


def _load(tmp_path, name: str, text: str) -> Inventory:
    path = tmp_path / name
    path.write_text(text)
    return Inventory.load([str(path)])


@pytest.fixture
def inv(tmp_path):
    return _load(tmp_path, "inv.yml", FIXTURE)


def test_all(inv):
    assert inv.select("all") == ALL


def test_star(inv):
    assert inv.select("*") == ALL


def test_default_pattern_is_all(inv):
    assert inv.select() == ALL


def test_group(inv):
    assert inv.select("web") == WEB
    assert inv.select("prod") == ["db01", "web02", "web01"]  # the order prod lists them


def test_union_keeps_the_order_of_its_terms(inv):
    assert inv.select("db:web") == DB + WEB
    assert inv.select("web01:bastion") == ["web01", "bastion"]


def test_ungrouped(inv):
    assert inv.select("ungrouped") == ["bastion"]


def test_host(inv):
    assert inv.select("db02") == ["db02"]


def test_union_with_colon(inv):
    assert inv.select("web:db") == WEB + DB


def test_union_with_comma(inv):
    assert inv.select("web,db") == WEB + DB


def test_union_of_host_and_group(inv):
    assert inv.select("bastion:db") == ["bastion"] + DB


def test_intersection(inv):
    assert inv.select("web:&prod") == ["web01", "web02"]


def test_exclusion(inv):
    assert inv.select("web:!prod") == ["web03", "web04"]
    assert inv.select("web:!db") == WEB


def test_exclusion_of_a_single_host(inv):
    assert inv.select("web:!web02") == ["web01", "web03", "web04"]


def test_only_exclusion_means_all_minus(inv):
    assert inv.select("!db") == ["bastion"] + WEB


def test_only_intersection_means_all_intersect(inv):
    assert inv.select("&prod") == ["web01", "web02", "db01"]


def test_exclusion_order_does_not_matter(inv):
    assert inv.select("!db:web") == inv.select("web:!db") == WEB
    assert inv.select("!prod:web") == inv.select("web:!prod") == ["web03", "web04"]


def test_intersection_order_does_not_matter(inv):
    assert inv.select("&prod:web") == inv.select("web:&prod") == ["web01", "web02"]


def test_intersection_and_exclusion_combined(inv):
    assert inv.select("db:&prod:!web") == ["db01"]
    assert inv.select("all:&staging:!db") == ["web03", "web04"]


def test_exclusion_applies_after_later_union(inv):
    # Ansible applies every plain term first: "!web01" also removes web01 coming from prod.
    assert inv.select("web:!web01:prod") == ["web02", "web03", "web04", "db01"]


def test_glob(inv):
    assert inv.select("web*") == WEB
    assert inv.select("*01") == ["web01", "db01"]
    assert inv.select("db0?") == DB


def test_glob_matching_group_names_selects_their_hosts(inv):
    assert inv.select("sta*") == ["web03", "web04", "db02"]


def test_regex(inv):
    assert inv.select(r"~web\d+") == WEB
    assert inv.select(r"~(web|db)0[12]") == ["web01", "web02", "db01", "db02"]


def test_regex_is_anchored_at_start(inv):
    assert inv.select(r"~eb0") == []


@pytest.mark.parametrize("pattern", ["~web(", "~web[("])
def test_bad_regex(inv, pattern):
    with pytest.raises(SelectionError) as info:
        inv.select(pattern)
    assert "regular expression" in str(info.value)
    assert info.value.exit_code == ExitCode.USAGE


def test_regex_may_hold_brackets_and_braces(inv):
    assert inv.select(r"~web0[2-3]") == ["web02", "web03"]
    assert inv.select(r"~db\d{2}$") == DB


def test_brackets_after_a_name_are_a_subscript_not_a_name_range(inv):
    # As in Ansible: web[01:03] is the subscript [1:3] of group web (web02..web04), and
    # web0[1:3] the subscript of 'web0', which names nothing.
    assert inv.select("web[01:03]") == ["web02", "web03", "web04"]
    assert inv.select("db[01:02]") == ["db02"]
    assert inv.select("web0[1:3]") == []
    assert inv.select("web0[1:4]:!prod") == []


def test_brackets_that_are_no_subscript_are_a_glob_class(inv):
    assert inv.select("web0[!2]") == ["web01", "web03", "web04"]
    assert inv.select("web[:1]") == []  # [:1] is no subscript (Ansible needs the start): a class
    assert inv.select("web0[13]") == []  # but [13] is one: index 13 of 'web0', which names nothing


def test_group_subscript_index(inv):
    assert inv.select("web[0]") == ["web01"]
    assert inv.select("web[2]") == ["web03"]


def test_group_subscript_negative(inv):
    assert inv.select("web[-1]") == ["web04"]
    assert inv.select("db[-2]") == ["db01"]


def test_group_subscript_range_is_inclusive(inv):
    assert inv.select("web[0:1]") == ["web01", "web02"]
    assert inv.select("web[1:2]") == ["web02", "web03"]
    assert inv.select("web[1-2]") == ["web02", "web03"]  # Ansible's old spelling, still read


def test_group_subscript_open_ended(inv):
    assert inv.select("web[2:]") == ["web03", "web04"]


def test_group_subscript_slices_past_the_end_or_backwards_are_empty(inv):
    assert inv.select("db[01:09]") == ["db02"]
    assert inv.select("web[5:9]") == []
    assert inv.select("web[2:1]") == []


def test_group_subscript_end_zero_is_an_index(inv):
    assert inv.select("web[1:0]") == ["web02"]  # ansible-core reads an end of 0 as no end


def test_group_subscript_out_of_range_is_an_error(inv):
    for pattern in ("web[9]", "web[-5]", "db:web[9]"):
        with pytest.raises(SelectionError) as info:
            inv.select(pattern)
        assert "no host matched the subscripted pattern 'web[" in str(info.value)
        assert "4 hosts" in str(info.value) and info.value.exit_code == ExitCode.USAGE


def test_subscript_follows_the_groups_own_order(inv):
    # prod lists db01, web02, web01: Ansible indexes that order, not the order of `all`.
    assert inv.select("prod[0]") == ["db01"]
    assert inv.select("prod[-1]") == ["web01"]


def test_subscript_of_nothing_is_nothing(inv):
    assert inv.select("nosuch[0]") == []


def test_at_file(inv, tmp_path):
    listfile = tmp_path / "list.txt"
    listfile.write_text("db02\n# a comment\nweb01   # trailing\n\nnot-in-inventory\n")
    assert inv.select(f"@{listfile}") == ["web01", "db02"]


def test_at_file_combined(inv, tmp_path):
    listfile = tmp_path / "list.txt"
    listfile.write_text("web01\nweb02\nweb03\n")
    assert inv.select(f"@{listfile}:!prod") == ["web03"]


def test_at_file_missing(inv, tmp_path):
    with pytest.raises(SelectionError) as info:
        inv.select(f"@{tmp_path / 'nope.txt'}")
    assert "nope.txt" in str(info.value)


def test_results_in_the_order_terms_match_without_duplicates(inv):
    out = inv.select("db:web01:prod:web:web01")
    assert out == ["db01", "db02", "web01", "web02", "web03", "web04"]
    assert len(out) == len(set(out))


def test_unmatched_pattern_is_empty(inv):
    assert inv.select("nothing") == []
    assert inv.select("nothing*") == []
    assert inv.select("web:&db") == []


def test_empty_pattern_is_an_error(inv):
    with pytest.raises(SelectionError):
        inv.select("")
    with pytest.raises(SelectionError):
        inv.select("   ")


def test_pattern_of_separators_only_is_an_error(inv):
    # Ansible reads ',' (like '') as 'all': every host, from a typo or an unset variable.
    for pattern in (",", ", ,", ":"):
        with pytest.raises(SelectionError) as info:
            inv.select(pattern)
        assert "use 'all'" in str(info.value)


def test_stray_operator_is_an_error(inv):
    with pytest.raises(SelectionError):
        inv.select("web:!")


@pytest.mark.parametrize("pattern", ["web[", "web]", "web[0:db", "db:]web"])
def test_unbalanced_bracket_is_an_error(inv, pattern):
    # Ansible drops a lone bracket and selects 'web'; hostops says what it could not read.
    with pytest.raises(SelectionError) as info:
        inv.select(pattern)
    assert "unbalanced" in str(info.value) and info.value.exit_code == ExitCode.USAGE


def test_whitespace_separates_terms(inv):
    assert inv.select("web db") == WEB + DB


def test_split_pattern():
    assert split_pattern("web:db") == ["web", "db"]
    assert split_pattern("web, db") == ["web", "db"]
    assert split_pattern("web[0:1]:!db") == ["web[0:1]", "!db"]
    assert split_pattern("a[01:03]:b[1:2]") == ["a[01:03]", "b[1:2]"]
    assert split_pattern("web:&prod:!db") == ["web", "&prod", "!db"]
    assert split_pattern("a:b,c") == ["a:b", "c"]  # with a comma, ':' separates nothing
    assert split_pattern("deploy@web:db") == ["deploy@web", "db"]  # 'web:db' is no address
    assert split_pattern("@failed:web") == ["@failed", "web"]


@pytest.mark.parametrize("address", ["10.0.0.5:2222", "web1.example.com:22", "fe80::1", "2001:db8::20",
                                     "[2001:db8::20]:2222", "web[01:05]", "web[01:05].example.com:22",
                                     "deploy@10.0.0.5:2222", "deploy@[2001:db8::20]:2222"])
def test_split_pattern_keeps_one_address_whole(address):
    assert split_pattern(address) == [address]


def test_select_on_text_inventory(tmp_path):
    inv = _load(tmp_path, "hosts", textwrap.dedent("""\
        n1
        n2
        n3
        """))
    assert inv.select("n[2:3]") == []  # the subscript of 'n', which names nothing
    assert inv.select("n[!1]") == ["n2", "n3"]  # a glob class does
    assert inv.select("ungrouped[0]") == ["n1"]
    assert inv.select("ungrouped[1:]") == ["n2", "n3"]


# Order of `all` here: its own hosts (solo, 10.0.0.1), then its children's level by level:
# web's own (web03 web01 web02), db's (db02 db01), test1's, test2's, then web's child canary's
# (web05 web04); not the order hosts were first written in (canary's come before db's there).
NESTED = """\
all:
  hosts:
    solo:
    10.0.0.1:
  children:
    web:
      hosts:
        web03:
        web01:
        web02:
      children:
        canary:
          hosts:
            web05:
            web04:
    db:
      hosts:
        db02:
        db01:
    test1:
      hosts:
        t-a:
        t-b:
    test2:
      hosts:
        t-b:
        t-c:
"""
NESTED_ALL = ["solo", "10.0.0.1", "web03", "web01", "web02", "db02", "db01", "t-a", "t-b", "t-c", "web05", "web04"]


@pytest.fixture
def nested(tmp_path):
    return _load(tmp_path, "nested.yml", NESTED)


def test_all_lists_own_hosts_then_children_level_by_level(nested):
    assert nested.select("all") == NESTED_ALL
    assert nested.select("*") == NESTED_ALL
    assert nested.select("!db") == [h for h in NESTED_ALL if h not in ("db01", "db02")]


def test_group_lists_its_own_hosts_before_its_childrens(nested):
    assert nested.select("web") == ["web03", "web01", "web02", "web05", "web04"]


def test_subscript_indexes_own_hosts_then_childrens(nested):
    assert nested.select("web[3]") == ["web05"]
    assert nested.select("web[-1]") == ["web04"]
    assert nested.select("web[2:3]") == ["web02", "web05"]


def test_subscript_after_a_glob_indexes_every_matched_groups_hosts_in_turn(nested):
    # test* matches test1 (t-a t-b) and test2 (t-b t-c): Ansible indexes t-a, t-b, t-b, t-c,
    # the repeat included, then the hosts whose own names match (none here).
    assert nested.select("test*[0]") == ["t-a"]
    assert nested.select("test*[1]") == ["t-b"]
    assert nested.select("test*[2]") == ["t-b"]
    assert nested.select("test*[3]") == ["t-c"]
    assert nested.select("test*[1:]") == ["t-b", "t-c"]
    assert nested.select("te?t[12][0]") == ["t-a"]


def test_star_subscript_indexes_all_first(nested):
    assert nested.select("*[0]") == ["solo"]
    assert nested.select("*[3]") == ["web01"]
    assert nested.select("*[-1]") == ["t-c"]  # after every group's hosts, the hosts matched by name


def test_glob_matches_group_names_and_host_names(nested):
    # 'w*' matches group web and hosts web0*: web's walk first, then names already chosen.
    assert nested.select("w*") == ["web03", "web01", "web02", "web05", "web04"]
    assert nested.select("*y") == ["web05", "web04"]  # group canary
    assert nested.select("*y:t-[!b]") == ["web05", "web04", "t-a", "t-c"]
    assert nested.select("web0[!2-4]") == ["web01", "web05"]


def test_address_hosts(nested):
    assert nested.select("10.0.0.1") == ["10.0.0.1"]
    assert nested.select("10.0.0.*") == ["10.0.0.1"]
    assert nested.select("10.0.0.1:22") == []  # one term: no host is called that


def test_all_lists_hosts_written_under_all_in_their_order(tmp_path):
    # a and c sit only in `all`, b in web too: Ansible keeps all three as all's own hosts, in order.
    inv = _load(tmp_path, "inv.yml",
                "all:\n  hosts:\n    a:\n    b:\n    c:\n  children:\n    web:\n      hosts:\n        d:\n        b:\n")
    assert inv.select("all") == ["a", "b", "c", "d"]
    assert inv.select("*[1]") == ["b"]
    assert inv.select("ungrouped") == ["a", "c"]


def test_subscript_stops_walking_groups_once_it_has_its_index(nested, mocker):
    from hostops import selection

    walks = mocker.spy(selection, "_walk")
    assert nested.select("*[0]") == ["solo"]
    assert walks.call_count == 1  # `all` holds index 0: the other groups are not walked
    walks.reset_mock()
    assert nested.select("*[-1]") == ["t-c"]  # counting from the end needs every group
    assert walks.call_count == len(nested.groups)


def test_no_match_hint_names_a_subscript_meant_as_a_range(inv):
    from hostops.selection import no_match_hint

    hint = no_match_hint(inv, "bastion:web0[1:3]")
    assert "'web0[1:3]'" in hint and "'web0*'" in hint and "no host-name range" in hint
    assert no_match_hint(inv, "nosuch") == ""  # no subscript: nothing to explain
    assert no_match_hint(inv, "web[5:9]") == ""  # web matches hosts: the slice is just past them
    assert no_match_hint(inv, "web[") == ""
