"""Statuses, per-host results and the one run report.

Owns: :class:`Status` (every status name hostops uses), :class:`HostResult` (a plain
dataclass that crosses process boundaries) and :class:`RunReport`, from which the summary
line, the log's end record, the runbook table, the state file's content and the exit code
are all derived.
Must not import: anything of hostops but :mod:`hostops.exitcodes` (the workers, the pool,
the rollout and the renderers all import this module).
"""
from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import enum
import time
from collections.abc import Iterable
from typing import Any

from hostops import exitcodes


class Status(str, enum.Enum):
    """Every status a host can end up with. Members equal their strings (``Status.OK == "ok"``),
    so JSON, logs, state files and code comparing with strings keep working."""

    OK = "ok"
    UNCHANGED = "unchanged"      # put --checksum: the host already had the file; a success
    FAILED = "failed"
    UNREACHABLE = "unreachable"
    TIMEOUT = "timeout"
    INTERRUPTED = "interrupted"  # the run was interrupted while this host's command ran
    SKIPPED = "skipped"          # a runbook step not run on this host (it failed earlier, or when_failed)
    UNTOUCHED = "untouched"      # the rollout stopped before this host ran anything
    INCOMPLETE = "incomplete"    # some steps ran, then the rollout stopped (max_fail, Ctrl-C) before the rest

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


# Module constants: aliases kept so that ``from hostops.results import OK`` keeps working.
OK, FAILED, UNREACHABLE, TIMEOUT = Status.OK, Status.FAILED, Status.UNREACHABLE, Status.TIMEOUT
UNCHANGED, INTERRUPTED = Status.UNCHANGED, Status.INTERRUPTED
SKIPPED, UNTOUCHED, INCOMPLETE = Status.SKIPPED, Status.UNTOUCHED, Status.INCOMPLETE
STATUSES = (OK, UNCHANGED, FAILED, UNREACHABLE, TIMEOUT, INTERRUPTED)  # what one host's run can end with
SUCCESS = (OK, UNCHANGED)

#: The version of every JSON record hostops writes (--json, --log, run --dry-run --json, keys
#: --json): a field may be added within a version; none is renamed, removed or changes meaning
#: or type without the version changing (see NOTES-README.md / README "JSON records").
SCHEMA = "hostops/1"


def iso_time(when: float | None = None) -> str:
    """The one time format of JSON records: ISO 8601, UTC, milliseconds
    (``2026-12-02T04:38:32.120+00:00``; lexical order is time order)."""
    moment = time.time() if when is None else when
    return _dt.datetime.fromtimestamp(moment, _dt.timezone.utc).isoformat(timespec="milliseconds")


