"""The worker process: many hosts at once, one thread per host in flight.

A worker receives :class:`~hostops.wire.Job` objects (and Abort/Stop/Release) on its own
pipe from the parent, runs each on one of its threads (started once, never per host),
writes the host's log record under the shared log Lock, and puts the messages of
:mod:`hostops.wire` on its own results channel the moment the host starts, prints and
finishes. Nothing but plain picklable data crosses the process boundary, and no exception
escapes a job: errors become a HostResult that carries them.

Owns: worker_main (setup, the inbox loop, the host threads), execute(job) -> HostResult,
--stream's line splitting, masking and credit. Must not import: pool, api, cli, rollout.
"""
from __future__ import annotations

import logging
import os
import queue as _queue
import signal
import sys
import threading
import time
from typing import Any, Callable, List, Optional, Tuple

from hostops.actions import ExecAction  # moved to hostops.actions; still importable from here
from hostops.errors import CommandAborted, CommandTimeout, ConnectError
from hostops.hostkeys import take_added
from hostops.results import FAILED, INTERRUPTED, OK, TIMEOUT, UNREACHABLE, HostResult
from hostops.secrets import Secrets, StreamMasker, redact_result
from hostops.settings import Options
from hostops.wire import (ABORT, STOP, Abort, Job, JobDone, JobOutput, JobStarted, JobUnstarted, Release,
                          ResultsChannel, Stop, WorkerFailed)

__all__ = ["ABORT", "STOP", "ExecAction", "Job", "execute", "worker_main"]


