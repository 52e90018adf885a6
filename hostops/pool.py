"""The process pool: worker processes, their results Queues, and the job hand-over.

The seam is small on purpose: :meth:`Pool.run` takes jobs and yields events as hosts
start, print and finish. A distributed backend only has to offer the same method.

Why our own pool of ``multiprocessing.Process`` rather than ``multiprocessing.Pool``:
when a ``Pool`` worker dies its task is lost and the caller waits forever. Here each
worker has its own job pipe and its own results Queue (a ``multiprocessing.Queue``
with exactly one writer process), so the parent always knows which hosts a dead worker
held, and a worker killed in the middle of writing a result can neither wedge the
other workers (it held no lock they need) nor leave a half message that blocks the
parent (the parent keeps no copy of the writing end, so it sees end-of-file instead).

Owns: worker processes and their slots, job hand-over (a kept connection's host goes back
to its worker), the parent's watchdog, crash accounting, the open-file budget (-f).
Speaks only :mod:`hostops.wire` messages. Must not import: api, cli, rollout, runbook,
transport (or its successors).
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import multiprocessing
import multiprocessing.connection
import os
import time
from typing import Any, Callable, Deque, Dict, Iterable, Iterator, List, Optional, Set, Union

from hostops.actions import RetryAction
from hostops.results import FAILED, INTERRUPTED, TIMEOUT, HostResult
from hostops.settings import START_METHODS, Options, complete_target
from hostops.wire import (ABORT, STOP, Done, Job, JobDone, JobOutput, JobStarted, JobUnstarted, Output, Release,
                          ResultsChannel, Started, WorkerFailed)
from hostops.worker import STREAM_CREDIT, worker_main

__all__ = ["START_METHODS", "Pool", "PoolError", "Event"]

#: Beyond connect-timeout + timeout + kill-grace, the parent stops waiting for a host's
#: result (the last resort behind the worker's own deadlines).
PARENT_SLACK = 30.0

#: What :meth:`Pool.run` yields.
Event = Union[Started, Output, Done]


class _Unstarted:
    """Inside the pool only: ``job`` was handed back never begun (the run is aborting)."""

    __slots__ = ("job",)

    def __init__(self, job: Job):
        self.job = job


class PoolError(RuntimeError):
    pass


def _proc_start(pid: int) -> Optional[str]:
    """The start time of live process ``pid`` (not a zombie), or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read().decode(errors="replace")
    except OSError:
        return None
    fields = data[data.rfind(")") + 2:].split()
    return None if fields[0] in ("Z", "X") else fields[19]


class _Worker:
    def __init__(self, wid: int, process: Any, inbox: Any, results: ResultsChannel, slots: int,
                 forkserver: bool = False):
        self.id = wid
        self.process = process
        self.forkserver = forkserver
        self.orphan_start: Optional[str] = None  # set once its fork server died under it
        self.inbox = inbox            # parent → worker: Job, Abort, Release or Stop (hostops.wire)
        self.results = results        # worker → parent: its own results channel
        self.slots = slots
        self.assigned: Set[int] = set()   # job ids sent, not yet done
        self.started: Dict[int, float] = {}  # of those, the ones begun, with when
        self.credit: Any = None  # --stream: released once each output piece has been shown

    @property
    def free(self) -> int:
        return self.slots - len(self.assigned)

    def alive(self) -> bool:
        """Is the worker process still running? Under forkserver, multiprocessing learns a
        worker's end from the fork server, and reports every worker dead (exit code 255) when
        the fork server itself dies: the worker's own /proc entry says what is true."""
        if self.orphan_start is None:
            if self.process.is_alive():
                return True
            if not self.forkserver or self.process.exitcode != 255:
                return False
            start = _proc_start(self.process.pid)
            if start is None:
                return False
            self.orphan_start = start  # still running, its fork server gone: watch the pid itself
            return True
        return _proc_start(self.process.pid) == self.orphan_start

    @property
    def sentinel(self) -> Optional[int]:
        """What to wait on for its end (an orphan's end shows as its results pipe's EOF)."""
        return None if self.orphan_start is not None else self.process.sentinel

    def exit_how(self) -> str:
        code = None if self.orphan_start is not None else self.process.exitcode
        if code is None:
            return "exit status unknown: its fork server had died"
        return f"killed by signal {-code}" if code < 0 else f"exit code {code}"

    def signal(self, kill: bool) -> None:
        if self.orphan_start is None:
            (self.process.kill if kill else self.process.terminate)()
        elif self.alive():
            import signal

            try:
                os.kill(self.process.pid, signal.SIGKILL if kill else signal.SIGTERM)
            except OSError:
                pass


