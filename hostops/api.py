"""The library API: what the CLI is a thin layer over.

    from hostops import Inventory, Options, resolve, run_command
    inv = Inventory.load(["hosts.yml"])
    targets = resolve(inv, inv.select("web:&prod"), Options(forks=100))
    for result in run_command(targets, "uptime", Options(forks=100)):
        print(result.host, result.status, result.stdout)
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import signal
import threading
import time
from typing import Any, Callable, Iterator, List, Optional, Sequence

from hostops.actions import ExecAction
from hostops.log import maybe_open
from hostops.pool import Pool, fit_forks
from hostops.results import INTERRUPTED, HostResult, Summary
from hostops.settings import Options, Target
from hostops.wire import Done, Job, Output, Started

OnStart = Callable[[str], None]
OnOutput = Callable[[str, str, bytes], None]


#: A second interrupt within this many seconds of the first is the same one, delivered twice:
#: GNU ``timeout -s INT`` signals hostops and then its process group, a terminal's Ctrl-C may
#: reach hostops and a wrapper that forwards it. pdsh uses the same one-second window.
ABORT_WINDOW = 1.0


class _Interrupts:
    """SIGINT/SIGTERM while a run is under way: the first asks for a clean stop (running
    commands are stopped on their hosts, finished results kept); another one, more than
    :data:`ABORT_WINDOW` later, aborts at once."""

    def __init__(self) -> None:
        self.count = 0
        self.first = 0.0
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.write_fd, False)
        self._previous: dict = {}

    def __call__(self, signum: int, frame: Any) -> None:
        now = time.monotonic()
        if self.count and now - self.first < ABORT_WINDOW:
            return  # the first interrupt again: the clean stop is already under way
        self.count += 1
        if self.count == 1:
            self.first = now
        else:
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


class Session:
    """One pool of workers for one or more steps, with the run's log, signal handling and
    summary. ``exec`` uses one step; a runbook uses many, and with ``keep_connections`` each
    host keeps one SSH connection across them.

    With ``handle_signals`` (the CLI's choice), SIGINT and SIGTERM stop the run cleanly:
    no new host starts, running commands are stopped on their hosts and reported
    ``interrupted``; a second signal, more than ABORT_WINDOW later, aborts at once
    (KeyboardInterrupt).
    """

    def __init__(self, options: Options, host_count: int, *, handle_signals: bool = False,
                 warn: Optional[Callable[[str], None]] = None, keep_connections: bool = False,
                 summary: Optional[Summary] = None):
        self.options = fit_forks(options, host_count, warn or (lambda message: None))
        self._warn = warn or (lambda message: None)
        self.host_count = host_count
        self.keep_connections = keep_connections
        self.summary = summary if summary is not None else Summary()
        self.handle_signals = handle_signals
        self.log = None
        self.pool: Optional[Pool] = None
        self._interrupts: Optional[_Interrupts] = None
        self.not_started: List[str] = []
        self._ids = itertools.count()
        self._t0 = time.monotonic()

    @property
    def interrupted(self) -> bool:
        signalled = self._interrupts is not None and self._interrupts.count > 0
        return signalled or bool(self.pool is not None and self.pool.aborting) or self.summary.interrupted

    def request_stop(self) -> None:
        """Stop as a first Ctrl-C does (the CLI calls this when its output's reader went away):
        no new host starts, running commands are stopped on their hosts and reported."""
        interrupts = self._interrupts
        if interrupts is not None and interrupts.count == 0:
            interrupts(signal.SIGPIPE, None)
        elif interrupts is None:
            self.summary.interrupted = True

    def _write_log(self, record: dict, what: str) -> None:
        """A run record that cannot be written (full disk) is named on stderr; the run goes on."""
        if self.log is None:
            return
        try:
            self.log.write(record)
        except OSError as exc:
            self._warn(f"could not write log: the {what} record is missing from {self.log.path} "
                       f"({exc.strerror or exc})")

    def wait_interrupt(self, seconds: float) -> bool:
        """Sleep up to ``seconds`` (between batches); True at once if the run is interrupted."""
        if self._interrupts is None:
            time.sleep(max(0.0, seconds))
            return self.interrupted
        import select

        select.select([self._interrupts.read_fd], [], [], max(0.0, seconds))
        return self.interrupted

    def start(self, what: Any, hosts: Sequence[str]) -> "Session":
        self._hosts = list(hosts)
        self.log = maybe_open(self.options.log, self.options.secrets)
        self._write_log({"event": "start", "pid": os.getpid(), "action": what, "hosts": list(hosts),
                         "options": _loggable(self.options)}, "start")
        if self.handle_signals:
            self._interrupts = _Interrupts().install()
        self.pool = Pool(self.options, self.host_count)
        self.pool.start()
        return self

    def run(self, targets: Sequence[Target], action: Any, *, on_start: Optional[OnStart] = None,
            on_output: Optional[OnOutput] = None, step: Optional[str] = None) -> Iterator[HostResult]:
        """Run one step: ``action`` (or ``action(target)`` when callable per host) on every
        target; yield each HostResult as its host finishes. Hosts never started because the
        run was interrupted end up in ``self.not_started`` (names)."""
        assert self.pool is not None, "Session.start() first"
        self.not_started: List[str] = []
        if not targets or self.interrupted:
            self.not_started = [t.name for t in targets]
            if self.interrupted:
                self.summary.interrupted = True
            return
        per_host = getattr(action, "for_target", None)
        jobs = [Job(next(self._ids), t, per_host(t) if per_host else action, self.keep_connections, step)
                for t in targets]
        interrupts = self._interrupts
        wake = interrupts.read_fd if interrupts else None
        should_abort = (lambda: interrupts.count > 0) if interrupts else (lambda: False)
        self.pool.not_started = []
        for event in self.pool.run(jobs, wake, should_abort):
            job = event.job
            if isinstance(event, Started) and on_start:
                on_start(job.target.name)
            elif isinstance(event, Output) and on_output:
                on_output(job.target.name, event.stream, event.data)
            elif isinstance(event, Done):
                result: HostResult = event.result
                if event.by_parent:  # made up by the pool: the worker died or is stuck; clean up after it
                    _discard_partial(job)
                if self.log is not None and event.by_parent:  # made up by the pool: no worker logged it
                    try:
                        self.log.write({"event": "host", **result.to_json()})
                    except OSError as exc:
                        note = f"could not write log: {exc.strerror or exc}"
                        result.error = (result.error + "; " if result.error else "") + note
                self.summary.add(result)
                self.summary.elapsed = time.monotonic() - self._t0
                yield result
        self.not_started = [j.target.name for j in self.pool.not_started]
        if self.pool.aborting:
            self.summary.interrupted = True

    def _abandon_in_flight(self) -> None:
        """Aborting at once (a second Ctrl-C, an error): the hosts still running are reported
        (and logged) interrupted, never as 'not started', and their commands may still run."""
        names = self.pool.in_flight() if self.pool is not None else []
        for name in names:
            result = HostResult(name, INTERRUPTED, error="aborted while running (a second interrupt); the remote "
                                                          "command may still be running")
            self.summary.add(result)
            if self.log is not None:
                try:
                    self.log.write({"event": "host", **result.to_json()})
                except OSError:
                    pass
        if names:
            self.summary.not_finished = [h for h in self.summary.not_finished if h not in set(names)]

    def release(self, hosts: Sequence[str]) -> None:
        """Close the connections kept for ``hosts`` (a runbook batch is done with them)."""
        if self.keep_connections and self.pool is not None:
            self.pool.release(hosts)

    def close(self, error: Optional[BaseException] = None, end: Optional[dict] = None) -> None:
        """Stop the workers and write the log's end record (``end``: a caller's own summary,
        e.g. per host for a runbook, instead of the per-result one)."""
        self.summary.elapsed = time.monotonic() - self._t0
        try:
            if self.pool is not None:
                if error is None:
                    self.pool.close()
                else:
                    self._abandon_in_flight()
                    self.pool.terminate(now=isinstance(error, KeyboardInterrupt))
        finally:
            if self._interrupts is not None:
                self._interrupts.restore()
                self._interrupts = None
            if self.log is not None:
                try:
                    if not self.summary.not_finished:  # the caller may fill it in only later
                        done = {r.host for r in self.summary.results}
                        self.summary.not_finished = [h for h in getattr(self, "_hosts", []) if h not in done]
                    self._write_log({"event": "end", "summary": end if end is not None else self.summary.to_json()},
                                    "end")
                finally:
                    self.log.close()
                    self.log = None


def _discard_partial(job: Job) -> None:
    """A host reported by the parent (its worker died): nothing ran in that worker to remove
    what it was writing locally (``get``'s partial files), so the action's own cleanup runs here."""
    discard = getattr(job.action, "discard_partial", None)
    if discard is not None:
        try:
            discard(job.target)
        except Exception:  # cleanup is best effort; the host is reported failed either way
            pass


def run(targets: Sequence[Target], action: Any, options: Options, *, on_start: Optional[OnStart] = None,
        on_output: Optional[OnOutput] = None, summary: Optional[Summary] = None,
        handle_signals: bool = False, warn: Optional[Callable[[str], None]] = None) -> Iterator[HostResult]:
    """Run ``action`` on every target through the worker pool; yield each HostResult as its
    host finishes. ``summary`` (if given) is filled as results arrive, so a caller that is
    interrupted still knows what finished and what did not (``summary.not_finished``)."""
    if not targets:
        return
    if on_output is not None and not options.stream_output:
        options = dataclasses.replace(options, stream_output=True)
    session = Session(options, len(targets), handle_signals=handle_signals, warn=warn, summary=summary)
    session.summary.not_finished = [t.name for t in targets]
    finished = set()
    error: Optional[BaseException] = None
    try:
        session.start(_describe(action), [t.name for t in targets])
        for result in session.run(targets, action, on_start=on_start, on_output=on_output):
            finished.add(result.host)
            yield result
    except (KeyboardInterrupt, GeneratorExit) as exc:
        session.summary.interrupted = True
        error = exc
        raise
    except BaseException as exc:
        error = exc
        raise
    finally:
        session.summary.not_finished = [t.name for t in targets if t.name not in finished]
        session.close(error if not isinstance(error, GeneratorExit) else KeyboardInterrupt())


def run_command(targets: Sequence[Target], command: str, options: Options, **kw: Any) -> Iterator[HostResult]:
    """Run one shell command on every target (``hostops exec``)."""
    return run(targets, ExecAction(command, options.timeout, options.sudo), options, **kw)


def _describe(action: Any) -> Any:
    describe = getattr(action, "describe", None)
    return describe() if describe else repr(action)


def _loggable(options: Options) -> dict:
    data = dataclasses.asdict(dataclasses.replace(options, secrets=None))  # type: ignore[arg-type]
    data.pop("secrets", None)  # passwords and secret values never reach the log
    data["identity_files"] = list(options.identity_files)  # paths only, never key material
    data["known_hosts"] = list(options.known_hosts)
    return data


def collect(results: Iterator[HostResult]) -> List[HostResult]:
    return list(results)
