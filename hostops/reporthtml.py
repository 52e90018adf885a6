"""The run report as one self-contained HTML page, and writing it.

The page has no script at all, loads nothing (no fonts, images or styles from anywhere), and
its Content-Security-Policy says so: ``default-src 'none'`` with the one inline style sheet
allowed by its hash. Everything that comes from the log — host names, commands, step names,
output, error texts — is untrusted and goes through :func:`html.escape`; even a payload that got
past escaping could not run. The timeline is inline SVG (its geometry is attributes, not
``style=``, which the policy forbids). Folding uses ``<details>``: no script needed.

Owns: the page's markup, style and timeline geometry; writing it 0600, atomically, never through a symlink.
Must not import: the CLI, the pool, paramiko.
"""
from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import errno
import hashlib
import html
import json
import os
import stat
from collections.abc import Iterable

from hostops import __version__, report
from hostops.errors import UsageError
from hostops.exitcodes import for_statuses
from hostops.report import SUCCESS, HostRow, LogSet, Output, OutputGroup, Run

_e = html.escape  # quote=True: safe in text and in attribute values alike

STYLE = """
:root{--ok:#2e7d32;--unchanged:#00897b;--failed:#c62828;--unreachable:#6a1b9a;--timeout:#e65100;
--interrupted:#616161;--incomplete:#ad1457;--untouched:#9e9e9e;--skipped:#bdbdbd;--other:#c62828}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;color:#1c1c1c;
background:#f6f7f9}
header{background:#1f2933;color:#fff;padding:14px 24px}header h1{font-size:20px;margin:0}
header p{margin:4px 0 0;color:#cbd2d9}main{padding:8px 24px 40px;max-width:1400px}
section.run{background:#fff;border:1px solid #d9dde3;border-radius:8px;padding:8px 20px 16px;margin:16px 0}
h2{font-size:18px;margin:10px 0 4px}h3{font-size:15px;margin:18px 0 6px;color:#323f4b}
code,pre{font:12.5px/1.4 "DejaVu Sans Mono",ui-monospace,Menlo,Consolas,monospace}
pre{background:#f3f4f6;border:1px solid #e4e7eb;border-radius:4px;padding:6px 8px;margin:4px 0;
white-space:pre-wrap;word-break:break-all;max-height:480px;overflow:auto}
.chips{display:flex;flex-wrap:wrap;gap:6px;margin:6px 0}
.chip{border-radius:12px;padding:1px 10px;color:#fff;font-weight:600;font-size:13px}
.s-ok{background:var(--ok)}.s-unchanged{background:var(--unchanged)}.s-failed{background:var(--failed)}
.s-unreachable{background:var(--unreachable)}.s-timeout{background:var(--timeout)}
.s-interrupted{background:var(--interrupted)}.s-incomplete{background:var(--incomplete)}
.s-untouched{background:var(--untouched)}.s-skipped{background:var(--skipped);color:#222}
.s-other{background:var(--other)}.s-none{background:#eceff1;color:#607080}
rect.s-ok{fill:var(--ok)}rect.s-unchanged{fill:var(--unchanged)}rect.s-failed{fill:var(--failed)}
rect.s-unreachable{fill:var(--unreachable)}rect.s-timeout{fill:var(--timeout)}
rect.s-interrupted{fill:var(--interrupted)}rect.s-incomplete{fill:var(--incomplete)}
rect.s-untouched{fill:var(--untouched)}rect.s-skipped{fill:var(--skipped)}rect.s-other{fill:var(--other)}
svg.tl{display:block;max-width:100%;height:auto}svg.tl text{font-size:11px;fill:#323f4b}
svg.tl .grid{stroke:#e4e7eb}svg.tl .band{fill:#f7f8fa}
table{border-collapse:collapse;margin:4px 0}th,td{border-bottom:1px solid #e4e7eb;padding:3px 10px;text-align:left;
vertical-align:top}th{background:#f3f4f6;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.cell{color:#fff;font-weight:600;text-align:center}
details.group{border:1px solid #e4e7eb;border-left:6px solid var(--ok);border-radius:4px;margin:8px 0;
padding:4px 10px}details.group.bad{border-left-color:var(--failed)}
summary{cursor:pointer}.hosts{font-weight:600}.note{color:#616e7c;font-size:13px}
.warn{background:#fff4e5;border:1px solid #ffd8a8;border-radius:4px;padding:6px 10px;margin:10px 0}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:6px 0}dl.facts dt{color:#616e7c}
dl.facts dd{margin:0}
"""

