"""The library API: what the CLI is a thin layer over.

    from hostops import Inventory, Options, resolve, run_command
    inv = Inventory.load(["hosts.yml"])
    targets = resolve(inv, inv.select("web:&prod"), Options(forks=100))
    for result in run_command(targets, "uptime", Options(forks=100)):
        print(result.host, result.status, result.stdout)

A whole rollout, as the CLI runs it (lock, batches, thresholds, state file, exit status)::

    report = run_rollout(targets, [StepRun("uptime", lambda t: action)], options, RolloutSpec(batch="10%"),
                         events=make_renderer("blocks"), lock="/run/deploy.lock", state_file=state_path())
    sys.exit(report.exit_code)

Owns: :func:`run_rollout` (the run lock, the session, the rollout, the state file, what was
not finished, the exit status), :class:`Session` (one worker pool, the run log, signals),
the :class:`Events` protocol a renderer implements, and :func:`run`/:func:`run_command`.
Must not import: the CLI (:mod:`hostops.cli`), click, the runbook language.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from hostops.actions import ExecAction, LeavesLocalFiles
from hostops.hostlist import compact
from hostops.log import maybe_open
from hostops.fdlimit import fit_forks
from hostops.pool import Pool
from hostops.results import INTERRUPTED, HostResult, RunReport
from hostops.rollout import RolloutSpec, StepRun, rollout
from hostops.settings import Options, Target
from hostops.wire import Done, Job, Output, Started

OnStart = Callable[[str], None]
OnOutput = Callable[[str, str, bytes], None]


class Events(Protocol):
    """The one handler a run reports to (the CLI's renderers in :mod:`hostops.output`
    implement it): hosts starting, their streamed output, their results, a new batch or step,
    a warning, and the end."""

    def started(self, host: str) -> None: ...

    def output(self, host: str, stream: str, data: bytes) -> None: ...

    def result(self, result: HostResult) -> None: ...

    def section(self, title: str, total: int) -> None: ...

    def warning(self, message: str) -> None: ...

    def finish(self, report: RunReport) -> None: ...


class NoEvents:
    """Events nobody watches (a library caller that only wants the report), or those given
    as the old callbacks (``on_start``, ``on_output``, ``warn``)."""

    def __init__(self, on_start: OnStart | None = None, on_output: OnOutput | None = None,
                 warn: Callable[[str], None] | None = None):
        self._on_start, self._on_output, self._warn = on_start, on_output, warn

    def started(self, host: str) -> None:
        if self._on_start is not None:
            self._on_start(host)

    def output(self, host: str, stream: str, data: bytes) -> None:
        if self._on_output is not None:
            self._on_output(host, stream, data)

    def result(self, result: HostResult) -> None:
        pass

    def section(self, title: str, total: int) -> None:
        pass

    def warning(self, message: str) -> None:
        if self._warn is not None:
            self._warn(message)

    def finish(self, report: RunReport) -> None:
        pass


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

    def __call__(self, signum: int, frame: Any) -> None:  # noqa: ARG002  (a signal handler's signature)
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

    def install(self) -> _Interrupts:
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
    report. ``exec`` uses one step; a runbook uses many, and with ``keep_connections`` each
    host keeps one SSH connection across them. Hosts starting and their streamed output go
    to ``events``; each result is yielded by :meth:`run` and added to :attr:`report`.

    With ``handle_signals`` (the CLI's choice), SIGINT and SIGTERM stop the run cleanly:
    no new host starts, running commands are stopped on their hosts and reported
    ``interrupted``; a second signal, more than ABORT_WINDOW later, aborts at once
    (KeyboardInterrupt).
    """

    def __init__(self, options: Options, host_count: int, *, events: Events | None = None,
                 handle_signals: bool = False, keep_connections: bool = False,
                 report: RunReport | None = None, pool_factory: Callable[[Options, int], Any] | None = None):
        self.pool_factory = pool_factory or make_pool  # the engine seam: Pool or KeeperPool, or e.g. hostops.cluster.ClusterPool
        self.events: Events = events if events is not None else NoEvents()
        self.options = fit_forks(options, host_count, self.events.warning)
        self.host_count = host_count
        self.keep_connections = keep_connections
        self.report = report if report is not None else RunReport()
        self.handle_signals = handle_signals
        self.log: Any = None
        self.pool: Any = None  # a Pool, a KeeperPool (--persist), or what pool_factory makes (--cluster)
        self._interrupts: _Interrupts | None = None
        self._hosts: list[str] = []
        self.not_started: list[str] = []
        self._ids = itertools.count()
        self._t0 = time.monotonic()

    @property
    def interrupted(self) -> bool:
        signalled = self._interrupts is not None and self._interrupts.count > 0
        return signalled or bool(self.pool is not None and self.pool.aborting) or self.report.interrupted

    def request_stop(self) -> None:
        """Stop as a first Ctrl-C does (when the output's reader went away): no new host
        starts, running commands are stopped on their hosts and reported."""
        interrupts = self._interrupts
        if interrupts is not None and interrupts.count == 0:
            interrupts(signal.SIGPIPE, None)
        elif interrupts is None:
            self.report.interrupted = True

    def _write_log(self, record: dict, what: str) -> None:
        """A run record that cannot be written (full disk) is named on stderr; the run goes on."""
        if self.log is None:
            return
        try:
            self.log.write(record)
        except OSError as exc:
            self.events.warning(f"could not write log: the {what} record is missing from {self.log.path} "
                                f"({exc.strerror or exc})")

    def wait_interrupt(self, seconds: float) -> bool:
        """Sleep up to ``seconds`` (between batches); True at once if the run is interrupted."""
        if self._interrupts is None:
            time.sleep(max(0.0, seconds))
            return self.interrupted
        import select

        select.select([self._interrupts.read_fd], [], [], max(0.0, seconds))
        return self.interrupted

    def start(self, what: Any, hosts: Sequence[str]) -> Session:
        self._hosts = list(hosts)
        self.log = maybe_open(self.options.log, self.options.secrets)
        self._write_log({"event": "start", "pid": os.getpid(), "action": what, "hosts": list(hosts),
                         "options": _loggable(self.options)}, "start")
        if self.handle_signals:
            self._interrupts = _Interrupts().install()
        self.pool = self.pool_factory(self.options, self.host_count)
        self.pool.start()
        return self

    def run(self, targets: Sequence[Target], action: Any, *, step: str | None = None) -> Iterator[HostResult]:
        """Run one step: ``action`` (or ``action.for_target(target)`` when it has one) on every
        target; yield each HostResult as its host finishes. Hosts never started because the
        run was interrupted end up in ``self.not_started`` (names)."""
        assert self.pool is not None, "Session.start() first"
        self.not_started = []
        if not targets or self.interrupted:
            self.not_started = [t.name for t in targets]
            if self.interrupted:
                self.report.interrupted = True
            return
        per_host = getattr(action, "for_target", None)
        jobs = [Job(next(self._ids), t, per_host(t) if per_host else action, self.keep_connections, step)
                for t in targets]
        interrupts = self._interrupts
        wake = interrupts.read_fd if interrupts else None
        should_abort = (lambda: interrupts.count > 0) if interrupts else (lambda: False)
        self.pool.not_started = []
        for event in self.pool.run(jobs, wake, should_abort):
            if isinstance(event, Started):
                self.events.started(event.job.target.name)
            elif isinstance(event, Output):
                self.events.output(event.job.target.name, event.stream, event.data)
            elif isinstance(event, Done):
                yield self._done(event)
        self.not_started = [j.target.name for j in self.pool.not_started]
        if self.pool.aborting:
            self.report.interrupted = True

    def _done(self, event: Done) -> HostResult:
        result: HostResult = event.result
        if event.by_parent:  # made up by the pool: the worker died or is stuck; clean up after it
            _discard_partial(event.job)
        if event.by_parent or not self.pool.logs_results:
            if self.log is not None:  # no worker logged it
                try:
                    self.log.write({"event": "host", **result.to_json()})
                except OSError as exc:
                    note = f"could not write log: {exc.strerror or exc}"
                    result.error = (result.error + "; " if result.error else "") + note
        self.report.add(result)
        self.report.elapsed = time.monotonic() - self._t0
        return result

    def _abandon_in_flight(self) -> None:
        """Aborting at once (a second Ctrl-C, an error): the hosts still running are reported
        (and logged) interrupted, never as 'not started', and their commands may still run."""
        names = self.pool.in_flight() if self.pool is not None else []
        for name in names:
            result = HostResult(name, INTERRUPTED, error="aborted while running (a second interrupt); the remote "
                                                          "command may still be running")
            self.report.add(result)
            if self.log is not None:
                try:
                    self.log.write({"event": "host", **result.to_json()})
                except OSError:
                    pass
        if names:
            self.report.not_finished = [h for h in self.report.not_finished if h not in set(names)]

    def release(self, hosts: Sequence[str]) -> None:
        """Close the connections kept for ``hosts`` (a runbook batch is done with them)."""
        if self.keep_connections and self.pool is not None:
            self.pool.release(hosts)

    def close(self, error: BaseException | None = None) -> None:
        """Stop the workers and write the log's end record (:meth:`RunReport.to_json`)."""
        self.report.elapsed = time.monotonic() - self._t0
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
                    if not self.report.not_finished:  # the caller may fill it in only later
                        done = {r.host for r in self.report.results}
                        self.report.not_finished = [h for h in self._hosts if h not in done]
                    self._write_log({"event": "end", "summary": self.report.to_json()}, "end")
                finally:
                    self.log.close()
                    self.log = None


