"""Host keys learned with ``accept-new`` on Dask workers, recorded once, by the client.

A shard's hostops workers learn new keys into a scratch known_hosts file of its own (the
first file, so the user's files are still read but never written on the worker); each
result carries the keys it learned (:class:`hostops.hostkeys.AddedKey`, with the public
key). The client appends them to its own first known_hosts file under that file's lock
(:func:`hostops.knownhosts_write.record_keys`): a key already there (another shard, another
zone, learned it a moment ago) is not written again, and a different key of the same type
for the same name, as two zones reporting different keys would give, is HOST KEY CHANGED:
never recorded, and the host is reported failed with OpenSSH's warning (its worker had
accepted the key as new, so the command did run there: the error says so).

Owns: :func:`learn_into` (the worker side), :func:`record_on_client`. Must not import: api, cli.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, List, Optional, Sequence

from hostops.results import FAILED, HostResult
from hostops.settings import Options, Target
from hostops.wire import Job


def wants_learning(options: Options, jobs: Sequence[Job]) -> bool:
    return options.host_key_policy == "accept-new" or any(
        j.target.host_key_policy == "accept-new" or any(h.host_key_policy == "accept-new" for h in j.target.jump)
        for j in jobs)


def learn_into(scratch: str, options: Options, jobs: List[Job]) -> tuple:
    """(options, jobs) whose known_hosts start with ``scratch``: new keys go there; the
    user's files (resolved here, on the worker) are still read."""
    from hostops.knownhosts import user_files

    def first(files: Sequence[str]) -> tuple:
        return (scratch, *user_files(files))

    def target(t: Target) -> Target:
        jump = tuple(target(h) for h in t.jump)
        known = first(t.known_hosts) if t.known_hosts else t.known_hosts
        return dataclasses.replace(t, known_hosts=known, jump=jump)

    options = dataclasses.replace(options, known_hosts=first(options.known_hosts))
    return options, [dataclasses.replace(j, target=target(j.target)) for j in jobs]


def scratch_file(directory: str) -> str:
    path = os.path.join(directory, "learned_known_hosts")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    return path


def record_on_client(result: HostResult, target: Target, options: Options) -> HostResult:
    """Write the keys ``result`` learned to this machine's known_hosts (once); the result's
    ``keys_added`` become what was written here. A changed key fails the host."""
    from hostops import knownhosts_write
    from hostops.hostkeys import AddedKey, changed_error
    from hostops.knownhosts import CHANGED, user_files

    learned = [k for k in result.keys_added or () if getattr(k, "blob", b"")]
    if not learned:
        return result
    path = user_files(target.known_hosts or options.known_hosts)[0]

    def hashed(name: str) -> bool:
        if target.hash_known_hosts is not None:
            return bool(target.hash_known_hosts)
        return knownhosts_write.hash_wanted(name, options.ssh_config)

    added: List[Any] = []
    problem: Optional[str] = None
    try:
        records = knownhosts_write.record_keys(path, [(k.name, k.key_type, k.blob) for k in learned], hashed)
    except (knownhosts_write.KnownHostsError, OSError) as exc:
        records, problem = [], f"host key learned on the worker could not be recorded in {path}: {exc}"
    for key, rec in zip(learned, records):
        if rec.outcome == "added":
            added.append(AddedKey(key.name, key.key_type, key.fingerprint, path))
        elif rec.outcome == CHANGED:
            problem = str(changed_error(rec.verdict, path))  # type: ignore[arg-type]
        elif rec.outcome != "present":
            problem = f"host key for {key.name} refused by {path} ({rec.outcome})"
    result.keys_added = added
    if problem is not None:  # the worker had accepted the key as new: the command ran; say so
        note = "; the command ran, through the worker that accepted this key as new"
        return dataclasses.replace(result, status=FAILED, error=problem + note, keys_added=added)
    return result
