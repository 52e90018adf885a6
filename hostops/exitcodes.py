"""Exit codes, following pssh so existing scripts keep working.

0 all ok · 1 internal error · 2 usage/inventory/selection/runbook error (nothing ran) ·
3 some host timed out · 4 some host unreachable · 5 some remote command failed ·
6 another run holds the --lock file (nothing ran) · 130 interrupted · 141 standard output's reader
went away (``| head -1``): the run was stopped as an interrupt would stop it, every host logged.
With several, the first of 3, 4, 5 that applies wins, as in pssh.
"""
from __future__ import annotations

import enum
from typing import Iterable


class ExitCode(enum.IntEnum):
    OK = 0
    INTERNAL = 1
    USAGE = 2
    TIMEOUT = 3
    UNREACHABLE = 4
    FAILED = 5
    LOCKED = 6
    INTERRUPTED = 130
    OUTPUT_CLOSED = 141  # 128 + SIGPIPE, what a shell reports for a tool stopped by a closed pipe


#: Host status → the exit code it contributes; order is pssh's priority (first wins).
_PRIORITY = (("timeout", ExitCode.TIMEOUT), ("unreachable", ExitCode.UNREACHABLE), ("failed", ExitCode.FAILED))


def for_statuses(statuses: Iterable[str], interrupted: bool = False) -> ExitCode:
    """The exit code of a run whose hosts ended with ``statuses``."""
    if interrupted:
        return ExitCode.INTERRUPTED
    seen = set(statuses)
    for status, code in _PRIORITY:
        if status in seen:
            return code
    return ExitCode.OK


HELP_TEXT = (
    "Exit codes: 0 all hosts ok; 1 internal error; 2 usage, inventory, selection or runbook error "
    "(nothing ran); 3 some host timed out; 4 some host unreachable (DNS, connect, banner, "
    "auth, host key); 5 some remote command exited non-zero; 6 another run holds the --lock file "
    "(nothing ran); 130 interrupted; 141 standard output's reader went away (| head): the run stopped "
    "as on Ctrl-C, every host still logged. "
    "With several, the first of 3, 4, 5 that applies wins."
)
