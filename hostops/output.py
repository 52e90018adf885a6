"""Rendering results for people (blocks, gathered, streamed, quiet) and machines (JSON).

Remote output is untrusted: in the human formats every control character except
newline and tab is shown escaped (``\\x1b``, ``\\u202e``), so a host cannot move the
cursor, retitle the terminal, write to the clipboard or fake another host's header.

Owns: escaping, the one colour palette (:data:`PALETTE`, :func:`paint`), the renderers
(each implements :class:`hostops.api.Events`: the one handler a run reports to), ``-o``
files, and the inventory listing and graph.
Must not import: the API, the pool, the CLI (they import this module), paramiko.
"""
from __future__ import annotations

import errno
import json
import os
import re
import stat
import sys
import time
from collections.abc import Iterable
from typing import IO, Any

from hostops.hostlist import compact
from hostops.results import (
    FAILED,
    INTERRUPTED,
    OK,
    TIMEOUT,
    UNCHANGED,
    UNREACHABLE,
    HostResult,
    RunReport,
    decode,
)
from hostops.stdstreams import (  # noqa: F401  (re-exported: their old home)
    GuardedRaw,
    _or_null,
    guard_std_streams,
    reader_gone,
    stream_error,
    when_broken,
)

# C0 controls but \t and \n, DEL, C1 controls, bidi marks/overrides/isolates, zero-width marks, line/para separators.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")


def sanitize(data: bytes) -> str:
    """Text safe to print on a terminal: controls escaped, CRLF kept as a newline."""
    text = decode(data).replace("\r\n", "\n")
    return _UNSAFE.sub(_escape, text)


# "host | OK …" (blocks) and "hosts (N) | OK …" (--gather)
_HEADER_LIKE = re.compile(r"^(\S+(?: \(\d+\))? \| (?:OK|UNCHANGED|FAILED|UNREACHABLE|TIMEOUT|INTERRUPTED)\b)",
                          re.MULTILINE)


def unforgeable(text: str) -> str:
    """Output lines that look like a host header get a leading backslash: a host cannot make
    its output pass for another host's result."""
    return _HEADER_LIKE.sub(r"\\\1", text)


def one_line(text: str) -> str:
    """A host name, host list, warning or error as one line that cannot pass for anything
    else: every character that is not printable (controls, newline, tab, CR, ESC, no-break
    and other look-alike spaces, line separators, zero-width and bidi marks) shown escaped
    the way remote output is. Only the plain space is kept."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape_char(c) for c in text)


def raw_text(data: bytes) -> str:
    """--raw: the bytes as they came (written back out unchanged through surrogateescape)."""
    return data.decode("utf-8", errors="surrogateescape")


def _escape(m: re.Match[str]) -> str:
    return _escape_char(m.group(0))


def _escape_char(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def use_color(stream: IO) -> bool:
    # no-color.org: NO_COLOR set to a non-empty value turns colour off
    return not os.environ.get("NO_COLOR") and hasattr(stream, "isatty") and stream.isatty()


#: The one colour palette: host statuses, and host key states (hostops keys).
PALETTE: dict[str, str] = {
    OK: "32", UNCHANGED: "36", FAILED: "31", UNREACHABLE: "35", TIMEOUT: "33", INTERRUPTED: "33",
    "known": "32", "new": "36", "unverifiable": "35", "revoked": "1;31", "changed": "1;31", "error": "35",
}


def paint(text: str, name: str, color: bool) -> str:
    """``text`` in the palette's colour for ``name`` (a status or key state), when ``color``."""
    return f"\x1b[{PALETTE.get(name, '0')}m{text}\x1b[0m" if color else text




def header(result: HostResult, color: bool = False, host: str | None = None) -> str:
    """``host | OK | rc=0 | 0.41s``."""
    parts = [one_line(host or result.host), paint(result.status.upper(), result.status, color)]
    if result.exit_code is not None:
        parts.append(f"rc={result.exit_code}")
    parts.append(f"{result.duration:.2f}s")
    return " | ".join(parts)