def make_pool(options: Options, host_count: int) -> Any:
    """The pool a session runs on: its own worker processes, or with ``options.persist`` the
    connection keeper's (:class:`hostops.keeperclient.KeeperPool`, the same interface)."""
    if options.persist:
        from hostops.keeperclient import KeeperPool

        return KeeperPool(options, host_count)
    return Pool(options, host_count)


def _discard_partial(job: Job) -> None:
    """A host reported by the parent (its worker died): nothing ran in that worker to remove
    what it was writing locally (``get``'s partial files), so the action's own cleanup runs here."""
    if isinstance(job.action, LeavesLocalFiles):
        try:
            job.action.discard_partial(job.target)
        except Exception:  # noqa: BLE001, S110 - cleanup is best effort; the host is reported failed either way
            pass


def run(targets: Sequence[Target], action: Any, options: Options, *, on_start: OnStart | None = None,
        on_output: OnOutput | None = None, report: RunReport | None = None,
        handle_signals: bool = False, warn: Callable[[str], None] | None = None) -> Iterator[HostResult]:
    """Run ``action`` on every target through the worker pool; yield each HostResult as its
    host finishes. ``report`` (if given) is filled as results arrive, so a caller that is
    interrupted still knows what finished and what did not (``report.not_finished``).
    No batches, lock or state file: see :func:`run_rollout` for those."""
    if not targets:
        return
    if on_output is not None and not options.stream_output:
        options = dataclasses.replace(options, stream_output=True)
    session = Session(options, len(targets), events=NoEvents(on_start, on_output, warn),
                      handle_signals=handle_signals, report=report)
    session.report.not_finished = [t.name for t in targets]
    finished = set()
    error: BaseException | None = None
    try:
        session.start(action.describe(), [t.name for t in targets])
        for result in session.run(targets, action):
            finished.add(result.host)
            yield result
    except (KeyboardInterrupt, GeneratorExit) as exc:
        session.report.interrupted = True
        error = exc
        raise
    except BaseException as exc:
        error = exc
        raise
    finally:
        session.report.not_finished = [t.name for t in targets if t.name not in finished]
        session.close(error if not isinstance(error, GeneratorExit) else KeyboardInterrupt())


