"""The progress line (issue 14): its text, when it is shown, colour, and the line on a real
terminal (a pty) during real runs against the lab sshd.

No assertion is about wall-clock time: the unit tests drive a fake clock, and the pty tests
gate the remote commands on files the test creates, so "while no host finishes" lasts until
the test has seen what it waits for (timeouts are hang guards only). Redraws are counted.
"""
from __future__ import annotations

import fcntl
import io
import os
import re
import select
import struct
import subprocess
import sys
import termios
import textwrap
import threading
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import pyte
import pytest

from conftest import ROOT
from hostops import progress as progress_mod
from hostops.output import BlockRenderer, make_renderer, one_line
from hostops.progress import (
    ERASE,
    MIN_GAP,
    Progress,
    color_wanted,
    columns,
    format_line,
    progress_wanted,
    section_label,
)
from hostops.results import HostResult, RunReport

pytestmark = pytest.mark.timeout(240)


class TTY(io.StringIO):
    """A stream that claims to be a terminal."""

    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------ the line's text
def test_the_issue_example():
    running = {"db07": 2.6, "web113": 3.3, **{f"app{i:03d}": 5.0 for i in range(178)}}
    line = format_line(done=312, total=500, running=running, failed=3, elapsed=12.4, now=12.4, width=90)
    assert line == "[312/500 done · 180 running · 3 failed · 12.4s · slowest: db07 9.8s, web113 9.1s]"
    wider = format_line(done=312, total=500, running=running, failed=3, elapsed=12.4, now=12.4, width=120)
    assert wider.endswith("slowest: db07 9.8s, web113 9.1s, app000 7.4s]")


def test_counts_and_the_slowest_first():
    running = {f"web{i:03d}": 100.0 + i for i in range(180)}
    line = format_line(done=312, total=500, running=running, failed=3, elapsed=12.4, now=110.0, width=200)
    assert line.startswith("[312/500 done · 180 running · 3 failed · 12.4s · slowest: ")
    assert line.endswith("slowest: web000 10.0s, web001 9.0s, web002 8.0s]")  # the longest running, at most 3


def test_nothing_running_names_nobody():
    line = format_line(done=5, total=5, running={}, failed=0, elapsed=61.0, now=0, width=80)
    assert line == "[5/5 done · 0 running · 0 failed · 1m01s]"


def test_fits_the_width_never_wraps():
    running = {"web-frontend-0001.dc1": 1.0, "web-frontend-0001.dc2": 2.0, "db07": 3.0}
    full = format_line(done=1, total=10, running=running, failed=0, elapsed=5.0, now=10.0, width=300)
    assert full.count(",") == 2
    for width in range(12, 160):
        line = format_line(done=1, total=10, running=running, failed=0, elapsed=5.0, now=10.0, width=width)
        assert columns(line) <= width - 1, (width, line)  # never into the last column
        assert line.startswith("[") and line.endswith("]")
    medium = format_line(done=1, total=10, running=running, failed=0, elapsed=5.0, now=10.0, width=90)
    assert "slowest: web-frontend-0001.dc1 9.0s" in medium and "db07" not in medium  # whole entries dropped
    narrow = format_line(done=1, total=10, running=running, failed=0, elapsed=5.0, now=10.0, width=30)
    assert narrow.startswith("[1/10 done · 3 running") and narrow.endswith("…]")


def test_wide_characters_count_double():
    running = {"サーバー一号": 1.0}
    line = format_line(done=0, total=1, running=running, failed=0, elapsed=1.0, now=2.0, width=200)
    assert columns(line) == len(line) + 6
    for width in range(20, 80):
        assert columns(format_line(done=0, total=1, running=running, failed=0, elapsed=1.0, now=2.0,
                                   width=width)) <= width - 1


def test_a_long_host_name_is_cut():
    line = format_line(done=0, total=1, running={"x" * 200: 1.0}, failed=0, elapsed=1.0, now=2.0, width=400)
    assert "x" * 23 + "…" in line and "x" * 25 not in line


