"""What a job does on a host: the :class:`Action` protocol and the actions that are not transfers.

Owns: the protocol every action meets (the worker, the pool's watchdog and the renderers read
these members and nothing else), :class:`ExecAction` (one shell command) and
:class:`RetryAction` (a runbook step's ``retries:``). The transfer actions live in
:mod:`hostops.put`, :mod:`hostops.get` and :mod:`hostops.script` (their shared helpers in
:mod:`hostops.transfer`), the key scan in :mod:`hostops.keys`.

An action is plain picklable data: it crosses into the worker inside a Job. Its ``timeout``
and ``sudo`` are its own (a runbook step's, else the run's, filled in when it is made).

Must not import: pool, worker, api, cli, runbook, transfer, put, get, script (they import this module).
"""
from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Optional, Protocol, runtime_checkable

from hostops.errors import CommandAborted, CommandTimeout
from hostops.results import SUCCESS

if TYPE_CHECKING:
    from hostops.connection import CommandOutcome

OutputCallback = Callable[[str, bytes], None]


class Action(Protocol):
    """What the worker runs for one host.

    ``timeout``: seconds the action may take (None: no limit); the worker's deadline, the
    kill's and the parent's watchdog use it. ``sudo``: whether it runs (and is stopped) as
    root. ``needs_connection``: False when the action makes its own (keys scan: a handshake,
    no login); the worker then passes ``conn=None``."""

    @property
    def timeout(self) -> Optional[float]: ...

    @property
    def sudo(self) -> bool: ...

    @property
    def needs_connection(self) -> bool: ...

    def describe(self) -> str: ...

    def run(self, conn: Any, target: Any, ctx: Any, on_output: Optional[OutputCallback]) -> "CommandOutcome": ...



@runtime_checkable
class LeavesLocalFiles(Protocol):
    """An action that writes local files while it runs (``get``): when its worker dies, nothing
    in that worker removes them, so the parent calls ``discard_partial`` for the host."""

    def discard_partial(self, target: Any) -> None: ...


@dataclasses.dataclass
class ExecAction:
    """Run one shell command."""

    command: str
    timeout: Optional[float] = None
    sudo: bool = False
    stdin: Optional[str] = None  # a local file sent to the command's stdin on every host
    needs_connection: ClassVar[bool] = True

    def describe(self) -> str:
        return self.command

    def run(self, conn: Any, target: Any, ctx: Any,  # noqa: ARG002 - the Action protocol's signature
            on_output: Optional[OutputCallback]) -> "CommandOutcome":
        return conn.run(self.command, self.timeout, on_output, self.stdin, sudo=self.sudo)


@dataclasses.dataclass
class RetryAction:
    """Run ``inner`` until it succeeds, at most ``retries`` more times, ``delay`` apart."""

    inner: Any
    retries: int
    delay: float

    @property
    def timeout(self) -> Optional[float]:
        """Each attempt's limit (the watchdog allows for every attempt and delay)."""
        return self.inner.timeout

    @property
    def sudo(self) -> bool:
        return self.inner.sudo

    @property
    def needs_connection(self) -> bool:
        return self.inner.needs_connection

    def describe(self) -> str:
        return f"{self.inner.describe()} (retries {self.retries}, delay {self.delay:g}s)"

    def run(self, conn: Any, target: Any, ctx: Any, on_output: Optional[OutputCallback]) -> "CommandOutcome":
        attempt = 0
        while True:
            attempt += 1
            outcome: Optional[CommandOutcome]
            try:
                outcome = self.inner.run(conn, target, ctx, on_output)
                ok = (outcome.status in SUCCESS) if outcome.status else (outcome.exit_code == 0 and not outcome.error)
            except CommandAborted:
                raise
            except CommandTimeout:
                if attempt > self.retries:
                    raise
                ok, outcome = False, None
            if outcome is not None and (ok or attempt > self.retries):
                if attempt > 1:
                    note = f"after {attempt} attempts"
                    outcome.error = f"{outcome.error} ({note})" if outcome.error else (None if ok else note)
                return outcome
            if ctx is not None and ctx.abort.wait(self.delay):
                raise CommandAborted(b"", b"", "interrupted between retries")
            if ctx is None and self.delay:
                time.sleep(self.delay)

