"""``hostops keys scan | accept | forget``: first contact with hosts, and getting past a
changed key once it has been checked.

Registered on the main ``hostops`` group by one import at the end of :mod:`hostops.cli`.
Like the rest of the CLI, nothing here imports paramiko at import time.
"""
from __future__ import annotations

import sys
import time
from typing import IO, Any, Dict, List, Optional, Sequence, Tuple

import click

from hostops.cli import (
    CONTEXT,
    _warn,
    build_options,
    cli,
    connection_options,
    inventory_options,
    load_selection,
    output_options,
)
from hostops.errors import UsageError
from hostops.exitcodes import HELP_TEXT, ExitCode

_STATE_ORDER = {"known": 0, "new": 1, "unverifiable": 2, "revoked": 3, "changed": 4, "error": 5}
_LABELS = {"known": "KNOWN", "new": "NEW", "unverifiable": "UNVERIFIABLE", "revoked": "HOST KEY REVOKED",
           "changed": "HOST KEY CHANGED", "error": "ERROR"}
_COLORS = {"known": "32", "new": "36", "unverifiable": "35", "revoked": "1;31", "changed": "1;31", "error": "35"}

KEYS_HELP = """Host keys: see them before trusting them, record them, forget old ones.

\b
hostops keys scan -i hosts.yml                    # fetch every host's key (no login)
hostops keys accept -i hosts.yml --fingerprint SHA256:...   # record the keys you checked
hostops keys forget '[10.0.0.5]:2222'             # drop a changed host's old entry
"""


@cli.group("keys", context_settings=CONTEXT, help=KEYS_HELP)
def keys_group() -> None:
    pass


def _check_modes(kw: dict) -> str:
    """Scan and accept print a gathered report or JSON; the other output modes make no sense."""
    if kw.get("stream"):
        raise UsageError("--stream does not apply to hostops keys (there is no command output to stream)")
    if kw.get("outdir"):
        raise UsageError("-o/--outdir does not apply to hostops keys; use --json to keep the results")
    if kw.get("as_json") and kw.get("gather"):
        raise UsageError("choose one output mode: --json, --gather cannot be combined")
    if kw.get("as_json") and kw.get("quiet"):
        raise UsageError("choose one output mode: --json, --quiet cannot be combined")
    return "json" if kw.get("as_json") else "quiet" if kw.get("quiet") else "gather"


def _scan(inventories, adhoc_hosts, pattern, kw: dict):
    """Fetch the selected hosts' keys through the worker pool and judge them: (reports,
    summary, options, seconds)."""
    from hostops.api import run
    from hostops.keys import ScanAction, judge, scan_targets
    from hostops.knownhosts import KnownHosts, read_files
    from hostops.output import Progress
    from hostops.results import Summary
    from hostops.settings import resolve

    options = build_options(kw)
    inv, names = load_selection(inventories, adhoc_hosts, pattern)
    targets = resolve(inv, names, options)
    local = [t.name for t in targets if t.connection == "local"]
    if local:
        from hostops.hostlist import compact

        _warn(f"skipped {len(local)} host(s) with connection: local (no SSH, no host key): {compact(local)}")
    targets = [t for t in targets if t.connection != "local"]
    known = KnownHosts(read_files(options.known_hosts))
    for warning in known.warnings:
        _warn(warning)
    by_name = {t.name: t for t in targets}
    progress = Progress(sys.stderr, len(targets), not kw["no_progress"])
    summary = Summary()
    reports = []
    t0 = time.monotonic()
    if not targets:
        return reports, summary, options, 0.0

    def started(_host: str) -> None:
        progress.running += 1
        progress.update()

    results = run(scan_targets(targets), ScanAction(), options, on_start=started, summary=summary,
                  handle_signals=True, warn=_warn)
    try:
        for result in results:
            progress.running = max(0, progress.running - 1)
            progress.done += 1
            progress.update()
            reports.append(judge(result, by_name[result.host], known))
    except KeyboardInterrupt:
        summary.interrupted = True
        results.close()
    finally:
        progress.clear()
    return reports, summary, options, time.monotonic() - t0


# ------------------------------------------------------------------ rendering
def _paint(text: str, state: str, color: bool) -> str:
    return f"\x1b[{_COLORS.get(state, '0')}m{text}\x1b[0m" if color else text


def _groups(reports, accepting: bool) -> List[Tuple[Tuple, list]]:
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


def render(reports, out: IO, *, quiet: bool = False, accepting: bool = False, write_path: str = "") -> None:
    """Hosts grouped as ``--gather`` does: one block per state and key, hosts under a compact list."""
    from hostops.hostlist import compact
    from hostops.output import one_line, use_color

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
        lines = [rule, f"{one_line(hosts)} | {_paint(label, state, color)}", rule]
        lines += _body(state, first, accepting, write_path)
        out.write("\n".join(one_line(line) if i > 2 else line for i, line in enumerate(lines)) + "\n")
    out.flush()


