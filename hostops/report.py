"""Reading ``--log`` files back into runs, for ``hostops report``.

A log is JSON lines: a ``start`` record, one ``host`` record per host (per step, for a
runbook), an ``end`` record; several runs may follow each other in one file. This module turns
one or more logs into :class:`Run` objects a renderer can draw (:mod:`hostops.reporthtml`):
hosts ordered failed first, identical outputs folded with their host lists, each run's time
span, the runbook's host × step table.

Tolerant on purpose: a line that is not JSON, is cut short or is not a record is skipped and
counted (the page says so), never a crash; unknown fields are ignored and a schema version
field is accepted. Every field of a record is read in one place, :func:`adapt_record`, so a
change of the log format touches one function. Bounded on purpose: a log line longer than
:data:`MAX_LINE` is skipped, each host's output is cut to ``max_output`` bytes per stream, and
the output text kept for the whole report is capped (:data:`OUTPUT_BUDGET`); identical outputs
are stored once.

Owns: the log reader, the run model, folding and ordering.
Must not import: the CLI, the pool, paramiko, YAML (``hostops report`` needs none of them).
"""
from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import hashlib
import json
import os
import stat
import sys
from collections.abc import Iterable, Iterator
from typing import IO, Any

from hostops.errors import FileError, UsageError
from hostops.hostlist import compact

MAX_LINE = 64 * 1024 * 1024      # a record longer than this is skipped (a host's output is at most 2 × --max-output)
DEFAULT_MAX_OUTPUT = 64 * 1024   # bytes of each host's stdout and stderr shown in the page
OUTPUT_BUDGET = 8 * 1024 * 1024  # output text kept for the whole report; past it, outputs are named, not shown
SKIPPED_SHOWN = 20               # skipped lines listed by file:line (the rest are counted)

#: Non-success first (the most serious first), successes last: the order of every list in the report.
SEVERITY = ("failed", "timeout", "unreachable", "interrupted", "incomplete", "untouched", "skipped", "unchanged", "ok")
SUCCESS = ("ok", "unchanged")
NOT_RUN = "untouched"  # a host named in the start record with no host record


def severity(status: str) -> int:
    """Sort key: failures first; a status hostops does not know (a newer log) sorts with them."""
    return SEVERITY.index(status) if status in SEVERITY else 0


# ------------------------------------------------------------------ the records
@dataclasses.dataclass
class Output:
    """One stream's text as the page shows it: cut to the per-host cap; ``key`` identifies the
    whole text (identical outputs fold on it); ``text`` is None once the report's budget is spent."""

    key: str
    size: int          # characters in the log
    text: str | None   # what is shown (None: over the report's output budget)
    cut: bool          # text is the first part only


@dataclasses.dataclass
class HostRecord:
    host: str
    status: str
    exit_code: int | None
    stdout: Output
    stderr: Output
    error: str | None
    start: float | None      # epoch seconds
    duration: float
    step: str | None
    time: float | None       # when the record was written


