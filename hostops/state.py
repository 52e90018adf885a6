"""What the last run did to each host, so the next one can pick up from there.

Every run records each host's outcome (0600) in a state file of its own inventory: in
``$XDG_STATE_HOME/hostops/`` (default ``~/.local/state/hostops/``) as
``last-run.<name>.<key>.json`` (``<name>``: the first inventory file's, in path order), where ``<key>`` is a digest of the resolved inventory sources
(the ``-i`` files' real paths and the ``-H`` hosts, in any order), so a run on staging never
redirects ``-l @failed`` on prod; or, with ``--log FILE``, beside the log as
``FILE.last-run.json``. The patterns ``@ok``, ``@failed``, ``@unreachable`` and ``@untouched``
select from it, like Ansible's retry files. What it says the run was (a command line may
hold a secret) has the run's secrets masked.

Owns: the state file's place (:func:`state_dir`, :func:`state_path`), writing it atomically,
and reading it back (:func:`read_state`) for ``@…`` patterns and ``hostops inventory``.
What a status means for a pattern is :data:`hostops.results.STATE_PATTERNS`; what each host's
status is, :meth:`hostops.results.RunReport.state_hosts`.
Must not import: the CLI, the API, the pool, selection (selection imports this module).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence

from hostops import results
from hostops.errors import SelectionError
from hostops.results import UNTOUCHED, iso_time
from hostops.secrets import Secrets, private_makedirs

STATE_PATTERNS = tuple(results.STATE_PATTERNS)  # "ok", "failed", "unreachable", "untouched"


def state_dir() -> str:
    """Where state files live when there is no --log: ``$XDG_STATE_HOME/hostops``."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "hostops")


def state_path(log_path: str | None = None, inventories: Sequence[str] = (), adhoc_hosts: Sequence[str] = ()) -> str:
    """The state file of a run: beside ``--log`` when there is one, else one per inventory
    (the same files and -H hosts, in any order, share it). Without any source (a library
    caller), the one shared ``last-run.json``."""
    if log_path:
        return log_path + ".last-run.json"
    sources = inventory_key(inventories, adhoc_hosts)
    if not sources:
        return os.path.join(state_dir(), "last-run.json")
    digest = hashlib.sha256("\0".join(sources).encode("utf-8", "surrogateescape")).hexdigest()[:12]
    files = [s[len("file:"):] for s in sources if s.startswith("file:")]
    first = os.path.basename(files[0]) if files else "adhoc"  # the sorted first: any order, same name
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", os.path.splitext(first)[0]).strip("-")[:40] or "inventory"
    return os.path.join(state_dir(), f"last-run.{name}.{digest}.json")


def inventory_key(inventories: Sequence[str], adhoc_hosts: Sequence[str] = ()) -> list[str]:
    """What identifies an inventory: its files' real paths and its -H hosts, sorted."""
    return sorted({f"file:{os.path.realpath(os.path.expanduser(p))}" for p in inventories}
                  | {f"host:{h}" for h in adhoc_hosts})


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
    data = {"schema": results.SCHEMA, "time": iso_time(), "what": what, "hosts": hosts}
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


@dataclasses.dataclass
class LastRun:
    """A state file as read back: which run it was, and each host's outcome."""

    path: str
    time: str | None      # ISO 8601 UTC (older files held epoch seconds: converted)
    what: str
    hosts: dict[str, str]

    def select(self, which: str) -> list[str]:
        """Host names of this run matching ``@which``."""
        wanted = results.STATE_PATTERNS.get(which, results.STATE_PATTERNS["failed"])
        return [name for name, status in self.hosts.items() if status in wanted]

    def describe(self) -> str:
        """``the run of 'uptime' at 2026-…+00:00 (state file PATH)``."""
        when = f" at {self.time}" if self.time else ""
        return f"the run of {self.what!r}{when} (state file {self.path})"


def read_state(path: str, which: str = "failed") -> LastRun:
    """The state file at ``path``; SelectionError naming the file if it is missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        hosts = data["hosts"]
        if not isinstance(hosts, dict) or not all(isinstance(s, str) for s in hosts.values()):
            raise ValueError("'hosts' must map host names to statuses")
    except FileNotFoundError:
        raise SelectionError(f"@{which}: no previous run recorded for this inventory ({path} does not exist; "
                             "each inventory (its -i files and -H hosts) and each --log has its own)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SelectionError(f"@{which}: cannot read the last run's state {path}: {exc}") from None
    when = data.get("time")
    if isinstance(when, (int, float)) and not isinstance(when, bool):
        when = iso_time(float(when))
    return LastRun(path, when if isinstance(when, str) else None, str(data.get("what") or "?"), hosts)


def hosts_with(path: str, which: str) -> list[str]:
    """Host names of the last run matching ``@which``."""
    return read_state(path, which).select(which)
