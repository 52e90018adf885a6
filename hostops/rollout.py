"""Rolling out steps over hosts: batches, an abort threshold, canaries and pauses.

Hosts are split into batches that run one after another. Inside a batch each step runs on
all the batch's hosts in parallel, and the next step starts when it has finished
everywhere. A host that fails a step skips the rest (except ``when_failed`` steps) and
counts against ``max_fail``; once more hosts failed than that, the current step is the
last: no new batch starts, and the hosts never touched are named.

``exec``/``put``/``get``/``script`` use the same code with a single step, so ``--batch``,
``--max-fail``, ``--canary`` and ``--pause`` work for one-off commands too.

Owns: batches, max_fail, canary, pause, when_failed; fills a :class:`RunReport`'s per-step view.
Must not import: the runbook language (it imports this module), the CLI, the renderers,
the pool (it runs steps through a session handed to it, :class:`hostops.api.Session`).
"""
from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

from hostops.errors import UsageError
from hostops.hostlist import compact
from hostops.results import INTERRUPTED, SKIPPED, UNTOUCHED, RunReport

__all__ = ["SKIPPED", "UNTOUCHED", "RolloutSpec", "StepRun", "count_of", "make_batches", "rollout"]


def count_of(text: Any, total: int, what: str, allow_zero: bool = False) -> int:
    """``N`` or ``N%`` of ``total`` (rounded up; at least 1 unless zero is allowed)."""
    spec = str(text).strip()
    m = re.fullmatch(r"(\d+)(%?)", spec)
    if not m:
        raise UsageError(f"{what} {spec!r} must be a number or a percentage such as 10%")
    n = int(m.group(1))
    if m.group(2):
        if n > 100:
            raise UsageError(f"{what} {spec!r} is more than 100%")
        n = -(-n * total // 100)  # ceil
    if n == 0 and not allow_zero:
        raise UsageError(f"{what} {spec!r} must be at least 1")
    return n


@dataclasses.dataclass
class RolloutSpec:
    batch: str | None = None      # N or N%; None: all hosts at once
    max_fail: str | None = None   # N or N%; None: never stop early
    canary: int = 0                  # run this many hosts first; stop unless all succeed
    pause: float = 0.0               # seconds between batches

    @property
    def active(self) -> bool:
        return bool(self.batch or self.max_fail is not None or self.canary or self.pause)


@dataclasses.dataclass
class StepRun:
    """What a rollout runs: a name, whether it only runs on failed hosts, and the action
    for each host (``action_for(target)``)."""

    name: str
    action_for: Callable[[Any], Any]
    when_failed: bool = False

    def for_target(self, target) -> Any:
        return self.action_for(target)


def make_batches(hosts: Sequence[str], batch: str | None, canary: int = 0) -> list[list[str]]:
    hosts = list(hosts)
    batches: list[list[str]] = []
    if canary:
        batches.append(hosts[:canary])
        hosts = hosts[canary:]
    size = count_of(batch, len(hosts) or 1, "batch") if batch else len(hosts)
    size = max(1, size)
    batches += [hosts[i:i + size] for i in range(0, len(hosts), size)]
    return [b for b in batches if b]


def rollout(session: Any, targets: Sequence[Any], steps: Sequence[StepRun], spec: RolloutSpec, *,  # noqa: C901
            on_step: Callable[[int, int, int, StepRun, list[str]], None] | None = None,
            on_result: Callable[[Any], None] | None = None,
            on_stop: Callable[[str], None] | None = None, report: RunReport | None = None) -> RunReport:
    """Run ``steps`` over ``targets`` through ``session`` (an :class:`hostops.api.Session`,
    which tells its own events handler about starts and output); fill ``report`` (or a new
    one) with each host's status per step, the batches, and why the rollout stopped early.

    One piece on purpose (~65 lines): batch → step → hosts, with the stop conditions (Ctrl-C,
    max_fail, canary) checked between each level; split up, the bookkeeping they share
    (failed_here, failed_total, report.stopped) would be spread over several functions."""
    by_name = {t.name: t for t in targets}
    names = [t.name for t in targets]
    batches = make_batches(names, spec.batch, spec.canary)
    max_fail = None if spec.max_fail is None else count_of(spec.max_fail, len(names), "max_fail", allow_zero=True)
    report = report if report is not None else RunReport()
    report.hosts, report.steps, report.outcome, report.batches = names, [s.name for s in steps], \
        {h: {} for h in names}, batches
    report.main_steps = [s.name for s in steps if not s.when_failed]
    failed_total: list[str] = []
    for b_index, batch in enumerate(batches):
        if b_index and spec.pause and _pause(session, spec.pause):
            report.interrupted = True
        if report.interrupted or session.interrupted:
            report.interrupted = True
            break
        failed_here: dict[str, str] = {}
        for s_index, step in enumerate(steps):
            if report.stopped and not step.when_failed:
                continue  # past max_fail: only the when_failed steps (collect logs…) still run
            if step.when_failed:
                run_on = [h for h in batch if h in failed_here]
            else:
                run_on = [h for h in batch if h not in failed_here]
            for h in batch:
                if h not in run_on:
                    report.outcome[h][step.name] = SKIPPED
            if not run_on:
                continue
            if on_step:
                on_step(b_index, len(batches), s_index, step, run_on)
            for result in session.run([by_name[h] for h in run_on], step,
                                      step=step.name if len(steps) > 1 else None):
                report.outcome[result.host][step.name] = result.status
                if on_result:
                    on_result(result)
                if not result.ok and not step.when_failed and result.host not in failed_here:
                    failed_here[result.host] = result.status
                    if result.status != INTERRUPTED:
                        failed_total.append(result.host)
            for h in session.not_started:
                report.outcome[h][step.name] = UNTOUCHED
            if session.interrupted:
                report.interrupted = True
                break
            if not report.stopped and max_fail is not None and len(failed_total) > max_fail:
                report.stopped = (f"{len(failed_total)} host(s) failed, more than max_fail {max_fail}: "
                                  f"{compact(failed_total)}")
        release = getattr(session, "release", None)
        if release is not None:
            release(batch)  # this batch is done: its kept connections are closed
        if report.interrupted or report.stopped:
            break
        if spec.canary and b_index == 0 and failed_here:
            report.stopped = f"the canary batch failed on {compact(list(failed_here))}; nothing else was run"
            break
    report.failed = failed_total
    report.untouched = [h for h in names if report.final_status(h) == UNTOUCHED]
    if report.stopped and on_stop:
        on_stop(report.stopped)
    return report


def _pause(session, seconds: float) -> bool:
    """Wait between batches; True when the run was interrupted meanwhile."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if session.wait_interrupt(min(0.5, end - time.monotonic())):
            return True
    return False
