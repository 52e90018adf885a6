"""hostops.output: sanitizing untrusted remote output and the renderers."""
from __future__ import annotations

import base64
import io
import json
import os
import stat

import pytest

from hostops import output
from hostops.output import (
    BlockRenderer, GatherRenderer, JsonRenderer, header, make_renderer, sanitize, write_outdir,
)
from hostops.results import HostResult, RunReport


class TTY(io.StringIO):
    """A stream that claims to be a terminal."""

    def isatty(self) -> bool:
        return True


def streams():
    return io.StringIO(), io.StringIO()


def run(renderer, results, elapsed=0.0):
    for r in results:
        renderer.started(r.host)
        renderer.result(r)
    renderer.finish(RunReport(list(results), elapsed))


# ------------------------------------------------------------------ sanitize
def test_csi_color_sequence_is_escaped():
    out = sanitize(b"\x1b[31mred\x1b[0m")
    assert "\x1b" not in out
    assert out == "\\x1b[31mred\\x1b[0m"


def test_cursor_movement_and_screen_clear_escaped():
    out = sanitize(b"\x1b[2J\x1b[H")
    assert "\x1b" not in out
    assert out.count("\\x1b") == 2


def test_osc52_clipboard_write_is_escaped():
    out = sanitize(b"\x1b]52;c;cm0gLXJmIH4=\x07")
    assert "\x1b" not in out and "\x07" not in out
    assert out == "\\x1b]52;c;cm0gLXJmIH4=\\x07"


def test_osc8_hyperlink_is_escaped():
    out = sanitize(b"\x1b]8;;https://evil.example\x1b\\click\x1b]8;;\x1b\\")
    assert "\x1b" not in out
    assert "https://evil.example" in out and "click" in out


def test_c1_csi_is_escaped_as_utf8_character():
    out = sanitize("\u009b2J".encode("utf-8"))
    assert "\x9b" not in out
    assert out == "\\x9b2J"


def test_c1_csi_raw_byte_is_escaped():
    out = sanitize(b"\x9b2J")
    assert "\x9b" not in out
    assert out.startswith("\\x9b")


def test_other_controls_escaped():
    out = sanitize(b"\x00\x07\x08\x0b\x0c\x7f")
    assert out == "\\x00\\x07\\x08\\x0b\\x0c\\x7f"


def test_bare_carriage_return_is_escaped():
    # A bare \r would let a host overwrite what was printed on the line (e.g. fake a header).
    out = sanitize(b"rm -rf done\rall good")
    assert "\r" not in out
    assert out == "rm -rf done\\x0dall good"


def test_crlf_becomes_lf():
    assert sanitize(b"one\r\ntwo\r\n") == "one\ntwo\n"


@pytest.mark.parametrize("char", ["\u202e", "\u2066", "\u2067", "\u2068", "\u2069", "\u202a", "\u200f", "\u2028"])
def test_bidi_and_invisible_controls_are_escaped(char):
    out = sanitize(f"a{char}b".encode("utf-8"))
    assert char not in out
    assert out == f"a\\u{ord(char):04x}b"


def test_newline_and_tab_are_kept():
    assert sanitize(b"a\tb\nc\n") == "a\tb\nc\n"


def test_normal_utf8_is_kept():
    text = "héllo wörld – 日本語 ✓ emoji 🎉"
    assert sanitize(text.encode("utf-8")) == text


def test_undecodable_bytes_are_escaped_visibly():
    out = sanitize(b"ok \xff\xfe end")
    assert out == "ok \\xff\\xfe end"
    assert "\ufffd" not in out


# ------------------------------------------------------------------ header
def test_header_format():
    r = HostResult("web01", "ok", 0, duration=0.414)
    assert header(r) == "web01 | OK | rc=0 | 0.41s"


def test_header_failed_and_unreachable():
    assert header(HostResult("db1", "failed", 3, duration=1.0)) == "db1 | FAILED | rc=3 | 1.00s"
    assert header(HostResult("db2", "unreachable", None, duration=2.5)) == "db2 | UNREACHABLE | 2.50s"


def test_header_host_name_is_sanitized():
    r = HostResult("evil\x1b[2J", "ok", 0)
    assert "\x1b" not in header(r)