@dataclasses.dataclass
class Run:
    """One run: its start record's fields, its host records in log order, its end record."""

    source: str
    line: int                                 # where the run starts (file:line)
    action: str = ""
    hosts: list[str] = dataclasses.field(default_factory=list)
    started: float | None = None
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    records: list[HostRecord] = dataclasses.field(default_factory=list)
    summary: dict[str, Any] | None = None     # the end record's summary (None: no end record)
    ended: float | None = None
    version: Any = None                       # the log's schema version, when it has one
    exit_code: int | None = None
    _cache: dict[Any, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def _cached(self, name: str, make: Any) -> Any:
        """``make()``, computed once per state of the run (a record or the end record added anew)."""
        stamp = (name, len(self.records), self.summary is not None)
        if stamp not in self._cache:
            self._cache[stamp] = make()  # type: ignore[index]
        return self._cache[stamp]  # type: ignore[index]

    # ------------------------------------------------------------ per host
    @property
    def steps(self) -> list[str]:
        """Step names, in the order the end record lists them, else as first seen."""
        listed = self.summary.get("steps") if self.summary else None
        seen = list(listed) if isinstance(listed, list) else []
        for rec in self.records:
            if rec.step is not None and rec.step not in seen:
                seen.append(rec.step)
        return [str(s) for s in seen]

    @property
    def is_runbook(self) -> bool:
        return any(rec.step is not None for rec in self.records)

    def host_names(self) -> list[str]:
        """Every host of the run: the start record's list, then any only seen in host records."""
        return list(dict.fromkeys([*self.hosts, *(r.host for r in self.records)]))

    def by_host(self) -> dict[str, list[HostRecord]]:
        out: dict[str, list[HostRecord]] = {h: [] for h in self.host_names()}
        for rec in self.records:
            out[rec.host].append(rec)
        return out

    def status_of(self, host: str, records: list[HostRecord] | None = None) -> str:
        """A host's outcome: its first failure; ``incomplete`` when a runbook stopped before its
        remaining steps; else its last result; untouched without one (as RunReport.final_status)."""
        recs = self.by_host().get(host, []) if records is None else records
        ran = [r.status for r in recs if r.status != "skipped"]
        if not ran:
            return NOT_RUN
        failures = [s for s in ran if s not in SUCCESS]
        if failures:
            return failures[0]
        if self.main_steps() - {r.step for r in recs}:
            return "incomplete"
        return ran[-1]

    def main_steps(self) -> set[str | None]:
        return self._cached("main_steps", self._main_steps)  # type: ignore[no-any-return]

    def _main_steps(self) -> set[str | None]:
        """For a runbook that stopped early (max_fail, canary, Ctrl-C, killed): the steps every
        host should have run. The log does not mark ``when_failed`` steps, so a step is taken as
        one when only hosts that had already failed ran it; a step nobody ran is a main step.
        Empty for a run that ended normally: then no host is incomplete."""
        end = self.summary
        if not self.is_runbook or (end is not None and not end.get("stopped") and not end.get("interrupted")):
            return set()
        failed: set[str] = set()
        main: set[str | None] = set()
        ran: set[str | None] = set()
        for rec in self.records:
            ran.add(rec.step)
            if rec.host not in failed:
                main.add(rec.step)
            if rec.status not in SUCCESS and rec.status != "skipped":
                failed.add(rec.host)
        return main | (set(self.steps) - ran)

    def ordered_hosts(self) -> list[HostRow]:
        """One row per host, failures first (most serious first), then the slowest first."""
        return list(self._cached("ordered_hosts", self._ordered_hosts))

    def _ordered_hosts(self) -> list[HostRow]:
        rows = []
        for host, recs in self.by_host().items():
            starts = [r.start for r in recs if r.start is not None]
            ends = [r.start + r.duration for r in recs if r.start is not None]
            first = min(starts) if starts else None
            total = (max(ends) - min(starts)) if starts else sum(r.duration for r in recs)
            failed = next((r for r in recs if r.status not in SUCCESS and r.status != "skipped"), None)
            rows.append(HostRow(host, self.status_of(host, recs), first, total, recs, failed))
        rows.sort(key=lambda r: (severity(r.status), -r.duration, r.host))
        return rows

    def counts(self) -> dict[str, int]:
        """Hosts per outcome, counted from the host records (whatever the end record says)."""
        counts: dict[str, int] = {}
        for row in self.ordered_hosts():
            counts[row.status] = counts.get(row.status, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: severity(kv[0])))

    def not_ok(self) -> list[tuple[str, str]]:
        """``(status, folded hosts)`` for every status but success, e.g. ``("failed", "web[03,07],db2")``."""
        by_status: dict[str, list[str]] = {}
        for row in self.ordered_hosts():
            if row.status not in SUCCESS:
                by_status.setdefault(row.status, []).append(row.host)
        return [(status, compact(hosts)) for status, hosts in by_status.items()]

    def span(self) -> tuple[float, float]:
        """(first start, last end) over the run, for the timeline's scale."""
        starts = [r.start for r in self.records if r.start is not None]
        ends = [r.start + r.duration for r in self.records if r.start is not None]
        t0 = min(starts + ([self.started] if self.started else []), default=0.0)
        t1 = max(ends + ([self.ended] if self.ended else []), default=t0)
        return t0, max(t1, t0)

    def groups(self) -> list[OutputGroup]:
        """Identical results folded: per step, hosts whose status, exit code, error, stdout and
        stderr are all the same share one group. Failures first (of every step, in step order),
        then the successes step by step, the biggest group first."""
        found: dict[tuple, OutputGroup] = {}
        for rec in self.records:
            key = (rec.step, rec.status, rec.exit_code, rec.error, rec.stdout.key, rec.stderr.key)
            group = found.get(key)
            if group is None:
                group = found[key] = OutputGroup(rec.step, rec.status, rec.exit_code, rec.error, rec.stdout,
                                                 rec.stderr, [])
            group.hosts.append(rec.host)
        order = {s: i for i, s in enumerate(self.steps)}
        return sorted(found.values(), key=lambda g: (g.status in SUCCESS, order.get(g.step or "", 0),
                                                     severity(g.status), -len(g.hosts), g.folded))

    def table(self) -> tuple[list[str], list[tuple[str, dict[str, str]]]]:
        """The runbook's host × step table: (steps, [(host, {step: status})]), failed hosts first.
        A step with no record for a host (skipped after a failure, or never reached) is absent."""
        steps = self.steps
        rows = []
        for row in self.ordered_hosts():
            cells: dict[str, str] = {}
            for rec in row.records:
                if rec.step is not None:
                    cells.setdefault(rec.step, rec.status)
            rows.append((row.host, cells))
        return steps, rows


