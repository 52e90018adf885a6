"""Every message between the parent and its workers, and the results channel.

Owns: the frozen dataclasses that cross the process boundary (parent → worker inbox:
:class:`Job`, :class:`Abort`, :class:`Stop`, :class:`Release`; worker → parent results:
:class:`JobStarted`, :class:`JobOutput`, :class:`JobDone`, :class:`JobUnstarted`,
:class:`WorkerFailed`), the events the pool yields to its caller (:class:`Started`,
:class:`Output`, :class:`Done`), and :class:`ResultsChannel`, the one owner of a worker's
results ``multiprocessing.Queue`` (its private parts are reached through
:mod:`hostops._patches` only).

Must not import: pool, worker, api, cli, transport (or its successors): this module is
the vocabulary they share. Imports only settings/results types, and _patches.

The messages are hot (a few per host, one per --stream line): each class has ``__slots__``
and pickles as its class and a tuple of its fields (``__reduce__``), written by hand so the
package keeps working on Python 3.9 (``dataclass(slots=True)`` is 3.10+).
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Optional, Tuple

from hostops import _patches

if TYPE_CHECKING:
    from hostops.actions import Action
    from hostops.results import HostResult
    from hostops.settings import Target


def _by_fields(self: Any) -> Tuple[Any, ...]:
    """``__reduce__`` for the slotted frozen messages: the class and its field values
    (a frozen class cannot take pickle's default setattr of the slots)."""
    return (type(self), tuple(getattr(self, name) for name in self.__slots__))


# ------------------------------------------------------------------ parent → worker (inbox)
@dataclasses.dataclass
class Job:
    """One host's work: where to go and what to do there. ``keep``: leave the connection
    open for the host's next job (runbook steps reuse one connection per host).

    ``timeout`` and ``sudo`` are the job's action's own (a runbook step's ``timeout:`` and
    ``sudo:``, else the run's, filled in when the action was made); the parent's watchdog
    and the kill read them here. An action made without a time limit gets the run's -t for
    the watchdog only, in the parent (:meth:`hostops.pool.Pool.run`)."""

    id: int
    target: "Target"
    action: "Action"
    keep: bool = False
    step: Optional[str] = None
    timeout: Optional[float] = None   # None: the action's own
    sudo: Optional[bool] = None       # None: the action's own
    run: int = 0                      # the keeper's run (--persist): whose options and secrets

    def __post_init__(self) -> None:
        if self.timeout is None:
            self.timeout = self.action.timeout
        if self.sudo is None:
            self.sudo = self.action.sudo


@dataclasses.dataclass(frozen=True)
class Abort:
    """Stop what is running (clean up remote commands), report, take no more jobs."""

    __slots__ = ()
    __reduce__ = _by_fields


@dataclasses.dataclass(frozen=True)
class Stop:
    """No more jobs: finish the running ones and exit."""

    __slots__ = ()
    __reduce__ = _by_fields


@dataclasses.dataclass(frozen=True)
class Release:
    """Close the connections kept for these hosts (their part of a runbook is over)."""

    __slots__ = ("hosts",)
    hosts: Tuple[str, ...]
    __reduce__ = _by_fields


ABORT = Abort()
STOP = Stop()


# ------------------------------------------------------------------ keeper → its workers (--persist)
@dataclasses.dataclass(frozen=True)
class RunBegin:
    """A client's run begins: its options (secrets included: they live only as long as the
    run) and how long its connections are held once idle."""

    run: int
    options: Any
    persist: float
    cwd: str  # the client's: relative paths of put/get/script resolve there


@dataclasses.dataclass(frozen=True)
class RunEnd:
    """The run is over: its options and secrets are dropped."""

    run: int


@dataclasses.dataclass(frozen=True)
class RunAbort:
    """Stop this run's commands (its client pressed Ctrl-C or went away); other runs go on."""

    run: int


@dataclasses.dataclass(frozen=True)
class HeldQuery:
    """List the held connections (``close``: close those whose host matches it first)."""

    tag: int
    close: Optional[str] = None


# ------------------------------------------------------------------ worker → parent (results)
# A worker's results channel is its own, so messages name the job, not the worker.
@dataclasses.dataclass(frozen=True)
class JobStarted:
    __slots__ = ("job_id",)
    job_id: int
    __reduce__ = _by_fields


@dataclasses.dataclass(frozen=True)
class JobOutput:
    """One --stream piece (a line, or up to 64 KiB of a long one), secrets already masked."""

    __slots__ = ("job_id", "stream", "data")
    job_id: int
    stream: str
    data: bytes
    __reduce__ = _by_fields


@dataclasses.dataclass(frozen=True)
class JobDone:
    """The host's result, already logged by the worker."""

    __slots__ = ("job_id", "result")
    job_id: int
    result: "HostResult"
    __reduce__ = _by_fields


@dataclasses.dataclass(frozen=True)
class JobUnstarted:
    """Handed back never begun (the run was aborted before its turn)."""

    __slots__ = ("job_id",)
    job_id: int
    __reduce__ = _by_fields


@dataclasses.dataclass(frozen=True)
class WorkerFailed:
    """The worker could not start (its log, its context): the run cannot go on."""

    __slots__ = ("message",)
    message: str
    __reduce__ = _by_fields


@dataclasses.dataclass(frozen=True)
class HeldRows:
    """A worker's answer to :class:`HeldQuery`: one dict per held connection, and how many
    it closed."""

    tag: int
    rows: Tuple[Any, ...]
    closed: int = 0


WorkerMessage = Any  # JobStarted | JobOutput | JobDone | JobUnstarted | WorkerFailed (3.9: no `|`)


# ------------------------------------------------------------------ pool → its caller (events)
@dataclasses.dataclass(frozen=True)
class Started:
    """``job``'s host has begun."""

    __slots__ = ("job",)
    job: Job


@dataclasses.dataclass(frozen=True)
class Output:
    """A --stream piece of ``job``'s output on ``stream`` ("stdout" or "stderr")."""

    __slots__ = ("job", "stream", "data")
    job: Job
    stream: str
    data: bytes


@dataclasses.dataclass(frozen=True)
class Done:
    """``job``'s result. ``by_parent``: the pool made it up because no worker will report
    (or log) it: a crashed worker's host, an overdue one, one given up on. The caller logs it
    and cleans up after it."""

    __slots__ = ("job", "result", "by_parent")
    job: Job
    result: "HostResult"
    by_parent: bool


# ------------------------------------------------------------------ the results channel
class ResultsChannel:
    """A worker's results queue: exactly one writer (the worker), one reader (the parent).

    The parent drops its copy of the writing end once the worker has started, so a worker's
    death shows as end-of-file, and a worker killed halfway through a message neither wedges
    another worker (no lock is shared) nor blocks the parent. Pickles into the worker (under
    spawn/forkserver) as the queue it wraps."""

    def __init__(self, ctx: Any):
        self._queue = ctx.Queue()
        self._reader, self._writer = _patches.queue_ends(self._queue)

    # -- worker side
    def put(self, message: WorkerMessage) -> None:
        self._queue.put(message)

    def close(self) -> None:
        """The worker's last word: flush what was put, then close."""
        self._queue.close()
        self._queue.join_thread()

    # -- parent side
    def started(self) -> None:
        """The worker has started (holding its own writing end): drop the parent's."""
        self._writer.close()

    @property
    def reader(self) -> Any:
        """What to pass to ``multiprocessing.connection.wait``."""
        return self._reader

    def take(self) -> Optional[WorkerMessage]:
        """The next message if one is waiting, else None. Raises EOFError/OSError when the
        worker is gone, and whatever unpickling a message cut short by its death raises."""
        if not self._reader.poll(0):
            return None
        return self._queue.get_nowait()

    def close_reader(self) -> None:
        try:
            self._reader.close()
        except OSError:
            pass

    def __getstate__(self) -> Any:
        return self._queue

    def __setstate__(self, queue: Any) -> None:
        self._queue = queue
        self._reader, self._writer = _patches.queue_ends(queue)


# ------------------------------------------------------------------ client ↔ keeper (the socket)
@dataclasses.dataclass(frozen=True)
class Begin:
    """A client's run: its options (no log: the client writes it) and --persist seconds."""

    options: Any
    persist: float
    agent: Optional[str]  # the client's SSH_AUTH_SOCK: a keeper started with another is not used
    cwd: str              # the client's working directory
    code: str = ""        # the client's hostops code (keepersock.code_id): a keeper running other code is not used


@dataclasses.dataclass(frozen=True)
class Begun:
    keeper_pid: int


@dataclasses.dataclass(frozen=True)
class Refused:
    reason: str


@dataclasses.dataclass(frozen=True)
class Jobs:
    jobs: Tuple[Any, ...]


@dataclasses.dataclass(frozen=True)
class Cancel:
    """Stop this run (a first Ctrl-C): running commands stopped, jobs not begun handed back."""


@dataclasses.dataclass(frozen=True)
class Control:
    """``hostops connections``: ``list``, ``close`` (hosts matching ``pattern``) or ``stop``."""

    what: str
    pattern: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class ControlAnswer:
    rows: Tuple[Any, ...]
    closed: int = 0


@dataclasses.dataclass(frozen=True)
class Alive:
    """The keeper's heartbeat to a run's client (every few seconds, busy or not)."""


ALIVE = Alive()
