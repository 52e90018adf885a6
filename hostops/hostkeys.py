"""Host-key checking: strict (default), accept-new, off.

known_hosts files are parsed once per worker process (:mod:`hostops.knownhosts`, our own
reader: hashed names, patterns, markers, unknown key types and malformed lines are all
handled) and kept in memory. The check runs right after the key exchange and before any
authentication, so no credential ever reaches a host whose key failed.

Verdicts and what each policy does with them:

- known: accepted.
- new (no key of this type on record): refused under strict (``host key unknown``); under
  accept-new, appended to the first known_hosts file while holding an ``fcntl`` lock on
  ``<file>.lock``, after re-reading the file under that lock (many workers and many
  hostops runs learning the same key at once still write exactly one line).
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

import os
import threading
from typing import List, Optional, Sequence

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
                f"{', '.join(self._searched())}. Verify it and record it: hostops keys scan, then "
                f"hostops keys accept --fingerprint {v.fingerprint} (or run once with --host-key-policy "
                "accept-new)", "hostkey-unknown")
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
        f"remove the old entry (hostops keys forget '{v.name}' --known-hosts {where}, or "
        f"ssh-keygen -R '{v.name}' -f {where})", "hostkey-changed")


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
        f"Refused; once you have checked the fingerprint, record the key with hostops keys accept "
        f"--fingerprint {v.fingerprint}", "hostkey-unverifiable")


__all__ = ["CHANGED", "KNOWN", "NEW", "REVOKED_KEY", "UNVERIFIABLE", "HostKeyChecker", "fingerprint"]