def test_header_with_color_wraps_status_only():
    h = header(HostResult("web01", "ok", 0, duration=0.0), color=True)
    assert h.startswith("web01 | \x1b[")
    assert "OK\x1b[0m" in h


# ------------------------------------------------------------------ renderers
def test_block_renderer_shows_header_and_sanitized_body():
    out, err = streams()
    run(BlockRenderer(out, err), [HostResult("web01", "ok", 0, b"hello\x1b[31m\n", b"warn\n", duration=0.5)])
    assert out.getvalue() == "web01 | OK | rc=0 | 0.50s\nhello\\x1b[31m\n[stderr]\nwarn\n"


def test_block_renderer_shows_error():
    out, err = streams()
    run(BlockRenderer(out, err), [HostResult("db1", "unreachable", None, error="connection refused")])
    assert "db1 | UNREACHABLE" in out.getvalue()
    assert "error: connection refused" in out.getvalue()


def test_quiet_block_renderer_shows_only_failed_hosts():
    out, err = streams()
    results = [HostResult("ok1", "ok", 0, b"fine\n"), HostResult("bad1", "failed", 2, b"nope\n"),
               HostResult("ok2", "ok", 0, b"fine\n"), HostResult("gone", "unreachable", error="refused")]
    run(make_renderer("quiet", out=out, err=err, progress=False), results)
    text = out.getvalue()
    assert "ok1" not in text and "ok2" not in text and "fine" not in text
    assert "bad1 | FAILED | rc=2" in text
    assert "nope" in text
    assert "gone | UNREACHABLE" in text


def test_gather_groups_identical_outputs_under_compact_list():
    out, err = streams()
    results = [HostResult(f"web{i:02d}", "ok", 0, b"same\n") for i in (3, 1, 2)]
    results += [HostResult("db1", "failed", 1, b"", b"boom\n")]
    run(GatherRenderer(out, err), results)
    text = out.getvalue()
    assert "web[01-03] (3) | OK | rc=0" in text
    assert text.count("same") == 1
    assert "db1 (1) | FAILED | rc=1" in text
    assert text.count("boom") == 1
    # Groups in host-name order (dshbak -c, clush -b), whatever their status.
    assert text.index("db1 (1)") < text.index("web[01-03]")


def test_gather_groups_in_natural_host_order():
    """web2 before web10 (numbers compared as numbers), within a group and between groups."""
    out, err = streams()
    outputs = {"web10": b"A\n", "web2": b"B\n", "web9": b"A\n", "app1": b"C\n", "web1": b"B\n"}
    run(GatherRenderer(out, err), [HostResult(h, "ok", 0, o) for h, o in outputs.items()])
    headers = [line for line in out.getvalue().splitlines() if " | OK" in line]
    assert headers == ["app1 (1) | OK | rc=0", "web[1-2] (2) | OK | rc=0", "web[9-10] (2) | OK | rc=0"]
    assert sorted(["web10", "web2", "web1", "w"], key=output.natural_key) == ["w", "web1", "web2", "web10"]


def test_gather_separates_different_outputs():
    out, err = streams()
    results = [HostResult("h1", "ok", 0, b"A\n"), HostResult("h2", "ok", 0, b"B\n"), HostResult("h3", "ok", 0, b"A\n")]
    run(GatherRenderer(out, err), results)
    text = out.getvalue()
    assert "h[1,3] (2) | OK" in text
    assert "h2 (1) | OK" in text


def test_gather_separates_same_output_different_exit_codes():
    out, err = streams()
    results = [HostResult("h1", "failed", 1, b"x\n"), HostResult("h2", "failed", 2, b"x\n")]
    run(GatherRenderer(out, err), results)
    text = out.getvalue()
    assert "h1 (1) | FAILED | rc=1" in text
    assert "h2 (1) | FAILED | rc=2" in text


def test_gather_prints_nothing_until_finish():
    out, err = streams()
    g = GatherRenderer(out, err)
    g.result(HostResult("h1", "ok", 0, b"x\n"))
    assert out.getvalue() == ""