def execute(job: Job, ctx, on_output: Optional[Callable[[str, bytes], None]] = None) -> HostResult:
    """Run a job to its HostResult. Never raises for a host's failure."""
    from hostops.workerctx import connect

    start = time.time()
    t0 = time.monotonic()
    name = job.target.name

    def result(status: str, **kw: Any) -> HostResult:
        return HostResult(name, status, start=start, duration=time.monotonic() - t0, step=job.step, **kw)

    needs_connection = job.action.needs_connection  # keys scan: handshake only, no login
    held = ctx.held if (ctx is not None and needs_connection and job.target.connection != "local") else None
    conn, entry = _reuse(job, ctx, held)
    if conn is None and needs_connection:
        try:
            conn = connect(job.target, ctx)
        except ConnectError as exc:
            return result(UNREACHABLE, error=str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug or an unexpected library error: report, don't crash the worker
            return result(UNREACHABLE, error=f"unexpected error while connecting: {type(exc).__name__}: {exc}")
    keep = job.keep or held is not None
    try:
        try:
            outcome = job.action.run(conn, job.target, ctx, on_output)
        except ConnectError as exc:
            if entry is None or exc.stage not in ("channel-open", "sftp"):
                raise
            # a held connection that died unnoticed (silently dropped): nothing ran on it; log in afresh, once
            conn.close()
            conn = entry = None
            conn = connect(job.target, ctx)
            outcome = job.action.run(conn, job.target, ctx, on_output)
    except CommandAborted as exc:
        return result(INTERRUPTED, stdout=exc.stdout, stderr=exc.stderr, error=exc.note or "interrupted")
    except CommandTimeout as exc:
        limit = job.action.timeout  # the worker enforces the action's own (none: none)
        note = exc.note or (f"timed out after {limit:g}s (--timeout)" if limit else "timed out")
        return result(TIMEOUT, stdout=exc.stdout, stderr=exc.stderr, error=note)
    except ConnectError as exc:
        keep = False
        return result(UNREACHABLE, error=str(exc))
    except Exception as exc:  # noqa: BLE001 - an action's bug is this host's failure, not the worker's
        keep = False
        return result(FAILED, error=f"unexpected error: {type(exc).__name__}: {exc}")
    finally:
        if conn is None:
            pass
        elif held is not None and keep and conn.alive():
            _checkin(job, ctx, conn, entry)
        elif keep and conn.alive():
            ctx.connections[name] = conn
        else:
            conn.close()
    status, error = _verdict(outcome)
    return result(status, exit_code=outcome.exit_code, stdout=outcome.stdout, stderr=outcome.stderr, error=error)


def _verdict(outcome: Any) -> Tuple[str, Optional[str]]:
    """(status, error) of a command's outcome; sudo asking for a password is said plainly."""
    status = outcome.status or (OK if outcome.exit_code == 0 and not outcome.error else FAILED)
    error = outcome.error
    if status == FAILED and error is None and b"sudo: a password is required" in outcome.stderr:
        from hostops.remotecmd import SUDO_NO_PASSWORD

        error = SUDO_NO_PASSWORD
    return status, error


def _reuse(job: Job, ctx: Any, held: Any) -> Tuple[Any, Any]:
    """(a live connection to reuse or None, its held entry or None): a keeper's held one of the
    same identity (--persist), or the one a runbook kept for this host."""
    if held is not None:
        conn, entry = _checkout(job, ctx)
    else:
        entry = None
        keep = job.keep and ctx is not None and job.action.needs_connection
        conn = ctx.connections.pop(job.target.name, None) if keep else None
    if conn is not None and not conn.alive():
        conn.close()
        conn, entry = None, None
    return conn, entry


def _checkout(job: Job, ctx: Any) -> Tuple[Any, Any]:
    """(a held connection for ``job`` with its entry, or (None, None)): same identity, alive,
    and its host key still trusted under the run's known_hosts; else it is closed."""
    from hostops.held import identity, still_trusted

    entry = ctx.held.take(identity(job.target, ctx.options))
    if entry is None:
        return None, None
    conn = entry.conn
    if not conn.alive() or not still_trusted(conn, job.target, ctx):
        _close_quietly(conn)
        return None, None
    if hasattr(conn, "ctx"):
        conn.ctx = ctx  # this run's options, secrets and abort flag, for this job only
    return conn, entry


def _checkin(job: Job, ctx: Any, conn: Any, entry: Any) -> None:
    """Hold ``conn`` again for the next run, with the worker's base context (no secrets)."""
    from hostops.held import Held, identity

    now = time.time()
    if entry is None:
        t = job.target
        entry = Held(conn, identity(t, ctx.options), t.name, t.user, t.hostname, t.port, now, now, 0, 0.0)
    entry.conn, entry.name, entry.last_used = conn, job.target.name, now
    entry.runs += 1
    entry.persist = ctx.persist
    if hasattr(conn, "ctx"):
        conn.ctx = ctx.held.base_ctx
    ctx.held.put(entry)


class _LineSplitter:
    """Turns output chunks into whole lines for --stream (a partial line waits for its end,
    but never holds more than MAX_PARTIAL bytes: a line without newline is sent in pieces)."""

    MAX_PARTIAL = 64 * 1024

    def __init__(self, send: Callable[[str, bytes], None]):
        self._send = send
        self._partial = {"stdout": b"", "stderr": b""}

    def __call__(self, stream: str, data: bytes) -> None:
        data = self._partial[stream] + data
        lines = data.split(b"\n")
        rest = lines.pop()
        for line in lines:
            self._send(stream, line + b"\n")
        while len(rest) > self.MAX_PARTIAL:
            self._send(stream, rest[: self.MAX_PARTIAL])
            rest = rest[self.MAX_PARTIAL:]
        self._partial[stream] = rest

    def flush(self) -> None:
        for stream, rest in self._partial.items():
            if rest:
                self._send(stream, rest)
        self._partial = {"stdout": b"", "stderr": b""}


class _MaskedStreams:
    """--stream: secrets masked on each stream's bytes before the line splitter cuts them
    into lines or 64 KiB pieces (a secret split by a newline or a piece would escape a mask
    applied per line)."""

    def __init__(self, secrets: Secrets, splitter: _LineSplitter):
        self._splitter = splitter
        self._maskers = {"stdout": StreamMasker(secrets), "stderr": StreamMasker(secrets)}

    def __call__(self, stream: str, data: bytes) -> None:
        shown = self._maskers[stream].feed(data)
        if shown:
            self._splitter(stream, shown)

    def flush(self) -> None:
        for stream, masker in self._maskers.items():
            rest = masker.flush()
            if rest:
                self._splitter(stream, rest)
        self._splitter.flush()


#: --stream pieces a worker may have on their way to the parent, not yet shown. Past this the
#: host's thread waits for the parent (so it stops reading the channel, and SSH flow control
#: slows the remote command), as pdsh waits on a slow stdout: memory stays bounded however
#: fast a host prints and however slow the reader of hostops's output is.
STREAM_CREDIT = 256


class _StreamSender:
    """Sends one host's --stream pieces under the worker's credit (a semaphore the parent
    releases once it has shown a piece). It waits for credit, but never past the host's
    timeout or an abort, so -t and Ctrl-C still work under a stalled reader; from then on
    pieces are dropped and counted (the host's result keeps its output within --max-output)."""

    def __init__(self, send: Callable[[str, bytes], None], credit, abort: threading.Event,
                 timeout: Optional[float]):
        self._send = send
        self._credit = credit
        self._abort = abort
        self._deadline = time.monotonic() + timeout if timeout else None
        self.dropped = 0

    def _late(self) -> bool:
        return self._abort.is_set() or (self._deadline is not None and time.monotonic() >= self._deadline)

    def _take(self) -> bool:
        if self._credit is None:
            return True
        while not self._late():
            if self._credit.acquire(timeout=0.2):
                return True
        return self._credit.acquire(False)

    def __call__(self, stream: str, data: bytes) -> None:
        if self._take():
            self._send(stream, data)
        else:
            self.dropped += len(data)

    def note(self) -> Optional[str]:
        if not self.dropped:
            return None
        return (f"{self.dropped} bytes of output were not streamed (the output had fallen behind when the "
                "host was stopped); the result keeps them within --max-output")


class _Terminated(BaseException):
    """Raised in a worker's main thread by SIGTERM (the parent's terminate, or its death)."""


def _die_with_parent(parent_pid: int) -> None:
    """Linux: SIGTERM this worker when the parent dies, so none outlives a SIGKILLed parent.

    Only when the hostops process is our parent (fork, spawn). Under forkserver our parent
    is the fork server, whose death says nothing about the run: PDEATHSIG would stop every
    host when it dies. There the inbox pipe, whose only writer is the hostops process,
    says when hostops is gone (end-of-file: the main loop aborts the running hosts)."""
    if os.getppid() != parent_pid:
        try:
            os.kill(parent_pid, 0)
        except ProcessLookupError:  # hostops died before we started
            os.kill(os.getpid(), signal.SIGTERM)
        except OSError:
            pass
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux, or no libc: the inbox's EOF still says the parent died
        pass
    # The parent died before prctl took effect: we were handed to init (or a subreaper).
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)