def test_host_names_are_escaped():
    hostile = "evil\x1b]0;owned\x07\x1b[2J\r\u202e\nfake"
    line = format_line(done=0, total=1, running={hostile: 0.0}, failed=0, elapsed=1.0, now=1.0, width=400,
                       escape=one_line)
    assert "\x1b" not in line and "\r" not in line and "\n" not in line and "\u202e" not in line
    assert "evil\\x1b]0;owned" in line


def test_failed_count_in_red_only_with_colour():
    plain = format_line(done=3, total=5, running={}, failed=2, elapsed=1.0, now=1.0, width=80)
    red = format_line(done=3, total=5, running={}, failed=2, elapsed=1.0, now=1.0, width=80, color=True)
    assert "\x1b" not in plain
    assert red == plain.replace("2 failed", "\x1b[31m2 failed\x1b[0m")
    none_failed = format_line(done=3, total=5, running={}, failed=0, elapsed=1.0, now=1.0, width=80, color=True)
    assert "\x1b" not in none_failed


@pytest.mark.parametrize("title, label", [
    ("== batch 3/10 (40 hosts) ==", "batch 3/10"),
    ("== batch 3/10 · step 2/5: restart (40 hosts) ==", "step 2/5 restart · batch 3/10"),
    ("== batch 1/1 · step 2/5: restart (1 host) ==", "step 2/5 restart"),
    ("== batch 1/1 · step 1/2: odd (name) (3 hosts) ==", "step 1/2 odd (name)"),
    ("== something else ==", "something else"),
])
def test_section_labels(title, label):
    assert section_label(title) == label


# ------------------------------------------------------------------ when, and colour
@pytest.mark.parametrize("tty, env, force, shown", [
    (True, {"TERM": "xterm"}, None, True),
    (False, {"TERM": "xterm"}, None, False),     # a pipe or a file
    (True, {"TERM": "dumb"}, None, False),
    (True, {"TERM": "xterm"}, False, False),     # --no-progress
    (False, {"TERM": "xterm"}, True, True),      # --progress on a pipe: forced on
    (True, {"TERM": "dumb"}, True, True),
])
def test_when_the_line_is_shown(tty, env, force, shown):
    assert progress_wanted(TTY() if tty else io.StringIO(), force, env) is shown


@pytest.mark.parametrize("tty, env, choice, colour", [
    (True, {}, "auto", True),
    (False, {}, "auto", False),
    (True, {"NO_COLOR": "1"}, "auto", False),
    (True, {"NO_COLOR": ""}, "auto", True),          # set but empty: no-color.org says it does not count
    (True, {"TERM": "dumb"}, "auto", False),
    (False, {}, "always", True),                     # | less -R
    (False, {"NO_COLOR": "1"}, "always", True),      # the flag beats the environment
    (True, {}, "never", False),
])
def test_the_colour_decision(tty, env, choice, colour):
    assert color_wanted(TTY() if tty else io.StringIO(), choice, env) is colour


