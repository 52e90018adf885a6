"""``hostops keys``: fetch host keys without logging in, judge them against known_hosts,
record the new ones, forget old ones.

A scan is an ordinary action run through the worker pool: its :meth:`ScanAction.run`
opens its own TCP connection and does the SSH key exchange only (no authentication, so
no credential is ever offered), and returns the key the host presented. The parent then
judges every key against known_hosts once (:func:`judge`).
"""
from __future__ import annotations

import base64
import dataclasses
import json
from typing import (
    Any,
    Callable,
    ClassVar,
    Dict,
    Iterable,
    List,
    Optional,
    Sequence,
    Tuple,
)

from hostops import knownhosts
from hostops.errors import ConnectError
from hostops.knownhosts import (
    CHANGED,
    KNOWN,
    NEW,
    REVOKED_KEY,
    UNVERIFIABLE,
    KnownHosts,
)
from hostops.results import HostResult
from hostops.settings import Target

ERROR = "error"
STATES = (KNOWN, NEW, UNVERIFIABLE, REVOKED_KEY, CHANGED, ERROR)


# ------------------------------------------------------------------ scanning (in workers)
@dataclasses.dataclass
class ScanAction:
    """Fetch the host key a host presents: TCP connect and SSH key exchange, nothing more.

    ``needs_connection = False`` tells the worker not to log in first; ``conn`` is unused
    (None, or whatever the worker opened)."""

    needs_connection: ClassVar[bool] = False
    #: No limit of its own: the handshake is bounded by the connect timeout (the pool's
    #: watchdog uses the run's -t for a job whose action has none).
    timeout: ClassVar[Optional[float]] = None
    sudo: ClassVar[bool] = False

    def describe(self) -> str:
        return "keys scan"

    def run(self, conn, target: Target, ctx, on_output):
        from hostops.transport import CommandOutcome

        key = fetch_host_key(target, ctx)
        data = {"address": target.known_hosts_name, "key_type": key.get_name(), "key": key.get_base64()}
        return CommandOutcome(0, json.dumps(data).encode(), b"")


def fetch_host_key(target: Target, ctx):
    """The key ``target`` presents, bounded by ``--connect-timeout``; raises ConnectError.
    Key types already on record for the host are preferred, as a real connection does.
    The handshake stops before authentication: no key or password is ever offered."""
    from hostops.transport import Handshake

    with ctx.connection_slot():
        hs = Handshake(target, ctx, checker=ctx.hostkeys)
        try:
            with ctx.handshake_slot():
                hs.negotiate()
            key = hs.transport.get_remote_server_key()
            if key is None:
                raise ConnectError(f"SSH handshake with {hs.where} gave no host key", "handshake")
            return key
        finally:
            hs.close()


def scan_targets(targets: Sequence[Target]) -> List[Target]:
    """The targets to hand the pool for a scan: as they are. ``ScanAction.needs_connection``
    is False, so the worker does not log in; the action does its own key exchange."""
    return list(targets)


# ------------------------------------------------------------------ judging (in the parent)
@dataclasses.dataclass
class KeyReport:
    """One host's key and what known_hosts says of it."""

    host: str
    address: str                      # the known_hosts name: host, or [host]:port
    state: str                        # known, new, changed, unverifiable, revoked, error
    key_type: Optional[str] = None
    fingerprint: Optional[str] = None
    key: Optional[bytes] = None       # the public key blob
    error: Optional[str] = None
    note: Optional[str] = None
    known: List[Dict[str, Any]] = dataclasses.field(default_factory=list)  # changed/revoked: lines on record
    recorded: Optional[bool] = None   # keys accept: written to known_hosts (or already there)

    def to_json(self) -> Dict[str, Any]:
        data: Dict[str, Any] = {"host": self.host, "address": self.address, "key_type": self.key_type,
                                "fingerprint": self.fingerprint, "state": self.state, "error": self.error,
                                "note": self.note}
        if self.known:
            data["known"] = self.known
        if self.recorded is not None:
            data["recorded"] = self.recorded
        return data


