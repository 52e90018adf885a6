"""``hostops report``: the log reader and run model (units), the page's escaping and writing,
and the page of REAL runs against the lab sshd rendered in headless Chromium (Debian's
package; tests/system-deps.sh installs it). A missing chromium fails these tests: CI must run
them."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import struct
import subprocess
import zlib
from html import unescape

import click
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostops import report as rep
from hostops.cli import main
from hostops.errors import FileError, UsageError
from hostops.reporthtml import CSP, STYLE, STYLE_HASH, default_output, render, ticks, timeline, write_report

pytestmark = pytest.mark.timeout(240)

T0 = 1_800_000_000.0


def iso(epoch: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat(timespec="milliseconds")


def start(hosts, action="uptime", t=T0, **extra) -> dict:
    return {"time": t, "event": "start", "pid": 1, "action": action, "hosts": hosts, "options": {"forks": 5},
            **extra}


def host(name, status="ok", out="", err="", t=0.0, d=1.0, code=None, error=None, step=None, **extra) -> dict:
    rec = {"time": T0 + t + d, "event": "host", "host": name, "status": status,
           "exit_code": (0 if status == "ok" else 1) if code is None else code, "stdout": out, "stderr": err,
           "error": error, "start": iso(T0 + t), "duration": d, **extra}
    if step is not None:
        rec["step"] = step
    return rec


def end(t=10.0, **summary) -> dict:
    return {"time": T0 + t, "event": "end", "summary": {"elapsed": t, **summary}}


def write_log(path, records, tail: str = "") -> str:
    with open(path, "w") as fh:
        for r in records:
            fh.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
        fh.write(tail)
    return str(path)


# ================================================================== the adapter
def test_adapter_reads_todays_records_and_tolerates_a_newer_schema():
    event, f = rep.adapt_record(host("web1", out="hi\n", t=2.5, d=0.25))
    assert event == "host"
    assert (f["host"], f["status"], f["stdout"], f["duration"]) == ("web1", "ok", "hi\n", 0.25)
    assert f["start"] == pytest.approx(T0 + 2.5, abs=0.001)  # ISO 8601 → epoch seconds
    # a version field, epoch or "Z" times, unknown fields, output as base64, exit_code on the end record
    _, f = rep.adapt_record({"event": "host", "version": 2, "host": "web2", "status": "failed", "start": T0,
                             "time": "2027-01-01T00:00:00Z", "stdout": {"base64": base64.b64encode(b"\xff!").decode()},
                             "brand_new": [1, 2]})
    assert (f["version"], f["start"], f["stdout"]) == (2, T0, "\\xff!")
    assert f["time"] == pytest.approx(1798761600.0)
    _, f = rep.adapt_record({"event": "end", "exit_code": 5, "summary": {"hosts": 2}})
    assert (f["exit_code"], f["summary"]) == (5, {"hosts": 2})
    for bad in ([1, 2], {"no": "event"}, {"event": "party"}, {"event": "host", "host": ""}):
        with pytest.raises(ValueError):
            rep.adapt_record(bad)


# ================================================================== reading
def test_times_and_durations_no_clock_gives_are_dropped_not_a_crash(tmp_path):
    inf, nan = float("inf"), float("nan")
    log = write_log(tmp_path / "odd.jsonl", [
        {"event": "start", "time": inf, "hosts": ["a", "b", "c"]},
        {"event": "host", "host": "a", "status": "ok", "start": 1e300, "duration": inf, "time": nan},
        {"event": "host", "host": "b", "status": "ok", "start": -5, "duration": -1, "time": "9999-99-99"},
        {"event": "host", "host": "c", "status": "ok", "start": "10000-01-01T00:00:00", "duration": nan},
        {"event": "end", "time": 1e19, "summary": {"elapsed": "soon"}}])
    logs = rep.read_logs([log])
    run = logs.runs[0]
    assert (run.started, run.ended) == (None, None)
    assert [(r.start, r.duration, r.time) for r in run.records] == [(None, 0.0, None)] * 3
    assert "Timeline" in render(logs)


def test_bad_lines_are_skipped_counted_and_named(tmp_path):
    log = write_log(tmp_path / "run.jsonl", [
        start(["a", "b"]), "this is not json", host("a"), "[1, 2]", '{"event": "weird"}', host("b"), end(),
    ], tail='{"time": 1, "event": "host", "host": "c", "std')  # the last line, cut short by a crash
    logs = rep.read_logs([log])
    assert [r.host for r in logs.runs[0].records] == ["a", "b"]
    assert logs.skipped_count == 4
    assert [(s.line, s.reason) for s in logs.skipped] == [
        (2, "cut short or not JSON"), (4, "not a JSON object"), (5, "unknown event 'weird'"),
        (8, "cut short or not JSON")]
    page = render(logs)
    assert "4 lines skipped" in page and f"{log}:8" in page


def test_a_file_with_no_record_is_a_usage_error_naming_it(tmp_path):
    empty = write_log(tmp_path / "empty.jsonl", [])
    with pytest.raises(FileError, match="empty.jsonl: no hostops log record found") as exc:
        rep.read_logs([empty])
    assert exc.value.exit_code == 2
    junk = write_log(tmp_path / "notes.txt", ["hello", "world"])
    with pytest.raises(FileError, match=r"notes.txt:1: no hostops log record found \(cut short or not JSON"):
        rep.read_logs([junk])
    with pytest.raises(UsageError, match="cannot read log .*missing.jsonl: No such file"):
        rep.read_logs([str(tmp_path / "missing.jsonl")])
    os.mkfifo(tmp_path / "fifo")  # never opened: it would wait for a writer
    with pytest.raises(UsageError, match="not a regular file"):
        rep.read_logs([str(tmp_path / "fifo")])


def test_several_runs_in_one_file_and_records_without_a_start(tmp_path):
    log = write_log(tmp_path / "many.jsonl", [
        host("orphan"),                                   # the file's head was cut off
        start(["a"], action="uptime"), host("a"), end(exit_code=0),
        start(["a", "b"], action="reboot"), host("a", "failed"),  # killed: no end record, b never reported
    ])
    runs = rep.read_logs([log]).runs
    assert [(r.action, r.line) for r in runs] == [("(no start record)", 1), ("uptime", 2), ("reboot", 5)]
    assert runs[2].summary is None
    assert runs[2].counts() == {"failed": 1, "untouched": 1}
    assert "no end record" in render(rep.read_logs([log]))


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=8)
FIELDS = ["time", "event", "host", "hosts", "status", "exit_code", "stdout", "stderr", "error", "start", "duration",
          "step", "summary", "action", "options", "version"]
RECORD = st.fixed_dictionaries({"event": st.sampled_from(["start", "host", "end"]), "host": st.text(min_size=1, max_size=8)},
                               optional={f: JSON for f in FIELDS if f not in ("event", "host")})
LINE = st.one_of(RECORD.map(json.dumps), RECORD.map(lambda r: json.dumps(r)[:-3]), JSON.map(json.dumps),
                 st.text(max_size=30).map(lambda t: t.replace("\n", " ")))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(LINE, max_size=12))
def test_any_log_is_read_and_rendered_or_refused_never_a_crash(tmp_path, lines):
    """Whatever a log holds (odd types in every field, NaN, huge numbers, cut lines, garbage):
    a page, or one FileError when nothing in it is a record; every line is a record or counted."""
    log = write_log(tmp_path / "fuzz.jsonl", lines)
    try:
        logs = rep.read_logs([log])
    except FileError:
        return
    starts = sum(1 for r in logs.runs if r.action != "(no start record)")
    ends = sum(1 for r in logs.runs if r.summary is not None)
    records = sum(len(r.records) for r in logs.runs)
    assert starts + records + ends + logs.skipped_count == len([x for x in lines if x.encode().strip()])
    page = render(logs)
    assert "<script" not in page and page.endswith("</html>\n")


# ================================================================== the model: order, folding, table
def _run(records, tmp_path, name="run.jsonl"):
    return rep.read_logs([write_log(tmp_path / name, records)]).runs[0]


def test_hosts_are_ordered_failed_first_then_slowest(tmp_path):
    names = ["ok-fast", "ok-slow", "down", "bad", "late"]
    run = _run([start(names), host("ok-fast", d=1), host("ok-slow", d=9), host("down", "unreachable", d=0.1),
                host("bad", "failed", d=0.5), host("late", "timeout", d=30), end()], tmp_path)
    assert [(r.host, r.status) for r in run.ordered_hosts()] == [
        ("bad", "failed"), ("late", "timeout"), ("down", "unreachable"), ("ok-slow", "ok"), ("ok-fast", "ok")]
    assert run.not_ok() == [("failed", "bad"), ("timeout", "late"), ("unreachable", "down")]


def test_identical_outputs_fold_with_compact_host_lists(tmp_path):
    hosts = [f"web{i:02d}" for i in range(1, 9)] + ["db1"]
    records = [host(h, out="same\n") for h in hosts if h not in ("web03", "web07", "db1")]
    records += [host("web03", "failed", out="disk full\n", code=3), host("web07", "failed", out="disk full\n", code=3),
                host("db1", "failed", out="disk full\n", code=4)]
    groups = _run([start(hosts), *records, end()], tmp_path).groups()
    assert [(g.status, g.exit_code, g.folded) for g in groups] == [
        ("failed", 3, "web[03,07]"), ("failed", 4, "db1"), ("ok", 0, "web[01-02,04-06,08]")]
    assert groups[0].stdout.text == "disk full\n" and groups[0].stdout is groups[1].stdout  # stored once


def test_timeline_math(tmp_path):
    run = _run([start(["a", "b", "c"]), host("a", t=0, d=2), host("b", "failed", t=5, d=5),
                host("c", t=1, d=0), end(t=10)], tmp_path)
    tl = timeline(run)
    assert tl.span == pytest.approx(10.0, abs=0.002)
    bars = {row.host: [(round(b.x, 2), round(b.width, 2), b.status) for b in bars] for row, bars in tl.rows}
    assert bars == {"a": [(0.0, 0.2, "ok")], "b": [(0.5, 0.5, "failed")], "c": [(0.1, 0.0, "ok")]}
    assert [row.host for row, _ in tl.rows] == ["b", "a", "c"]  # failed first, then the slowest
    assert [label for _pos, label in tl.ticks] == ["0s", "2s", "4s", "6s", "8s", "10s"]
    assert [label for _, label in ticks(0.7)] == ["0s", "0.1s", "0.2s", "0.3s", "0.4s", "0.5s", "0.6s", "0.7s"]
    assert ticks(600)[-1] == (1.0, "10m")
    small = timeline(run, max_rows=1)
    assert ([row.host for row, _ in small.rows], small.hidden) == (["b"], 2)


def test_runbook_table_and_incomplete_hosts(tmp_path):
    steps = ["check", "restart", "collect logs"]
    run = _run([start(["h1", "h2", "h3"], action="run deploy"),
                host("h1", step="check"), host("h2", step="check"), host("h3", step="check"),
                host("h2", "failed", step="restart"), host("h1", step="restart"),
                host("h2", step="collect logs"),  # when_failed: only the failed host ran it
                end(steps=steps, stopped="1 host(s) failed, more than max_fail 0: h2")], tmp_path)
    assert run.is_runbook and run.steps == steps
    assert run.main_steps() == {"check", "restart"}  # collect logs: only a host that had failed ran it
    cols, rows = run.table()
    assert cols == steps
    assert rows == [("h2", {"check": "ok", "restart": "failed", "collect logs": "ok"}),
                    ("h3", {"check": "ok"}), ("h1", {"check": "ok", "restart": "ok"})]
    assert run.counts() == {"failed": 1, "incomplete": 1, "ok": 1}  # h3 never got to restart
    assert [(g.step, g.status, g.folded) for g in run.groups()] == [  # failures of any step first
        ("restart", "failed", "h2"), ("check", "ok", "h[1-3]"), ("restart", "ok", "h1"), ("collect logs", "ok", "h2")]
    page = render(rep.read_logs([str(tmp_path / "run.jsonl")]))
    assert "Hosts × steps" in page and "failed at step" in page
    assert "<dt>exit code</dt><dd>5 <span class=\"note\">(derived" in page  # today's runbook end record has none


# ================================================================== bounds
def test_output_is_cut_per_host_and_the_page_says_so(tmp_path):
    big = "x" * 5000 + "END"
    logs = rep.read_logs([write_log(tmp_path / "big.jsonl", [start(["a"]), host("a", out=big), end()])],
                         max_output=1024)
    out = logs.runs[0].records[0].stdout
    assert (out.size, len(out.text), out.cut) == (5003, 1024, True)
    page = render(logs)
    assert "the first 1024 of 5003 characters" in page and "END" not in page


def test_output_budget_and_overlong_lines_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(rep, "OUTPUT_BUDGET", 2500)
    monkeypatch.setattr(rep, "MAX_LINE", 4096)
    records = [start(["a", "b", "c", "d"]), host("a", out="1" * 1000), host("b", out="2" * 1000),
               host("c", out="3" * 1000), host("d", out="4" * 10_000), end()]
    logs = rep.read_logs([write_log(tmp_path / "huge.jsonl", records)])
    shown = {r.host: r.stdout.text for r in logs.runs[0].records}
    assert shown == {"a": "1" * 1000, "b": "2" * 1000, "c": None}  # d: its line was over MAX_LINE
    assert logs.budget_hit and logs.skipped_count == 1 and "longer than" in logs.skipped[0].reason
    page = render(logs)
    assert "not shown (the report's output budget is spent" in page and 'id="budget"' in page


# ================================================================== escaping and the page's policy
HOSTILE = ["<script>document.title='P'+'WNED'</script>",
           "</pre></details></section><img src=x onerror=\"document.body.append('MAR'+'KER')\">",
           "</style></title><svg onload=\"document.title='P'+'WNED'\"></svg>",
           "<!-- ]]> &amp; \u2028 \"quoted\" 'single'"]


def test_everything_from_the_log_is_escaped(tmp_path):
    name = "<img src=x onerror=alert(1)>"
    run = [start([name, "h<b>2"], action="<script>alert('cmd')</script>"),
           host(name, "failed", out="\n".join(HOSTILE), err=HOSTILE[2], error="<b>boom</b>", step="<i>st</i>"),
           host("h<b>2", out=HOSTILE[0], step="<i>st</i>"), end(stopped="<script>x</script>")]
    page = render(rep.read_logs([write_log(tmp_path / "evil.jsonl", run)]))
    assert "<script" not in page and "<img" not in page and "<svg onload" not in page
    assert "<b>boom" not in page and "<i>st" not in page and "&lt;i&gt;st&lt;/i&gt;" in page
    assert "&lt;script&gt;document.title=&#x27;P&#x27;+&#x27;WNED&#x27;&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page


def test_the_policy_allows_only_the_pages_own_style():
    assert "default-src 'none'" in CSP and "script-src 'none'" in CSP
    assert STYLE_HASH == "sha256-" + base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
    assert f"<style>{STYLE}</style>" in render(rep.LogSet([], [], [], 0, 1024, False))


# ================================================================== writing the page
def test_the_page_is_written_0600_atomically_and_never_through_a_link(tmp_path):
    tmp_path = tmp_path / "out"
    tmp_path.mkdir()
    target = tmp_path / "r.html"
    write_report(str(target), "<p>one</p>")
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600 and target.read_text() == "<p>one</p>"
    target.chmod(0o644)
    write_report(str(target), "<p>two</p>")  # replaced: a new file, 0600 again
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600 and target.read_text() == "<p>two</p>"
    secret = tmp_path / "elsewhere"
    secret.write_text("keep me")
    link = tmp_path / "link.html"
    link.symlink_to(secret)
    with pytest.raises(UsageError, match="link.html is a symbolic link; refusing"):
        write_report(str(link), "<p>pwned</p>")
    assert secret.read_text() == "keep me" and os.path.islink(link)
    with pytest.raises(UsageError, match="not a regular file"):
        write_report(str(tmp_path), "<p/>")
    assert sorted(os.listdir(tmp_path)) == ["elsewhere", "link.html", "r.html"]  # no temporary left behind


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                 "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def _entry(args) -> None:
    main(list(args))


def test_cli_default_output_stdout_and_errors(tmp_path):
    log = write_log(tmp_path / "run.jsonl", [start(["a"]), host("a", out="hello"), end(), "garbage"])
    runner = CliRunner()
    res = runner.invoke(_entry, ["report", log])
    assert res.exit_code == 0, res.output
    assert default_output([log]) == log + ".html"
    page = open(log + ".html").read()
    assert stat.S_IMODE(os.stat(log + ".html").st_mode) == 0o600 and "hello" in page
    assert f"report of 1 run (1 host) written to {log}.html, 1 line(s) skipped" in res.stderr
    res = runner.invoke(_entry, ["report", log, "-o", "-"])
    assert res.exit_code == 0 and res.stdout.startswith("<!DOCTYPE html>")
    res = runner.invoke(_entry, ["report", "-"], input=open(log).read())
    assert res.exit_code == 0 and "hello" in res.stdout  # from standard input to standard output
    res = runner.invoke(_entry, ["report", str(tmp_path / "nope.jsonl")])
    assert res.exit_code == 2 and "hostops: error: cannot read log" in res.stderr
    res = runner.invoke(_entry, ["report"])
    assert res.exit_code == 2 and "Missing argument" in res.stderr


# ================================================================== in a real browser, real runs
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("chromium not found: install Debian's chromium (tests/system-deps.sh does; CI runs it)")
    return found


def browse(page: str, tmp_path, *extra: str, timeout: float = 120) -> str:
    """Chromium, headless and offline, on ``page``: its stdout (the DOM with --dump-dom). A
    hang is bounded: the browser's process group (ours) is killed by its id."""
    profile = tmp_path / f"chromium-{len(os.listdir(tmp_path))}"
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", *extra, f"file://{page}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"chromium did not finish within {timeout}s on {page}")
    assert proc.returncode == 0, err[-2000:]
    return out


