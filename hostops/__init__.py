"""hostops: run commands on many hosts over SSH, in parallel.

Data flow (hostops/README.md has one line per module): cli → inventory → selection →
settings → api → rollout → pool → worker → ssh/local → results → output / log. The names
below are the library API; importing them does not import paramiko (connections import
it lazily).
"""
from __future__ import annotations

__version__ = "0.1.0"

#: name -> module: imported on first use (PEP 562), so ``hostops --version`` and
#: ``--help`` load neither YAML nor the inventory code.
_EXPORTS = {
    "ConnectError": "hostops.errors", "HostKeyError": "hostops.errors", "HostopsError": "hostops.errors",
    "InventoryError": "hostops.errors", "SelectionError": "hostops.errors", "UsageError": "hostops.errors",
    "ExitCode": "hostops.exitcodes", "Inventory": "hostops.inventory", "HostResult": "hostops.results",
    "Summary": "hostops.results", "Options": "hostops.settings", "Target": "hostops.settings",
    "resolve": "hostops.settings", "RunReport": "hostops.results", "Status": "hostops.results",
    "RolloutSpec": "hostops.rollout", "StepRun": "hostops.rollout", "run_rollout": "hostops.api",
}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hostops' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def run_command(*args, **kwargs):  # noqa: D103 - see hostops.api.run_command
    from hostops.api import run_command as _run_command

    return _run_command(*args, **kwargs)


__all__ = [
    "__version__", "ConnectError", "ExitCode", "HostKeyError", "HostResult", "HostopsError", "Inventory",
    "InventoryError", "Options", "RolloutSpec", "RunReport", "SelectionError", "Status", "StepRun", "Summary",
    "Target", "UsageError", "resolve", "run_command", "run_rollout",
]
