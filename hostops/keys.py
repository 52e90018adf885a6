"""``hostops keys``: fetch host keys without logging in, judge them against known_hosts,
record the new ones, forget old ones.

A scan is an ordinary action run through the worker pool: its :meth:`ScanAction.run`
opens its own TCP connection and does the SSH key exchange only (no authentication, so
no credential is ever offered), and returns the key the host presented. The parent then
judges every key against known_hosts once (:func:`judge`), and renders the
reports (:func:`render`, :func:`summary_line`; colours from :data:`hostops.output.PALETTE`).

Owns: scanning, judging, accepting host keys, and rendering key reports.
Must not import: the CLI, the API (the CLI drives a scan through :func:`hostops.api.run_rollout`).
"""
from __future__ import annotations

import base64
import dataclasses
import json
import shlex
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

from hostops import knownhosts, knownhosts_write
from hostops.errors import ConnectError
from hostops.hostkeys import Reselect
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

    def run(self, conn, target: Target, ctx, on_output):  # noqa: ARG002  (the Action protocol; no login)
        from hostops.connection import CommandOutcome

        key = fetch_host_key(target, ctx)
        data = {"address": target.known_hosts_name, "key_type": key.get_name(), "key": key.get_base64()}
        return CommandOutcome(0, json.dumps(data).encode(), b"")


def fetch_host_key(target: Target, ctx):
    """The key ``target`` presents, bounded by ``--connect-timeout``; raises ConnectError.
    Key types already on record for the host are preferred, as a real connection does.
    The handshake stops before authentication: no key or password is ever offered."""
    from hostops.handshake import Handshake

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
           hashed: Callable[[str], bool] = lambda name: False) -> None:  # noqa: ARG005
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
    for rec in knownhosts_write.record_keys(path, list(to_write), hashed):
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


# ------------------------------------------------------------------ rendering (parent)
_STATE_ORDER = {"known": 0, "new": 1, "unverifiable": 2, "revoked": 3, "changed": 4, "error": 5}
_LABELS = {"known": "KNOWN", "new": "NEW", "unverifiable": "UNVERIFIABLE", "revoked": "HOST KEY REVOKED",
           "changed": "HOST KEY CHANGED", "error": "ERROR"}


def _groups(reports: Iterable[KeyReport], accepting: bool) -> List[Tuple[Tuple, list]]:
    groups: Dict[Tuple, list] = {}
    for rep in reports:
        if rep.state == "changed":
            old = tuple((k["key_type"], k["fingerprint"], k["file"], k["line"]) for k in rep.known)
            key: Tuple = (rep.state, rep.address, rep.key_type, rep.fingerprint, old, rep.error if accepting else "")
        elif rep.state == "revoked":
            key = (rep.state, rep.address, rep.key_type, rep.fingerprint, rep.error)
        elif rep.state == "error":
            key = (rep.state, rep.error)
        elif rep.state == "known" and not accepting:
            key = (rep.state, rep.key_type, rep.fingerprint)
        else:
            note = _group_note(rep.note, accepting)
            key = (rep.state, rep.key_type, rep.fingerprint, note, rep.recorded if accepting else None)
        groups.setdefault(key, []).append(rep)
    return sorted(groups.items(), key=lambda kv: (_STATE_ORDER.get(kv[0][0], 9), -len(kv[1]), kv[0][1:3]))


def _group_note(note: Optional[str], accepting: bool) -> Optional[str]:
    """Accept's notes name the line each key went to; a group shows the file only."""
    if accepting and note and note.startswith(("recorded in ", "already in ")):
        return note.rsplit(":", 1)[0]
    return note


def render(reports: Sequence[KeyReport], out: Any, *, quiet: bool = False, accepting: bool = False,
           write_path: str = "", reselect: Optional[Reselect] = None) -> None:
    """Hosts grouped as ``--gather`` does: one block per state and key, hosts under a compact list.
    ``reselect``: the command line's inventory arguments, so each block's advice names them."""
    from hostops.hostlist import compact
    from hostops.output import one_line, paint, use_color

    color = use_color(out)
    for key, reps in _groups(reports, accepting):
        state = key[0]
        first = reps[0]
        if quiet and state == "known":
            continue
        if accepting and state == "new" and first.recorded:
            label = "RECORDED"
        else:
            label = _LABELS[state]
        hosts = f"{compact(r.host for r in reps)} ({len(reps)})"
        rule = "-" * min(72, max(15, len(hosts) + len(label) + 3))
        lines = [rule, f"{one_line(hosts)} | {paint(label, state, color)}", rule]
        lines += _body(state, reps, accepting, write_path, reselect or Reselect())
        out.write("\n".join(one_line(line) if i > 2 else line for i, line in enumerate(lines)) + "\n")
    out.flush()