def png_pixels(path: str) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit RGB/RGBA PNG: enough to look at a screenshot."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and colour in (2, 6), (depth, colour)
            bpp = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw, stride, rows, prev = zlib.decompress(idat), width * bpp, [], bytearray(width * bpp)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, bpp, rows


def colour_counts(path: str) -> dict[tuple[int, int, int], int]:
    _width, bpp, rows = png_pixels(path)
    counts: dict[tuple[int, int, int], int] = {}
    for row in rows:
        for i in range(0, len(row), bpp):
            px = (row[i], row[i + 1], row[i + 2])
            counts[px] = counts.get(px, 0) + 1
    return counts


def dom_hosts(dom: str) -> list[tuple[str, str]]:
    """(host, status) of the hosts table's rows, in page order."""
    return [(unescape(h), s) for h, s in re.findall(
        r'<tr data-host="([^"]*)"><td><code>.*?</code></td><td><span class="chip s-(\w+)">', dom)]


def dom_groups(dom: str) -> list[tuple[str, str, str]]:
    """(status, folded hosts, stdout) of the output groups, in page order."""
    found = []
    for status, body in re.findall(r'<details class="group[^"]*" data-status="(\w+)"[^>]*>(.*?)</details>', dom, re.S):
        hosts = unescape(re.search(r'<span class="hosts">(.*?)</span>', body).group(1))
        out = re.search(r'<pre class="stdout">(.*?)</pre>', body, re.S)
        found.append((status, hosts, unescape(out.group(1)) if out else ""))
    return found