def _body(state: str, rep, accepting: bool, write_path: str) -> List[str]:
    where = f" --known-hosts {write_path}" if write_path else ""
    if state == "error":
        return [f"error: {rep.error}"]
    if state == "changed":
        lines = [f"@@@ HOST KEY CHANGED for {rep.address} @@@"]
        for k in rep.known:
            lines.append(f"known_hosts has: {k['key_type']} {k['fingerprint']}  ({k['file']}:{k['line']})")
        lines.append(f"the host sent:   {rep.key_type} {rep.fingerprint}")
        if accepting and rep.error and "meanwhile" in rep.error:
            lines.append(rep.error)
        lines.append("This can be a man-in-the-middle attack, or a reinstalled host. Nothing was changed. Check the "
                     "new fingerprint through a trusted channel; once sure, remove the old entry with "
                     f"`hostops keys forget '{rep.address}'{where}`, then `hostops keys accept --fingerprint "
                     f"{rep.fingerprint}`.")
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
    if state == "new" and not accepting:
        lines.append(f"not in known_hosts. Compare the fingerprint with one from a trusted channel, then: "
                     f"hostops keys accept --fingerprint {rep.fingerprint}")
    if state == "unverifiable" and not accepting:
        lines.append("refused on connect. Once the fingerprint is checked through a trusted channel: "
                     f"hostops keys accept --fingerprint {rep.fingerprint}")
    return lines


def _finish(reports, summary, elapsed: float, mode: str, *, accepting: bool = False, write_path: str = "") -> int:
    import json

    from hostops.hostlist import compact

    if mode == "json":
        for rep in reports:
            sys.stdout.write(json.dumps(rep.to_json(), ensure_ascii=True) + "\n")
        sys.stdout.flush()
    else:
        render(reports, sys.stdout, quiet=(mode == "quiet"), accepting=accepting, write_path=write_path)
    counts = {s: sum(1 for r in reports if r.state == s) for s in _STATE_ORDER}
    total = len(reports) + len(summary.not_finished)
    if summary.interrupted and summary.not_finished:
        from hostops.output import one_line

        sys.stderr.write(f"interrupted; not scanned ({len(summary.not_finished)}): "
                         f"{one_line(compact(summary.not_finished))}\n")
    parts = [f"{counts[s]} {s}" for s in _STATE_ORDER]
    if accepting:
        added = sum(1 for r in reports if r.recorded and r.note and r.note.startswith("recorded in"))
        left = [r for r in reports if not r.recorded]
        why = {s: sum(1 for r in left if r.state == s) for s in _STATE_ORDER}
        lines = len({(r.address, r.key) for r in reports if r.recorded and r.note and r.note.startswith("recorded in")})
        parts = [f"{added} recorded ({lines} new line{'s' if lines != 1 else ''} in {write_path})", f"{sum(1 for r in reports if r.recorded) - added} already known",
                 f"{len(left)} not recorded"
                 + (f" ({', '.join(f'{n} {s}' for s, n in why.items() if n)})" if left else "")]
    sys.stderr.write(f"{total} host{'s' if total != 1 else ''}: {', '.join(parts)} in {elapsed:.1f}s\n")
    sys.stderr.flush()
    if summary.interrupted:
        return int(ExitCode.INTERRUPTED)
    if accepting:
        return int(ExitCode.OK if all(r.recorded for r in reports) else ExitCode.UNREACHABLE)
    bad = counts["changed"] + counts["revoked"] + counts["error"]
    return int(ExitCode.UNREACHABLE if bad else ExitCode.OK)


# ------------------------------------------------------------------ commands
@keys_group.command("scan", context_settings=CONTEXT, epilog=HELP_TEXT)
@inventory_options
@connection_options
@output_options
def scan_cmd(inventories, adhoc_hosts, pattern, **kw: Any) -> int:
    """Fetch every selected host's key (TCP and SSH key exchange only: no login, no
    credential sent) and compare it with known_hosts.

    Hosts are grouped by state and key: KNOWN, NEW (fingerprint and type, hosts sharing a
    key under one compact list), UNVERIFIABLE (only key types hostops cannot check, or a
    @cert-authority, on record), HOST KEY REVOKED, HOST KEY CHANGED (old and new
    fingerprints), ERROR. --json: one object per host (host, address, key_type,
    fingerprint, state, error, note). Exit 0, or 4 when a key changed or was revoked or a
    host could not be scanned.
    """
    mode = _check_modes(kw)
    reports, summary, _options, elapsed = _scan(inventories, adhoc_hosts, pattern, kw)
    return _finish(reports, summary, elapsed, mode)


@keys_group.command("accept", context_settings=CONTEXT, epilog=HELP_TEXT)
@inventory_options
@connection_options
@output_options
@click.option("--fingerprint", "fingerprints", multiple=True, metavar="SHA256:…",
              help="Record only keys with this fingerprint (got through a trusted channel). Repeatable.")
