"""The process pool: worker processes, the results Queue and the job hand-over.

The seam is small on purpose: :meth:`Pool.run` takes jobs and yields events as hosts
start, print and finish. A distributed backend only has to offer the same method.

Why our own pool of ``multiprocessing.Process`` rather than ``multiprocessing.Pool``:
when a ``Pool`` worker dies its task is lost and the caller waits forever. Here every
worker has its own job pipe, so the parent always knows which hosts a dead worker held;
it reports them, replaces the worker (the pool keeps its size) and carries on.
"""
from __future__ import annotations

import collections
import itertools
import math
import multiprocessing
import multiprocessing.connection
import os
from typing import Deque, Dict, Iterable, Iterator, List, Optional, Set, Tuple

from hostops.results import FAILED, HostResult
from hostops.settings import Options
from hostops.worker import MSG_DONE, MSG_FATAL, MSG_OUTPUT, MSG_STARTED, Job, worker_main

START_METHODS = ("fork", "spawn", "forkserver")

# Events yielded by Pool.run
Started = Tuple[str, Job]                      # ("started", job)
Output = Tuple[str, Job, str, bytes]           # ("output", job, stream, data)
Done = Tuple[str, Job, HostResult]             # ("done", job, result)


class PoolError(RuntimeError):
    pass


class _Worker:
    def __init__(self, wid: int, process, inbox_w, slots: int):
        self.id = wid
        self.process = process
        self.inbox = inbox_w
        self.slots = slots
        self.assigned: Set[int] = set()   # job ids sent, not yet done
        self.started: Set[int] = set()    # of those, the ones the worker began

    @property
    def free(self) -> int:
        return self.slots - len(self.assigned)


