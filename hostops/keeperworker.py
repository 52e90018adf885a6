"""A worker process of the connection keeper (``--persist``): the ordinary worker
(:mod:`hostops.worker`), serving many runs in turn or at once, with the connections it
made held between them (:mod:`hostops.held`).

Each run gets its own context (:class:`hostops.workerctx.WorkerContext`): its options and
secrets, its abort flag (one client's Ctrl-C stops only its own commands) and a fresh
read of known_hosts; it is dropped at :class:`~hostops.wire.RunEnd`. Held connections and
jump connections live in the worker's :class:`~hostops.held.HeldStore`, with the worker's
base context (no secrets) while nobody uses them; idle ones are closed after their run's
``--persist``, checked every :data:`PRUNE_EVERY` seconds.

Must not import: pool, keeper, api, cli.
"""
from __future__ import annotations

import os
from typing import Any, Dict

from hostops.held import HeldStore
from hostops.wire import Abort, HeldQuery, HeldRows, Job, Release, RunAbort, RunBegin, RunEnd, Stop
from hostops.worker import _HostThreads
from hostops.workerctx import WorkerContext

PRUNE_EVERY = 1.0


class KeeperThreads(_HostThreads):
    """The host threads and inbox of a keeper's worker."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.held = HeldStore()
        self.held.base_ctx = self.ctx
        self.ctx.held = self.held
        self.runs: Dict[int, WorkerContext] = {}
        self.cwds: Dict[int, str] = {}

    def ctx_for(self, job: Job) -> Any:
        """The run's context; the process moves to the run's directory (the keeper runs
        together only runs that share one, so relative local paths mean what they meant)."""
        ctx = self.runs.get(job.run, self.ctx)
        cwd = self.cwds.get(job.run)
        if cwd is not None:
            try:
                if os.getcwd() != cwd:
                    os.chdir(cwd)
            except OSError:
                pass  # gone since: the action reports the missing local path itself
        return ctx

    def _abort_all(self) -> None:
        self.ctx.request_abort()
        for ctx in list(self.runs.values()):
            ctx.request_abort()

    def read_inbox(self, inbox: Any) -> None:  # noqa: C901  (one dispatch on the message's type)
        """Until Stop or the keeper's end: jobs to the threads, run bookkeeping done here, held
        connections pruned whenever the inbox is quiet."""
        while True:
            try:
                if not inbox.poll(PRUNE_EVERY):
                    self.held.prune()
                    continue
                msg = inbox.recv()
            except (EOFError, OSError):  # the keeper is gone: stop everything
                self._abort_all()
                break
            if isinstance(msg, Job):
                self.jobs.put(msg)
            elif isinstance(msg, RunBegin):
                ctx = WorkerContext(msg.options, held=self.held)
                ctx.persist = msg.persist
                self.runs[msg.run] = ctx
                self.cwds[msg.run] = msg.cwd
            elif isinstance(msg, RunEnd):
                ended = self.runs.pop(msg.run, None)
                self.cwds.pop(msg.run, None)
                if ended is not None:
                    ended.close()  # its options and secrets go with it
            elif isinstance(msg, RunAbort):
                aborted = self.runs.get(msg.run)
                if aborted is not None:
                    aborted.request_abort()
            elif isinstance(msg, HeldQuery):
                closed = self.held.close_matching(msg.close) if msg.close is not None else 0
                self.results.put(HeldRows(msg.tag, tuple(self.held.rows()), closed))
            elif isinstance(msg, Abort):
                self._abort_all()
            elif isinstance(msg, Stop):
                break
            elif isinstance(msg, Release):
                pass  # held anyway: a runbook's batch being done changes nothing here

    def shut_down(self, pool: Any) -> None:
        super().shut_down(pool)
        self.held.close_all()
