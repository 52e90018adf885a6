"""The progress line: one self-erasing status line on stderr while hosts are in flight.

    [312/500 done · 180 running · 3 failed · 12.4s · slowest: db07 9.8s, web113 9.1s]

It is drawn from what it knows (the hosts started and not yet finished, with when each
started), never from a counter a missed redraw could leave stale: the pool reports every
host's start within milliseconds of the next, and a line redrawn only on events showed the
first of them ("1 running") until the first host finished. A small daemon thread redraws it
at least once a second (and within :data:`MIN_GAP` of any change), so elapsed times move
while no host finishes. Every write of the line, and every write a renderer makes while it
is up, happens under one lock with the line erased first (:meth:`Progress.clear` /
:meth:`Progress.show`), so a redraw never lands inside a line of output.

Owns: when the line is shown (:func:`progress_wanted`), the one colour decision for every
renderer and the line (:func:`color_wanted`), the line's text (:func:`format_line`), the
ticker thread, the erase sequence (:data:`ERASE`, also used by workers' warnings).
Must not import: output (it imports this module and hands in its escaping), api, pool,
paramiko: workers import this module for :func:`worker_erase`.
"""
from __future__ import annotations

import os
import re
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import IO

#: Back to the start of the line, erase it.
ERASE = "\r\x1b[K"
#: The line is redrawn at least this often (seconds), whatever happens.
INTERVAL = 0.5
#: ... and never more often than this: a busy --stream run does not spend its time redrawing.
MIN_GAP = 0.1
#: How many of the slowest running hosts are named (fewer when the terminal is narrow).
SLOWEST = 3
#: A host name longer than this (in columns) is cut, so one name cannot push the rest out.
NAME_COLUMNS = 24
COLOR_CHOICES = ("auto", "always", "never")


def _isatty(stream: object) -> bool:
    try:
        return bool(getattr(stream, "isatty", lambda: False)())
    except (OSError, ValueError):
        return False


def _dumb(environ: Mapping[str, str]) -> bool:
    return environ.get("TERM") == "dumb"


def progress_wanted(stream: object, force: bool | None = None, environ: Mapping[str, str] | None = None) -> bool:
    """Is the line shown on ``stream``? ``force`` (``--progress`` / ``--no-progress``) decides
    when given, whatever the stream is; else only on a terminal that is not ``TERM=dumb``."""
    if force is not None:
        return force
    env = os.environ if environ is None else environ
    return _isatty(stream) and not _dumb(env)


def color_wanted(stream: object, choice: str = "auto", environ: Mapping[str, str] | None = None) -> bool:
    """The one colour decision (``--color``) for a renderer's stream and the progress line.

    ``never``: no colour. ``always``: colour, even through a pipe (``| less -R``) and even with
    ``NO_COLOR`` set: a flag given for this run beats the environment, as no-color.org says.
    ``auto``: colour only on a terminal, not with ``TERM=dumb``, and not when ``NO_COLOR`` is
    set to a non-empty value."""
    if choice == "never":
        return False
    if choice == "always":
        return True
    env = os.environ if environ is None else environ
    return not env.get("NO_COLOR") and not _dumb(env) and _isatty(stream)


def worker_erase(fd: int = 2) -> str:
    """What a worker writes before a warning of its own on the shared stderr: the erase
    sequence when the progress line may be up there (a terminal, not TERM=dumb). The parent
    redraws the line on its next tick."""
    try:
        on_tty = os.isatty(fd)
    except OSError:
        return ""
    return ERASE if on_tty and not _dumb(os.environ) else ""


# ------------------------------------------------------------------ the text
def columns(text: str) -> int:
    """Terminal columns ``text`` takes (wide East Asian characters two, combining marks none)."""
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
               for c in text)


def cut(text: str, width: int) -> str:
    """``text`` in at most ``width`` columns, ``…`` marking a cut."""
    if columns(text) <= width:
        return text
    out, used = [], 0
    for c in text:
        w = columns(c)
        if used + w > width - 1:
            break
        out.append(c)
        used += w
    return "".join(out) + "…"


def seconds(value: float) -> str:
    """``9.8s``, ``2m05s``, ``1h02m``."""
    value = max(0.0, value)
    if value < 60:
        return f"{value:.1f}s"
    if value < 3600:
        return f"{int(value // 60)}m{int(value % 60):02d}s"
    return f"{int(value // 3600)}h{int(value % 3600 // 60):02d}m"


