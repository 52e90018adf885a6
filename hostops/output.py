"""Rendering results for people (blocks, gathered, streamed, quiet) and machines (JSON).

Remote output is untrusted: in the human formats every control character except
newline and tab is shown escaped (``\\x1b``, ``\\u202e``), so a host cannot move the
cursor, retitle the terminal, write to the clipboard or fake another host's header.

Owns: escaping, the one colour palette (:data:`PALETTE`, :func:`paint`), the renderers
(each implements :class:`hostops.api.Events`: the one handler a run reports to, and tells the
progress line of :mod:`hostops.progress` what happens), the lines naming the hosts that did
not succeed, and the inventory listing and graph (``-o`` files: :mod:`hostops.outdir`).
Whether there is colour is decided in one place, :func:`use_color`.
Must not import: the API, the pool, the CLI (they import this module), paramiko.
"""
from __future__ import annotations

import dataclasses
import json
import re
import sys
from collections.abc import Iterable
from typing import IO, Any

from hostops.hostlist import compact
from hostops.outdir import safe_filename, write_outdir  # noqa: F401  (re-exported: their old home)
from hostops.progress import Progress, color_wanted, progress_wanted, section_label
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
    stamp,
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


def use_color(stream: IO, choice: str = "auto") -> bool:
    """Colour on ``stream``? The one decision (``--color auto|always|never``, ``NO_COLOR``,
    ``TERM=dumb``), made in :func:`hostops.progress.color_wanted` for renderers and progress line alike."""
    return color_wanted(stream, choice)


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


class Renderer:
    """Base renderer, an :class:`hostops.api.Events` handler: started/output/result as events
    arrive, section for a new batch or step, warning, then finish with the run's report."""

    def __init__(self, out: IO | None = None, err: IO | None = None, progress: Progress | None = None,
                 outdir: str | None = None, raw: bool = False, color: str = "auto"):
        # Resolved now, not at import: the CLI puts guarded streams in place first, and a
        # closed descriptor (sys.stdout None) must not crash a run.
        self.out = _or_null(out if out is not None else sys.stdout)
        self.err = _or_null(err if err is not None else sys.stderr)
        self.raw = raw
        self.progress = progress or Progress(self.err, 0, False, escape=one_line)
        self.outdir = outdir
        self.outdir_failed: list[str] = []  # hosts whose -o files could not be written
        self.color = use_color(self.out, color)
        self.err_color = use_color(self.err, color)
        if outdir:
            from hostops.secrets import private_makedirs

            private_makedirs(outdir)  # 0700 whatever the umask: output may hold secrets

    def started(self, host: str) -> None:
        self.progress.started(host)

    def output(self, host: str, stream: str, data: bytes) -> None:
        pass

    def result(self, result: HostResult) -> None:
        if self.outdir:
            try:
                write_outdir(self.outdir, result)
            except OSError as exc:  # this host is marked; the others go on
                self.outdir_failed.append(result.host)
                note = f"could not write -o file: {exc.strerror or exc}"
                result.error = (result.error + "; " if result.error else "") + note
        with self.progress.hidden():  # drawn again after the block, with this host counted
            self.progress.finished(result.host, result.ok)
            self.show(result)

    def show(self, result: HostResult) -> None:
        raise NotImplementedError

    def section(self, title: str, total: int) -> None:  # noqa: ARG002  (the Events protocol)
        """A new step or batch begins (runbooks, --batch): a title line, progress reset."""
        with self.progress.hidden():
            self.progress.section(section_label(title), total)
            self.out.write(f"{title}\n")
            self.out.flush()

    def warning(self, message: str) -> None:
        """One line on stderr, host names and values in it escaped."""
        with self.progress.hidden():
            self.err.write(f"hostops: warning: {one_line(message)}\n")
            self.err.flush()

    def close(self) -> None:
        """The progress line erased for good (also after an error that skipped :meth:`finish`)."""
        self.progress.close()

    def finish(self, summary: RunReport) -> None:
        """The end: a runbook's table (stdout); then on stderr one line per status that is not
        a success naming its hosts (:func:`not_ok_lines`), and the summary line, last."""
        self.progress.close()
        epilogue = self.epilogue(summary)
        if epilogue:
            self.out.write(epilogue.rstrip("\n") + "\n")
        self.out.flush()
        for line in not_ok_lines(summary):
            self.err.write(line + "\n")
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