STYLE_HASH = "sha256-" + base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
CSP = (f"default-src 'none'; style-src '{STYLE_HASH}'; img-src 'none'; script-src 'none'; "
       "base-uri 'none'; form-action 'none'")
KNOWN = ("ok", "unchanged", "failed", "unreachable", "timeout", "interrupted", "incomplete", "untouched", "skipped")

ROW_H, LABEL_W, BAR_W = 18, 190, 900  # the timeline's geometry, in SVG user units
MAX_TABLE_ROWS = 5000                 # host rows in the hosts table and the host × step table


def cls(status: str) -> str:
    """The CSS class of a status (a status the page does not know is coloured as a failure)."""
    return f"s-{status}" if status in KNOWN else "s-other"


def render(logs: LogSet, generated: float | None = None) -> str:
    """The whole page for every run read."""
    when = _when(generated if generated is not None else _dt.datetime.now(_dt.timezone.utc).timestamp())
    parts = [
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
        "<meta name=\"referrer\" content=\"no-referrer\">",
        f"<title>hostops report: {_e(_title(logs))}</title>",
        f"<style>{STYLE}</style></head><body>",
        "<header><h1>hostops run report</h1>",
        f"<p>{len(logs.runs)} run{'s' if len(logs.runs) != 1 else ''} from "
        f"{_e(', '.join(logs.sources))} · made {_e(when)} by hostops {_e(__version__)}</p></header><main>",
    ]
    parts += _notes(logs)
    for index, run in enumerate(logs.runs, 1):
        parts.append(_run(run, index, logs.max_output))
    parts.append("</main></body></html>\n")
    return "\n".join(parts)


def _title(logs: LogSet) -> str:
    if len(logs.runs) == 1:
        return logs.runs[0].action[:80]
    return f"{len(logs.runs)} runs"


def _notes(logs: LogSet) -> list[str]:
    """What the reader must know about what the page does not show."""
    out = []
    if logs.skipped_count:
        items = "".join(f"<li><code>{_e(s.source)}:{s.line}</code>: {_e(s.reason)}</li>" for s in logs.skipped)
        more = logs.skipped_count - len(logs.skipped)
        tail = f"<li>and {more} more</li>" if more > 0 else ""
        out.append(f"<div class=\"warn\" id=\"skipped\"><b>{logs.skipped_count} line"
                   f"{'s' if logs.skipped_count != 1 else ''} skipped</b> (not a log record, or cut short):"
                   f"<ul>{items}{tail}</ul></div>")
    if logs.budget_hit:
        out.append("<div class=\"warn\" id=\"budget\">This log holds more distinct output than one page should: "
                   f"past the first {_size(report.OUTPUT_BUDGET)}, outputs are counted but not shown. Read the log "
                   "itself for the rest.</div>")
    return out


def _run(run: Run, index: int, max_output: int) -> str:
    head = f"<section class=\"run\" id=\"run-{index}\"><h2>Run {index}: <code>{_e(run.action)}</code></h2>"
    parts = [head, _summary(run, index), _timeline(timeline(run))]
    if run.is_runbook:
        parts.append(_step_table(run))
    parts.append(_outputs(run, max_output))  # before the hosts table: a fleet's table is long
    parts.append(_hosts_table(run))
    parts.append("</section>")
    return "\n".join(parts)