def run_command(targets: Sequence[Target], command: str, options: Options, **kw: Any) -> Iterator[HostResult]:
    """Run one shell command on every target (``hostops exec``)."""
    return run(targets, ExecAction(command, options.timeout, options.sudo), options, **kw)


def _loggable(options: Options) -> dict:
    data = dataclasses.asdict(dataclasses.replace(options, secrets=None))  # type: ignore[arg-type]
    data.pop("secrets", None)  # passwords and secret values never reach the log
    data["identity_files"] = list(options.identity_files)  # paths only, never key material
    data["known_hosts"] = list(options.known_hosts)
    return data


# ------------------------------------------------------------------ the whole rollout
def run_rollout(targets: Sequence[Target], steps: Sequence[StepRun], options: Options,
                spec: RolloutSpec | None = None, events: Events | None = None, *,
                lock: str | None = None, state_file: str | None = None, what: str | None = None,
                keep_connections: bool = False, handle_signals: bool = True,
                warn_unchecked_keys: bool = True, pool_factory: Callable[[Options, int], Any] | None = None) -> RunReport:
    """Run ``steps`` over ``targets``, rolled out per ``spec`` (batches, max_fail, canary,
    pause), reporting to ``events``; return the :class:`RunReport` (``report.exit_code`` is
    the run's exit status).

    ``lock``: a file held locked meanwhile (:class:`hostops.runlock.RunLock`; held by another
    run: :class:`hostops.errors.LockHeld`, exit 6). ``state_file``: where each host's outcome
    is recorded for the next run's ``@failed`` (None: not recorded). With ``handle_signals``,
    the first Ctrl-C or SIGTERM stops the run cleanly (running commands stopped on their
    hosts, finished results reported and logged); a second aborts at once. ``events.finish``
    is called once, at the end, whatever happened."""
    from hostops.runlock import RunLock

    events = events if events is not None else NoEvents()
    run_lock = RunLock(lock).acquire() if lock else None
    try:
        report = RunReport()
        if not targets:
            report.completed = True
            return report
        if warn_unchecked_keys:
            _warn_unchecked_keys(targets, options, events.warning)
        session = Session(options, len(targets), events=events, handle_signals=handle_signals,
                          keep_connections=keep_connections, report=report, pool_factory=pool_factory)
        shown = _drive(session, targets, steps, spec if spec is not None else RolloutSpec(), what)
        for result in report.results:  # reported while closing (abandoned after a second Ctrl-C)
            if id(result) not in shown:
                events.result(result)
        label = what or steps[0].name
        if not report.completed:  # aborted by a second Ctrl-C: what finished is in the results
            done = {r.host for r in report.results}
            report.not_finished = [t.name for t in targets if t.name not in done]
            label = what or "run"
        else:
            report.not_finished = report.untouched
            if report.stopped and report.untouched:
                events.warning(f"not touched ({len(report.untouched)}): {compact(report.untouched)}")
        events.finish(report)
        if state_file is not None:
            _save_state(state_file, label, report, options, events.warning)
        return report
    finally:
        if run_lock is not None:
            run_lock.release()