def test_renderers_take_the_colour_choice(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    failed = HostResult("h", "failed", 1)
    for choice, out, expect in (("always", io.StringIO(), True), ("never", TTY(), False), ("auto", TTY(), True)):
        renderer = make_renderer("blocks", out=out, err=io.StringIO(), progress=False, color=choice)
        renderer.result(failed)
        renderer.finish(RunReport([failed], 0.1))
        assert ("\x1b[31mFAILED" in out.getvalue()) is expect, choice
    err = io.StringIO()  # --stream shows a failed host's header on stderr: its colour follows --color too
    renderer = make_renderer("stream", out=io.StringIO(), err=err, progress=False, color="always")
    renderer.result(failed)
    assert "\x1b[31mFAILED" in err.getvalue()


# ------------------------------------------------------------------ the line as a renderer drives it
def _progress(clock: Clock, width: int = 200, ticker: bool = False, total: int = 42) -> tuple:
    err = TTY()
    return Progress(err, total, True, escape=one_line, clock=clock, width=lambda: width, ticker=ticker), err


def _draws(text: str) -> List[str]:
    return re.findall(r"\r\x1b\[K(\[[^\r]*?\])(?=\r|\Z)", text)


def test_a_burst_of_starts_is_shown_whole():
    """The pool reports every host's start within milliseconds; the old line drew the first
    ("1 running") and nothing else until a host finished."""
    clock = Clock()
    p, err = _progress(clock)
    for i in range(42):
        p.started(f"h{i:03d}")
    assert _draws(err.getvalue())[-1].startswith("[0/42 done · 1 running")  # the first start, drawn at once
    assert p.due() > 0  # the others within MIN_GAP: not drawn yet, but due
    clock.now += MIN_GAP
    p.poll()
    assert _draws(err.getvalue())[-1].startswith("[0/42 done · 42 running · 0 failed · 0.1s · slowest: h000 0.1s")
    assert p.draws == 2


def test_redrawn_while_no_host_finishes():
    clock = Clock()
    p, err = _progress(clock)
    p.started("db07")
    drawn = p.draws
    for _ in range(5):
        clock.now += p.interval
        assert p.poll() > 0
    assert p.draws == drawn + 5
    assert _draws(err.getvalue())[-1] == "[0/42 done · 1 running · 0 failed · 2.5s · slowest: db07 2.5s]"


def test_output_is_written_with_the_line_erased_and_the_line_comes_back():
    clock = Clock()
    p, err = _progress(clock, total=2)
    renderer = BlockRenderer(err, err, p)  # stdout and stderr on one terminal
    renderer.started("a")
    renderer.started("b")
    clock.now += 1
    renderer.result(HostResult("a", "failed", 1, b"out of a\n"))
    text = err.getvalue()
    before, _, after = text.partition("a | \x1b[31mFAILED\x1b[0m | rc=1")
    assert before.endswith(ERASE) and _draws(before)[-1].startswith("[0/2 done · 1 running")  # erased first
    assert after.startswith(" | 0.00s\nout of a\n" + ERASE)
    assert _draws(after)[-1].startswith("[1/2 done · 1 running · 1 failed")  # back, with the new counts
    with p.hidden():
        p.draw()  # a redraw while a renderer writes does nothing
        assert not _draws(err.getvalue()[len(text):])
    renderer.finish(RunReport([HostResult("a", "failed", 1), HostResult("b", "ok", 0)], 1.0))
    end = err.getvalue()
    tail = end[end.rindex("]") + 1:]  # after the last draw
    assert tail.startswith(ERASE) and "2 hosts:" in tail
    p.started("late")
    assert err.getvalue() == end  # closed: nothing drawn any more


def test_sections_count_their_own_hosts_and_failures_add_up():
    clock = Clock()
    p, err = _progress(clock, total=4)
    renderer = BlockRenderer(io.StringIO(), err, p)
    renderer.section("== batch 1/2 · step 1/2: check (2 hosts) ==", 2)
    renderer.started("h1")
    renderer.result(HostResult("h1", "failed", 1))
    clock.now += 1
    renderer.section("== batch 2/2 · step 1/2: check (2 hosts) ==", 2)
    assert _draws(err.getvalue())[-1].startswith("[step 1/2 check · batch 2/2 · 0/2 done · 0 running · 1 failed")


def test_not_drawn_when_disabled():
    err = TTY()
    renderer = make_renderer("blocks", out=io.StringIO(), err=err, progress=False)
    renderer.started("h")
    renderer.result(HostResult("h", "ok", 0))
    renderer.finish(RunReport([HostResult("h", "ok", 0)], 0.1))
    assert ERASE not in err.getvalue() and "running" not in err.getvalue()


def test_the_ticker_redraws_and_stops():
    """The real thread, on the real clock: redraws come without events, and close() ends it."""
    err = TTY()
    p = Progress(err, 1, True, width=lambda: 100, interval=0.05)
    p.started("h")
    deadline = time.monotonic() + 60  # a hang guard
    while p.draws < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert p.draws >= 4
    thread = p._thread
    p.close()
    assert thread is not None and not thread.is_alive()
    assert err.getvalue().endswith(ERASE)
    count = p.draws
    p.started("h2")
    assert p.draws == count


def test_ssh_warnings_erase_the_line_only_where_it_can_be(monkeypatch):
    monkeypatch.setenv("TERM", "xterm")
    master, slave = os.openpty()
    try:
        r, w = os.pipe()
        assert progress_mod.worker_erase(slave) == ERASE
        assert progress_mod.worker_erase(w) == ""
        monkeypatch.setenv("TERM", "dumb")
        assert progress_mod.worker_erase(slave) == ""
        for fd in (r, w):
            os.close(fd)
    finally:
        os.close(master)
        os.close(slave)


# ------------------------------------------------------------------ on a real terminal
DRAW = re.compile(r"\r\x1b\[K(\[[^\r\n]*?\d+/\d+ done[^\r\n]*?\])(?=\r|\Z)")


class PtyRun:
    """The CLI with stdout and stderr on a pty of ``cols`` columns (stderr on a pipe with
    ``stderr_pipe``), read as it goes; :meth:`wait_for` waits on what the terminal shows."""

    def __init__(self, args: Sequence[str], home: Path, env: Optional[dict] = None, cols: int = 160,
                 stderr_pipe: bool = False):
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, cols, 0, 0))
        full = dict(os.environ)
        full.pop("SSH_AUTH_SOCK", None)
        full.pop("NO_COLOR", None)
        full.update({"HOME": str(home), "TERM": "xterm", "PYTHONPATH": ROOT + os.pathsep + full.get("PYTHONPATH", "")})
        full.update(env or {})
        full = {k: v for k, v in full.items() if v is not None}
        self.proc = subprocess.Popen([sys.executable, "-m", "hostops", *args], stdin=subprocess.DEVNULL,
                                     stdout=slave, stderr=subprocess.PIPE if stderr_pipe else slave, env=full,
                                     cwd=str(home), start_new_session=True)
        os.close(slave)
        self.master = master
        self.data = b""
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            ready, _w, _x = select.select([self.master], [], [], 0.5)
            if not ready:
                if self.proc.poll() is not None:
                    return
                continue
            try:
                piece = os.read(self.master, 65536)
            except OSError:  # EIO: every holder of the terminal is gone
                return
            if not piece:
                return
            with self.lock:
                self.data += piece

    @property
    def text(self) -> str:
        with self.lock:
            return self.data.decode("utf-8", errors="replace")

    def draws(self) -> List[str]:
        return DRAW.findall(self.text)

    def wait_for(self, what: str, check: Callable[[], bool], guard: float = 120) -> None:
        deadline = time.monotonic() + guard  # a hang guard, not a measure
        while not check():
            if self.proc.poll() is not None and not self.reader.is_alive():
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert check(), f"never saw {what}; the terminal showed:\n{self.text[-4000:]!r}"

    def finish(self, guard: float = 120) -> int:
        try:
            code = self.proc.wait(guard)
            self.reader.join(guard)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            os.close(self.master)
        return code


