"""Host-key checking: strict (default), accept-new, off.

known_hosts files are parsed once per worker process (:mod:`hostops.knownhosts`, our own
reader: hashed names, patterns, markers, unknown key types and malformed lines are all
handled) and kept in memory. The check runs right after the key exchange and before any
authentication, so no credential ever reaches a host whose key failed.

Verdicts and what each policy does with them:

- known: accepted.
- new (no key of this type on record): refused under strict (``host key unknown``); under
  accept-new, appended to the first known_hosts file while holding its lock (see
  :func:`hostops.knownhosts_write.locked`), after re-reading the file under that lock (many
  workers and many hostops runs learning the same key at once still write exactly one line).
  Each key written is noted for the host thread that connected (:func:`take_added`): the CLI
  says "Permanently added …" as OpenSSH does.
- changed (another key of the same type on record): refused under strict and accept-new
  (``HOST KEY CHANGED``), never replaced.
  Under ``off`` the host is accepted, but :meth:`HostKeyChecker.check` reports the mismatch:
  the connection then gets no password (neither ``--ask-pass`` nor the sudo password) and
  a warning, as OpenSSH disables password authentication "to avoid man-in-the-middle
  attacks".
- revoked (an ``@revoked`` line lists the key): refused under every policy, ``off`` too,
  as OpenSSH does.
- unverifiable (the host's only entries are key types hostops cannot parse, or an
  ``@cert-authority`` line: hostops cannot validate host certificates): refused under
  strict and accept-new, never learned over.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shlex
import threading
from typing import Any, Callable, List, Optional, Sequence, Tuple

from hostops import knownhosts, knownhosts_write
from hostops.errors import HostKeyError
from hostops.knownhosts import CHANGED, KNOWN, NEW, REVOKED_KEY, UNVERIFIABLE, KnownHosts, Verdict


def fingerprint(key) -> str:
    """OpenSSH's ``SHA256:…`` fingerprint of a paramiko key."""
    return knownhosts.fingerprint_blob(key.asbytes())


class HostKeyChecker:
    """Checks server keys against known_hosts under one policy; safe to share between threads.

    ``files`` are the user's known_hosts files (the first receives new keys); the global
    files (default ``/etc/ssh/ssh_known_hosts``) are read too. ``hash_known_hosts`` forces
    hashing new entries on or off; None follows ``HashKnownHosts`` in ``ssh_config``.
    """

    def __init__(self, files: Sequence[str], policy: str = "strict", *,
                 global_files: Optional[Sequence[str]] = None, ssh_config: Optional[str] = None,
                 hash_known_hosts: Optional[bool] = None):
        self.files = list(files)
        self.policy = policy
        self.ssh_config = ssh_config
        self.hash_known_hosts = hash_known_hosts
        extra = knownhosts.GLOBAL_FILES if global_files is None else global_files
        self.read_files = self.files + [p for p in extra if p not in self.files]
        self._lock = threading.Lock()
        self._known = KnownHosts(self.read_files)

    @classmethod
    def for_options(cls, options) -> "HostKeyChecker":
        """The checker a run's Options ask for: ``--known-hosts`` files, else
        ~/.ssh/known_hosts and known_hosts2; /etc/ssh/ssh_known_hosts always."""
        return cls(knownhosts.user_files(options.known_hosts), options.host_key_policy,
                   ssh_config=options.ssh_config, hash_known_hosts=getattr(options, "hash_known_hosts", None))

    @property
    def warnings(self) -> List[str]:
        """What loading known_hosts skipped, with file and line (malformed, unsupported types)."""
        return list(self._known.warnings)

    def known_types(self, name: str) -> List[str]:
        """Key types recorded for ``name``: offered first so the server picks a key we know."""
        with self._lock:
            return self._known.known_types(name)

    def verdict(self, name: str, key) -> Verdict:
        with self._lock:
            return self._known.verdict(name, key.get_name(), key.asbytes())

    def check(self, name: str, key) -> Optional[Verdict]:
        """Accept ``key`` for ``name`` or raise HostKeyError; may record it under accept-new.

        Returns the verdict when the key was accepted only because the policy is ``off`` and
        known_hosts holds another key of that type for ``name`` (a possible man in the middle:
        the caller must not send it a password); None otherwise."""
        v = self.verdict(name, key)
        if v.state == KNOWN:
            return None
        if v.state == REVOKED_KEY:
            raise revoked_error(v)
        if self.policy == "off":
            return v if v.state == CHANGED else None
        if v.state == CHANGED:
            raise changed_error(v, self.files[0])
        if v.state == UNVERIFIABLE:
            raise unverifiable_error(v)
        if self.policy == "strict":
            raise HostKeyError(
                f"host key unknown for {name} ({v.key_type} {v.fingerprint}); not in "
                f"{', '.join(self._searched())}. Check the fingerprint, then record it with hostops keys accept "
                "(hostops prints the command for these hosts at the end of the run)", "hostkey-unknown")
        self._learn(name, key)
        return None

    def _searched(self) -> List[str]:
        """The files an "unknown" message names: the first one, and the others that exist."""
        return [p for i, p in enumerate(self.read_files) if i == 0 or os.path.exists(p)]

    def _learn(self, name: str, key) -> None:
        """Append ``name key`` to the first known_hosts file unless it is there already
        (another worker or run may have written it a moment ago)."""
        path = self.files[0]
        if self.hash_known_hosts is not None:
            def hashed(n: str) -> bool:  # noqa: ARG001  (record_keys' per-name callback; the flag decides for all)
                return bool(self.hash_known_hosts)
        else:
            def hashed(n: str) -> bool:
                return knownhosts_write.hash_wanted(n, self.ssh_config)
        try:
            (rec,) = knownhosts_write.record_keys(path, [(name, key.get_name(), key.asbytes())], hashed)
        except (knownhosts_write.KnownHostsError, OSError) as exc:
            raise HostKeyError(f"host key unknown for {name} ({key.get_name()} {fingerprint(key)}) and it "
                               f"could not be recorded: {exc}", "hostkey-unknown") from None
        if rec.outcome == CHANGED:
            raise changed_error(rec.verdict, path)  # type: ignore[arg-type]
        if rec.outcome == REVOKED_KEY:
            raise revoked_error(rec.verdict)  # type: ignore[arg-type]
        if rec.outcome == "added":
            _note_added(AddedKey(name, key.get_name(), fingerprint(key), path, key.asbytes()))
        entry = knownhosts.parse_line(knownhosts_write.format_line(name, key.get_name(), key.asbytes(), False), path,
                                      rec.line or 0)
        if entry is not None:
            with self._lock:
                self._known.add(entry)