def format_line(*, done: int, total: int, running: Mapping[str, float], failed: int, elapsed: float, now: float,
                width: int, label: str = "", escape: Callable[[str], str] = str, color: bool = False) -> str:
    """The line's text in fewer than ``width`` columns (never into the last one, so a terminal
    never wraps it): the counts first, then the slowest hosts still running (``running``:
    host name → when it started, on the clock ``now`` is read from) as many as fit. Host
    names (and a runbook's step names in ``label``) are untrusted: ``escape`` makes each one
    line of printable text first. With ``color``, a non-zero failed count is red."""
    room = max(10, width - 1)
    head = [cut(escape(label), 40)] if label else []
    before_failed = "[" + " · ".join(head + [f"{done}/{total} done", f"{len(running)} running", ""])
    head += [f"{done}/{total} done", f"{len(running)} running", f"{failed} failed", seconds(elapsed)]
    text = "[" + " · ".join(head)
    slow = sorted(running.items(), key=lambda kv: (kv[1], kv[0]))[:SLOWEST]
    shown: list[str] = []
    for name, began in slow:
        entry = f"{cut(escape(name), NAME_COLUMNS)} {seconds(now - began)}"
        if columns(text + " · slowest: " + ", ".join(shown + [entry]) + "]") > room:
            break
        shown.append(entry)
    if shown:
        text += " · slowest: " + ", ".join(shown)
    text += "]"
    if columns(text) > room:
        text = cut(text[:-1], room - 1) + "]"
    plain = f"{failed} failed"
    if color and failed and text.startswith(before_failed + plain):
        at = len(before_failed)
        text = f"{text[:at]}\x1b[31m{plain}\x1b[0m{text[at + len(plain):]}"
    return text


_SECTION = re.compile(r"^== (?P<where>.*) \(\d+ hosts?\) ==$", re.DOTALL)
_WHERE = re.compile(r"^batch (?P<batch>\d+/\d+)(?: · step (?P<step>\d+/\d+): (?P<name>.*))?$", re.DOTALL)


def section_label(title: str) -> str:
    """The line's prefix for a section title (:meth:`hostops.api.Events.section`):
    ``== batch 3/10 · step 2/5: restart (40 hosts) ==`` → ``step 2/5 restart · batch 3/10``
    (no ``batch 1/1``); another title is shown as it is, without its ``==``."""
    m = _SECTION.match(title)
    where = m.group("where") if m else title.strip("= ")
    w = _WHERE.match(where)
    if not w:
        return where
    batch = "" if w.group("batch") == "1/1" else f"batch {w.group('batch')}"
    if w.group("step") is None:
        return batch
    step = f"step {w.group('step')} {w.group('name')}"
    return f"{step} · {batch}" if batch else step


def terminal_width(stream: object) -> int:
    """The stream's terminal width now (it may have been resized), else $COLUMNS, else 80."""
    try:
        width = os.get_terminal_size(stream.fileno()).columns  # type: ignore[attr-defined]
        if width > 0:  # a pty nobody sized says 0
            return width
    except (AttributeError, OSError, ValueError):
        pass
    try:
        return int(os.environ.get("COLUMNS", "")) or 80
    except ValueError:
        return 80