def stamp(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` as written: the schema version and the time first, then its own fields
    (a ``time`` it already has is kept)."""
    return {"schema": SCHEMA, "time": record.get("time") or iso_time(), **record}


def json_bytes(name: str, data: bytes) -> dict[str, str]:
    """Output bytes for a JSON record, unambiguously: ``{name: text}`` when they are valid
    UTF-8 (the text is exact); otherwise ``{name: text with U+FFFD for each bad byte,
    name + "_b64": the exact bytes in base64}``. A raw 0xFF byte and the four characters
    ``\xff`` never encode the same: the first has ``_b64``, the second is the text ``\\xff``."""
    try:
        return {name: data.decode("utf-8")}
    except UnicodeDecodeError:
        return {name: data.decode("utf-8", errors="replace"), f"{name}_b64": base64.b64encode(data).decode("ascii")}


def record_bytes(record: dict[str, Any], name: str) -> bytes:
    """The exact bytes of field ``name`` of a record (the inverse of :func:`json_bytes`)."""
    if f"{name}_b64" in record:
        return base64.b64decode(record[f"{name}_b64"])
    return str(record.get(name) or "").encode("utf-8")


#: What ``@ok``, ``@failed``, ``@unreachable`` and ``@untouched`` select from the last run's state.
STATE_PATTERNS: dict[str, frozenset] = {
    "ok": frozenset({OK, UNCHANGED}),
    "failed": frozenset({FAILED, UNREACHABLE, TIMEOUT, INTERRUPTED, INCOMPLETE}),  # tried and did not succeed
    "unreachable": frozenset({UNREACHABLE}),
    "untouched": frozenset({UNTOUCHED}),
}


@dataclasses.dataclass
class HostResult:
    """What happened on one host. ``status`` is ok, unchanged (put --checksum sent nothing),
    failed (remote exit code ≠ 0, or a local failure such as a crashed worker), unreachable
    (DNS/TCP/banner/auth/host key) or timeout."""

    host: str
    status: str
    exit_code: int | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    error: str | None = None
    start: float = 0.0
    duration: float = 0.0
    step: str | None = None  # the runbook step this result belongs to
    # accept-new: keys this host's connection wrote to known_hosts (hostkeys.AddedKey); the CLI
    # says "Permanently added" on stderr. Not in to_json: JSON output stays about the host's run.
    keys_added: list = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status in SUCCESS

    @property
    def failed(self) -> bool:
        return not self.ok

    def __bool__(self) -> bool:
        return self.ok

    def __repr__(self) -> str:
        rc = "" if self.exit_code is None else f" rc={self.exit_code}"
        err = f" error={self.error!r}" if self.error else ""
        return f"<HostResult {self.host} {self.status}{rc} {self.duration:.2f}s{err}>"

    def to_json(self) -> dict[str, Any]:
        """The fields of a host record (``--json`` line, ``--log`` "host" record, before
        :func:`stamp`): output as text when it is UTF-8, else with ``stdout_b64``/``stderr_b64``
        beside it (:func:`json_bytes`)."""
        data: dict[str, Any] = {
            "host": self.host,
            "status": str(self.status),
            "exit_code": self.exit_code,
            **json_bytes("stdout", self.stdout),
            **json_bytes("stderr", self.stderr),
            "error": self.error,
            "start": iso_time(self.start) if self.start else None,
            "duration": round(self.duration, 3),
        }
        if self.step is not None:
            data["step"] = self.step
        return data


def decode(data: bytes) -> str:
    """For people (terminal, summaries): UTF-8 text with undecodable bytes escaped as ``\\xNN``
    (never lost, never a crash). JSON records use :func:`json_bytes` instead, which is exact."""
    return data.decode("utf-8", errors="backslashreplace")


@dataclasses.dataclass
class RunReport:
    """What one run did: every host result as it arrived and, for a rollout, each host's
    status per step. The summary line, the log's end record, the runbook table, the state
    file's content and the exit code are all derived from it.

    A run of one step (exec, put, get, script, keys scan) counts results; a runbook of
    several steps counts hosts by their final status (:meth:`final_status`)."""

    results: list[HostResult] = dataclasses.field(default_factory=list)
    elapsed: float = 0.0
    interrupted: bool = False
    not_finished: list[str] = dataclasses.field(default_factory=list)  # never started, or never touched
    output_closed: bool = False  # stdout's reader went away, which stopped the run: exit 141
    # the rollout's view (filled by hostops.rollout)
    hosts: list[str] = dataclasses.field(default_factory=list)
    steps: list[str] = dataclasses.field(default_factory=list)
    outcome: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)  # host → step → status
    batches: list[list[str]] = dataclasses.field(default_factory=list)
    failed: list[str] = dataclasses.field(default_factory=list)    # hosts counted against max_fail
    untouched: list[str] = dataclasses.field(default_factory=list)
    stopped: str | None = None                                   # why the rollout stopped early
    main_steps: list[str] = dataclasses.field(default_factory=list)  # steps that are not when_failed
    completed: bool = False  # the rollout ran to its end (not aborted by a second interrupt)

    def add(self, result: HostResult) -> None:
        self.results.append(result)

    # ------------------------------------------------------------ per host
    def final_status(self, host: str) -> str:
        """The host's outcome: its first failure; ``incomplete`` when the rollout stopped before
        all its steps ran; else its last success; ``untouched`` if it never ran."""
        row = self.outcome.get(host, {})
        ran = [s for s in row.values() if s not in (SKIPPED, UNTOUCHED)]
        if not ran:
            return UNTOUCHED
        for status in ran:
            if status not in SUCCESS:
                return status
        if any(row.get(step, UNTOUCHED) == UNTOUCHED for step in self.main_steps):
            return INCOMPLETE
        return ran[-1]

    @property
    def per_host(self) -> bool:
        """A runbook of several steps that ran to its end: counted per host, with a table at the
        end (aborted at once, it counts the results it has)."""
        return len(self.steps) > 1 and self.completed

    def statuses(self) -> dict[str, str]:
        """Each host that ran: its outcome (what the state file records, with the untouched)."""
        if self.completed:
            return {h: self.final_status(h) for h in self.hosts if h not in self.untouched}
        return {r.host: r.status for r in self.results}  # aborted at once: what finished

    def state_hosts(self) -> dict[str, str]:
        """The state file's ``hosts``: every host's outcome, ``untouched`` for those never run."""
        hosts = dict(self.statuses())
        for name in self.not_finished:
            hosts.setdefault(name, UNTOUCHED)
        return hosts

    # ------------------------------------------------------------ counts
    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def counts(self) -> dict[str, int]:
        return {str(s): self.count(s) for s in STATUSES}

    def host_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for host in self.hosts:
            status = str(self.final_status(host))
            counts[status] = counts.get(status, 0) + 1
        return counts

    @property
    def ok(self) -> list[HostResult]:
        return [r for r in self.results if r.ok]

    @property
    def exit_code(self) -> exitcodes.ExitCode:
        if self.output_closed:
            return exitcodes.ExitCode.OUTPUT_CLOSED
        statuses: Iterable[str] = self.statuses().values() if self.completed else (r.status for r in self.results)
        return exitcodes.for_statuses(statuses, self.interrupted)

    # ------------------------------------------------------------ renderings of the whole run
    def line(self) -> str:
        """The summary line (stderr, at the end)."""
        if self.per_host:
            return self._host_line()
        total = len(self.results) + len(self.not_finished)
        parts = [f"{self.count(OK)} ok"]
        if self.count(UNCHANGED):
            parts.append(f"{self.count(UNCHANGED)} unchanged")
        parts += [f"{self.count(FAILED)} failed", f"{self.count(UNREACHABLE)} unreachable",
                  f"{self.count(TIMEOUT)} timeout"]
        if self.count(INTERRUPTED):
            parts.append(f"{self.count(INTERRUPTED)} interrupted")
        if self.not_finished:
            parts.append(f"{len(self.not_finished)} not started")
        text = f"{total} host{'s' if total != 1 else ''}: {', '.join(parts)} in {self.elapsed:.1f}s"
        return text + (" (interrupted)" if self.interrupted else "")

    def _host_line(self) -> str:
        counts = self.host_counts()
        order = [OK, UNCHANGED, FAILED, UNREACHABLE, TIMEOUT, INTERRUPTED, INCOMPLETE, UNTOUCHED]
        parts = [f"{counts.get(s, 0)} {s}" for s in order if counts.get(s) or s in (OK, FAILED)]
        n = len(self.hosts)
        text = f"{n} host{'s' if n != 1 else ''}: {', '.join(parts)} in {self.elapsed:.1f}s"
        return text + (" (interrupted)" if self.interrupted else "")

    def not_ok(self) -> dict[str, list[str]]:
        """The hosts that did not succeed, by status, in a fixed order (failed, unreachable,
        timeout, interrupted, incomplete, untouched); for one step, the hosts never started
        are under ``"not started"``. Each host once (its final status in a runbook)."""
        if self.per_host:
            final = {h: str(self.final_status(h)) for h in self.hosts}
        else:
            final = {r.host: str(r.status) for r in self.results}
        groups: dict[str, list[str]] = {}
        for status in (FAILED, UNREACHABLE, TIMEOUT, INTERRUPTED, INCOMPLETE, UNTOUCHED):
            hosts = [h for h, s in final.items() if s == status]
            if hosts:
                groups[str(status)] = hosts
        if not self.per_host and self.not_finished:
            groups["not started"] = [h for h in dict.fromkeys(self.not_finished) if h not in final]
        return {k: v for k, v in groups.items() if v}

    def to_json(self) -> dict[str, Any]:
        """The log's end record's ``summary``: ``hosts`` (how many), ``counts`` (hosts per
        status, every status present, summing to ``hosts``: per result for one step, per host's
        final status for a runbook; hosts never started count as ``untouched``), the flag
        ``interrupted``, ``stopped`` (why a rollout stopped early, or null) and ``exit_code``."""
        counts = {str(s): 0 for s in (*STATUSES, INCOMPLETE, UNTOUCHED)}
        if self.per_host:
            counts.update(self.host_counts())
            hosts = len(self.hosts)
        else:
            counts.update(self.counts)
            counts[str(UNTOUCHED)] = len(self.not_finished)
            hosts = len(self.results) + len(self.not_finished)
        data: dict[str, Any] = {"hosts": hosts, "counts": counts, "not_finished": list(self.not_finished),
                                "elapsed": round(self.elapsed, 3), "interrupted": bool(self.interrupted),
                                "stopped": self.stopped, "exit_code": int(self.exit_code)}
        if self.per_host:
            data["steps"] = list(self.steps)
            data["untouched"] = list(self.untouched)
        if self.output_closed:
            data["output_closed"] = True
        return data

    def table(self, escape: Any = str) -> str:
        """host × step → ok / failed / skipped / untouched, for the end of a runbook
        (``escape``: how host names are shown; the renderer escapes controls)."""
        steps = self.steps
        shown = {h: escape(h) for h in self.hosts}
        width = max([len(s) for s in shown.values()] + [4])
        cols = [max(len(s), 11) for s in steps]  # one column per step: zip() below pairs equal lengths
        lines = ["host".ljust(width) + "  " + "  ".join(s.ljust(c) for s, c in zip(steps, cols))]
        for host in self.hosts:
            row = self.outcome.get(host, {})
            cells = [str(row.get(s, UNTOUCHED)).ljust(c) for s, c in zip(steps, cols)]
            lines.append(shown[host].ljust(width) + "  " + "  ".join(cells))
        return "\n".join(line.rstrip() for line in lines)


#: The former name of the run summary (hostops.Summary in the library API): the same class.
Summary = RunReport