FAILING = ('set -- $SSH_CONNECTION; case $3 in 127.0.0.3|127.0.0.6) echo partial; echo "disk full on $3" >&2; '
           'exit 3;; esac; echo "all good"')


def test_real_run_report_in_chromium(hostops, inventory, known_hosts, tmp_path):
    """8 lab hosts over 127.0.0.1-8 (h003 and h006 fail), one on a closed port: the page shows
    every host, failures first, identical outputs folded, the timeline, and renders in colour."""
    from sshlab import free_port

    closed = {"name": "closed", "ansible_host": "127.0.0.1", "ansible_port": free_port()}
    log = tmp_path / "run.jsonl"
    run = hostops("exec", FAILING, "-i", inventory(8, extra_hosts=[closed]), "--known-hosts", known_hosts,
                  "--log", str(log), "--connect-timeout", "30")
    assert run.code == 4, run  # unreachable wins over failed (pssh's order)
    with open(log, "a") as fh:
        fh.write("not a record\n")
    made = hostops("report", str(log))
    assert made.code == 0, made
    page = str(log) + ".html"
    assert stat.S_IMODE(os.stat(page).st_mode) == 0o600

    dom = browse(page, tmp_path, "--dump-dom")
    rows = dom_hosts(dom)
    assert sorted(rows) == sorted([("closed", "unreachable"), ("h003", "failed"), ("h006", "failed")] +
                                  [(f"h00{i}", "ok") for i in (1, 2, 4, 5, 7, 8)])
    assert [s for _h, s in rows[:3]] == ["failed", "failed", "unreachable"]  # failures first
    groups = dom_groups(dom)
    assert groups[-1] == ("ok", "h[001-002,004-005,007-008]", "all good\n")
    assert {(s, h, o) for s, h, o in groups[:2]} == {("failed", "h003", "partial\n"), ("failed", "h006", "partial\n")}
    assert "disk full on 127.0.0.3" in unescape(dom) and "cannot connect to 127.0.0.1" in unescape(dom)
    assert re.search(r"<dt>exit code</dt><dd>4</dd>", dom)
    assert "1 line skipped" in dom and "unreachable (1): closed" in dom and "failed (2): h[003,006]" in dom
    timeline_rows = re.findall(r'<g class="row" data-host="([^"]*)" data-status="(\w+)">', dom)
    assert sorted(timeline_rows) == sorted(rows)

    shot = tmp_path / "report.png"
    browse(page, tmp_path, f"--screenshot={shot}", "--window-size=1280,1400", "--hide-scrollbars")
    colours = colour_counts(str(shot))
    assert len(colours) > 50, "the screenshot is blank"
    assert colours.get((0xc6, 0x28, 0x28), 0) > 200, "no red: the failed hosts are not drawn"
    assert colours.get((0x2e, 0x7d, 0x32), 0) > 1000, "no green: the ok hosts are not drawn"
    assert colours.get((0x6a, 0x1b, 0x9a), 0) > 100, "no purple: the unreachable host is not drawn"