def not_ok_lines(report: RunReport) -> list[str]:
    """``failed (3): web[03,07],db2``: one line per status that is not a success, its hosts
    folded (hostlist.compact), in every output mode (stderr, before the summary line)."""
    lines = []
    for status, hosts in report.not_ok().items():
        label = {INTERRUPTED: "interrupted while running",
                 "not started": "interrupted; not started" if report.interrupted else "not started"}.get(status, status)
        lines.append(f"{label} ({len(hosts)}): {one_line(compact(hosts))}")
    return lines


class BlockRenderer(Renderer):
    """Default: one block per host as it finishes; the hosts put --checksum left unchanged
    folded into one line (at the end of the step). ``quiet`` (-q): only the hosts that did not
    succeed (their step named), no batch or step titles, no runbook table, no progress line;
    the not-ok lines and the summary line on stderr as always."""

    def __init__(self, *a: Any, quiet: bool = False, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.quiet = quiet
        self.unchanged: dict[tuple, list[str]] = {}  # (message, error) → hosts

    def show(self, result: HostResult) -> None:
        if self.quiet and result.ok:
            return
        if result.status == UNCHANGED:
            key = (sanitize(result.stdout).strip().replace("\n", "; "), result.error)
            self.unchanged.setdefault(key, []).append(result.host)
            return
        body = _body(result, self.raw)
        head = header(result, self.color)
        if self.quiet and result.step is not None:
            head += f" | step {one_line(result.step)}"
        self.out.write(head + "\n" + (body + "\n" if body else ""))
        self.out.flush()

    def _flush_unchanged(self) -> None:
        status = paint(UNCHANGED.upper(), UNCHANGED, self.color)
        for (message, error), hosts in self.unchanged.items():
            note = "; ".join(one_line(t) for t in (message, error) if t)
            self.out.write(f"{one_line(compact(hosts))} ({len(hosts)}) | {status}" + (f" | {note}" if note else "") + "\n")
        self.unchanged = {}
        self.out.flush()

    def section(self, title: str, total: int) -> None:
        self._flush_unchanged()
        if self.quiet:  # no titles: only what did not succeed
            self.progress.section(section_label(title), total)
            return
        super().section(title, total)

    def finish(self, summary: RunReport) -> None:
        self.progress.clear()
        self._flush_unchanged()
        super().finish(summary)

    def epilogue(self, report: RunReport) -> str:
        return "" if self.quiet else super().epilogue(report)


def natural_key(name: str) -> tuple:
    """Sort key putting ``web2`` before ``web10`` (digits compared as numbers), as dshbak and clush do."""
    parts = re.split(r"([0-9]+)", name)  # text, digits, text, …: digits by length then value (no int())
    return tuple(((len(p.lstrip("0")), p.lstrip("0")) if i % 2 else p) for i, p in enumerate(parts)), name


class GatherRenderer(Renderer):
    """-b/-B/--gather: hosts with identical results printed once, under a compact host list,
    groups in host-name order (natural: web2 before web10), like dshbak -c and clush -B.
    ``stdout_only`` (--gather-stdout, clush's -b): only stdout is gathered; each host's stderr is
    printed on stderr as it finishes, one ``host: line`` per line."""

    def __init__(self, *a: Any, stdout_only: bool = False, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.stdout_only = stdout_only
        self.groups: dict[tuple, list[HostResult]] = {}

    def show(self, result: HostResult) -> None:
        if self.stdout_only:
            key: tuple = (result.status, result.exit_code, result.stdout, result.error)
            if result.stderr:
                text = raw_text(result.stderr) if self.raw else sanitize(result.stderr)
                name = one_line(result.host)
                self.err.write("".join(f"{name}: {line}\n" for line in text.rstrip("\n").split("\n")))
                self.err.flush()
        else:
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
        for results in self.groups.values():
            results.sort(key=lambda r: natural_key(r.host))
        for results in sorted(self.groups.values(), key=lambda rs: natural_key(rs[0].host)):
            first = results[0]
            names = compact(r.host for r in results)
            hosts = f"{names} ({len(results)})"
            status = paint(first.status.upper(), first.status, self.color)
            rc = f" | rc={first.exit_code}" if first.exit_code is not None else ""
            rule = "-" * min(72, max(15, len(hosts)))
            self.out.write(f"{rule}\n{one_line(hosts)} | {status}{rc}\n{rule}\n")
            body = _body(dataclasses.replace(first, stderr=b"") if self.stdout_only else first, self.raw)
            if body:
                self.out.write(body + "\n")
        self.groups = {}


class StreamRenderer(Renderer):
    """--stream: each line as it arrives, ``host: line`` (stderr lines on stderr), like pdsh."""

    def output(self, host: str, stream: str, data: bytes) -> None:
        text = raw_text(data) if self.raw else sanitize(data)
        with self.progress.hidden():
            target = self.out if stream == "stdout" else self.err
            target.write(f"{one_line(host)}: {text}" + ("" if text.endswith("\n") else "\n"))
            target.flush()

    def show(self, result: HostResult) -> None:
        if not result.ok:
            self.err.write(header(result, self.err_color) + (
                f" | {one_line(result.error)}" if result.error else "") + "\n")
            self.err.flush()


class JsonRenderer(Renderer):
    """--json: one JSON object per host per line on stdout, nothing else there."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.color = False

    def show(self, result: HostResult) -> None:
        self.out.write(json.dumps(stamp({"event": "host", **result.to_json()}), ensure_ascii=True) + "\n")
        self.out.flush()

    def section(self, title: str, total: int) -> None:  # noqa: ARG002  (the Events protocol)
        self.progress.section(section_label(title), total)  # stdout stays JSON

    def epilogue(self, report: RunReport) -> str:  # noqa: ARG002  (overridden by renderers that use it)
        return ""  # JSON mode: nothing but JSON lines on stdout


def make_renderer(mode: str, *, out: IO | None = None, err: IO | None = None, total: int = 0,
                  progress: bool | None = None, outdir: str | None = None, raw: bool = False,
                  color: str = "auto") -> Renderer:
    """The renderer for an output mode. ``progress``: None shows the progress line on a
    terminal only (not TERM=dumb); True/False (``--progress``/``--no-progress``) force it.
    ``color``: ``auto``, ``always`` or ``never`` (:func:`use_color`)."""
    out = _or_null(out if out is not None else sys.stdout)
    err = _or_null(err if err is not None else sys.stderr)
    prog = make_progress(err, total, False if mode == "quiet" else progress, color)
    kinds = {"blocks": BlockRenderer, "quiet": BlockRenderer, "gather": GatherRenderer,
             "stream": StreamRenderer, "json": JsonRenderer}
    if raw:
        for stream in (out, err):
            if hasattr(stream, "reconfigure"):
                stream.reconfigure(errors="surrogateescape")
    if mode == "quiet":
        return BlockRenderer(out, err, prog, outdir, quiet=True, raw=raw, color=color)
    if mode == "gather-stdout":
        return GatherRenderer(out, err, prog, outdir, stdout_only=True, raw=raw, color=color)
    return kinds[mode](out, err, prog, outdir, raw=raw, color=color)


def make_progress(err: IO, total: int, progress: bool | None = None, color: str = "auto") -> Progress:
    """The progress line on ``err`` (see :func:`make_renderer`), host names escaped as all output is."""
    return Progress(err, total, progress_wanted(err, progress), escape=one_line, color=use_color(err, color))


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