def _body(state: str, reps: Sequence[KeyReport], accepting: bool, write_path: str,
          reselect: Reselect) -> List[str]:
    """A block's lines; its advice is commands that work when pasted: the same inventory,
    hosts narrowed to the block's, every argument shell-quoted."""
    rep = reps[0]
    hosts = [r.host for r in reps]
    if state == "error":
        return [f"error: {rep.error}"]
    if state == "changed":
        lines = [f"@@@ HOST KEY CHANGED for {rep.address} @@@"]
        for k in rep.known:
            lines.append(f"known_hosts has: {k['key_type']} {k['fingerprint']}  ({k['file']}:{k['line']})")
        lines.append(f"the host sent:   {rep.key_type} {rep.fingerprint}")
        if accepting and rep.error and "meanwhile" in rep.error:
            lines.append(rep.error)
        # the files holding the old entry (ssh_config's UserKnownHostsFile may name one forget would not read)
        files = list(reselect.known_hosts) or sorted({k["file"] for k in rep.known
                                                      if k["file"] not in knownhosts.GLOBAL_FILES}) or (
            [write_path] if write_path else [])
        forget = " ".join(["hostops", "keys", "forget", shlex.quote(rep.address)]
                          + [shlex.quote(a) for f in files for a in ("--known-hosts", f)])
        accept = reselect.command("accept", hosts, ["--fingerprint", rep.fingerprint or ""])
        lines.append("This can be a man-in-the-middle attack, or a reinstalled host. Nothing was changed. Check the "
                     "new fingerprint through a trusted channel; once sure, remove the old entry with "
                     f"`{forget}`, then `{accept}`.")
        return lines
    if state == "revoked":
        return [f"{rep.key_type} {rep.fingerprint}", rep.error or "", "Refused: this key is revoked. Do not connect "
                "until the host has a new key (then check it and accept it)."]
    lines = [f"{rep.key_type} {rep.fingerprint}"]
    if state == "known":
        if accepting:
            lines.append("already in known_hosts")
        return lines
    note = _group_note(rep.note, accepting)
    if note:
        lines.append(note)
    accept = reselect.command("accept", hosts, ["--fingerprint", rep.fingerprint or ""])
    if state == "new" and not accepting:
        lines.append(f"not in known_hosts. Compare the fingerprint with one from a trusted channel, then: {accept}")
    if state == "unverifiable" and not accepting:
        lines.append(f"refused on connect. Once the fingerprint is checked through a trusted channel: {accept}")
    return lines


def summary_line(reports: Sequence[KeyReport], not_finished: int, elapsed: float, *, accepting: bool = False,
                 write_path: str = "") -> str:
    """The keys commands' last line (stderr): hosts per key state, or what accept recorded."""
    counts = {s: sum(1 for r in reports if r.state == s) for s in _STATE_ORDER}
    total = len(reports) + not_finished
    parts = [f"{counts[s]} {s}" for s in _STATE_ORDER]
    if accepting:
        recorded_now = [r for r in reports if r.recorded and r.note and r.note.startswith("recorded in")]
        left = [r for r in reports if not r.recorded]
        why = {s: sum(1 for r in left if r.state == s) for s in _STATE_ORDER}
        lines = len({(r.address, r.key) for r in recorded_now})
        parts = [f"{len(recorded_now)} recorded ({lines} new line{'s' if lines != 1 else ''} in {write_path})",
                 f"{sum(1 for r in reports if r.recorded) - len(recorded_now)} already known",
                 f"{len(left)} not recorded"
                 + (f" ({', '.join(f'{n} {s}' for s, n in why.items() if n)})" if left else "")]
    return f"{total} host{'s' if total != 1 else ''}: {', '.join(parts)} in {elapsed:.1f}s"


def exit_code(reports: Sequence[KeyReport], interrupted: bool, *, accepting: bool = False) -> int:
    """0, or 4 when a key changed or was revoked, a host could not be scanned (or, for accept,
    a host's key is not on record now); 130 when interrupted."""
    from hostops.exitcodes import ExitCode

    if interrupted:
        return int(ExitCode.INTERRUPTED)
    if accepting:
        return int(ExitCode.OK if all(r.recorded for r in reports) else ExitCode.UNREACHABLE)
    bad = sum(1 for r in reports if r.state in ("changed", "revoked", "error"))
    return int(ExitCode.UNREACHABLE if bad else ExitCode.OK)