class Pool:
    """``processes`` worker processes running at most ``forks`` hosts at once in total."""

    def __init__(self, options: Options, host_count: int):
        self.options = options
        method = options.start_method or os.environ.get("HOSTOPS_START_METHOD") or None
        if method is not None and method not in START_METHODS:
            raise PoolError(f"unknown start method {method!r}; use one of {', '.join(START_METHODS)}")
        self.ctx = multiprocessing.get_context(method)
        self.forks = max(1, min(options.forks, host_count))
        wanted = options.processes or os.cpu_count() or 1
        self.processes = max(1, min(wanted, self.forks))
        self.results = self.ctx.Queue()   # every worker → parent, as each host finishes
        self.workers: Dict[int, _Worker] = {}
        self._next_id = 0
        self._crashes_in_a_row = 0
        # slots per worker: the forks budget shared out, so the sum is exactly forks
        base, extra = divmod(self.forks, self.processes)
        self._slot_plan = [base + (1 if i < extra else 0) for i in range(self.processes)]

    # ------------------------------------------------------------ workers
    def _spawn(self, slots: int) -> _Worker:
        wid = self._next_id
        self._next_id += 1
        inbox_r, inbox_w = self.ctx.Pipe(duplex=False)
        process = self.ctx.Process(target=worker_main, name=f"hostops-worker-{wid}",
                                   args=(wid, inbox_r, self.results, self.options, slots), daemon=True)
        process.start()
        inbox_r.close()
        worker = _Worker(wid, process, inbox_w, slots)
        self.workers[wid] = worker
        return worker

    def start(self) -> None:
        for slots in self._slot_plan:
            self._spawn(slots)

    def close(self, timeout: float = 5.0) -> None:
        """Ask workers to finish, then make sure they are gone (bounded in time)."""
        for w in self.workers.values():
            try:
                w.inbox.send(None)
            except (OSError, ValueError):
                pass
        self._reap(timeout)

    def terminate(self) -> None:
        for w in self.workers.values():
            if w.process.is_alive():
                w.process.terminate()
        self._reap(5.0)

    def _reap(self, timeout: float) -> None:
        import time

        deadline = time.monotonic() + timeout
        for w in self.workers.values():
            w.process.join(max(0.0, deadline - time.monotonic()))
            if w.process.is_alive():
                w.process.kill()
                w.process.join(2.0)
            try:
                w.inbox.close()
            except OSError:
                pass
        self.workers.clear()
        self.results.close()
        self.results.cancel_join_thread()

    # ------------------------------------------------------------ run
    def run(self, jobs: Iterable[Job]) -> Iterator[tuple]:
        """Hand ``jobs`` to workers (never more than ``forks`` in flight) and yield events."""
        pending: Deque[Job] = collections.deque(jobs)
        by_id: Dict[int, Job] = {j.id: j for j in pending}
        remaining = len(pending)
        while remaining:
            self._dispatch(pending)
            for event in itertools.chain(self._wait(by_id), self._check_workers(by_id, pending)):
                if event[0] == "done":
                    remaining -= 1
                    self._crashes_in_a_row = 0
                yield event

    def _dispatch(self, pending: Deque[Job]) -> None:
        while pending:
            worker = max(self.workers.values(), key=lambda w: w.free, default=None)
            if worker is None or worker.free <= 0:
                return
            job = pending.popleft()
            try:
                worker.inbox.send(job)
            except (OSError, ValueError):
                pending.appendleft(job)  # the worker died; _check_workers will replace it
                return
            worker.assigned.add(job.id)

    def _wait(self, by_id: Dict[int, Job]) -> Iterator[tuple]:
        reader = self.results._reader  # type: ignore[attr-defined]  # as concurrent.futures does
        sentinels = [w.process.sentinel for w in self.workers.values()]
        ready = multiprocessing.connection.wait([reader] + sentinels)
        if reader not in ready:
            return
        # drain everything already there, so a burst of finishing hosts costs one wake-up
        while True:
            try:
                msg = self.results.get_nowait()
            except Exception:  # queue.Empty
                return
            kind = msg[0]
            if kind == MSG_STARTED:
                _, wid, jid = msg
                if wid in self.workers:
                    self.workers[wid].started.add(jid)
                yield ("started", by_id[jid])
            elif kind == MSG_OUTPUT:
                _, wid, jid, stream, data = msg
                yield ("output", by_id[jid], stream, data)
            elif kind == MSG_DONE:
                _, wid, jid, result = msg
                w = self.workers.get(wid)
                if w is not None:
                    w.assigned.discard(jid)
                    w.started.discard(jid)
                yield ("done", by_id[jid], result)
            elif kind == MSG_FATAL:
                raise PoolError(msg[2])

    def _check_workers(self, by_id: Dict[int, Job], pending: Deque[Job]) -> Iterator[tuple]:
        """A dead worker's started hosts fail (the command may have run: never retried);
        hosts it had not started go back to the queue; a new worker takes its place."""
        for wid, w in list(self.workers.items()):
            if w.process.is_alive() or w.process.exitcode is None:
                continue
            # results it managed to send before dying are still in the queue: take them first
            for event in self._drain_nowait(by_id):
                yield event
            code = w.process.exitcode
            how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
            for jid in sorted(w.assigned):
                job = by_id[jid]
                if jid in w.started:
                    yield ("done", job, HostResult(job.target.name, FAILED, error=(
                        f"worker crashed ({how}); the command may have run. Not retried: "
                        "check the host before running it again")))
                else:
                    pending.appendleft(job)
            del self.workers[wid]
            self._crashes_in_a_row += 1
            if self._crashes_in_a_row > 2 * self.processes + 3:
                raise PoolError(f"worker processes keep dying ({how}) before finishing any host; "
                                "check memory limits and the worker's stderr above")
            try:
                w.inbox.close()
            except OSError:
                pass
            self._spawn(w.slots)

    def _drain_nowait(self, by_id: Dict[int, Job]) -> Iterator[tuple]:
        reader = self.results._reader  # type: ignore[attr-defined]
        while reader.poll(0):
            # _wait drains all that is there without blocking
            yield from self._wait(by_id)

    def __enter__(self) -> "Pool":
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.terminate()


def plan(forks: int, processes: Optional[int], hosts: int) -> Tuple[int, int]:
    """(processes, threads per process) a run will use: for --help and the progress line."""
    f = max(1, min(forks, hosts))
    p = max(1, min(processes or os.cpu_count() or 1, f))
    return p, math.ceil(f / p)
