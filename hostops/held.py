"""Connections a keeper's worker holds between runs (``--persist``), and when one may be reused.

A connection is reused only by a job whose *identity* is the same: address, port, user,
host-key alias, jump chain (each hop's own identity), the identities offered (paths and the
SHA-256 of each key file's bytes, default keys included), ``IdentitiesOnly``, the
known_hosts files and host-key policy (the run's and the host's ssh_config ones), and the
ssh_config file. A stricter trust setting is another identity, so it never reuses a
connection made under a looser one. Before reuse, the connection's host key is checked
again against the run's current known_hosts (:func:`still_trusted`); a key forgotten or
revoked since means a fresh login, which then fails or succeeds on its own merits.

While held, a connection's context is the worker's base context: no run's options or
secrets stay reachable from it after the run.

Must not import: pool, worker, api, cli, keeper (the worker imports this).
"""
from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import os
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from hostops.settings import Options, Target

DEFAULT_KEYS = ("id_ed25519", "id_ecdsa", "id_rsa")


def _file_digest(path: str) -> str:
    try:
        with open(os.path.expanduser(path), "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    except OSError as exc:
        return f"unreadable:{exc.errno}"


def _target_part(target: Target, options: Options) -> Tuple[Any, ...]:
    keys = list(target.identity_files)
    if not target.identities_only:
        keys += [os.path.expanduser(f"~/.ssh/{n}") for n in DEFAULT_KEYS]
    offered = tuple((p, _file_digest(p)) for p in keys if p in target.identity_files or os.path.exists(p))
    return (target.connection, target.hostname, target.port, target.user, target.identities_only,
            target.host_key_alias, target.known_hosts, target.host_key_policy or options.host_key_policy,
            target.hash_known_hosts, offered, tuple(_target_part(hop, options) for hop in target.jump))


def identity(target: Target, options: Options) -> str:
    """What must be equal for a held connection to serve ``target`` in a run with ``options``."""
    whole = (_target_part(target, options), tuple(options.known_hosts_files()), options.host_key_policy,
             options.ssh_config, os.environ.get("SSH_AUTH_SOCK"))
    return hashlib.sha256(repr(whole).encode()).hexdigest()


def still_trusted(conn: Any, target: Target, ctx: Any) -> bool:
    """Is ``conn``'s host key still acceptable under the run's current known_hosts? Only a key
    on record passes (under ``off``: any key not revoked), so a held connection never
    re-learns a forgotten key behind the operator's back."""
    from hostops.knownhosts import CHANGED, KNOWN, REVOKED_KEY

    transport = getattr(conn, "transport", None)
    if transport is None:
        return True  # a local connection: no host key
    try:
        key = transport.get_remote_server_key()
        checker = ctx.hostkeys_for(target)
        verdict = checker.verdict(target.known_hosts_name, key)
    except Exception:  # noqa: BLE001 - anything odd about the held connection: log in afresh
        return False
    if verdict.state == KNOWN:
        return True
    if checker.policy == "off" and verdict.state != REVOKED_KEY:
        if verdict.state == CHANGED and not conn.password_withheld:
            conn.password_withheld = (f"the host key of {target.name} changed since this connection was made and "
                                      "host key checking is off")
        return True
    return False


@dataclasses.dataclass
class Held:
    conn: Any
    identity: str
    name: str
    user: str
    address: str
    port: int
    created: float
    last_used: float
    runs: int
    persist: float

    def row(self, now: float) -> Dict[str, Any]:
        return {"host": self.name, "user": self.user, "address": self.address, "port": self.port,
                "age": now - self.created, "idle": now - self.last_used, "runs": self.runs}


class HeldStore:
    """One worker's held connections, by identity; thread-safe. A connection is taken out
    while a job uses it, so two jobs never share one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_identity: Dict[str, List[Held]] = {}
        self.jumps: Dict[tuple, Any] = {}       # jump connections, by (hops, identity)
        self.jump_locks: Dict[tuple, threading.Lock] = {}
        #: The worker's own context (its base options, no secrets): a held connection's ``ctx``.
        self.base_ctx: Any = None

    def take(self, ident: str) -> Optional[Held]:
        with self._lock:
            entries = self._by_identity.get(ident)
            if not entries:
                return None
            held = entries.pop()
            if not entries:
                del self._by_identity[ident]
            return held

    def put(self, held: Held) -> None:
        with self._lock:
            self._by_identity.setdefault(held.identity, []).append(held)

    def _all(self) -> List[Held]:
        return [h for entries in self._by_identity.values() for h in entries]

    def rows(self) -> List[Dict[str, Any]]:
        now = time.time()
        with self._lock:
            return [h.row(now) for h in self._all()]

    def close_matching(self, pattern: str) -> int:
        """Close the held connections whose host name matches the shell pattern."""
        with self._lock:
            gone = [h for h in self._all() if fnmatch.fnmatchcase(h.name, pattern)]
            for h in gone:
                self._by_identity[h.identity].remove(h)
                if not self._by_identity[h.identity]:
                    del self._by_identity[h.identity]
        for h in gone:
            _close(h.conn)
        return len(gone)

    def prune(self) -> int:
        """Close connections idle past their --persist, and dead ones; how many are left."""
        now = time.time()
        with self._lock:
            gone = [h for h in self._all() if now - h.last_used > h.persist or not _alive(h.conn)]
            for h in gone:
                self._by_identity[h.identity].remove(h)
                if not self._by_identity[h.identity]:
                    del self._by_identity[h.identity]
            left = len(self._all())
        for h in gone:
            _close(h.conn)
        if not left:
            self.close_jumps()
        return left

    def close_jumps(self) -> None:
        for conn in list(self.jumps.values())[::-1]:
            _close(conn)
        self.jumps.clear()

    def close_all(self) -> None:
        with self._lock:
            gone = self._all()
            self._by_identity.clear()
        for h in gone:
            _close(h.conn)
        self.close_jumps()


def _alive(conn: Any) -> bool:
    try:
        return bool(conn.alive())
    except Exception:  # noqa: BLE001 - a broken connection is a dead one
        return False


def _close(conn: Any) -> None:
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - closing a broken connection: nothing more to do
        pass