def _lab(inventory, known_hosts, count: int) -> List[str]:
    return ["-i", inventory(count), "--known-hosts", known_hosts, "-f", "50"]


def _wait_file(path: Path) -> str:
    return f'while [ ! -e {path} ]; do sleep 0.2; done'


def _screen(text: str, cols: int = 160, rows: int = 100) -> List[str]:
    screen = pyte.Screen(cols, rows)
    pyte.Stream(screen).feed(text)
    return [line.rstrip() for line in screen.display]


def test_pty_counts_redraws_and_erases(inventory, known_hosts, isolated_home, tmp_path):
    """30 hosts: all running before any finishes, the line says so and is redrawn while none
    finishes; 4 finish (their blocks whole, the line back with the new counts); then the rest,
    and the final screen has no progress text left."""
    first, rest = tmp_path / "first", tmp_path / "rest"
    marks = tmp_path / "marks"
    marks.mkdir()
    command = (f'touch {marks}/$$; set -- $SSH_CONNECTION; if [ "$3" = 127.0.0.1 ]; then {_wait_file(first)}; '
               f'else {_wait_file(rest)}; fi; echo finished')
    run = PtyRun(["exec", command, *_lab(inventory, known_hosts, 30)], isolated_home)
    try:
        run.wait_for("30 hosts running their command", lambda: len(os.listdir(marks)) == 30)
        seen = len(run.draws())
        run.wait_for("3 redraws after every host was running", lambda: len(run.draws()) >= seen + 3)
        later = run.draws()[seen:]
        assert all(d.startswith("[0/30 done · ") for d in later), later
        assert all(d.startswith("[0/30 done · 30 running · 0 failed · ") for d in later[-2:]), later
        elapsed = [float(re.search(r"· ([\d.]+)s · slowest", d).group(1)) for d in later]
        assert elapsed == sorted(elapsed) and len(set(elapsed)) == len(elapsed)  # redrawn, not repeated
        assert re.search(r"slowest: h\d{3} [\d.]+s, h\d{3} [\d.]+s, h\d{3} [\d.]+s\]$", later[-1])
        assert " | OK" not in run.text
        first.touch()  # h001, h009, h017, h025 (127.0.0.1) finish
        run.wait_for("the line after 4 hosts finished", lambda: any(d.startswith("[4/30 done · 26 running")
                                                                    for d in run.draws()))
        now = [d for d in run.draws() if d.startswith("[4/30 done")][-1]
        assert not re.search(r"h0(01|09|17|25) ", now.split("slowest:")[1])  # finished hosts are not named
        for host in ("h001", "h009", "h017", "h025"):
            assert re.search(rf"(?:^|\n|\x1b\[K){host} \| \x1b\[32mOK\x1b\[0m \| rc=0 \| [\d.]+s\r\nfinished\r\n",
                             run.text), host
        rest.touch()
    finally:
        rest.touch()
        first.touch()
        code = run.finish()
    assert code == 0, run.text[-3000:]
    text = run.text
    last = max(m.end() for m in DRAW.finditer(text))
    assert text[last:].startswith(ERASE)  # erased at the end, before the summary
    screen = _screen(text)
    assert not [line for line in screen if "running" in line or " done · " in line], screen
    assert any(line.startswith("30 hosts: 30 ok") for line in screen), screen
    assert sum(1 for line in screen if line == "finished") == 30


