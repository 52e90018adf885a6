"""The client side of ``--persist``: :class:`KeeperPool`, a pool whose workers are the
connection keeper's (:mod:`hostops.keeper`), started on demand.

It offers what :class:`hostops.api.Session` asks of :class:`hostops.pool.Pool` (``start``,
``run(jobs, wake_fd, should_abort)`` yielding Started/Output/Done, ``release``, ``close``,
``terminate``, ``in_flight``, ``aborting``, ``not_started``), plus ``logs_results = False``:
the keeper's workers write no log, so the session writes every host record itself (the
client keeps the one Lock-serialised log writer).

Faults, as a dead worker's are: the keeper gone mid-run (its socket's end) → hosts begun
are reported failed, "the command may have run", hosts not begun failed "not run", at
once; the next run starts a fresh keeper. A host past every deadline is reported by the
same watchdog arithmetic as the pool's. Ctrl-C sends ``Cancel``; a second one closes the
socket, which the keeper takes as a cancelled run too.

Must not import: api, cli, keeper, worker.
"""
from __future__ import annotations

import fcntl
import multiprocessing.connection
import os
import subprocess
import sys
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Set

from hostops import keepersock
from hostops.errors import HostopsError
from hostops.pool import PARENT_SLACK, _completed
from hostops.results import FAILED, INTERRUPTED, TIMEOUT, HostResult
from hostops.settings import Options
from hostops.wire import (Begin, Begun, Cancel, Control, ControlAnswer, Done, Job, JobDone, JobOutput, JobStarted,
                          JobUnstarted, Jobs, Output, Refused, Started)

#: Bounds on starting a keeper and on its first answer (hang guards, not expectations).
START_TIMEOUT = 30.0

#: A keeper silent this long while a run waits on it (it sends a heartbeat every 2 s) is
#: stuck (stopped, wedged): the run gives up on it as on a dead one, never hangs.
KEEPER_SILENCE = 60.0


class KeeperError(HostopsError):
    """The keeper could not be started or reached (exit 1: see its log)."""