def test_hostile_output_and_host_names_cannot_run_script(hostops, lab, known_hosts, tmp_path):
    """Output and inventory host names carrying script payloads that would change the title or
    add a marker if they ran: in Chromium the title is the report's, no marker, the text literal."""
    names = ["<img src=x onerror=\"document.title='P'+'WNED'\">", "x</script><script>document.title='P'+'WNED'</script>"]
    entries = lab.host_entries(2, addresses=["127.0.0.1"])
    for entry, name in zip(entries, names):
        entry["name"] = name
    inv = lab.write_inventory(str(tmp_path / "evil.yml"), 0, extra_hosts=entries)
    payload = tmp_path / "payload.txt"
    payload.write_text("\n".join(HOSTILE) + "\n")
    log = tmp_path / "evil.jsonl"
    run = hostops("exec", f"cat {payload}; cat {payload} >&2; exit 1", "-i", inv, "--known-hosts", known_hosts,
                  "--log", str(log))
    assert run.code == 5, run
    page = tmp_path / "evil.html"
    assert hostops("report", str(log), "-o", str(page)).code == 0

    dom = browse(str(page), tmp_path, "--dump-dom")
    assert re.search(r"<title>hostops report: cat [^<]*</title>", dom)
    assert "PWNED" not in dom and "MARKER" not in dom
    assert "<script" not in dom and "<img" not in dom and not re.search(r"<svg[^>]*onload", dom)
    assert len(re.findall(r"<svg\b", dom)) == 1  # only the timeline
    text = unescape(dom)
    for line in HOSTILE[:3]:
        assert line in text, line  # shown literally
    assert sorted(unescape(h) for h in re.findall(r'<tr data-host="([^"]*)">', dom)) == sorted(names)

    # Defence in depth, and proof that this test sees script that runs: the same page with a
    # raw script slipped in (as an escaping bug would) stays inert under the page's policy...
    raw = page.read_text().replace("<main>", "<main><script>document.title='P'+'WNED'</script>", 1)
    bypass = tmp_path / "bypass.html"
    bypass.write_text(raw)
    assert "<title>PWNED</title>" not in browse(str(bypass), tmp_path, "--dump-dom")
    # ...and without the policy, it runs: the check above could fail.
    unguarded = tmp_path / "unguarded.html"
    unguarded.write_text(re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", raw))
    assert "<title>PWNED</title>" in browse(str(unguarded), tmp_path, "--dump-dom")


def test_runbook_report_shows_the_host_step_table(hostops, inventory, known_hosts, tmp_path):
    book = tmp_path / "book.yml"
    book.write_text("name: deploy\nmax_fail: 5\nsteps:\n"
                    "  - name: check\n    exec: echo '{{ inventory_hostname }} ready'\n"
                    "  - name: restart\n    exec: test '{{ inventory_hostname }}' != h003\n"
                    "  - name: collect logs\n    exec: echo 'logs of {{ inventory_hostname }}'\n    when_failed: true\n")
    log = tmp_path / "book.jsonl"
    run = hostops("run", str(book), "-i", inventory(4), "--known-hosts", known_hosts, "--log", str(log))
    assert run.code == 5, run
    assert hostops("report", str(log)).code == 0
    dom = browse(str(log) + ".html", tmp_path, "--dump-dom")
    assert re.search(r"<dt>exit code</dt><dd>5\b", dom)
    table = re.search(r'<table class="steps-table">(.*?)</table>', dom, re.S).group(1)
    assert re.findall(r"<th>([^<]*)</th>", table) == ["host", "check", "restart", "collect logs"]
    rows = [(h, re.findall(r'<td class="cell s-(\w+)"', cells))
            for h, cells in re.findall(r"<tr><td><code>([^<]*)</code></td>(.*?)</tr>", table, re.S)]
    assert rows[0] == ("h003", ["ok", "failed", "ok"])  # the failed host first; its when_failed step ran
    assert sorted(rows[1:]) == [(h, ["ok", "ok", "none"]) for h in ("h001", "h002", "h004")]
    groups = dom_groups(dom)
    assert groups[0] == ("failed", "h003", "")  # restart's failure before check's successes
    assert ("ok", "h[001-002,004]", "") in groups  # restart: the same (empty) result, folded
    assert ("ok", "h003", "logs of h003\n") in groups