def changed_error(v: Verdict, path: str) -> HostKeyError:
    old = "; ".join(f"{e.key_type} {e.fingerprint} ({e.where})" for e in v.old[:3])
    where = v.old[0].path if v.old and v.old[0].path else path
    return HostKeyError(
        f"HOST KEY CHANGED for {v.name}: known_hosts has {old}, the server sent {v.key_type} {v.fingerprint}. "
        f"This can be an attack (man in the middle) or a reinstalled host; verify the new fingerprint, then "
        f"remove the old entry (hostops keys forget {shlex.quote(v.name)} --known-hosts {shlex.quote(where)}, or "
        f"ssh-keygen -R {shlex.quote(v.name)} -f {shlex.quote(where)})", "hostkey-changed")


def mismatch_warning(host: str, v: Verdict) -> str:
    """The one-line warning for a changed key accepted under ``off`` (OpenSSH's words)."""
    old = v.old[0].where if v.old else "known_hosts"
    return (f"{host}: HOST KEY CHANGED ({v.key_type} {v.fingerprint} differs from {old}) and accepted only because "
            "host key checking is off; password authentication is disabled to avoid man-in-the-middle attacks "
            "(no --ask-pass password, no sudo password is sent to it)")


def revoked_error(v: Verdict) -> HostKeyError:
    where = v.entry.where if v.entry else "known_hosts"
    return HostKeyError(
        f"HOST KEY REVOKED for {v.name}: the server sent {v.key_type} {v.fingerprint}, which {where} marks "
        "@revoked; refused (under every --host-key-policy)", "hostkey-revoked")


def unverifiable_error(v: Verdict) -> HostKeyError:
    return HostKeyError(
        f"host key unverifiable for {v.name} ({v.key_type} {v.fingerprint}): {knownhosts.unverifiable_reason(v)}. "
        "Refused; once you have checked the fingerprint, record the key with hostops keys accept --fingerprint "
        "(hostops prints the command for these hosts at the end of the run)", "hostkey-unverifiable")


# ------------------------------------------------------------------ keys learned under accept-new
@dataclasses.dataclass(frozen=True)
class AddedKey:
    """A key accept-new wrote to known_hosts: ``name`` as recorded, into ``path``."""

    name: str
    key_type: str
    fingerprint: str
    path: str
    blob: bytes = b""  # the public key itself: --cluster's client records what a worker learned (issue 16)


#: Per host thread: the keys written while it connected its host (and that host's jump hosts).
#: A worker runs one host per thread at a time, so the thread says whose connection learned it.
_ADDED = threading.local()


def _note_added(key: AddedKey) -> None:
    if not hasattr(_ADDED, "keys"):
        _ADDED.keys = []
    _ADDED.keys.append(key)


def take_added() -> List[AddedKey]:
    """The keys this thread recorded since the last call (and forget them)."""
    keys = list(getattr(_ADDED, "keys", ()))
    _ADDED.keys = []
    return keys


# ------------------------------------------------------------------ hints that work when pasted
#: The one-line start of an unknown / unverifiable key error (see check); the CLI finds the
#: hosts its end-of-run hint is about with it. Group 1: "jump host X for Y: " when a jump host's key.
PROBLEM_RE = re.compile(r"^(jump host \S+ for \S+: )?host key (unknown|unverifiable) for (\S+) "
                        r"\((\S+) (SHA256:\S+)\)")



