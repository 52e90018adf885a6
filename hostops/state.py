"""What the last run did to each host, so the next one can pick up from there.

Every run writes ``last-run.json`` (0600) into ``$XDG_STATE_HOME/hostops/`` (default
``~/.local/state/hostops/``), or beside ``--log FILE`` as ``FILE.last-run.json``. The
patterns ``@ok``, ``@failed``, ``@unreachable`` and ``@untouched`` select from it, like
Ansible's retry files. What it says the run was (a command line may hold a secret) has the run's
secrets masked.

Owns: the state file's place, writing it atomically, and reading it back for ``@…`` patterns.
What a status means for a pattern is :data:`hostops.results.STATE_PATTERNS`; what each host's
status is, :meth:`hostops.results.RunReport.state_hosts`.
Must not import: the CLI, the API, the pool (selection imports this module).
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable

from hostops import results
from hostops.errors import SelectionError
from hostops.results import UNTOUCHED
from hostops.secrets import Secrets, private_makedirs

STATE_PATTERNS = tuple(results.STATE_PATTERNS)  # "ok", "failed", "unreachable", "untouched"


def state_path(log_path: str | None = None, state_dir: str | None = None) -> str:
    """Beside ``--log FILE``, else in ``state_dir`` (--state-dir / config ``state_dir``), else
    in :func:`default_state_dir`."""
    if log_path:
        return log_path + ".last-run.json"
    return os.path.join(state_dir or default_state_dir(), "last-run.json")


def default_state_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "hostops")


def write_report(path: str, what: str, report: results.RunReport, secrets: Secrets | None = None) -> None:
    """Record a run's outcome (:meth:`RunReport.state_hosts`) for the next run's @failed, @ok…"""
    write_state(path, what, report.state_hosts(), (), secrets)


def write_state(path: str, what: str, statuses: dict[str, str], untouched: Iterable[str] = (),
                secrets: Secrets | None = None) -> None:
    """Record each host's outcome (atomically: a reader sees the old or the new file), with
    ``secrets`` masked in what is stored."""
    hosts = {name: str(status) for name, status in statuses.items()}
    for name in untouched:
        hosts.setdefault(name, UNTOUCHED)
    if secrets is not None and secrets.all():
        what = secrets.redact(what)  # host names are kept as they are: @failed must find them
    data = {"time": time.time(), "what": what, "hosts": hosts}
    directory = os.path.dirname(path) or "."
    private_makedirs(directory)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:  # a full disk: the old state stays, and no temporary file is left
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def hosts_with(path: str, which: str) -> list[str]:
    """Host names of the last run matching ``@which``."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        hosts = data["hosts"]
        if not isinstance(hosts, dict) or not all(isinstance(s, str) for s in hosts.values()):
            raise ValueError("'hosts' must map host names to statuses")
    except FileNotFoundError:
        raise SelectionError(f"@{which}: no previous run recorded ({path} does not exist)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SelectionError(f"@{which}: cannot read the last run's state {path}: {exc}") from None
    wanted = results.STATE_PATTERNS.get(which, results.STATE_PATTERNS["failed"])
    return [name for name, status in hosts.items() if status in wanted]