def _summary(run: Run, index: int) -> str:
    counts = run.counts()
    total = sum(counts.values())
    chips = "".join(f"<span class=\"chip {cls(s)}\">{n} {_e(s)}</span>" for s, n in counts.items())
    facts = [("log", f"<code>{_e(run.source)}:{run.line}</code>")]
    if run.started:
        facts.append(("started", _e(_when(run.started))))
    t0, t1 = run.span()
    elapsed = run.summary.get("elapsed") if run.summary else None
    took = elapsed if isinstance(elapsed, (int, float)) else (t1 - t0)
    facts.append(("took", f"{took:.3f}s"))
    facts.append(("hosts", str(total)))
    if run.exit_code is not None:
        facts.append(("exit code", str(run.exit_code)))
    elif run.summary is not None:  # today's runbook end record has none: derived as hostops derives it
        derived = for_statuses(counts, bool(run.summary.get("interrupted")))
        facts.append(("exit code", f"{int(derived)} <span class=\"note\">(derived from the statuses: the log "
                                   "does not record it)</span>"))
    if run.version is not None:
        facts.append(("log schema", _e(str(run.version))))
    if run.summary is None:
        facts.append(("end", "<b>no end record</b>: the run was killed, or is still going"))
    else:
        if run.summary.get("stopped"):
            facts.append(("stopped", _e(str(run.summary["stopped"]))))
        if run.summary.get("interrupted"):
            facts.append(("interrupted", "yes (Ctrl-C or a signal)"))
    for status, folded in run.not_ok():
        n = counts.get(status, 0)
        facts.append((_e(status), f"<span class=\"hosts\">{_e(status)} ({n}): {_e(folded)}</span>"))
    opts = {k: v for k, v in run.options.items() if v not in (None, [], False)}
    rows = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    options = (f"<details><summary class=\"note\">options</summary><pre>{_e(json.dumps(opts, indent=1))}</pre>"
               "</details>" if opts else "")
    return (f"<h3>Summary</h3><div class=\"chips\" id=\"counts-{index}\">{chips}</div>"
            f"<dl class=\"facts\">{rows}</dl>{options}")


def _timeline(tl: Timeline) -> str:
    """The per-host bars as inline SVG: failures on top, then the slowest; ticks on a time axis."""
    height = ROW_H * (len(tl.rows) + 1) + 4
    width = LABEL_W + BAR_W + 70
    out = [f"<h3>Timeline</h3><svg class=\"tl\" viewBox=\"0 0 {width} {height}\" width=\"{width}\" "
           f"height=\"{height}\" role=\"img\" aria-label=\"per-host timeline\">"]
    for pos, label in tl.ticks:
        x = LABEL_W + pos * BAR_W
        out.append(f"<line class=\"grid\" x1=\"{x:.1f}\" y1=\"0\" x2=\"{x:.1f}\" y2=\"{height - ROW_H}\"/>"
                   f"<text x=\"{x:.1f}\" y=\"{height - 4}\" text-anchor=\"middle\">{_e(label)}</text>")
    for i, (row, bars) in enumerate(tl.rows):
        y = i * ROW_H
        if i % 2:
            out.append(f"<rect class=\"band\" x=\"0\" y=\"{y}\" width=\"{width}\" height=\"{ROW_H}\"/>")
        name = row.host if len(row.host) <= 26 else row.host[:25] + "…"
        out.append(f"<g class=\"row\" data-host=\"{_e(row.host)}\" data-status=\"{_e(row.status)}\">"
                   f"<title>{_e(row.host)}: {_e(row.status)}, {row.duration:.3f}s</title>"
                   f"<text x=\"4\" y=\"{y + ROW_H - 5}\">{_e(name)}</text>")
        end = LABEL_W
        for bar in bars:
            x = LABEL_W + bar.x * BAR_W
            w = max(bar.width * BAR_W, 2.0)
            end = max(end, int(x + w))
            out.append(f"<rect class=\"{cls(bar.status)}\" x=\"{x:.1f}\" y=\"{y + 3}\" width=\"{w:.1f}\" "
                       f"height=\"{ROW_H - 6}\"><title>{_e(bar.label)}</title></rect>")
        out.append(f"<text x=\"{end + 4:.1f}\" y=\"{y + ROW_H - 5}\">{row.duration:.2f}s</text></g>")
    out.append("</svg>")
    if tl.hidden:
        out.append(f"<p class=\"note\">{tl.hidden} more host{'s' if tl.hidden != 1 else ''} not drawn: only the "
                   f"first {len(tl.rows)} (failures first, then the slowest) are.</p>")
    return "".join(out)