def test_json_renderer_one_valid_line_per_host():
    out, err = streams()
    results = [HostResult("web01", "ok", 0, b"hi\n", b"", None, 1700000000.0, 0.4141),
               HostResult("db1", "failed", 1, b"\xff\x1b", b"err\n", None, 0.0, 1.0),
               HostResult("gone", "unreachable", None, error="refused")]
    run(JsonRenderer(out, err), results)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    objs = [json.loads(line) for line in lines]
    fields = {"schema", "time", "event", "host", "status", "exit_code", "stdout", "stderr", "error", "start",
              "duration"}
    assert set(objs[0]) == set(objs[2]) == fields
    assert set(objs[1]) == fields | {"stdout_b64"}  # not UTF-8: the exact bytes beside the text
    assert all(o["schema"] == "hostops/1" and o["event"] == "host" for o in objs)
    assert objs[0]["host"] == "web01" and objs[0]["status"] == "ok" and objs[0]["exit_code"] == 0
    assert objs[0]["stdout"] == "hi\n"
    assert objs[0]["duration"] == 0.414
    assert objs[0]["start"] == "2023-11-14T22:13:20.000+00:00"
    assert objs[1]["stdout"] == "\ufffd\x1b" and base64.b64decode(objs[1]["stdout_b64"]) == b"\xff\x1b"
    assert objs[1]["stderr"] == "err\n"
    assert objs[2]["exit_code"] is None and objs[2]["error"] == "refused" and objs[2]["start"] is None
    # The summary goes to stderr, never into the JSON stream.
    assert "3 hosts" in err.getvalue()


def test_json_renderer_never_emits_raw_escape_or_color():
    out, err = TTY(), io.StringIO()
    run(JsonRenderer(out, err), [HostResult("h", "ok", 0, b"\x1b[31m")])
    assert "\x1b" not in out.getvalue()
    assert json.loads(out.getvalue())["stdout"] == "\x1b[31m"


def test_finish_prints_summary_line_on_err():
    out, err = streams()
    results = [HostResult("a", "ok", 0), HostResult("b", "ok", 0), HostResult("c", "failed", 1)]
    run(BlockRenderer(out, err), results)
    assert err.getvalue() == "failed (1): c\n3 hosts: 2 ok, 1 failed, 0 unreachable, 0 timeout in 0.0s\n"
    assert "hosts:" not in out.getvalue()


def test_finish_summary_counts_every_status():
    out, err = streams()
    results = [HostResult("a", "ok", 0), HostResult("b", "timeout"), HostResult("c", "unreachable")]
    run(BlockRenderer(out, err), results, elapsed=12.34)
    assert err.getvalue().splitlines() == ["unreachable (1): c", "timeout (1): b",
                                           "3 hosts: 1 ok, 0 failed, 1 unreachable, 1 timeout in 12.3s"]


def test_finish_single_host_is_singular():
    out, err = streams()
    run(BlockRenderer(out, err), [HostResult("a", "ok", 0)])
    assert err.getvalue().startswith("1 host: 1 ok")


def test_finish_interrupted_lists_unfinished_hosts():
    out, err = streams()
    r = BlockRenderer(out, err)
    r.finish(RunReport([HostResult("a", "ok", 0)], 1.0, interrupted=True, not_finished=["web01", "web02"]))
    text = err.getvalue()
    assert "not started (2): web[01-02]" in text
    assert "3 hosts: 1 ok" in text
    assert "(interrupted)" in text


# ------------------------------------------------------------------ color
def test_color_on_a_tty():
    out, err = TTY(), io.StringIO()
    run(BlockRenderer(out, err), [HostResult("h", "ok", 0)])
    assert "\x1b[32m" in out.getvalue()