def worker_main(worker_id: int, inbox: Any, results: ResultsChannel, options: Options, threads: int,
                parent_pid: int, credit: Any = None, threads_class: Any = None) -> None:
    """Entry point of a worker process (must stay importable under spawn). ``credit``: the
    semaphore bounding --stream pieces in flight (see STREAM_CREDIT). ``threads_class``: the
    connection keeper's (:class:`hostops.keeperworker.KeeperThreads`: many runs, connections held)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what Ctrl-C means

    def on_term(_signum: int, _frame: Any) -> None:
        raise _Terminated()

    signal.signal(signal.SIGTERM, on_term)
    _die_with_parent(parent_pid)
    try:
        log, ctx = _setup(options)
    except _Terminated:
        return
    except Exception as exc:  # noqa: BLE001 - any failure to start is reported to the parent, which stops the run
        results.put(WorkerFailed(f"worker {worker_id} could not start: {exc}"))
        results.close()
        return
    worker = (threads_class or _HostThreads)(options, results, ctx, log, credit)
    pool: List[threading.Thread] = [threading.Thread(target=worker.serve, name=f"host-{i}", daemon=True)
                                    for i in range(threads)]
    for t in pool:
        t.start()
    try:
        worker.read_inbox(inbox)
    except _Terminated:
        ctx.request_abort()
        for run_ctx in list(getattr(worker, "runs", {}).values()):
            run_ctx.request_abort()
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # cleanup below is bounded; let it finish
        worker.shut_down(pool)


def _setup(options: Options) -> Tuple[Any, Any]:
    """(the run log or None, the WorkerContext): what every host thread of this worker shares."""
    from hostops.log import maybe_open
    from hostops.workerctx import WorkerContext

    # paramiko imports Fabric's invoke, when installed, for ssh_config "Match exec", which a
    # worker never evaluates (ssh_config is resolved in the parent): ~0.1 s per worker.
    if "invoke" not in sys.modules:
        sys.modules["invoke"] = None  # type: ignore[assignment]
    import paramiko  # noqa: F401 - import once, before threads race to import it

    # paramiko logs a traceback at ERROR when a handshake fails (a banner that never comes,
    # a peer that hangs up); with no handler configured Python prints it on the CLI's stderr.
    # Every such failure already reaches the user as the host's one-line error.
    logging.getLogger("paramiko").addHandler(logging.NullHandler())

    log = maybe_open(options.log, options.secrets)
    return log, WorkerContext(options)


class _HostThreads:
    """A worker's host threads and its inbox: jobs from the parent go to the threads, each
    runs one host at a time and reports it on the results channel."""

    def __init__(self, options: Options, results: ResultsChannel, ctx: Any, log: Any, credit: Any):
        self.options = options
        self.results = results
        self.ctx = ctx
        self.log = log
        self.credit = credit
        self.jobs: "_queue.Queue[Optional[Job]]" = _queue.Queue()

    def serve(self) -> None:
        """One host thread: run jobs until told to stop (None)."""
        results = self.results
        while True:
            job = self.jobs.get()
            if job is None:
                return
            ctx = self.ctx_for(job)
            options = ctx.options
            if ctx.abort.is_set():
                results.put(JobUnstarted(job.id))
                continue
            results.put(JobStarted(job.id))
            splitter = sender = None
            if options.stream_output:
                def send(stream: str, data: bytes, j: int = job.id, secrets: Secrets = options.secrets) -> None:
                    results.put(JobOutput(j, stream, secrets.redact(data)))

                sender = _StreamSender(send, self.credit, ctx.abort, job.action.timeout)
                splitter = _MaskedStreams(options.secrets, _LineSplitter(sender))
            take_added()  # keys noted by this thread belong to the host it connects now
            try:
                res = execute(job, ctx, splitter)
            except BaseException as exc:  # noqa: BLE001 - last resort: a result must always come back
                res = HostResult(job.target.name, FAILED, error=f"internal error: {exc!r}", step=job.step)
            res.keys_added = take_added()  # accept-new: the CLI says "Permanently added"
            if splitter:
                splitter.flush()
            if sender is not None and sender.note():
                res.error = (res.error + "; " if res.error else "") + str(sender.note())
            self._report(job, res, options)

    def ctx_for(self, job: Job) -> Any:  # noqa: ARG002  (a keeper's worker has one context per run)
        """The context ``job`` runs in: the worker's own (one per run in a keeper's worker)."""
        return self.ctx

    def _report(self, job: Job, res: HostResult, options: Options) -> None:
        redact_result(res, options.secrets)  # before it is logged or leaves this process
        if self.log is not None:
            try:
                self.log.write({"event": "host", **res.to_json()})
            except OSError as exc:
                res.error = (res.error + "; " if res.error else "") + f"could not write log: {exc.strerror or exc}"
        self.results.put(JobDone(job.id, res))

    def read_inbox(self, inbox: Any) -> None:
        """Until Stop (or the parent's end): jobs to the threads, Abort and Release done here."""
        ctx = self.ctx
        while True:
            try:
                msg = inbox.recv()
            except EOFError:  # the parent is gone: stop taking work
                ctx.request_abort()
                break
            if isinstance(msg, Stop):
                break
            if isinstance(msg, Abort):
                ctx.request_abort()
                continue
            if isinstance(msg, Release):
                for name in msg.hosts:
                    _close_quietly(ctx.connections.pop(name, None))
                continue
            self.jobs.put(msg)

    def shut_down(self, pool: List[threading.Thread]) -> None:
        """Bounded: threads hand back jobs not yet begun (abort) and stop, connections close."""
        ctx = self.ctx
        for _ in pool:  # threads hand back jobs not yet begun (abort), then stop
            self.jobs.put(None)
        deadline = time.monotonic() + self.options.kill_grace + 15
        for t in pool:
            t.join(max(0.1, deadline - time.monotonic()))
        for conn in list(ctx.connections.values()):  # runbook connections kept between steps
            _close_quietly(conn)
        ctx.close_jumps()
        if self.log is not None:
            self.log.close()
        self.results.close()


def _close_quietly(conn: Any) -> None:
    if conn is None:
        return
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - a connection already broken: closing it is all that was asked
        pass