def ensure_keeper(persist: float) -> Any:
    """A checked connection to this user's keeper, started if none answers. A stale socket
    (its keeper died) is replaced; two clients starting one at once start one (a lock)."""
    directory = keepersock.secure_dir()
    path = keepersock.socket_path(directory)
    conn = keepersock.connect(path)
    if conn is not None:
        return conn
    lock_fd = os.open(os.path.join(directory, keepersock.LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        conn = keepersock.connect(path)
        if conn is None:
            _start_keeper(persist)
            conn = keepersock.connect(path)
        if conn is None:
            raise KeeperError(f"the connection keeper did not start listening on {path}; see "
                              f"{os.path.join(directory, keepersock.LOG_NAME)}")
        return conn
    finally:
        os.close(lock_fd)


def _start_keeper(persist: float) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "hostops.keeper", repr(float(persist))],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True, close_fds=True)
    try:
        _out, err = proc.communicate(timeout=START_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise KeeperError("the connection keeper did not start in time") from None
    message = (err or b"").decode(errors="replace").strip()
    if proc.returncode == 2:
        raise keepersock.KeeperRefused(message.replace("hostops: error: ", "", 1) or "the keeper refused to start")
    if proc.returncode != 0:
        raise KeeperError(f"the connection keeper could not start (exit {proc.returncode}): {message}")


def control(what: str, pattern: Optional[str] = None) -> Optional[ControlAnswer]:
    """``hostops connections``: ask the running keeper; None when no keeper runs."""
    directory = keepersock.secure_dir(create=False) if os.path.isdir(keepersock.runtime_dir()) else None
    if directory is None:
        return None
    conn = keepersock.connect(keepersock.socket_path(directory))
    if conn is None:
        return None
    try:
        conn.send(Control(what, pattern))
        if not conn.poll(START_TIMEOUT):
            raise KeeperError("the connection keeper did not answer")
        answer = conn.recv()
        return answer if isinstance(answer, ControlAnswer) else None
    finally:
        conn.close()


class KeeperPool:
    """A run's jobs served by the keeper: the :class:`hostops.pool.Pool` interface."""

    logs_results = False

    def __init__(self, options: Options, host_count: int):  # noqa: ARG002  (the Pool's signature)
        self.options = options
        self.run_options = options.run_options()
        self.aborting = False
        self.not_started: List[Job] = []
        self.conn: Any = None
        self.keeper_pid: Optional[int] = None
        self._jobs: Dict[int, Job] = {}
        self._started: Dict[int, float] = {}
        self._limits: Dict[int, Optional[float]] = {}

    def start(self) -> None:
        import dataclasses

        conn = ensure_keeper(self.options.persist)
        options = dataclasses.replace(self.options, log=None)  # the client writes the log
        try:
            conn.send(Begin(options, self.options.persist, os.environ.get("SSH_AUTH_SOCK"), os.getcwd(),
                            keepersock.code_id()))
            if not conn.poll(START_TIMEOUT):
                raise KeeperError("the connection keeper did not answer")
            answer = conn.recv()
        except (EOFError, OSError) as exc:
            conn.close()
            raise KeeperError(f"the connection keeper went away while starting the run ({exc})") from None
        if isinstance(answer, Refused):
            conn.close()
            raise keepersock.KeeperRefused(answer.reason)
        assert isinstance(answer, Begun)
        self.keeper_pid = answer.keeper_pid
        self.conn = conn

    def release(self, hosts: Iterable[str]) -> None:
        pass  # the keeper holds every connection anyway

    def in_flight(self) -> List[str]:
        return [self._jobs[jid].target.name for jid in sorted(self._started) if jid in self._jobs]

    def close(self, timeout: float = 5.0) -> None:  # noqa: ARG002  (the Pool's signature)
        if self.conn is not None:
            try:
                self.conn.close()
            except OSError:
                pass
            self.conn = None

    def terminate(self, now: bool = False) -> None:  # noqa: ARG002  (the keeper stops the run's commands)
        self.close()

    def overdue_after(self, job: Job) -> Optional[float]:
        if not job.timeout:
            return None
        connect = max(job.target.connect_timeout or 0, self.options.connect_timeout)
        return connect + job.timeout + self.run_options.kill_grace + PARENT_SLACK

    # ------------------------------------------------------------ run
    # One piece (~70 lines): the client's whole wait loop (abort, messages, watchdog, the keeper's
    # end) reads top to bottom, as Pool.run does.
    def run(self, jobs: Iterable[Job], wake_fd: Optional[int] = None,  # noqa: C901
            should_abort: Callable[[], bool] = lambda: False) -> Iterator[Any]:
        jobs = list(_completed(jobs, self.options))
        self._jobs = {j.id: j for j in jobs}
        remaining: Set[int] = set(self._jobs)
        given_up: Set[int] = set()
        if self.conn is None and remaining:
            self.start()  # the keeper died during an earlier step: a fresh one
        try:
            self.conn.send(Jobs(tuple(jobs)))
        except OSError:
            yield from self._keeper_gone(remaining)
            return
        drain_deadline: Optional[float] = None
        heard = time.monotonic()
        while remaining - given_up:
            if not self.aborting and should_abort():
                self.aborting = True
                drain_deadline = time.monotonic() + self.run_options.kill_grace + 15
                try:
                    self.conn.send(Cancel())
                except OSError:
                    pass
            waitables = [self.conn] + ([wake_fd] if wake_fd is not None and not self.aborting else [])
            multiprocessing.connection.wait(waitables, self._wait_timeout(drain_deadline))
            try:
                while self.conn.poll(0):
                    msg = self.conn.recv()
                    heard = time.monotonic()
                    job = self._jobs.get(getattr(msg, "job_id", -1))
                    if job is None or job.id in given_up:
                        continue
                    if isinstance(msg, JobOutput):
                        yield Output(job, msg.stream, msg.data)
                    elif isinstance(msg, JobStarted):
                        self._started[job.id] = time.monotonic()
                        self._limits[job.id] = self.overdue_after(job)
                        yield Started(job)
                    elif isinstance(msg, JobDone):
                        remaining.discard(job.id)
                        self._started.pop(job.id, None)
                        yield Done(job, msg.result, by_parent=False)
                    elif isinstance(msg, JobUnstarted):
                        remaining.discard(job.id)
                        self.not_started.append(job)
            except (EOFError, OSError):
                yield from self._keeper_gone(remaining - given_up)
                return
            if time.monotonic() - heard > KEEPER_SILENCE:  # checked after reading what had come
                yield from self._keeper_gone(remaining - given_up, f"has not answered for {KEEPER_SILENCE:g}s")
                return
            now = time.monotonic()
            for jid, began in list(self._started.items()):
                limit = self._limits.get(jid)
                late = limit is not None and now - began > limit
                if jid in remaining and jid not in given_up and (late or (drain_deadline and now > drain_deadline)):
                    given_up.add(jid)
                    self._started.pop(jid, None)
                    yield self._made_up(self._jobs[jid], now - began, TIMEOUT if late else INTERRUPTED)
            if drain_deadline is not None and now > drain_deadline:
                self.not_started += [self._jobs[j] for j in sorted(remaining - given_up)]
                return

    def _wait_timeout(self, drain_deadline: Optional[float]) -> float:
        times = [drain_deadline] if drain_deadline is not None else []
        times += [t + limit for jid, t in self._started.items() if (limit := self._limits.get(jid)) is not None]
        return 1.0 if not times else max(0.0, min(min(times) - time.monotonic(), 1.0)) + 0.05

    def _made_up(self, job: Job, elapsed: float, status: str) -> Done:
        error = (f"no result after {elapsed:.0f}s, past every deadline; the keeper is stuck on this host and the "
                 "remote command may still be running") if status == TIMEOUT else (
                 "interrupted; no word from the keeper on cleanup, the remote command may still be running")
        return Done(job, HostResult(job.target.name, status, start=time.time() - elapsed, duration=elapsed,
                                    step=job.step, error=error), by_parent=True)

    def _keeper_gone(self, remaining: Set[int], how: str = "ended") -> Iterator[Done]:
        """The keeper's end (or silence) mid-run: every host still owed is reported now, honestly."""
        who = f"the connection keeper (pid {self.keeper_pid})"
        self.close()
        for jid in sorted(remaining):
            job = self._jobs[jid]
            if jid in self._started:
                error = (f"{who} {how} while this host ran; the command may have run. Not retried: check the host "
                         "before running it again")
            else:
                error = f"not run: {who} {how} before this host began; nothing ran there"
            self._started.pop(jid, None)
            yield Done(job, HostResult(job.target.name, FAILED, step=job.step, error=error), by_parent=True)