CONTENT = re.compile(r"h\d{3}: (?:line-\d+-abcdefghij|waiting|err-line)|\d+ hosts: .*")
SEGMENT = re.compile(r"(?:(?:\r\x1b\[K(?:\[[^\r\n]*?\])?)*\r\x1b\[K)?(?P<content>[^\r\x1b]*)\r")


def test_pty_stream_lines_are_never_torn(inventory, known_hosts, isolated_home, tmp_path):
    """--stream: the line is on stderr among output lines of both streams; every line the
    terminal shows is whole: a redraw is only ever erased before a line, never inside one."""
    go = tmp_path / "go"
    command = ('i=0; while [ $i -lt 20 ]; do echo "line-$i-abcdefghij"; i=$((i+1)); done; echo err-line >&2; '
               f'while [ ! -e {go} ]; do echo waiting; sleep 0.2; done; '
               'i=20; while [ $i -lt 40 ]; do echo "line-$i-abcdefghij"; i=$((i+1)); done')
    run = PtyRun(["exec", command, "--stream", *_lab(inventory, known_hosts, 12)], isolated_home)
    try:
        run.wait_for("output lines", lambda: "waiting" in run.text)
        seen = len(run.draws())
        run.wait_for("redraws among output lines", lambda: len(run.draws()) >= seen + 3)
        go.touch()
    finally:
        go.touch()
        code = run.finish()
    assert code == 0, run.text[-3000:]
    text = run.text
    *segments, tail = text.split("\n")
    assert tail.replace(ERASE, "") == ""
    lines = 0
    for segment in segments:
        m = SEGMENT.fullmatch(segment)
        assert m and CONTENT.fullmatch(m.group("content")), f"torn line: {segment!r}"
        lines += m.group("content").startswith("h")
    assert lines >= 12 * 41  # every host's 40 lines and its stderr line (and some waiting lines)
    assert sum(1 for s in segments if "\x1b[K[" in s) >= 3  # the line was drawn among them