def test_no_color_env_disables_color(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    out, err = TTY(), io.StringIO()
    run(BlockRenderer(out, err), [HostResult("h", "ok", 0), HostResult("g", "failed", 1)])
    assert "\x1b" not in out.getvalue()
    assert "h | OK | rc=0" in out.getvalue()


def test_no_color_when_not_a_tty():
    out, err = streams()
    run(BlockRenderer(out, err), [HostResult("h", "failed", 1)])
    assert "\x1b" not in out.getvalue()


def test_use_color():
    assert output.use_color(TTY())
    assert not output.use_color(io.StringIO())


def test_gather_respects_no_color(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    out, err = TTY(), io.StringIO()
    run(GatherRenderer(out, err), [HostResult("h", "ok", 0, b"x\n")])
    assert "\x1b" not in out.getvalue()


# ------------------------------------------------------------------ outdir
def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_write_outdir_creates_private_files(tmp_path):
    write_outdir(str(tmp_path), HostResult("web01", "ok", 0, b"secret out", b"secret err"))
    out, err = tmp_path / "web01.out", tmp_path / "web01.err"
    assert out.read_bytes() == b"secret out"
    assert err.read_bytes() == b"secret err"
    assert _mode(out) == 0o600
    assert _mode(err) == 0o600


def test_write_outdir_tightens_existing_world_readable_file(tmp_path):
    old = tmp_path / "web01.out"
    old.write_bytes(b"an older, longer run's output")
    old.chmod(0o644)
    write_outdir(str(tmp_path), HostResult("web01", "ok", 0, b"new", b""))
    assert old.read_bytes() == b"new"
    assert _mode(old) == 0o600


def test_write_outdir_cannot_escape_the_directory(tmp_path):
    box = tmp_path / "box"
    outdir = box / "a" / "out"
    outdir.mkdir(parents=True)
    write_outdir(str(outdir), HostResult("../../etc/evil", "ok", 0, b"x"))
    assert sorted(os.listdir(box)) == ["a"]
    assert sorted(os.listdir(box / "a")) == ["out"]
    assert len(os.listdir(outdir)) == 2


def test_write_outdir_does_not_follow_symlinks(tmp_path):
    target = tmp_path / "victim"
    target.write_bytes(b"keep me")
    outdir = tmp_path / "out"
    outdir.mkdir()
    os.symlink(target, outdir / "h1.out")
    with pytest.raises(OSError):
        write_outdir(str(outdir), HostResult("h1", "ok", 0, b"overwrite"))
    assert target.read_bytes() == b"keep me"


def test_renderer_with_outdir_writes_files(tmp_path):
    outdir = tmp_path / "results"
    out, err = streams()
    run(BlockRenderer(out, err, outdir=str(outdir)), [HostResult("h1", "ok", 0, b"one\n")])
    assert (outdir / "h1.out").read_bytes() == b"one\n"
    assert _mode(outdir) == 0o700


# ------------------------------------------------------------------ the renderer is the run's events handler
def test_renderers_implement_the_events_protocol():
    from hostops.api import Events

    wanted = [name for name in dir(Events) if not name.startswith("_")]
    assert set(wanted) == {"started", "output", "result", "section", "warning", "finish"}
    for mode in ("blocks", "quiet", "gather", "stream", "json"):
        renderer = make_renderer(mode, out=io.StringIO(), err=io.StringIO(), progress=False)
        assert all(callable(getattr(renderer, name)) for name in wanted), mode


def test_warning_is_one_escaped_line_on_err():
    out, err = streams()
    BlockRenderer(out, err).warning("host \x1b[2Jbad\nname")
    assert err.getvalue() == "hostops: warning: host \\x1b[2Jbad\\x0aname\n" and out.getvalue() == ""


def test_finish_of_a_runbook_prints_the_table_then_the_host_line():
    out, err = streams()
    report = RunReport(hosts=["a"], steps=["s1", "s2"], main_steps=["s1", "s2"], completed=True,
                       outcome={"a": {"s1": "ok", "s2": "ok"}}, elapsed=1.0)
    BlockRenderer(out, err).finish(report)
    assert out.getvalue().splitlines()[1].split() == ["a", "ok", "ok"]
    assert err.getvalue() == "1 host: 1 ok, 0 failed in 1.0s\n"
    out, err = streams()
    JsonRenderer(out, err).finish(report)
    assert out.getvalue() == ""  # JSON mode: nothing but JSON lines on stdout


def test_one_palette_for_statuses_and_key_states():
    assert output.paint("OK", "ok", True) == "\x1b[32mOK\x1b[0m"
    assert output.paint("HOST KEY CHANGED", "changed", True) == "\x1b[1;31mHOST KEY CHANGED\x1b[0m"
    assert output.paint("x", "ok", False) == "x"