@dataclasses.dataclass
class HostRow:
    host: str
    status: str
    start: float | None
    duration: float
    records: list[HostRecord]
    failure: HostRecord | None  # the record that made it fail

    @property
    def exit_code(self) -> int | None:
        rec = self.failure or (self.records[-1] if self.records else None)
        return rec.exit_code if rec else None

    @property
    def error(self) -> str | None:
        rec = self.failure or (self.records[-1] if self.records else None)
        return rec.error if rec else None


@dataclasses.dataclass
class OutputGroup:
    step: str | None
    status: str
    exit_code: int | None
    error: str | None
    stdout: Output
    stderr: Output
    hosts: list[str]

    @property
    def folded(self) -> str:
        return compact(self.hosts)


@dataclasses.dataclass
class Skipped:
    source: str
    line: int
    reason: str


@dataclasses.dataclass
class LogSet:
    """Everything read from the logs given: the runs in order, and the lines that were skipped."""

    sources: list[str]
    runs: list[Run]
    skipped: list[Skipped]           # the first SKIPPED_SHOWN
    skipped_count: int
    max_output: int
    budget_hit: bool                 # some output was not kept (OUTPUT_BUDGET)


# ------------------------------------------------------------------ the one adapter
def adapt_record(obj: Any) -> tuple[str, dict[str, Any]]:
    """(event, fields) from one decoded log line: the only place that knows field names.

    Accepts today's log (``time`` as epoch seconds, a host's ``start`` as ISO 8601, output as
    text with undecodable bytes as ``\\xNN``) and tolerates what a newer one may carry: a
    ``version``/``schema`` field, times in either form, ``exit_code`` on the end record, output
    given as ``{"base64": ...}``. Unknown fields are ignored. Raises ValueError for a line that
    is not a record."""
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    event = obj.get("event")
    if event not in ("start", "host", "end"):
        raise ValueError(f"unknown event {event!r}" if event is not None else "no 'event' field")
    fields: dict[str, Any] = {"time": _epoch(obj.get("time")),
                              "version": obj.get("version", obj.get("schema", obj.get("v")))}
    if event == "start":
        hosts = obj.get("hosts")
        options = obj.get("options")
        fields.update(action=_str(obj.get("action", obj.get("command", ""))),
                      hosts=[_str(h) for h in hosts] if isinstance(hosts, list) else [],
                      options=options if isinstance(options, dict) else {})
    elif event == "host":
        host = obj.get("host")
        if not isinstance(host, str) or not host:
            raise ValueError("host record without a host name")
        fields.update(host=host, status=_str(obj.get("status") or "failed"), exit_code=_int(obj.get("exit_code")),
                      stdout=_text(obj.get("stdout")), stderr=_text(obj.get("stderr")),
                      error=_str(obj["error"]) if obj.get("error") else None, start=_epoch(obj.get("start")),
                      duration=_float(obj.get("duration")), step=_str(obj["step"]) if obj.get("step") else None)
    else:
        summary = obj.get("summary")
        summary = summary if isinstance(summary, dict) else {}
        fields.update(summary=summary, exit_code=_int(obj.get("exit_code", summary.get("exit_code"))))
    return event, fields


def _epoch(value: Any) -> float | None:
    """Epoch seconds from a number or an ISO 8601 text; None for anything else or out of range
    (a time that no clock gives would break the timeline's scale)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        epoch = float(value)
    elif isinstance(value, str):
        try:
            when = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=_dt.timezone.utc)
        epoch = when.timestamp()
    else:
        return None
    return epoch if 0 <= epoch < 2 ** 33 else None  # NaN fails both tests


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        for name in ("base64", "b64"):
            if isinstance(value.get(name), str):
                try:
                    return base64.b64decode(value[name]).decode("utf-8", errors="backslashreplace")
                except ValueError:
                    return ""
        if isinstance(value.get("text"), str):
            return value["text"]
    return value if isinstance(value, str) else json.dumps(value)


def _str(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: Any) -> float:
    """A duration: a number of seconds, 0 for anything else (negative, NaN, infinite, a year or more)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 366 * 86400
    return float(value) if ok else 0.0