def _hosts_table(run: Run) -> str:
    rows = run.ordered_hosts()
    t0, _t1 = run.span()
    steps = run.is_runbook
    out = ["<h3>Hosts</h3><table class=\"hosts-table\"><thead><tr><th>host</th><th>status</th><th>exit</th>"
           f"<th>start</th><th>duration</th>{'<th>failed at step</th>' if steps else ''}<th>error</th></tr>"
           "</thead><tbody>"]
    for row in rows[:MAX_TABLE_ROWS]:
        start = f"+{row.start - t0:.3f}s" if row.start is not None else "–"
        code = "" if row.exit_code is None else str(row.exit_code)
        step = f"<td>{_e(row.failure.step or '') if row.failure else ''}</td>" if steps else ""
        out.append(f"<tr data-host=\"{_e(row.host)}\"><td><code>{_e(row.host)}</code></td>"
                   f"<td><span class=\"chip {cls(row.status)}\">{_e(row.status)}</span></td>"
                   f"<td class=\"num\">{code}</td><td class=\"num\">{start}</td>"
                   f"<td class=\"num\">{row.duration:.3f}s</td>{step}<td>{_e(row.error or '')}</td></tr>")
    out.append("</tbody></table>")
    if len(rows) > MAX_TABLE_ROWS:
        out.append(f"<p class=\"note\">{len(rows) - MAX_TABLE_ROWS} more hosts not listed (successes last).</p>")
    return "".join(out)


def _step_table(run: Run) -> str:
    steps, rows = run.table()
    head = "".join(f"<th>{_e(s)}</th>" for s in steps)
    out = [f"<h3>Hosts × steps</h3><table class=\"steps-table\"><thead><tr><th>host</th>{head}</tr></thead><tbody>"]
    for host, cells in rows[:MAX_TABLE_ROWS]:
        tds = []
        for step in steps:
            status = cells.get(step)
            if status is None:
                tds.append("<td class=\"cell s-none\" title=\"no record in the log: skipped or not reached\">–</td>")
            else:
                tds.append(f"<td class=\"cell {cls(status)}\">{_e(status)}</td>")
        out.append(f"<tr><td><code>{_e(host)}</code></td>{''.join(tds)}</tr>")
    out.append("</tbody></table>")
    if len(rows) > MAX_TABLE_ROWS:
        out.append(f"<p class=\"note\">{len(rows) - MAX_TABLE_ROWS} more hosts not listed (successes last).</p>")
    out.append("<p class=\"note\">– : no record for that host and step (skipped after a failure, a "
               "<code>when_failed</code> step not needed, or never reached).</p>")
    return "".join(out)


def _outputs(run: Run, max_output: int) -> str:
    groups = run.groups()
    order = "failures first (every step's), then successes step by step" if run.is_runbook else "failures first"
    out = ["<h3>Output</h3><p class=\"note\">Hosts with identical results are folded into one group; "
           f"{order}. Each stream shows at most {_size(max_output)} per host.</p>"]
    for group in groups:
        out.append(_group(group, open_=group.status not in SUCCESS or len(groups) <= 20))
    if not groups:
        out.append("<p class=\"note\">No host record in this run.</p>")
    return "".join(out)


def _group(group: OutputGroup, open_: bool) -> str:
    bad = "" if group.status in SUCCESS else " bad"
    n = len(group.hosts)
    code = "" if group.exit_code is None else f" · exit {group.exit_code}"
    step = "" if group.step is None else f"<span class=\"step\">step <code>{_e(group.step)}</code></span> "
    parts = [f"<details class=\"group{bad}\" data-status=\"{_e(group.status)}\"{' open' if open_ else ''}>"
             f"<summary><span class=\"chip {cls(group.status)}\">{_e(group.status)}</span> {step}"
             f"<span class=\"hosts\">{_e(group.folded)}</span> <span class=\"note\">({n} host{'s' if n != 1 else ''}"
             f"{code})</span></summary>"]
    if group.error:
        parts.append(f"<div class=\"error\">error: {_e(group.error)}</div>")
    parts += _stream("stdout", group.stdout, always=not group.error)
    parts += _stream("stderr", group.stderr)
    parts.append("</details>")
    return "".join(parts)


def _stream(name: str, out: Output, always: bool = False) -> Iterable[str]:
    if not out.size and not always:
        return []
    if out.text is None:
        return [f"<div class=\"note\">{name}: {out.size} characters, not shown (the report's output budget is "
                "spent; see the log)</div>"]
    note = f" (the first {len(out.text)} of {out.size} characters)" if out.cut else ""
    empty = "" if out.size else " (empty)"
    return [f"<div class=\"note\">{name}{note}{empty}</div>", f"<pre class=\"{name}\">{_e(out.text)}</pre>"
            if out.size else ""]


