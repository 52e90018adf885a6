"""hostops: run commands on many hosts over SSH, in parallel.

Data flow, one module each: inventory → selection → settings → pool → worker →
transport → results → output / log. The names below are the library API; importing
them does not import paramiko (connections import it lazily).
"""
from __future__ import annotations

__version__ = "0.1.0"

from hostops.errors import (  # noqa: E402
    ConnectError, HostKeyError, HostopsError, InventoryError, SelectionError, UsageError,
)
from hostops.exitcodes import ExitCode  # noqa: E402
from hostops.inventory import Inventory  # noqa: E402
from hostops.results import HostResult, Summary  # noqa: E402
from hostops.settings import Options, Target, resolve  # noqa: E402


def run_command(*args, **kwargs):  # noqa: D103 - see hostops.api.run_command
    from hostops.api import run_command as _run_command

    return _run_command(*args, **kwargs)


__all__ = [
    "__version__", "ConnectError", "ExitCode", "HostKeyError", "HostResult", "HostopsError", "Inventory",
    "InventoryError", "Options", "SelectionError", "Summary", "Target", "UsageError", "resolve", "run_command",
]