def _drive(session: Session, targets: Sequence[Target], steps: Sequence[StepRun], spec: RolloutSpec,
           what: str | None) -> set:
    """Start the session, roll the steps out, close it; the ids of the results shown."""
    events, report = session.events, session.report
    multi = len(steps) > 1
    shown: set = set()

    def on_step(b: int, nb: int, s: int, step: StepRun, hosts: list[str]) -> None:
        if multi or nb > 1:
            where = f"batch {b + 1}/{nb}" + (f" · step {s + 1}/{len(steps)}: {step.name}" if multi else "")
            events.section(f"== {where} ({len(hosts)} host{'s' if len(hosts) != 1 else ''}) ==", len(hosts))

    def show(result: HostResult) -> None:
        shown.add(id(result))
        events.result(result)

    error: BaseException | None = None
    unwatch = _watch_stdout(session)
    try:
        session.start(what or steps[0].name, [t.name for t in targets])
        rollout(session, targets, steps, spec, on_step=on_step, on_result=show,
                on_stop=lambda reason: events.warning(f"stopped: {reason}"), report=report)
        report.completed = True
    except KeyboardInterrupt as exc:
        error = exc
        report.interrupted = True
    finally:
        unwatch()
        session.close(error)
    return shown


def _warn_unchecked_keys(targets: Sequence[Target], options: Options, warn: Callable[[str], None]) -> None:
    """Say when host keys go unchecked, whether --host-key-policy off or ssh_config's
    StrictHostKeyChecking no turned the check off (hosts and jump hosts alike)."""
    if options.host_key_policy == "off":
        warn("host key checking is off (--host-key-policy off): a man in the middle would go unnoticed; "
             "no password is sent to a host whose key differs from known_hosts")
        return
    off: list[str] = []
    for t in targets:
        if t.connection != "local" and t.host_key_policy == "off":
            off.append(t.name)
        off += [f"jump host {hop.name}" for hop in t.jump if hop.host_key_policy == "off"]
    if off:
        warn(f"host key checking is off for {compact(list(dict.fromkeys(off)))} (StrictHostKeyChecking no "
             "in ssh_config): a man in the middle would go unnoticed; no password is sent to a host whose key "
             "differs from known_hosts")


def _watch_stdout(session: Session) -> Callable[[], None]:
    """Standard output's reader went away (``| head -1``, ``| true``): stop the run as a first
    Ctrl-C does (no new host starts, running commands are stopped on their hosts, every host
    is logged and recorded for @failed), like a tool stopped by SIGPIPE but with the record
    kept; the CLI then exits 141. Any other write error (a full disk under ``> file``) only
    stops the output: the run goes on, its hosts' outcome in --log, -o and the state file.
    Nothing happens unless the CLI guarded the standard streams (output.guard_std_streams)."""
    from hostops.stdstreams import reader_gone, stream_error, when_broken

    warn = session.events.warning

    def broken(exc: OSError) -> None:
        if reader_gone(exc):
            session.report.output_closed = True
            warn("standard output was closed (its reader went away); stopping the run as an interrupt "
                 "does: running commands are stopped on their hosts, and each host is still logged")
            session.request_stop()
        else:
            warn(f"could not write standard output ({exc.strerror or exc}); output is dropped from here "
                 "on, the run goes on (see --log, -o)")

    error = stream_error("stdout")
    if error is not None:
        broken(error)
        return lambda: None
    return when_broken("stdout", broken)


def _save_state(path: str, what: str, report: RunReport, options: Options, warn: Callable[[str], None]) -> None:
    from hostops.state import write_report

    try:
        write_report(path, what, report, options.secrets)
    except OSError as exc:
        warn(f"could not record this run's outcome in {path}: {exc.strerror or exc} (-l @failed will not see it)")
