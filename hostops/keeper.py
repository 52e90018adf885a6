"""The connection keeper (``--persist``): hostops's own worker pool, kept running between
runs in a detached per-user process, holding the connections its workers made.

``python -m hostops.keeper SECONDS`` (started by :mod:`hostops.keeperclient`, never by hand):
checks the directory and binds the socket (:mod:`hostops.keepersock`; a refusal is said on
stderr, exit 2), then forks; the child leaves the session's terminal (its caller used
``setsid``), points its stdio at /dev/null and logs to ``keeper.log`` (0600) beside the socket.
It serves clients until it has had no client and held nothing for the longest ``--persist``
it was given, then stops its workers (closing their connections) and removes its socket.

Clients speak :mod:`hostops.wire`'s socket messages: ``Begin`` (a run's options and secrets),
``Jobs``, ``Cancel``, ``Control``; the keeper answers with the workers' own messages
(``JobStarted``/``JobOutput``/``JobDone``/``JobUnstarted``, under the client's job ids).
A client that goes away (its socket's end) is a cancelled run: its commands are stopped.
Runs from several clients share the workers; jobs carry their run, so results never mix.

Owns: the keeper process, its dispatch and crash accounting. Must not import: api, cli,
keeperclient.
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import time
from typing import Any, Deque, Dict, List, Optional, Set

from hostops import keepersock
from hostops.keeperworker import KeeperThreads
from hostops.pool import _close_parent_ends, _Worker
from hostops.results import FAILED, HostResult
from hostops.settings import Options
from hostops.wire import (ALIVE, STOP, Begin, Begun, Cancel, Control, ControlAnswer, HeldQuery, HeldRows, Job, JobDone,
                          JobOutput, JobStarted, JobUnstarted, Jobs, Refused, ResultsChannel, RunAbort, RunBegin,
                          RunEnd, WorkerFailed)
from hostops.worker import STREAM_CREDIT, worker_main

#: Host threads per keeper worker: the most hosts one worker runs at once, over all runs.
KEEPER_THREADS = 256

PID_NAME = "keeper.pid"

#: Seconds between the keeper's heartbeats to each run's client.
HEARTBEAT = 2.0

#: A client that stops reading for this long is dropped (its run cancelled).
CLIENT_SEND_TIMEOUT = 30


class _Run:
    """One client's run."""

    def __init__(self, rid: int, conn: Any, pid: int, begin: Begin):
        self.id = rid
        self.conn = conn
        self.pid = pid
        self.options = begin.options
        self.persist = begin.persist
        self.cwd = begin.cwd
        self.forks = max(1, begin.options.forks)
        self.pending: Deque[Job] = collections.deque()
        self.client_id: Dict[int, int] = {}
        self.in_flight: Set[int] = set()
        self.cancelled = False
        self.gone = False