# ------------------------------------------------------------------ the line
class Progress:
    """The progress line on ``stream``, for ``total`` hosts (reset by :meth:`section`).

    Events come from the run (:meth:`started`, :meth:`finished`); a renderer about to write
    calls :meth:`clear` (the line is erased and held off) and :meth:`show` after (it comes
    back at once, or within MIN_GAP). :meth:`close` erases it for good and stops the ticker.
    ``clock`` and ``width`` are injectable for tests, and ``ticker=False`` leaves the redraws
    between events to whoever calls :meth:`poll`; nothing is drawn unless ``enabled``."""

    def __init__(self, stream: IO, total: int, enabled: bool, *, escape: Callable[[str], str] = str,
                 color: bool = False, clock: Callable[[], float] = time.monotonic,
                 width: Callable[[], int] | None = None, interval: float = INTERVAL, ticker: bool = True):
        self.stream = stream
        self.total = total
        self.enabled = enabled
        self.escape = escape
        self.color = color
        self.clock = clock
        self.width = width if width is not None else (lambda: terminal_width(stream))
        self.interval = interval
        self.ticker = ticker
        self.label = ""
        self.done = 0
        self.running: dict[str, float] = {}  # host → when it started
        self.failed: set[str] = set()  # hosts, so a runbook host failing twice counts once
        self.t0 = clock()
        self.draws = 0  # how many times the line was drawn (tests count redraws, not seconds)
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._shown = False     # the line is on the screen now
        self._held = False      # a renderer is writing: no redraw until show()
        self._depth = 0         # hidden() blocks under way (they nest: a warning inside a write)
        self._dirty = False     # something changed since the last draw
        self._closed = False
        self._last = float("-inf")
        self._thread: threading.Thread | None = None

    # -- events
    def started(self, host: str) -> None:
        with self._lock:
            self.running[host] = self.clock()
            self._changed()

    def finished(self, host: str, ok: bool) -> None:
        with self._lock:
            self.running.pop(host, None)
            self.done += 1
            if not ok:
                self.failed.add(host)
            self._changed()

    def section(self, label: str, total: int) -> None:
        """A new batch or step: its hosts are counted from zero under ``label``."""
        with self._lock:
            self.label, self.total, self.done = label, total, 0
            self.running.clear()
            self._changed()

    # -- writes around the line
    def clear(self) -> None:
        """Erase the line and hold it off: the caller writes next, then calls :meth:`show`."""
        with self._lock:
            self._held = True
            self._erase()

    def show(self) -> None:
        """Let the line come back (now, unless it was drawn less than MIN_GAP ago)."""
        with self._lock:
            self._held = False
            self._changed()

    @contextmanager
    def hidden(self) -> Iterator[None]:
        """``with progress.hidden(): write…``: nothing drawn meanwhile, the line back after
        the outermost block (a warning written from inside another write keeps it off)."""
        with self._lock:
            self._depth += 1
            self._erase()
            try:
                yield
            finally:
                self._depth -= 1
                if not self._depth:
                    self.show()

    def close(self) -> None:
        """The end: erase the line for good and stop the ticker (bounded wait)."""
        with self._lock:
            self._closed = True
            self._erase()
            self._wake.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(2.0)

    # -- drawing
    def text(self) -> str:
        """The line as it would be drawn now."""
        with self._lock:
            now = self.clock()
            return format_line(done=self.done, total=self.total, running=self.running, failed=len(self.failed),
                               elapsed=now - self.t0, now=now, width=self.width(), label=self.label,
                               escape=self.escape, color=self.color)

    def _changed(self) -> None:
        pending, self._dirty = self._dirty, True
        if not self.enabled or self._closed:
            return
        if self._thread is None and self.ticker:
            self._thread = threading.Thread(target=self._tick, name="hostops-progress", daemon=True)
            self._thread.start()
        if self.clock() - self._last >= MIN_GAP:
            self.draw()
        elif not pending:  # the ticker draws it when the gap is over (woken once, not per --stream line)
            self._wake.notify_all()

    def draw(self) -> None:
        """Draw the line now (one write: the erase and the text), unless held off or closed."""
        with self._lock:
            if not self.enabled or self._held or self._depth or self._closed:
                return
            self._last = self.clock()
            self._dirty = False
            try:
                self.stream.write(ERASE + self.text())
                self.stream.flush()
            except (OSError, ValueError):
                self.enabled = False  # stderr is gone: the run goes on without the line
                return
            self._shown = True
            self.draws += 1

    def due(self) -> float:
        """Seconds until the next draw is due (<= 0: now): MIN_GAP after the last draw when
        something changed since, else the interval (the elapsed times move on their own)."""
        gap = MIN_GAP if self._dirty else self.interval
        return self._last + gap - self.clock()

    def poll(self) -> float:
        """What the ticker does each round: draw if due; the seconds to wait before the next
        round (bounded by the interval; the interval while a renderer holds the line off)."""
        with self._lock:
            if self._held or self._depth or self._closed:
                return self.interval
            wait = self.due()
            if wait <= 0:
                self.draw()
                wait = self.due()
            return min(max(wait, 0.0), self.interval)

    def _erase(self) -> None:
        if not self._shown:
            return
        self._shown = False
        try:
            self.stream.write(ERASE)
            self.stream.flush()
        except (OSError, ValueError):
            self.enabled = False

    def _tick(self) -> None:
        """The ticker thread: redraw when due; every wait bounded, so close() is seen at once."""
        with self._wake:
            while not self._closed and self.enabled:
                wait = self.poll()
                if wait > 0:
                    self._wake.wait(wait)