class Pool:
    """``processes`` worker processes running at most ``forks`` hosts at once in total."""

    logs_results = True  # the workers write each host's log record (a KeeperPool's do not)

    def __init__(self, options: Options, host_count: int):
        self.options = options  # handed to the workers whole
        self.run_options = run = options.run_options()  # the run-wide part (a bad start method: UsageError, exit 2)
        self.ctx: Any = multiprocessing.get_context(run.start_method)
        self.forks = max(1, min(run.forks, host_count))
        wanted = run.processes or os.cpu_count() or 1
        self.processes = max(1, min(wanted, self.forks))
        self.workers: Dict[int, _Worker] = {}
        self._next_id = 0
        self._crashes_in_a_row = 0
        self.aborting = False
        self.not_started: List[Job] = []
        base, extra = divmod(self.forks, self.processes)
        self._slot_plan = [base + (1 if i < extra else 0) for i in range(self.processes)]
        self._limits: Dict[int, Optional[float]] = {}  # job id → seconds after its start it is overdue
        self._given_up: Set[int] = set()
        self._home: Dict[str, int] = {}  # host → the worker holding its kept connection
        self._jobs: Dict[int, Job] = {}  # the current run()'s jobs by id

    # ------------------------------------------------------------ workers
    def _spawn(self, slots: int) -> _Worker:
        wid = self._next_id
        self._next_id += 1
        inbox_r, inbox_w = self.ctx.Pipe(duplex=False)
        results = ResultsChannel(self.ctx)
        credit = self.ctx.Semaphore(STREAM_CREDIT) if self.run_options.stream_output else None
        process = self.ctx.Process(target=worker_main, name=f"hostops-worker-{wid}",
                                   args=(wid, inbox_r, results, self.options, slots, os.getpid()), daemon=True,
                                   kwargs={"credit": credit})
        process.start()
        inbox_r.close()
        results.started()  # EOF reaches us when the worker dies
        worker = _Worker(wid, process, inbox_w, results, slots, self.ctx.get_start_method() == "forkserver")
        worker.credit = credit
        self.workers[wid] = worker
        return worker

    def start(self) -> None:
        for slots in self._slot_plan:
            self._spawn(slots)

    def _send_all(self, message: Any) -> None:
        for w in self.workers.values():
            try:
                w.inbox.send(message)
            except (OSError, ValueError):
                pass

    def release(self, hosts: Iterable[str]) -> None:
        """Close the connections kept for ``hosts`` (their part of a runbook is over)."""
        by_worker: Dict[int, List[str]] = {}
        for name in hosts:
            wid = self._home.pop(name, None)
            if wid is not None and wid in self.workers:
                by_worker.setdefault(wid, []).append(name)
        for wid, names in by_worker.items():
            try:
                self.workers[wid].inbox.send(Release(tuple(names)))
            except (OSError, ValueError):
                pass

    def close(self, timeout: float = 5.0) -> None:
        """Ask workers to finish, then make sure they are gone (bounded in time)."""
        self._send_all(STOP)
        self._reap(timeout)

    def terminate(self, now: bool = False) -> None:
        """SIGTERM the workers (they stop remote commands first); ``now``: SIGKILL at once."""
        for w in self.workers.values():
            if w.alive():
                w.signal(kill=now)
        self._reap(0.5 if now else self.run_options.kill_grace + 15)

    def _reap(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for w in self.workers.values():
            w.process.join(max(0.0, deadline - time.monotonic()))
            while w.orphan_start is not None and w.alive() and time.monotonic() < deadline:
                time.sleep(0.05)  # not our child: no join, poll its /proc entry
            if w.alive():
                w.signal(kill=True)
                w.process.join(2.0)
                limit = time.monotonic() + 2.0
                while w.orphan_start is not None and w.alive() and time.monotonic() < limit:
                    time.sleep(0.05)
            _close_parent_ends(w)
        self.workers.clear()

    # ------------------------------------------------------------ run
    def run(self, jobs: Iterable[Job], wake_fd: Optional[int] = None,
            should_abort: Callable[[], bool] = lambda: False) -> Iterator[Event]:
        """Hand ``jobs`` to workers (never more than ``forks`` in flight) and yield events
        (:mod:`hostops.wire`): Started(job), Output(job, stream, data), Done(job, result), and
        Done(job, result, by_parent=True) for a result the parent made up because no worker
        will report (and log) it: a crashed worker's host, an overdue one, one given up on.

        Each job's target is completed here, in the parent, from the run's options when it
        was built by hand with fields left None (:func:`hostops.settings.complete_target`).

        When ``should_abort()`` turns true (``wake_fd`` becomes readable to say so), no new
        host starts, running ones are stopped and reported, and the jobs never begun are
        left in :attr:`not_started`.
        """
        pending: Deque[Job] = collections.deque(_completed(jobs, self.options))
        by_id: Dict[int, Job] = {j.id: j for j in pending}
        self._jobs = by_id
        remaining = len(pending)
        drain_deadline: Optional[float] = None
        while remaining:
            if should_abort() and not self.aborting:
                self.aborting = True
                self.not_started.extend(pending)
                remaining -= len(pending)
                pending.clear()
                self._send_all(ABORT)
                drain_deadline = time.monotonic() + self.run_options.kill_grace + 15
            if not self.aborting:
                self._dispatch(pending)
            if remaining <= 0 or not self.workers:
                break
            if drain_deadline is not None and time.monotonic() > drain_deadline:
                for given_up in self._give_up_all(by_id):
                    remaining -= 1
                    if isinstance(given_up, Done):
                        yield given_up
                    # else: never begun. Kept as before issue 12 (the caller ignored it, so it is
                    # not in not_started either); see the wire helper's report.
                break
            for event in itertools.chain(self._wait(by_id, wake_fd, drain_deadline),
                                         self._check_overdue(by_id),
                                         self._check_workers(by_id, pending)):
                if isinstance(event, _Unstarted):
                    remaining -= 1
                    self.not_started.append(event.job)
                    continue
                if isinstance(event, Done):
                    if event.job.id in self._given_up and not event.by_parent:
                        continue  # a worker's late word on a host the parent already reported
                    remaining -= 1
                    self._crashes_in_a_row = 0
                yield event

    def in_flight(self) -> List[str]:
        """Hosts begun and not yet reported: what a caller aborting at once leaves unfinished."""
        jobs = self._jobs
        return [jobs[jid].target.name for w in self.workers.values() for jid in sorted(w.started)
                if jid in jobs and jid not in self._given_up]

    def _dispatch(self, pending: Deque[Job]) -> None:
        """Send jobs to workers with free slots. A job that keeps its connection goes back to
        the worker that holds that connection (waiting for a free slot there if need be)."""
        if not any(j.keep for j in pending):
            while pending:
                worker = max(self.workers.values(), key=lambda w: w.free, default=None)
                if worker is None or worker.free <= 0 or not self._send(worker, pending[0]):
                    return
                pending.popleft()
            return
        waiting: Deque[Job] = collections.deque()
        while pending and any(w.free > 0 for w in self.workers.values()):
            job = pending.popleft()
            home = self.workers.get(self._home.get(job.target.name, -1))
            worker = home if home is not None else max(self.workers.values(), key=lambda w: w.free)
            if worker.free <= 0 or not self._send(worker, job):
                waiting.append(job)
                continue
            self._home[job.target.name] = worker.id
        pending.extendleft(reversed(waiting))

    def _send(self, worker: _Worker, job: Job) -> bool:
        try:
            worker.inbox.send(job)
        except (OSError, ValueError):
            return False  # the worker died; _check_workers will replace it
        worker.assigned.add(job.id)
        return True

    def _wait_timeout(self, drain_deadline: Optional[float]) -> Optional[float]:
        times = [] if drain_deadline is None else [drain_deadline]
        for w in self.workers.values():
            for jid, t in w.started.items():
                limit = self._limits.get(jid)
                if jid not in self._given_up and limit is not None:
                    times.append(t + limit)
        if not times:
            return None
        return max(0.0, min(times) - time.monotonic()) + 0.05

    def _wait(self, by_id: Dict[int, Job], wake_fd: Optional[int], drain_deadline: Optional[float]
              ) -> Iterator[Union[Event, _Unstarted]]:
        readers = {w.results.reader: w for w in self.workers.values()}
        sentinels = [w.sentinel for w in self.workers.values() if w.sentinel is not None]
        extra = [wake_fd] if wake_fd is not None and not self.aborting else []
        ready = multiprocessing.connection.wait(list(readers) + sentinels + extra,
                                                self._wait_timeout(drain_deadline))
        for reader in ready:
            worker = readers.get(reader)
            if worker is not None:
                yield from self._drain(worker, by_id)

    def _drain(self, w: _Worker, by_id: Dict[int, Job]) -> Iterator[Union[Event, _Unstarted]]:
        """Everything this worker has sent so far, without blocking."""
        while True:
            try:
                msg = w.results.take()
            except (EOFError, OSError):  # the worker is gone; _check_workers reports it
                return
            except Exception:  # queue.Empty, or a message cut short by the worker's death  # noqa: BLE001
                return
            if msg is None:
                return
            if isinstance(msg, JobOutput):  # first: --stream sends many of these
                try:
                    yield Output(by_id[msg.job_id], msg.stream, msg.data)
                finally:  # shown (or the run is over): the worker may send one more piece
                    if w.credit is not None:
                        w.credit.release()
            elif isinstance(msg, JobStarted):
                w.started[msg.job_id] = time.monotonic()
                self._limits[msg.job_id] = self.overdue_after(by_id[msg.job_id])
                yield Started(by_id[msg.job_id])
            elif isinstance(msg, JobDone):
                w.assigned.discard(msg.job_id)
                w.started.pop(msg.job_id, None)
                yield Done(by_id[msg.job_id], msg.result, by_parent=False)
            elif isinstance(msg, JobUnstarted):
                w.assigned.discard(msg.job_id)
                yield _Unstarted(by_id[msg.job_id])
            elif isinstance(msg, WorkerFailed):
                raise PoolError(msg.message)

    def overdue_after(self, job: Job) -> Optional[float]:
        """Seconds after its start when ``job`` is past every deadline: its own action's timeout
        (a runbook step's ``timeout:``, else the run's -t, filled in when the action was made;
        see :class:`~hostops.wire.Job`), each retry's, the connect timeout and the kill grace,
        plus slack. None: no time limit, so no watchdog."""
        timeout = job.timeout
        if not timeout:
            return None
        action = job.action
        attempts, delay = (1 + action.retries, action.delay) if isinstance(action, RetryAction) else (1, 0.0)
        # Never below the run's connect timeout: a watchdog that fires early reports a healthy host stuck.
        connect = max(job.target.connect_timeout or 0, self.options.connect_timeout)
        return connect + attempts * (timeout + self.run_options.kill_grace) + (attempts - 1) * delay + PARENT_SLACK

    def _check_overdue(self, by_id: Dict[int, Job]) -> Iterator[Done]:
        """The parent's last resort: a host past every deadline is reported, not waited for."""
        now = time.monotonic()
        for w in self.workers.values():
            for jid, began in list(w.started.items()):
                limit = self._limits.get(jid)
                if jid not in self._given_up and limit is not None and now - began > limit:
                    self._given_up.add(jid)
                    job = by_id[jid]
                    yield Done(job, HostResult(job.target.name, TIMEOUT, start=time.time() - (now - began),
                                               duration=now - began, error=(
                        f"no result after {now - began:.0f}s, past every deadline; the worker is stuck on this "
                        "host and the remote command may still be running")), by_parent=True)

    def _give_up_all(self, by_id: Dict[int, Job]) -> Iterator[Union[Done, _Unstarted]]:
        for w in self.workers.values():
            for jid in sorted(w.assigned):
                if jid in self._given_up:
                    continue
                self._given_up.add(jid)
                job = by_id[jid]
                if jid in w.started:
                    yield Done(job, HostResult(job.target.name, INTERRUPTED, error=(
                        "interrupted; no word from the worker on cleanup, the remote command may still be running")),
                               by_parent=True)
                else:
                    yield _Unstarted(job)

    def _check_workers(self, by_id: Dict[int, Job], pending: Deque[Job]) -> Iterator[Union[Event, _Unstarted]]:
        """A dead worker's started hosts fail (the command may have run: never retried);
        hosts it had not started go back to the queue; a new worker takes its place."""
        for wid, w in list(self.workers.items()):
            if w.alive() or (w.orphan_start is None and w.process.exitcode is None):
                continue
            yield from self._drain(w, by_id)  # what it sent before dying counts
            how = w.exit_how()
            for jid in sorted(w.assigned):
                job = by_id[jid]
                if jid in self._given_up:
                    continue
                if jid in w.started:
                    yield Done(job, HostResult(job.target.name, FAILED, error=(
                        f"worker crashed ({how}); the command may have run. Not retried: "
                        "check the host before running it again")), by_parent=True)
                elif self.aborting:
                    yield _Unstarted(job)
                else:
                    pending.appendleft(job)
            del self.workers[wid]
            _close_parent_ends(w)
            if self.aborting:
                continue
            self._crashes_in_a_row += 1
            if self._crashes_in_a_row > 2 * self.processes + 3:
                raise PoolError(f"worker processes keep dying ({how}) before finishing any host; "
                                "check memory limits and the worker's stderr above")
            self._spawn(w.slots)

    def __enter__(self) -> "Pool":
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.terminate(now=exc_type is KeyboardInterrupt)


def _close_parent_ends(w: _Worker) -> None:
    """The parent's ends of a worker's inbox and results channel."""
    try:
        w.inbox.close()
    except OSError:
        pass
    w.results.close_reader()


def _completed(jobs: Iterable[Job], options: Options) -> Iterator[Job]:
    """``jobs`` with every target field known: a target :func:`hostops.settings.resolve` made
    passes as it is; one built by hand with fields left None is completed here, in the
    parent, so no worker falls back on the run's options. A job whose action has no time
    limit of its own (a key scan, an action a library user made) is watched with the run's
    -t, as before: the worker does not enforce it, the watchdog does."""
    for job in jobs:
        target = complete_target(job.target, options)
        changes: Dict[str, Any] = {} if target is job.target else {"target": target}
        if not job.timeout and options.timeout:
            changes["timeout"] = options.timeout
        yield dataclasses.replace(job, **changes) if changes else job


#: Open files one host in flight can need in a worker: the socket, the channel's wake-up
#: pipe (two), an SFTP channel's pipe (two), plus margin; and a worker's fixed share.
