"""Per-host results and the run summary: plain dataclasses that cross process boundaries."""
from __future__ import annotations

import dataclasses
import datetime as _dt
from typing import Any, Dict, Iterable, List, Optional

from hostops import exitcodes

OK, FAILED, UNREACHABLE, TIMEOUT = "ok", "failed", "unreachable", "timeout"
UNCHANGED = "unchanged"  # put --checksum: the host already had the file; a success
INTERRUPTED = "interrupted"  # the run was interrupted while this host's command ran
STATUSES = (OK, UNCHANGED, FAILED, UNREACHABLE, TIMEOUT, INTERRUPTED)
SUCCESS = (OK, UNCHANGED)


@dataclasses.dataclass
class HostResult:
    """What happened on one host. ``status`` is ok, unchanged (put --checksum sent nothing),
    failed (remote exit code ≠ 0, or a local failure such as a crashed worker), unreachable
    (DNS/TCP/banner/auth/host key) or timeout."""

    host: str
    status: str
    exit_code: Optional[int] = None
    stdout: bytes = b""
    stderr: bytes = b""
    error: Optional[str] = None
    start: float = 0.0
    duration: float = 0.0
    step: Optional[str] = None  # the runbook step this result belongs to

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

    def to_json(self) -> Dict[str, Any]:
        """A JSON-ready dict; output bytes decoded as UTF-8 with undecodable bytes escaped."""
        data = {
            "host": self.host,
            "status": self.status,
            "exit_code": self.exit_code,
            "stdout": decode(self.stdout),
            "stderr": decode(self.stderr),
            "error": self.error,
            "start": _dt.datetime.fromtimestamp(self.start, _dt.timezone.utc).isoformat(timespec="milliseconds")
            if self.start else None,
            "duration": round(self.duration, 3),
        }
        if self.step is not None:
            data["step"] = self.step
        return data


def decode(data: bytes) -> str:
    """UTF-8 text with undecodable bytes escaped as ``\\xNN`` (never lost, never a crash)."""
    return data.decode("utf-8", errors="backslashreplace")


@dataclasses.dataclass
class Summary:
    """Counts per status over a run; ``exit_code`` follows pssh's scheme."""

    results: List[HostResult] = dataclasses.field(default_factory=list)
    elapsed: float = 0.0
    interrupted: bool = False
    not_finished: List[str] = dataclasses.field(default_factory=list)
    output_closed: bool = False  # stdout's reader went away, which stopped the run: exit 141

    def add(self, result: HostResult) -> None:
        self.results.append(result)

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def counts(self) -> Dict[str, int]:
        return {s: self.count(s) for s in STATUSES}

    @property
    def ok(self) -> List[HostResult]:
        return [r for r in self.results if r.ok]

    @property
    def failed(self) -> List[HostResult]:
        return [r for r in self.results if not r.ok]

    @property
    def exit_code(self) -> exitcodes.ExitCode:
        if self.output_closed:
            return exitcodes.ExitCode.OUTPUT_CLOSED
        return exitcodes.for_statuses((r.status for r in self.results), self.interrupted)

    def line(self) -> str:
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

    def to_json(self) -> Dict[str, Any]:
        data = {"hosts": len(self.results) + len(self.not_finished), **self.counts,
                "not_finished": self.not_finished, "elapsed": round(self.elapsed, 3),
                "interrupted": self.interrupted, "exit_code": int(self.exit_code)}
        if self.output_closed:
            data["output_closed"] = True
        return data


def summarize(results: Iterable[HostResult], elapsed: float = 0.0) -> Summary:
    return Summary(list(results), elapsed)