def judge(result: HostResult, target: Target, known: KnownHosts) -> KeyReport:
    """A scan result → KeyReport, judged against ``known``."""
    address = target.known_hosts_name
    if not result.ok:
        return KeyReport(result.host, address, ERROR, error=result.error or result.status)
    try:
        data = json.loads(result.stdout.decode())
        key_type, blob = data["key_type"], base64.b64decode(data["key"])
    except (ValueError, KeyError, TypeError) as exc:
        return KeyReport(result.host, address, ERROR, error=f"unreadable scan result: {exc}")
    v = known.verdict(address, key_type, blob)
    rep = KeyReport(result.host, address, v.state, key_type, v.fingerprint, blob)
    if v.state == CHANGED:
        rep.known = [_line_json(e) for e in v.old]
        rep.error = (f"HOST KEY CHANGED for {address}: known_hosts has "
                     + "; ".join(f"{e.key_type} {e.fingerprint} ({e.where})" for e in v.old[:3])
                     + f", the host sent {key_type} {v.fingerprint}")
    elif v.state == REVOKED_KEY:
        rep.known = [_line_json(v.entry)] if v.entry else []
        rep.error = f"HOST KEY REVOKED for {address}: {v.entry.where if v.entry else 'known_hosts'} marks it @revoked"
    elif v.state == UNVERIFIABLE:
        rep.note = knownhosts.unverifiable_reason(v)
    elif v.state == NEW and v.other_types:
        rep.note = f"known_hosts has other key types for it: {', '.join(v.other_types)}"
    elif v.state == KNOWN and v.entry is not None:
        rep.note = f"{v.entry.where}"
    return rep


def _line_json(e: knownhosts.Entry) -> Dict[str, Any]:
    return {"key_type": e.key_type, "fingerprint": e.fingerprint, "file": e.path, "line": e.line}


# ------------------------------------------------------------------ accepting
def normalize_fingerprint(text: str) -> str:
    """``SHA256:abc…`` as OpenSSH prints it (the prefix is optional, padding ignored)."""
    text = text.strip()
    if text.upper().startswith("SHA256:"):
        text = text[7:]
    return "SHA256:" + text.rstrip("=")


def accept(reports: Sequence[KeyReport], path: str, fingerprints: Sequence[str] = (),
           hashed: Callable[[str], bool] = lambda name: False) -> None:
    """Record the new keys among ``reports`` in known_hosts ``path`` (one locked write),
    marking each report's ``recorded``/``note``. With ``fingerprints``, only keys whose
    fingerprint is listed; an unverifiable host's key only then. Changed and revoked keys
    are never written."""
    wanted = {normalize_fingerprint(f) for f in fingerprints}
    to_write: Dict[Tuple[str, str, bytes], List[KeyReport]] = {}
    for rep in reports:
        if rep.state == KNOWN:
            rep.recorded = True
            continue
        rep.recorded = False
        if rep.state in (CHANGED, REVOKED_KEY, ERROR):
            continue
        if wanted and rep.fingerprint not in wanted:
            rep.note = "not recorded: its fingerprint is not one given with --fingerprint"
            continue
        if rep.state == UNVERIFIABLE and not wanted:
            rep.note = ((rep.note + "; ") if rep.note else "") + \
                "not recorded without --fingerprint (check it through a trusted channel first)"
            continue
        assert rep.key is not None and rep.key_type is not None
        to_write.setdefault((rep.address, rep.key_type, rep.key), []).append(rep)
    if not to_write:
        return
    for rec in knownhosts.record_keys(path, list(to_write), hashed):
        for rep in to_write[(rec.name, rec.key_type, rec.blob)]:
            if rec.outcome == "added":
                rep.recorded, rep.note = True, f"recorded in {path}:{rec.line}"
            elif rec.outcome == "present":
                rep.recorded, rep.note = True, f"already in {path}:{rec.line}"
            else:
                v = rec.verdict
                rep.state = rec.outcome
                if v is not None and rec.outcome == CHANGED:
                    rep.known = [_line_json(e) for e in v.old]
                rep.error = (f"{path} has another {rep.key_type} key for {rep.address} now "
                             f"(written meanwhile); not replaced" if rec.outcome == CHANGED
                             else f"{path} marks this key @revoked; not recorded")


def names_of(targets: Iterable[Target]) -> List[str]:
    return list(dict.fromkeys(t.known_hosts_name for t in targets))