def test_pty_batches_and_runbook_steps_are_named(inventory, known_hosts, isolated_home, tmp_path):
    gates = {name: tmp_path / name for name in ("b1", "b2", "s1", "s2")}
    command = f'set -- $SSH_CONNECTION; case $3 in 127.0.0.[12]) {_wait_file(gates["b1"])};; ' \
              f'*) {_wait_file(gates["b2"])};; esac'
    run = PtyRun(["exec", command, "--batch", "2", *_lab(inventory, known_hosts, 4)], isolated_home)
    try:
        for gate, label in (("b1", "batch 1/2"), ("b2", "batch 2/2")):
            run.wait_for(label, lambda label=label: any(d.startswith(f"[{label} · 0/2 done · 2 running")
                                                        for d in run.draws()))
            gates[gate].touch()
    finally:
        for gate in gates.values():
            gate.touch()
        assert run.finish() == 0, run.text[-3000:]

    book = tmp_path / "book.yml"
    book.write_text(textwrap.dedent(f"""\
        name: two steps
        steps:
          - name: first
            exec: '{_wait_file(tmp_path / "s1-go")}'
          - name: second
            exec: '{_wait_file(tmp_path / "s2-go")}'
        """))
    run = PtyRun(["run", str(book), *_lab(inventory, known_hosts, 3)], isolated_home)
    try:
        for step, label in (("s1-go", "step 1/2 first"), ("s2-go", "step 2/2 second")):
            run.wait_for(label, lambda label=label: any(d.startswith(f"[{label} · 0/3 done · 3 running")
                                                        for d in run.draws()))
            (tmp_path / step).touch()
    finally:
        (tmp_path / "s1-go").touch()
        (tmp_path / "s2-go").touch()
        assert run.finish() == 0, run.text[-3000:]
    assert not [line for line in _screen(run.text) if " done · " in line]


def _local_inventory(tmp_path: Path, count: int = 3) -> str:
    path = tmp_path / "local.yml"
    path.write_text("all:\n  hosts:\n" + "".join(f"    l{i}: {{ansible_connection: local}}\n" for i in range(count)))
    return str(path)


# A run long enough for ticks of the line, were it shown.
SLOW = "sleep 1.2"


@pytest.mark.parametrize("args, env, shown", [
    ([], {}, True),
    (["--no-progress"], {}, False),
    ([], {"TERM": "dumb"}, False),
    (["--progress"], {"TERM": "dumb"}, True),
])
def test_pty_shown_or_not(args, env, shown, isolated_home, tmp_path):
    run = PtyRun(["exec", SLOW, "-i", _local_inventory(tmp_path), *args], isolated_home, env=env)
    assert run.finish() == 0, run.text
    assert bool(run.draws()) is shown, run.text
    assert (ERASE in run.text) is shown


def _piped(args: Sequence[str], home: Path, env: Optional[dict] = None) -> tuple:
    """The CLI with stdout and stderr on pipes: (code, out, err), bytes decoded as they came
    (no newline translation: a ``\\r`` stays a ``\\r``)."""
    full = dict(os.environ)
    full.pop("SSH_AUTH_SOCK", None)
    full.pop("NO_COLOR", None)
    full.update({"HOME": str(home), "TERM": "xterm", "PYTHONPATH": ROOT + os.pathsep + full.get("PYTHONPATH", "")})
    full.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "hostops", *args], capture_output=True, env=full, cwd=str(home),
                          stdin=subprocess.DEVNULL, timeout=120)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def test_not_on_a_pipe_unless_forced(isolated_home, tmp_path):
    inv = _local_inventory(tmp_path)
    code, out, err = _piped(["exec", SLOW, "-i", inv], isolated_home)
    assert code == 0, err
    assert "\x1b" not in err and "\r" not in err and "running" not in err
    code, out, err = _piped(["exec", SLOW, "-i", inv, "--progress"], isolated_home)
    assert code == 0, err
    draws = DRAW.findall(err)
    assert draws and draws[0].startswith("[0/3 done · ")
    last = max(m.end() for m in DRAW.finditer(err))
    assert err[last:].startswith(ERASE + "3 hosts: 3 ok")  # erased at the end, before the summary
    assert "\x1b" not in out  # stdout, a pipe too: no colour, no line