class Keeper:
    def __init__(self, listener: Any, directory: str, persist: float, log: Any):
        self.listener = listener
        self.directory = directory
        self.log = log
        self.mp: Any = multiprocessing.get_context("spawn")  # workers inherit no client socket
        self.options = Options(forks=KEEPER_THREADS, log=None)
        self.processes = max(1, os.cpu_count() or 1)
        self.workers: Dict[int, _Worker] = {}
        self._wids = itertools.count()
        self._gids = itertools.count(1)
        self._rids = itertools.count(1)
        self._tags = itertools.count(1)
        self.runs: Dict[int, _Run] = {}
        self.by_gid: Dict[int, _Run] = {}
        self.job_of: Dict[int, Job] = {}
        self.home: Dict[Any, int] = {}
        self.clients: Dict[Any, Optional[_Run]] = {}
        self.queries: Dict[int, Dict[str, Any]] = {}
        self.agent = os.environ.get("SSH_AUTH_SOCK")
        self.code = keepersock.code_id()  # the code this keeper loaded; clients must run the same
        self.idle_until = time.time() + persist
        self.stopping = False
        self._last_beat = 0.0

    def say(self, text: str) -> None:
        self.log.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} [{os.getpid()}] {text}\n")
        self.log.flush()

    # ------------------------------------------------------------ workers
    def _spawn(self) -> _Worker:
        wid = next(self._wids)
        inbox_r, inbox_w = self.mp.Pipe(duplex=False)
        results = ResultsChannel(self.mp)
        credit = self.mp.Semaphore(STREAM_CREDIT)
        process = self.mp.Process(target=worker_main, name=f"hostops-keeper-worker-{wid}", daemon=True,
                                  args=(wid, inbox_r, results, self.options, KEEPER_THREADS, os.getpid()),
                                  kwargs={"credit": credit, "threads_class": KeeperThreads})
        process.start()
        inbox_r.close()
        results.started()
        worker = _Worker(wid, process, inbox_w, results, KEEPER_THREADS)
        worker.credit = credit
        self.workers[wid] = worker
        for run in self.runs.values():
            self._tell(worker, RunBegin(run.id, run.options, run.persist, run.cwd))
        return worker

    def _tell(self, worker: _Worker, message: Any) -> bool:
        try:
            worker.inbox.send(message)
            return True
        except (OSError, ValueError):
            return False

    def _tell_all(self, message: Any) -> None:
        for w in list(self.workers.values()):
            self._tell(w, message)

    # ------------------------------------------------------------ the loop
    def serve(self) -> None:
        for _ in range(self.processes):
            self._spawn()
        self.say(f"serving on {self.listener.getsockname()} with {self.processes} workers")
        while not self.stopping:
            self._dispatch()
            readers = {w.results.reader: w for w in self.workers.values()}
            waitables = [self.listener, *self.clients, *readers, *[w.process.sentinel for w in self.workers.values()]]
            for ready in multiprocessing.connection.wait(waitables, 1.0):
                if ready is self.listener:
                    self._accept()
                elif ready in readers:
                    self._drain(readers[ready])
                elif ready in self.clients:
                    self._from_client(ready)
            self._check_workers()
            self._heartbeat()
            if not self.clients and not self.runs and time.time() > self.idle_until:
                self.say("idle past --persist: stopping")
                break

    def _heartbeat(self) -> None:
        """Every HEARTBEAT seconds each run's client hears from the keeper, busy or not: a
        client that hears nothing for long knows the keeper is stuck (see keeperclient)."""
        now = time.monotonic()
        if now - self._last_beat < HEARTBEAT:
            return
        self._last_beat = now
        for run in list(self.runs.values()):
            self._to_client(run, ALIVE)

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except OSError:
            return
        pid, uid = keepersock.peer_uid(sock)
        if uid != os.getuid():
            self.say(f"refused a connection from pid {pid}, uid {uid} (not uid {os.getuid()})")
            sock.close()
            return
        keepersock.send_timeout(sock, CLIENT_SEND_TIMEOUT)
        conn = keepersock.wrap(sock)
        conn.peer_pid = pid  # type: ignore[attr-defined]
        self.clients[conn] = None

    def _from_client(self, conn: Any) -> None:
        try:
            while conn.poll(0):
                self._handle(conn, conn.recv())
        except (EOFError, OSError):
            self._client_gone(conn)
        except Exception as exc:  # noqa: BLE001 - a malformed message: drop that client, keep serving
            self.say(f"dropped a client after a bad message: {type(exc).__name__}: {exc}")
            self._client_gone(conn)

    def _handle(self, conn: Any, msg: Any) -> None:
        run = self.clients.get(conn)
        if isinstance(msg, Begin):
            if getattr(msg, "code", "") != self.code:
                conn.send(Refused("the running connection keeper runs another hostops (started before an upgrade, "
                                  "or from another install); stop it with 'hostops connections stop', then run "
                                  "again, or run without --persist"))
                return
            if msg.agent != self.agent:
                conn.send(Refused("the running keeper was started with another ssh-agent (SSH_AUTH_SOCK); stop it "
                                  "with 'hostops connections stop', or run without --persist"))
                return
            run = _Run(next(self._rids), conn, getattr(conn, "peer_pid", 0), msg)
            self.runs[run.id] = run
            self.clients[conn] = run
            self._tell_all(RunBegin(run.id, run.options, run.persist, run.cwd))
            self.say(f"run {run.id} from pid {run.pid} (--persist {run.persist:g}s)")
            conn.send(Begun(os.getpid()))
        elif isinstance(msg, Jobs) and run is not None:
            for job in msg.jobs:
                gid = next(self._gids)
                run.client_id[gid] = job.id
                self.by_gid[gid] = run
                self.job_of[gid] = dataclasses.replace(job, id=gid, run=run.id)
                run.pending.append(self.job_of[gid])
            if run.cancelled:
                self._cancel(run)
        elif isinstance(msg, Cancel) and run is not None:
            self._cancel(run)
        elif isinstance(msg, Control):
            self._control(conn, msg)

    def _cancel(self, run: _Run) -> None:
        """Stop ``run``: jobs not begun go back to its client, its commands are stopped."""
        first = not run.cancelled
        run.cancelled = True
        while run.pending:
            job = run.pending.popleft()
            self.by_gid.pop(job.id, None)
            self.job_of.pop(job.id, None)
            self._to_client(run, JobUnstarted(run.client_id.pop(job.id)))
        if first:
            self._tell_all(RunAbort(run.id))

    def _client_gone(self, conn: Any) -> None:
        run = self.clients.pop(conn, None)
        try:
            conn.close()
        except OSError:
            pass
        if run is not None:
            run.gone = True
            self._cancel(run)
            self._maybe_end(run)

    def _maybe_end(self, run: _Run) -> None:
        if run.gone and not run.in_flight and run.id in self.runs:
            del self.runs[run.id]
            self._tell_all(RunEnd(run.id))
            self.idle_until = max(self.idle_until, time.time() + run.persist)
            self.say(f"run {run.id} ended")

    def _to_client(self, run: _Run, message: Any) -> None:
        if run.gone:
            return
        try:
            run.conn.send(message)
        except (OSError, ValueError):
            self._client_gone(run.conn)

    # ------------------------------------------------------------ dispatch and results
    def _dispatch(self) -> None:
        for run in list(self.runs.values()):
            if run.cancelled or not run.pending or not self._may_run(run):
                continue
            waiting: Deque[Job] = collections.deque()
            while run.pending and len(run.in_flight) < run.forks:
                job = run.pending.popleft()
                home = self.workers.get(self.home.get(job.target, -1))
                worker = home if home is not None else max(self.workers.values(), key=lambda w: w.free,
                                                           default=None)
                if worker is None or worker.free <= 0 or not self._tell(worker, job):
                    waiting.append(job)
                    if home is None:
                        break
                    continue
                worker.assigned.add(job.id)
                run.in_flight.add(job.id)
                self.home[job.target] = worker.id
            run.pending.extendleft(reversed(waiting))

    def _may_run(self, run: _Run) -> bool:
        """Runs in flight together share one working directory (relative local paths)."""
        return all(other.cwd == run.cwd for other in self.runs.values() if other.in_flight and other is not run)

    def _drain(self, w: _Worker) -> None:  # noqa: C901  (one dispatch on the message's type)
        while True:
            try:
                msg = w.results.take()
            except Exception:  # noqa: BLE001 - the worker is gone or cut a message short: _check_workers
                return
            if msg is None:
                return
            if isinstance(msg, HeldRows):
                self._answer(msg, w.id)
                continue
            if isinstance(msg, WorkerFailed):
                self.say(msg.message)
                continue
            run = self.by_gid.get(msg.job_id)
            if run is None:
                continue
            cid = run.client_id.get(msg.job_id, -1)
            if isinstance(msg, JobOutput):
                self._to_client(run, JobOutput(cid, msg.stream, msg.data))
                if w.credit is not None:
                    w.credit.release()
            elif isinstance(msg, JobStarted):
                w.started[msg.job_id] = time.monotonic()
                self._to_client(run, JobStarted(cid))
            elif isinstance(msg, (JobDone, JobUnstarted)):
                self._finish(w, run, msg.job_id)
                self._to_client(run, JobDone(cid, msg.result) if isinstance(msg, JobDone) else JobUnstarted(cid))
                self._maybe_end(run)

    def _finish(self, w: _Worker, run: _Run, gid: int) -> None:
        w.assigned.discard(gid)
        w.started.pop(gid, None)
        run.in_flight.discard(gid)
        self.by_gid.pop(gid, None)
        self.job_of.pop(gid, None)

    def _check_workers(self) -> None:
        """A dead worker's started hosts are reported failed (the command may have run); its
        others go back to their run's queue; its held connections are gone with it."""
        for wid, w in list(self.workers.items()):
            if w.process.is_alive():
                continue
            self._drain(w)
            how = w.exit_how()
            self.say(f"worker {wid} died ({how})")
            for gid in sorted(w.assigned):
                run, job = self.by_gid.get(gid), self.job_of.get(gid)
                if run is None or job is None:
                    continue
                if gid in w.started:
                    cid = run.client_id.get(gid, -1)
                    self._finish(w, run, gid)
                    self._to_client(run, JobDone(cid, HostResult(job.target.name, FAILED, step=job.step, error=(
                        f"the keeper's worker crashed ({how}); the command may have run. Not retried: check the host "
                        "before running it again"))))
                    self._maybe_end(run)
                else:  # never begun: queued again
                    run.in_flight.discard(gid)
                    run.pending.appendleft(job)
            for target, home in list(self.home.items()):
                if home == wid:
                    del self.home[target]
            for tag, query in list(self.queries.items()):
                query["waiting"].discard(wid)
                self._maybe_answer(tag)
            del self.workers[wid]
            _close_parent_ends(w)
            if not self.stopping:
                self._spawn()

    # ------------------------------------------------------------ hostops connections
    def _control(self, conn: Any, msg: Control) -> None:
        tag = next(self._tags)
        self.queries[tag] = {"conn": conn, "waiting": set(self.workers), "rows": [], "closed": 0,
                             "stop": msg.what == "stop"}
        self._tell_all(HeldQuery(tag, msg.pattern if msg.what == "close" else None))
        self._maybe_answer(tag)

    def _answer(self, msg: HeldRows, wid: int) -> None:
        query = self.queries.get(msg.tag)
        if query is None:
            return
        query["rows"] += [dict(row, worker=wid) for row in msg.rows]
        query["closed"] += msg.closed
        query["waiting"].discard(wid)
        self._maybe_answer(msg.tag)

    def _maybe_answer(self, tag: int) -> None:
        query = self.queries[tag]
        if query["waiting"]:
            return
        del self.queries[tag]
        rows = tuple(dict(r, keeper_pid=os.getpid(), runs_active=len(self.runs)) for r in query["rows"])
        try:
            query["conn"].send(ControlAnswer(rows, query["closed"]))
        except (OSError, ValueError):
            pass
        if query["stop"]:
            self.say("asked to stop (hostops connections stop)")
            self.stopping = True

    def shut_down(self) -> None:
        for run in list(self.runs.values()):
            self._cancel(run)
        self._tell_all(STOP)
        deadline = time.monotonic() + self.options.kill_grace + 15
        for w in self.workers.values():
            w.process.join(max(0.1, deadline - time.monotonic()))
            if w.process.is_alive():
                w.process.kill()
                w.process.join(2)
            _close_parent_ends(w)
        for conn in list(self.clients):
            try:
                conn.close()
            except OSError:
                pass


