"""The library API: what the CLI is a thin layer over.

    from hostops import Inventory, Options, resolve, run_command
    inv = Inventory.load(["hosts.yml"])
    targets = resolve(inv, inv.select("web:&prod"), Options(forks=100))
    for result in run_command(targets, "uptime", Options(forks=100)):
        print(result.host, result.status, result.stdout)
"""
from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from typing import Any, Callable, Iterator, List, Optional, Sequence

from hostops.log import maybe_open
from hostops.pool import Pool, fit_forks
from hostops.results import HostResult, Summary
from hostops.settings import Options, Target
from hostops.worker import ExecAction, Job

OnStart = Callable[[str], None]
OnOutput = Callable[[str, str, bytes], None]


class _Interrupts:
    """SIGINT/SIGTERM while a run is under way: the first asks for a clean stop (running
    commands are stopped on their hosts, finished results kept), the second aborts at once."""

    def __init__(self) -> None:
        self.count = 0
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.write_fd, False)
        self._previous: dict = {}

    def __call__(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.count > 1:
            raise KeyboardInterrupt()
        try:
            os.write(self.write_fd, b"!")
        except OSError:
            pass

    def install(self) -> "_Interrupts":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        for fd in (self.read_fd, self.write_fd):
            os.close(fd)


def run(targets: Sequence[Target], action: Any, options: Options, *, on_start: Optional[OnStart] = None,
        on_output: Optional[OnOutput] = None, summary: Optional[Summary] = None,
        handle_signals: bool = False, warn: Optional[Callable[[str], None]] = None) -> Iterator[HostResult]:
    """Run ``action`` on every target through the worker pool; yield each HostResult as its
    host finishes. ``summary`` (if given) is filled as results arrive, so a caller that is
    interrupted still knows what finished and what did not.

    With ``handle_signals`` (the CLI's choice), SIGINT and SIGTERM stop the run cleanly:
    no new host starts, running commands are stopped on their hosts and reported
    ``interrupted``, hosts never started are listed in ``summary.not_finished``.
    """
    if not targets:
        return
    if on_output is not None and not options.stream_output:
        options = dataclasses.replace(options, stream_output=True)
    options = fit_forks(options, len(targets), warn or (lambda message: None))
    jobs = [Job(i, t, action) for i, t in enumerate(targets)]
    summary = summary if summary is not None else Summary()
    summary.not_finished = [t.name for t in targets]
    log = maybe_open(options.log)
    t0 = time.monotonic()
    finished = set()
    interrupts = _Interrupts().install() if handle_signals else None
    pool: Optional[Pool] = None
    try:
        if log is not None:
            log.write({"event": "start", "pid": os.getpid(), "action": _describe(action),
                       "hosts": [t.name for t in targets], "options": _loggable(options)})
        with Pool(options, len(jobs)) as pool:
            wake = interrupts.read_fd if interrupts else None
            should_abort = (lambda: interrupts.count > 0) if interrupts else (lambda: False)
            for event in pool.run(jobs, wake, should_abort):
                kind, job = event[0], event[1]
                if kind == "started" and on_start:
                    on_start(job.target.name)
                elif kind == "output" and on_output:
                    on_output(job.target.name, event[2], event[3])
                elif kind == "done":
                    result: HostResult = event[2]
                    finished.add(job.target.name)
                    summary.add(result)
                    summary.elapsed = time.monotonic() - t0
                    yield result
            if pool.aborting:
                summary.interrupted = True
    except (KeyboardInterrupt, GeneratorExit):
        summary.interrupted = True
        raise
    finally:
        summary.elapsed = time.monotonic() - t0
        summary.not_finished = [t.name for t in targets if t.name not in finished]
        if interrupts is not None:
            interrupts.restore()
        if log is not None:
            try:
                log.write({"event": "end", "summary": summary.to_json()})
            finally:
                log.close()


def run_command(targets: Sequence[Target], command: str, options: Options, **kw: Any) -> Iterator[HostResult]:
    """Run one shell command on every target (``hostops exec``)."""
    return run(targets, ExecAction(command, options.timeout, options.sudo), options, **kw)


def _describe(action: Any) -> Any:
    describe = getattr(action, "describe", None)
    return describe() if describe else repr(action)


def _loggable(options: Options) -> dict:
    data = dataclasses.asdict(options)
    data["identity_files"] = list(options.identity_files)  # paths only, never key material
    data["known_hosts"] = list(options.known_hosts)
    return data


def collect(results: Iterator[HostResult]) -> List[HostResult]:
    return list(results)