def _when(epoch: float) -> str:
    return _dt.datetime.fromtimestamp(epoch, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _size(n: int) -> str:
    return f"{n / 1048576:g} MiB" if n >= 1048576 else f"{n / 1024:g} KiB" if n >= 1024 else f"{n} bytes"


# ------------------------------------------------------------------ the timeline's geometry
MAX_TIMELINE_ROWS = 400  # hosts drawn; the rest (the fastest successes: rows are failed first, slowest first) are counted


@dataclasses.dataclass
class Bar:
    x: float          # from 0 to 1: where the bar starts on the run's time axis
    width: float      # from 0 to 1
    status: str
    label: str        # what the bar's tooltip says


@dataclasses.dataclass
class Timeline:
    rows: list[tuple[HostRow, list[Bar]]]
    hidden: int                     # hosts not drawn (past MAX_TIMELINE_ROWS)
    span: float                     # seconds from the first start to the last end
    ticks: list[tuple[float, str]]  # (position 0..1, label)


def timeline(run: Run, max_rows: int = MAX_TIMELINE_ROWS) -> Timeline:
    """Each host's bars on one time axis: a bar per record (per step, for a runbook) from its
    start over its duration, as fractions of the run's span. A record without a start time
    is placed where it was logged, ending there."""
    t0, t1 = run.span()
    span = t1 - t0
    hosts = run.ordered_hosts()
    rows = []
    for row in hosts[:max_rows]:
        bars = []
        for rec in row.records:
            start = rec.start if rec.start is not None else (rec.time - rec.duration if rec.time else t0)
            x = (start - t0) / span if span > 0 else 0.0
            width = rec.duration / span if span > 0 else 1.0
            x = min(max(x, 0.0), 1.0)
            label = f"{rec.host}{' · ' + rec.step if rec.step else ''}: {rec.status}, {rec.duration:.3f}s"
            bars.append(Bar(x, min(max(width, 0.0), 1.0 - x), rec.status, label))
        rows.append((row, bars))
    return Timeline(rows, max(0, len(hosts) - max_rows), span, ticks(span))


def ticks(span: float, most: int = 8) -> list[tuple[float, str]]:
    """Axis marks on a 1-2-5 step so that at most ``most`` + 1 fit: (position 0..1, label)."""
    if span <= 0:
        return [(0.0, "0s")]
    step = 0.001
    while span / step > most:
        for factor in (2, 2.5, 2):  # 1 → 2 → 5 → 10
            step *= factor
            if span / step <= most:
                break
    marks = []
    n = 0
    while n * step <= span + 1e-9:
        marks.append((n * step / span, _seconds(n * step)))
        n += 1
    return marks


def _seconds(value: float) -> str:
    if value >= 120:
        return f"{value / 60:g}m"
    return f"{round(value, 3):g}s"


# ------------------------------------------------------------------ writing
def write_report(path: str, page: str) -> None:
    """Write ``page`` to ``path`` as the log is written: 0600 (output may hold secrets, masked or
    not), never through a symbolic link, never over a file of another user or a non-file.
    Atomic: a temporary file in the same directory renamed over ``path``, so a reader never sees
    half a page and a link planted at ``path`` is refused, not followed."""
    directory = os.path.dirname(path) or "."
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise UsageError(f"-o {path}: {exc.strerror}") from None
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            raise UsageError(f"-o {path} is a symbolic link; refusing to write through it (remove it or pick "
                             "another name)")
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"-o {path} is not a regular file; refusing to replace it")
        if st.st_uid != os.geteuid():
            raise UsageError(f"-o {path} belongs to another user (uid {st.st_uid}); refusing to replace it")
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(tmp, flags, 0o600)
    except OSError as exc:
        reason = "a symbolic link is in the way" if exc.errno == errno.ELOOP else exc.strerror
        raise UsageError(f"-o {path}: cannot create {tmp}: {reason} (write elsewhere with -o FILE, or to "
                         "standard output with -o -)") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(page.encode("utf-8", errors="replace"))  # "replace": a lone surrogate from a JSON escape
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise UsageError(f"-o {path}: {exc.strerror or exc}") from None
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def default_output(logs: list[str]) -> str:
    """``LOG.html`` beside the first log (as the ``@failed`` state is ``LOG.last-run.json``);
    standard output when the log came from standard input."""
    return "-" if logs[0] == "-" else logs[0] + ".html"
