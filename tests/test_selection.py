"""hostops.selection: Ansible host patterns over a fixture inventory."""
from __future__ import annotations

import textwrap

import pytest

from hostops.errors import SelectionError
from hostops.exitcodes import ExitCode
from hostops.inventory import Inventory
from hostops.selection import split_pattern

# Inventory order: bastion, web01..web04, db01, db02.
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


@pytest.fixture
def inv(tmp_path):
    path = tmp_path / "inv.yml"
    path.write_text(FIXTURE)
    return Inventory.load([str(path)])


def test_all(inv):
    assert inv.select("all") == ALL


def test_star(inv):
    assert inv.select("*") == ALL


def test_default_pattern_is_all(inv):
    assert inv.select() == ALL


def test_group(inv):
    assert inv.select("web") == WEB
    assert inv.select("prod") == ["web01", "web02", "db01"]


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


def test_bad_regex(inv):
    with pytest.raises(SelectionError) as info:
        inv.select("~web(")
    assert "regular expression" in str(info.value)
    assert info.value.exit_code == ExitCode.USAGE


def test_name_range(inv):
    assert inv.select("web0[1:3]") == ["web01", "web02", "web03"]


def test_padded_name_range_on_a_group_name_is_a_name_range(inv):
    # "web" is also a group, but [01:03] is a zero-padded host-name range (hostops's documented
    # ``web[01:05]``), not the Ansible subscript [1:3] which would pick web02..web04.
    assert inv.select("web[01:03]") == ["web01", "web02", "web03"]
    assert inv.select("db[01:02]") == DB


def test_name_range_skips_missing_names(inv):
    assert inv.select("db[01:09]") == DB


def test_name_range_combined(inv):
    assert inv.select("web0[1:4]:!prod") == ["web03", "web04"]


def test_bad_name_range(inv):
    with pytest.raises(SelectionError):
        inv.select("web0[3:1]")


def test_group_subscript_index(inv):
    assert inv.select("web[0]") == ["web01"]
    assert inv.select("web[2]") == ["web03"]


def test_group_subscript_negative(inv):
    assert inv.select("web[-1]") == ["web04"]
    assert inv.select("db[-2]") == ["db01"]


def test_group_subscript_range_is_inclusive(inv):
    assert inv.select("web[0:1]") == ["web01", "web02"]
    assert inv.select("web[1:2]") == ["web02", "web03"]


def test_group_subscript_open_ended(inv):
    assert inv.select("web[2:]") == ["web03", "web04"]
    assert inv.select("web[:1]") == ["web01", "web02"]


def test_group_subscript_out_of_range(inv):
    assert inv.select("web[9]") == []


def test_subscript_follows_group_inventory_order(inv):
    # prod lists db01, web02, web01 but inventory order is web01, web02, db01.
    assert inv.select("prod[0]") == ["web01"]
    assert inv.select("prod[-1]") == ["db01"]


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


def test_results_in_inventory_order_without_duplicates(inv):
    out = inv.select("db:web01:prod:web:web01")
    assert out == ["web01", "web02", "web03", "web04", "db01", "db02"]
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


def test_stray_operator_is_an_error(inv):
    with pytest.raises(SelectionError):
        inv.select("web:!")


def test_split_pattern():
    assert split_pattern("web:db") == ["web", "db"]
    assert split_pattern("web, db") == ["web", "db"]
    assert split_pattern("web[0:1]:!db") == ["web[0:1]", "!db"]
    assert split_pattern("a[01:03]:b[1:2]") == ["a[01:03]", "b[1:2]"]


def test_select_on_text_inventory(tmp_path):
    path = tmp_path / "hosts"
    path.write_text(textwrap.dedent("""\
        n1
        n2
        n3
        """))
    inv = Inventory.load([str(path)])
    assert inv.select("n[2:3]") == ["n2", "n3"]
    assert inv.select("ungrouped[0]") == ["n1"]
