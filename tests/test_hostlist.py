"""hostops.hostlist: expanding ``web[01:20]`` ranges and folding names back (``web[01-20]``)."""
from __future__ import annotations


import pytest

from hostops import hostlist
from hostops.errors import InventoryError
from hostops.exitcodes import ExitCode
from hostops.hostlist import compact, expand


# ------------------------------------------------------------------ expand
def test_zero_padded_numeric_range_keeps_width():
    names = expand("web[01:20].example.com")
    assert len(names) == 20
    assert names[0] == "web01.example.com"
    assert names[8] == "web09.example.com"
    assert names[-1] == "web20.example.com"
    assert names == [f"web{i:02d}.example.com" for i in range(1, 21)]


def test_unpadded_numeric_range():
    assert expand("n[8:11]") == ["n8", "n9", "n10", "n11"]


def test_letter_range():
    assert expand("db-[a:c].example.com") == ["db-a.example.com", "db-b.example.com", "db-c.example.com"]


def test_step():
    assert expand("node[1:10:2]") == ["node1", "node3", "node5", "node7", "node9"]


def test_letter_range_with_step():
    assert expand("x[a:e:2]") == ["xa", "xc", "xe"]


def test_several_ranges_multiply_in_order():
    assert expand("rack[1:2]-n[a:b]") == ["rack1-na", "rack1-nb", "rack2-na", "rack2-nb"]


def test_several_ranges_count():
    assert len(expand("r[01:03]s[1:4]")) == 12


def test_missing_begin_defaults_to_zero():
    assert expand("h[:3]") == ["h0", "h1", "h2", "h3"]


def test_single_value_range():
    assert expand("h[7:7]") == ["h7"]


def test_name_without_range_is_returned_as_is():
    assert expand("plain.example.com") == ["plain.example.com"]


@pytest.mark.parametrize("name, words", [
    ("web[01:20", "unclosed"),
    ("web]01", "without '['"),
    ("web01]", "without '['"),
    ("h[5:1]", "backwards"),
    ("h[c:a]", "backwards"),
    ("h[01:100]", "same width"),
    ("h[1:5:0]", "at least 1"),
    ("h[1:5:-1]", "at least 1"),
    ("h[1:5:x]", "not a number"),
    ("h[a1:b2]", "numbers or single letters"),
    ("h[x:5]", "numbers or single letters"),
    ("h[1:]", "no end"),
    ("h[1:2:3:4]", "begin:end"),
    ("h[[1:2]]", "nested"),
])
def test_malformed_ranges_raise_inventory_error(name, words):
    with pytest.raises(InventoryError) as info:
        expand(name)
    assert words in str(info.value)
    assert repr(name) in str(info.value), "the message should quote the offending name"
    assert info.value.exit_code == ExitCode.USAGE


def test_huge_range_is_refused_quickly_without_expanding():
    import tracemalloc

    tracemalloc.start()  # "quickly": nothing is built (bounded memory, not wall-clock time)
    try:
        with pytest.raises(InventoryError) as info:
            expand("h[1:999999999]")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024, peak
    assert "999999999" in str(info.value)
    assert str(hostlist.MAX_EXPANSION) in str(info.value)


def test_product_of_ranges_over_the_limit_is_refused():
    with pytest.raises(InventoryError, match="more than"):
        expand("h[1:1000]x[1:1000]")
    assert hostlist.count("h[1:1000]x[1:1000]") == 1_000_000  # counted, refused before building


def test_custom_limit_is_honoured():
    assert len(expand("h[1:10]", limit=10)) == 10
    with pytest.raises(InventoryError):
        expand("h[1:11]", limit=10)


def test_has_range():
    assert hostlist.has_range("web[01:03]")
    assert not hostlist.has_range("web01")
    assert not hostlist.has_range("web[0]")


# ------------------------------------------------------------------ compact
def test_compact_folds_padded_run_and_sorts():
    names = [f"web{i:02d}" for i in range(1, 21)] + ["db1"]
    assert compact(names) == "db1,web[01-20]"


def test_compact_input_order_does_not_matter():
    names = ["web03", "db1", "web01", "web02"]
    assert compact(names) == compact(sorted(names)) == "db1,web[01-03]"


def test_compact_gaps_become_comma_separated_runs():
    assert compact(["n1", "n2", "n3", "n10"]) == "n[1-3,10]"


def test_compact_numeric_not_lexical_order():
    assert compact(["n10", "n9", "n11"]) == "n[9-11]"


def test_compact_padded_and_unpadded_stay_distinct():
    # n01 and n1 are different hosts: folding them together would lose one.
    out = compact(["n01", "n02", "n1", "n2"])
    assert "n[01-02]" in out
    assert "n[1-2]" in out
    assert len(out.split(",")) == 2


def test_compact_padded_run_crossing_width():
    # n09..n11 all have width 2: one run.
    assert compact(["n09", "n10", "n11"]) == "n[09-11]"


def test_compact_names_without_digits_are_kept_sorted():
    assert compact(["gamma", "alpha", "beta"]) == "alpha,beta,gamma"


def test_compact_mixed_plain_and_numbered():
    assert compact(["localhost", "web2", "web1"]) == "localhost,web[1-2]"


def test_compact_removes_duplicates():
    assert compact(["web1", "web2", "web1", "alpha", "alpha"]) == "alpha,web[1-2]"


def test_compact_single_host_has_no_brackets():
    assert compact(["web01"]) == "web01"
    assert compact(["db1.example.com"]) == "db1.example.com"


def test_compact_keeps_suffix_and_separates_different_suffixes():
    out = compact(["web1.example.com", "web2.example.com", "web3.example.org"])
    assert out == "web[1-2].example.com,web3.example.org"


def test_compact_last_number_varies():
    assert compact(["10.0.0.1", "10.0.0.2", "10.0.0.3"]) == "10.0.0.[1-3]"


def test_compact_covers_every_name():
    names = [f"h{i}" for i in (1, 2, 3, 5, 7, 8)] + ["x"]
    folded = compact(names)
    assert folded == "h[1-3,5,7-8],x"