def _detach() -> None:
    """The keeper's side of the double fork: the caller returns at once, the child goes on
    with stdio on /dev/null (its caller already made it a session leader)."""
    if os.fork() > 0:
        os._exit(0)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def _open_log(directory: str) -> Any:
    path = os.path.join(directory, keepersock.LOG_NAME)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "a", encoding="utf-8")


def main(argv: List[str]) -> int:
    """Start a keeper: exit 0 once it listens (it goes on in the background), 2 when refused."""
    try:
        persist = float(argv[0])
        directory = keepersock.secure_dir()
        path = keepersock.socket_path(directory)
        if os.path.exists(path):
            if keepersock.connect(path) is not None:
                return 0  # another keeper answers there already
            os.unlink(path)  # stale: its keeper is gone
        listener = keepersock.listen(path)
        log = _open_log(directory)
    except keepersock.KeeperRefused as exc:
        sys.stderr.write(f"hostops: error: {exc}\n")
        return 2
    except (OSError, ValueError, IndexError) as exc:
        sys.stderr.write(f"hostops: error: cannot start the connection keeper: {exc}\n")
        return 2
    inode = os.stat(path).st_ino
    _detach()
    os.chdir("/")
    pid_path = os.path.join(directory, PID_NAME)
    fd = os.open(pid_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    os.write(fd, f"{os.getpid()}\n".encode())
    os.close(fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    keeper = Keeper(listener, directory, persist, log)

    def on_term(_signum: int, _frame: Any) -> None:
        keeper.stopping = True

    signal.signal(signal.SIGTERM, on_term)
    try:
        keeper.serve()
    except Exception as exc:  # noqa: BLE001 - the keeper's last word goes to its log
        keeper.say(f"stopping after an internal error: {type(exc).__name__}: {exc}")
    finally:
        keeper.shut_down()
        try:
            if os.stat(path).st_ino == inode:
                os.unlink(path)
                os.unlink(pid_path)
        except OSError:
            pass
        keeper.say("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