# ------------------------------------------------------------------ reading
class _Reader:
    """Folds the records of every log given into runs, within the bounds."""

    def __init__(self, max_output: int):
        self.max_output = max(1, max_output)
        self.runs: list[Run] = []
        self.skipped: list[Skipped] = []
        self.skipped_count = 0
        self.kept = 0
        self.budget_hit = False
        self._texts: dict[str, Output] = {}

    def skip(self, source: str, line: int, reason: str) -> None:
        self.skipped_count += 1
        if len(self.skipped) < SKIPPED_SHOWN:
            self.skipped.append(Skipped(source, line, reason))

    def output(self, text: str) -> Output:
        """The shown form of ``text``, stored once however many hosts printed it."""
        key = hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()
        known = self._texts.get(key)
        if known is not None:
            return known
        cut = len(text) > self.max_output
        head = text[:self.max_output]
        shown: str | None = head
        if self.kept + len(head) > OUTPUT_BUDGET:
            shown, self.budget_hit = None, True
        else:
            self.kept += len(head)
        out = Output(key, len(text), shown, cut)
        if len(self._texts) < 1_000_000:  # the keys themselves stay bounded too
            self._texts[key] = out
        return out

    def read(self, source: str, fh: IO[bytes]) -> None:
        current: Run | None = None
        for number, raw in _lines(fh):
            if raw is None:
                self.skip(source, number, f"line longer than {MAX_LINE // 1048576} MiB")
                continue
            if not raw.strip():
                continue
            try:
                event, f = adapt_record(json.loads(raw))
            except (ValueError, UnicodeDecodeError, RecursionError) as exc:
                reason = "cut short or not JSON" if isinstance(exc, json.JSONDecodeError) else str(exc)
                self.skip(source, number, reason)
                continue
            if event == "start":
                current = Run(source, number, f["action"], f["hosts"], f["time"], f["options"], version=f["version"])
                self.runs.append(current)
            elif current is None or current.summary is not None:  # records with no start record before them
                current = Run(source, number, "(no start record)", version=f["version"])
                self.runs.append(current)
            assert current is not None
            if event == "host":
                current.records.append(HostRecord(
                    f["host"], f["status"], f["exit_code"], self.output(f["stdout"]), self.output(f["stderr"]),
                    f["error"], f["start"], f["duration"], f["step"], f["time"]))
            elif event == "end":
                current.summary, current.ended, current.exit_code = f["summary"], f["time"], f["exit_code"]


def _lines(fh: IO[bytes]) -> Iterator[tuple[int, bytes | None]]:
    """(line number, line) with each line bounded: an over-long line is read through and given as None."""
    number = 0
    while True:
        chunk = fh.readline(MAX_LINE + 1)
        if not chunk:
            return
        number += 1
        if len(chunk) > MAX_LINE and not chunk.endswith(b"\n"):
            while chunk and not chunk.endswith(b"\n"):
                chunk = fh.readline(1024 * 1024)
            yield number, None
            continue
        yield number, chunk


def read_logs(paths: Iterable[str], max_output: int = DEFAULT_MAX_OUTPUT) -> LogSet:
    """Read every log (``-``: standard input) into runs. A log that cannot be opened, or holds
    no record at all, is a :class:`hostops.errors.UsageError` naming it."""
    reader = _Reader(max_output)
    sources = list(paths)
    for path in sources:
        before = len(reader.runs)
        try:
            if path == "-":
                reader.read("<stdin>", sys.stdin.buffer)
            else:
                if not stat.S_ISREG(os.stat(path).st_mode):  # checked first: opening a FIFO would wait
                    raise UsageError(f"log {path} is not a regular file (give a file written by --log)")
                with open(path, "rb") as fh:
                    reader.read(path, fh)
        except OSError as exc:
            raise UsageError(f"cannot read log {path}: {exc.strerror or exc}") from None
        if len(reader.runs) == before:
            first = next((s for s in reader.skipped if s.source == path), None)
            hint = f"{first.reason}; " if first else "the file is empty; "
            raise FileError(f"no hostops log record found ({hint}give a file written by --log)", path,
                            first.line if first else None)
    return LogSet(sources, reader.runs, reader.skipped, reader.skipped_count, reader.max_output, reader.budget_hit)