def host_pattern(hosts: Sequence[str]) -> str:
    """A ``-l`` pattern naming exactly ``hosts``: their names, comma-separated, in natural order
    (``web2 web10 db2`` → ``db2,web2,web10``). Ansible's patterns have no name ranges (brackets
    after a name are a subscript), so names are listed; the caller checks the pattern selects
    those hosts (a name holding ``,``/``:`` or equal to a group's name would not) and falls back to
    the user's own pattern when it is long."""
    return ",".join(sorted(dict.fromkeys(hosts), key=_natural))


def _natural(name: str) -> List[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


@dataclasses.dataclass(frozen=True)
class Reselect:
    """How to select the same hosts again on another command line: the inventory and host
    arguments the user gave (``-i``, ``-H``, ``-l``) and those that change which host (``-p``,
    ``--ssh-config``) or which known_hosts (``--known-hosts``) is meant. Built by the CLI from
    its parsed parameters; ``select`` (pattern → selected host names) lets :meth:`args` narrow
    ``-l`` to the hosts a hint is about, once it is sure the narrowed pattern selects exactly those."""

    inventories: Tuple[str, ...] = ()
    adhoc_hosts: Tuple[str, ...] = ()
    pattern: str = "all"
    port: Optional[int] = None
    ssh_config: Optional[str] = None
    known_hosts: Tuple[str, ...] = ()
    select: Optional[Callable[[str], Sequence[str]]] = dataclasses.field(default=None, compare=False)

    #: A narrowed -l longer than this is not worth it: the user's own pattern is used instead.
    MAX_PATTERN = 400

    def narrow(self, hosts: Optional[Sequence[str]]) -> str:
        """A -l pattern selecting exactly ``hosts`` when one can be checked, else the user's own
        (a superset: keys scan and accept leave hosts already known as they are)."""
        if not hosts or self.select is None:
            return self.pattern
        wanted = set(hosts)
        candidates = [self.pattern, host_pattern(sorted(wanted))]
        for candidate in sorted(candidates, key=len):
            if len(candidate) > self.MAX_PATTERN and candidate != self.pattern:
                continue
            try:
                if set(self.select(candidate)) == wanted:
                    return candidate
            except Exception:  # noqa: BLE001  (any failure to select: fall back to the user's pattern)
                continue
        return self.pattern

    def args(self, hosts: Optional[Sequence[str]] = None, *, known_hosts: bool = True) -> List[str]:
        argv: List[str] = []
        for path in self.inventories:
            argv += ["-i", path]
        for host in self.adhoc_hosts:
            argv += ["-H", host]
        pattern = self.narrow(hosts)
        if pattern != "all":
            argv += ["-l", pattern]
        if self.port is not None:
            argv += ["-p", str(self.port)]
        if self.ssh_config:
            argv += ["--ssh-config", self.ssh_config]
        if known_hosts:
            for path in self.known_hosts:
                argv += ["--known-hosts", path]
        return argv

    def command(self, sub: str, hosts: Optional[Sequence[str]] = None, extra: Sequence[str] = ()) -> str:
        """``hostops keys SUB …`` for ``hosts``, every argument quoted for a POSIX shell."""
        return " ".join(["hostops", "keys", sub] + [shlex.quote(a) for a in self.args(hosts) + list(extra)])


def jump_reselect(name: str, known_hosts: Sequence[str]) -> Reselect:
    """A jump host's key is fetched directly (keys scan does not tunnel): ``-H host[:port]``."""
    host, port = knownhosts_write.split_name(name)
    return Reselect(adhoc_hosts=(host if port == 22 else f"{host}:{port}",), known_hosts=tuple(known_hosts))


#: Up to this many distinct fingerprints are written into a hint as --fingerprint arguments.
MAX_HINT_FINGERPRINTS = 4


def accept_hint(reselect: Reselect, hosts: Sequence[str], fingerprints: Sequence[str]) -> Tuple[str, List[str]]:
    """(a note, the commands) that record ``hosts``' keys once checked: scan (to see them), then
    accept with their fingerprints, or, for many different keys, accept with none (every new key).
    No shell comment in a command: zsh does not allow them at its prompt by default."""
    fps = list(dict.fromkeys(fingerprints))
    scan = reselect.command("scan", hosts)
    if len(fps) <= MAX_HINT_FINGERPRINTS:
        extra: List[str] = []
        for fp in fps:
            extra += ["--fingerprint", fp]
        return ("Check the fingerprints through a trusted channel, then record the keys:",
                [scan, reselect.command("accept", hosts, extra)])
    return (f"{len(fps)} different keys: compare them (the scan lists them) with a trusted source, then record "
            "them (this accept records every new key; give --fingerprint for each one to record only those):",
            [scan, reselect.command("accept", hosts)])


__all__ = ["CHANGED", "KNOWN", "NEW", "REVOKED_KEY", "UNVERIFIABLE", "AddedKey", "HostKeyChecker", "Reselect",
           "accept_hint", "fingerprint", "host_pattern", "take_added"]