def _body(result: HostResult, raw: bool = False) -> str:
    show = raw_text if raw else (lambda data: unforgeable(sanitize(data)))
    lines: list[str] = []
    if result.stdout:
        lines.append(show(result.stdout).rstrip("\n"))
    if result.stderr:
        lines.append("[stderr]")
        lines.append(show(result.stderr).rstrip("\n"))
    if result.error:
        lines.append(f"error: {one_line(result.error)}")
    return "\n".join(lines)


class Progress:
    """One self-erasing status line on stderr while hosts are in flight (TTY only)."""

    def __init__(self, stream: IO, total: int, enabled: bool):
        self.stream = stream
        self.total = total
        self.enabled = enabled and hasattr(stream, "isatty") and stream.isatty()
        self.running = 0
        self.done = 0
        self._shown = False
        self._last = 0.0

    def clear(self) -> None:
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False

    def update(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        self.stream.write(f"\r\x1b[K[{self.done}/{self.total} done, {self.running} running]")
        self.stream.flush()
        self._shown = True


class Renderer:
    """Base renderer, an :class:`hostops.api.Events` handler: started/output/result as events
    arrive, section for a new batch or step, warning, then finish with the run's report."""

    def __init__(self, out: IO | None = None, err: IO | None = None, progress: Progress | None = None,
                 outdir: str | None = None, raw: bool = False):
        # Resolved now, not at import: the CLI puts guarded streams in place first, and a
        # closed descriptor (sys.stdout None) must not crash a run.
        self.out = _or_null(out if out is not None else sys.stdout)
        self.err = _or_null(err if err is not None else sys.stderr)
        self.raw = raw
        self.progress = progress or Progress(self.err, 0, False)
        self.outdir = outdir
        self.outdir_failed: list[str] = []  # hosts whose -o files could not be written
        self.color = use_color(self.out)
        if outdir:
            from hostops.secrets import private_makedirs

            private_makedirs(outdir)  # 0700 whatever the umask: output may hold secrets

    def started(self, host: str) -> None:  # noqa: ARG002  (the Events protocol)
        self.progress.running += 1
        self.progress.update()

    def output(self, host: str, stream: str, data: bytes) -> None:
        pass

    def result(self, result: HostResult) -> None:
        self.progress.running = max(0, self.progress.running - 1)
        self.progress.done += 1
        if self.outdir:
            try:
                write_outdir(self.outdir, result)
            except OSError as exc:  # this host is marked; the others go on
                self.outdir_failed.append(result.host)
                note = f"could not write -o file: {exc.strerror or exc}"
                result.error = (result.error + "; " if result.error else "") + note
        self.progress.clear()
        self.show(result)
        self.progress.update(force=True)

    def show(self, result: HostResult) -> None:
        raise NotImplementedError

    def section(self, title: str, total: int) -> None:  # noqa: ARG002  (the Events protocol)
        """A new step or batch begins (runbooks, --batch): a title line, progress reset."""
        self.progress.clear()
        self.progress.total, self.progress.done, self.progress.running = total, 0, 0
        self.out.write(f"{title}\n")
        self.out.flush()

    def warning(self, message: str) -> None:
        """One line on stderr, host names and values in it escaped."""
        self.progress.clear()
        self.err.write(f"hostops: warning: {one_line(message)}\n")
        self.err.flush()

    def finish(self, summary: RunReport) -> None:
        """The end: a runbook's table, what was interrupted or never started, then the
        summary line (stderr)."""
        self.progress.clear()
        epilogue = self.epilogue(summary)
        if epilogue:
            self.out.write(epilogue.rstrip("\n") + "\n")
        self.out.flush()
        stopped = [r.host for r in summary.results if r.status == INTERRUPTED]
        if stopped:
            self.err.write(f"interrupted while running ({len(stopped)}): {one_line(compact(stopped))}\n")
        if summary.interrupted and summary.not_finished:
            self.err.write(f"interrupted; not started ({len(summary.not_finished)}): "
                           f"{one_line(compact(summary.not_finished))}\n")
        unlogged = list(dict.fromkeys(r.host for r in summary.results if r.error and "could not write log" in r.error))
        if unlogged:
            self.err.write(f"could not write log ({len(unlogged)}): {sanitize(compact(unlogged).encode())}\n")
        if self.outdir_failed:
            failed = list(dict.fromkeys(self.outdir_failed))  # a runbook reports a host once per step
            self.err.write(f"could not write -o files ({len(failed)}): {sanitize(compact(failed).encode())}\n")
        self.err.write(summary.line() + "\n")
        self.err.flush()

    def epilogue(self, report: RunReport) -> str:  # noqa: ARG002  (overridden by renderers that use it)
        """What follows the hosts on stdout: a runbook's host × step table."""
        return report.table(one_line) if report.per_host else ""


class BlockRenderer(Renderer):
    """Default: one block per host as it finishes. ``quiet`` shows only failed hosts."""

    def __init__(self, *a: Any, quiet: bool = False, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.quiet = quiet

    def show(self, result: HostResult) -> None:
        if self.quiet and result.ok:
            return
        body = _body(result, self.raw)
        self.out.write(header(result, self.color) + "\n" + (body + "\n" if body else ""))
        self.out.flush()


class GatherRenderer(Renderer):
    """-b/--gather: hosts with identical results printed once, under a compact host list."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.groups: dict[tuple, list[HostResult]] = {}

    def show(self, result: HostResult) -> None:
        key = (result.status, result.exit_code, result.stdout, result.stderr, result.error)
        self.groups.setdefault(key, []).append(result)

    def section(self, title: str, total: int) -> None:  # noqa: ARG002  (the Events protocol)
        self._flush_groups()
        super().section(title, total)

    def finish(self, summary: RunReport) -> None:
        self._flush_groups()
        super().finish(summary)

    def _flush_groups(self) -> None:
        self.progress.clear()
        order = {OK: 0, UNCHANGED: 1, FAILED: 2, TIMEOUT: 3, UNREACHABLE: 4, INTERRUPTED: 5}
        for _key, results in sorted(self.groups.items(), key=lambda kv: (order.get(kv[0][0], 9), -len(kv[1]))):
            first = results[0]
            names = compact(r.host for r in results)
            hosts = f"{names} ({len(results)})"
            status = paint(first.status.upper(), first.status, self.color)
            rc = f" | rc={first.exit_code}" if first.exit_code is not None else ""
            rule = "-" * min(72, max(15, len(hosts)))
            self.out.write(f"{rule}\n{one_line(hosts)} | {status}{rc}\n{rule}\n")
            body = _body(first, self.raw)
            if body:
                self.out.write(body + "\n")
        self.groups = {}


class StreamRenderer(Renderer):
    """--stream: each line as it arrives, ``host: line`` (stderr lines on stderr), like pdsh."""

    def output(self, host: str, stream: str, data: bytes) -> None:
        self.progress.clear()
        target = self.out if stream == "stdout" else self.err
        text = raw_text(data) if self.raw else sanitize(data)
        target.write(f"{one_line(host)}: {text}" + ("" if text.endswith("\n") else "\n"))
        target.flush()

    def show(self, result: HostResult) -> None:
        if not result.ok:
            self.err.write(header(result, use_color(self.err)) + (
                f" | {one_line(result.error)}" if result.error else "") + "\n")
            self.err.flush()


class JsonRenderer(Renderer):
    """--json: one JSON object per host per line on stdout, nothing else there."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.color = False

    def show(self, result: HostResult) -> None:
        self.out.write(json.dumps(result.to_json(), ensure_ascii=True) + "\n")
        self.out.flush()

    def section(self, title: str, total: int) -> None:  # noqa: ARG002  (the Events protocol)
        self.progress.total, self.progress.done, self.progress.running = total, 0, 0  # stdout stays JSON

    def epilogue(self, report: RunReport) -> str:  # noqa: ARG002  (overridden by renderers that use it)
        return ""  # JSON mode: nothing but JSON lines on stdout


def safe_filename(host: str) -> str:
    """``-o``'s file name for ``host``: one-to-one (hostops.localnames), never a collision."""
    from hostops.localnames import local_name

    return local_name(host)


def write_outdir(outdir: str, result: HostResult) -> None:
    """pssh's -o/-e: ``DIR/<host>.out`` and ``DIR/<host>.err`` (0600: output may hold secrets).

    Never follows a link planted at either name (O_NOFOLLOW), never blocks on a FIFO
    (O_NONBLOCK), and only empties a regular file of ours with no other hard link: a name
    someone else prepared is refused, its target untouched. A write cut short (full disk)
    removes the half-written file. Raises OSError saying which file and why."""
    base = os.path.join(outdir, safe_filename(result.host))
    for suffix, data in ((".out", result.stdout), (".err", result.stderr)):
        _write_private(base + suffix, data)


def _write_private(path: str, data: bytes) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(exc.errno, f"{path} is a symbolic link; not followed") from None
        if exc.errno == errno.ENXIO:  # a FIFO nobody reads (O_NONBLOCK: refused, not waited on)
            raise OSError(exc.errno, f"{path} is not a regular file; left alone") from None
        raise OSError(exc.errno, f"{path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, f"{path} is not a regular file; left alone")
        if st.st_uid != os.geteuid():
            raise OSError(errno.EPERM, f"{path} belongs to another user (uid {st.st_uid}); left alone")
        if st.st_nlink != 1:
            raise OSError(errno.EMLINK, f"{path} has other hard links; left alone")
        os.set_blocking(fd, True)
        os.ftruncate(fd, 0)
        os.fchmod(fd, 0o600)  # the mode above only applies to new files; tighten old ones too
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view):]
        except OSError as exc:
            _remove_if_same(path, st)
            raise OSError(exc.errno, f"{path}: {exc.strerror}") from None
    finally:
        os.close(fd)


def _remove_if_same(path: str, st: os.stat_result) -> None:
    """Remove a half-written file, if the name still is the file we wrote."""
    try:
        now = os.lstat(path)
        if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
            os.unlink(path)
    except OSError:
        pass


def make_renderer(mode: str, *, out: IO | None = None, err: IO | None = None, total: int = 0,
                  progress: bool = True, outdir: str | None = None, raw: bool = False) -> Renderer:
    out = _or_null(out if out is not None else sys.stdout)
    err = _or_null(err if err is not None else sys.stderr)
    prog = Progress(err, total, progress and mode != "stream")
    kinds = {"blocks": BlockRenderer, "quiet": BlockRenderer, "gather": GatherRenderer,
             "stream": StreamRenderer, "json": JsonRenderer}
    if raw:
        for stream in (out, err):
            if hasattr(stream, "reconfigure"):
                stream.reconfigure(errors="surrogateescape")
    if mode == "quiet":
        return BlockRenderer(out, err, prog, outdir, quiet=True, raw=raw)
    return kinds[mode](out, err, prog, outdir, raw=raw)


# ------------------------------------------------------------------ the inventory
def inventory_lines(targets: Iterable[Any]) -> list[str]:
    """``hostops inventory``: one line per host, its resolved connection (names escaped)."""
    targets = list(targets)
    shown = {t.name: one_line(t.name) for t in targets}  # names may hold controls: escaped
    width = max(len(s) for s in shown.values())
    lines = []
    for t in targets:
        where = "local" if t.connection == "local" else f"{t.user}@{t.hostname}:{t.port}"
        keys = f"  key={','.join(t.identity_files)}" if t.identity_files else ""
        lines.append(f"{shown[t.name]:<{width}}  {one_line(where + keys)}")
    return lines