@click.option("--hash-known-hosts/--no-hash-known-hosts", "hash_known_hosts", default=None,
              help="Write hashed names (|1|…) or plain ones. Default: HashKnownHosts in your ssh_config.")
def accept_cmd(inventories, adhoc_hosts, pattern, fingerprints, hash_known_hosts, **kw: Any) -> int:
    """Scan the selected hosts and record their new keys in the first --known-hosts file,
    else ~/.ssh/known_hosts.

    With --fingerprint, only keys whose fingerprint is given are recorded (and only then
    the key of an UNVERIFIABLE host). A changed key is never replaced: see hostops keys
    forget. Exit 0 when every selected host's key is now in known_hosts, else 4.
    """
    from hostops.keys import accept, normalize_fingerprint
    from hostops.knownhosts import hash_wanted, write_file

    mode = _check_modes(kw)
    for fp in fingerprints:
        if not normalize_fingerprint(fp)[7:]:
            raise UsageError(f"--fingerprint {fp!r} is empty; give it as ssh-keygen -l prints it (SHA256:…)")
    reports, summary, options, elapsed = _scan(inventories, adhoc_hosts, pattern, kw)
    path = write_file(options.known_hosts)
    if hash_known_hosts is None:
        def hashed(name: str) -> bool:
            return hash_wanted(name, options.ssh_config)
    else:
        def hashed(name: str) -> bool:
            return bool(hash_known_hosts)
    if not summary.interrupted:
        accept(reports, path, fingerprints, hashed)
    return _finish(reports, summary, elapsed, mode, accepting=True, write_path=path)


@keys_group.command("forget", context_settings=CONTEXT, epilog=HELP_TEXT)
@click.argument("names", nargs=-1, metavar="[NAME]...")
@inventory_options
@click.option("--known-hosts", multiple=True, metavar="FILE",
              help="known_hosts file(s) to edit instead of ~/.ssh/known_hosts and ~/.ssh/known_hosts2.")
@click.option("-p", "--port", type=click.IntRange(1, 65535), default=None, help="SSH port (with -i/-H).")
@click.option("--ssh-config", metavar="FILE", default=None, help="ssh_config to read (with -i/-H).")
def forget_cmd(names: Sequence[str], inventories, adhoc_hosts, pattern, known_hosts, port, ssh_config) -> int:
    """Remove hosts' entries from known_hosts: the only way past a changed key, once the
    new key is checked.

    NAME is a known_hosts name as keys scan prints it: 'host' on port 22, else
    '[host]:port' (quote it for the shell). With -i/-H (and -l), the selected hosts'
    names are forgotten too. A line naming other hosts as well loses only these names;
    @revoked and @cert-authority lines, lines matching only through a wildcard, and
    /etc/ssh/ssh_known_hosts are left alone (and reported). Each file is rewritten under
    its lock through a temporary file.
    """
    from hostops.knownhosts import KnownHosts, forget_names, read_files, user_files

    wanted: List[str] = [n.strip() for n in names if n.strip()]
    if inventories or adhoc_hosts:
        from hostops.keys import names_of
        from hostops.settings import Options, resolve

        inv, selected = load_selection(inventories, adhoc_hosts, pattern)
        targets = resolve(inv, selected, Options(port=port, ssh_config=ssh_config, known_hosts=tuple(known_hosts)))
        wanted += names_of(t for t in targets if t.connection != "local")
    elif pattern != "all":
        raise UsageError("-l/--limit selects from an inventory: give -i or -H as well")
    wanted = list(dict.fromkeys(wanted))
    if not wanted:
        raise UsageError("name the hosts to forget: hostops keys forget '[host]:port' (or -i FILE -l PATTERN)")
    removed = 0
    touched = set()
    for path in user_files(known_hosts):
        for item in forget_names(path, wanted):
            touched.add(item.name)
            if item.action == "kept":
                click.echo(f"kept     {item.name}: {item.key_type} {item.fingerprint} at {path}:{item.line} "
                           f"({item.detail}; edit it by hand if it must go)")
                continue
            removed += 1
            extra = f"; {item.detail}" if item.detail else ""
            click.echo(f"removed  {item.name}: {item.key_type} {item.fingerprint} from {path}:{item.line}{extra}")
    system = [p for p in read_files(known_hosts) if p not in user_files(known_hosts)]
    if system:
        others = KnownHosts(system)
        for name in wanted:
            for entry in others.matching(name):
                click.echo(f"note     {name}: {entry.where} also has a key for it ({entry.key_type} "
                           f"{entry.fingerprint}); hostops does not edit the system-wide file", err=True)
    missing = [n for n in wanted if n not in touched]
    if missing:
        click.echo(f"hostops: nothing on record for {', '.join(missing)} in {', '.join(user_files(known_hosts))}",
                   err=True)
    click.echo(f"{removed} entr{'y' if removed == 1 else 'ies'} removed for {len(wanted)} name"
               f"{'s' if len(wanted) != 1 else ''}", err=True)
    return int(ExitCode.OK)


__all__ = ["keys_group", "render"]