def test_pty_stderr_on_a_pipe_shows_no_line(isolated_home, tmp_path):
    run = PtyRun(["exec", SLOW, "-i", _local_inventory(tmp_path)], isolated_home, stderr_pipe=True)
    err = run.proc.stderr.read().decode()
    assert run.finish() == 0
    assert "\x1b" not in err and "running" not in err and "3 hosts: 3 ok" in err
    assert "\x1b[32mOK\x1b[0m" in run.text  # stdout is the terminal: coloured


@pytest.mark.parametrize("args, env, colour", [
    ([], {}, True),
    (["--color", "never"], {}, False),
    ([], {"NO_COLOR": "1"}, False),
    (["--color", "always"], {"NO_COLOR": "1"}, True),
    ([], {"TERM": "dumb"}, False),
])
def test_pty_colour_bytes(args, env, colour, isolated_home, tmp_path):
    run = PtyRun(["exec", "exit 3", "-i", _local_inventory(tmp_path, 1), *args], isolated_home, env=env)
    assert run.finish() == 5, run.text
    assert ("l0 | \x1b[31mFAILED\x1b[0m | rc=3" in run.text) is colour, run.text
    if not colour:
        assert not re.search(r"\x1b\[[\d;]*m", run.text)


def test_colour_always_through_a_pipe(isolated_home, tmp_path):
    inv = _local_inventory(tmp_path, 1)
    code, out, err = _piped(["exec", "echo hi", "-i", inv, "--color", "always"], isolated_home, {"NO_COLOR": "1"})
    assert code == 0, err
    assert out.startswith("l0 | \x1b[32mOK\x1b[0m | rc=0")
    code, out, err = _piped(["exec", "echo hi", "-i", inv], isolated_home)
    assert out.startswith("l0 | OK | rc=0") and "\x1b" not in out + err
    code, out, err = _piped(["exec", "echo hi", "-i", inv, "--color", "sometimes"], isolated_home)
    assert code == 2 and "--color" in err


def test_a_warning_inside_a_write_keeps_the_line_off():
    """A write that fails (stdout's reader gone) warns from inside the renderer's write: the
    line must not come back in the middle of it."""
    clock = Clock()
    p, err = _progress(clock)
    p.started("h")
    clock.now += 1
    with p.hidden():
        err.write("a block, first half")
        with p.hidden():
            err.write("\nhostops: warning: ...\n")
        clock.now += 1
        p.poll()
        err.write("second half\n")
        written = err.getvalue()
    assert "first half\nhostops: warning: ...\nsecond half\n" in written
    assert _draws(err.getvalue()[len(written):])  # back after the outer block
    p.clear()  # a bare clear (the gather renderer's) holds it off until show() or a hidden block ends
    clock.now += 1
    p.poll()
    assert err.getvalue().endswith(ERASE)
    with p.hidden():
        pass
    assert _draws(err.getvalue())[-1].startswith("[0/42 done · 1 running")
    assert not err.getvalue().endswith(ERASE)


def test_a_step_name_is_escaped_and_a_label_can_say_failed():
    line = format_line(done=0, total=2, running={}, failed=1, elapsed=1.0, now=1.0, width=200,
                       label="step 1/2 a · 1 failed · \x1b[2Jx\ny", escape=one_line, color=True)
    assert line == ("[step 1/2 a · 1 failed · \\x1b[2Jx\\x0ay · 0/2 done · 0 running · \x1b[31m1 failed\x1b[0m · "
                    "1.0s]")
