"""``hostops keys scan | accept | forget``: first contact with hosts, and getting past a
changed key once it has been checked.

A scan runs through the same driver as every other command (:func:`hostops.api.run_rollout`,
one step, no lock, no state file); the keys are judged here as results arrive and rendered
by :mod:`hostops.keys`.
Owns: the ``keys`` click group (registered on the main group by :mod:`hostops.cli`).
Must not import: hostops.cli.commands or hostops.cli's ``__init__`` (no cycle), paramiko at import time.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import click

from hostops.cli.options import (
    CONTEXT,
    build_options,
    connection_options,
    inventory_options,
    load_selection,
    output_options,
    warn,
)
from hostops.errors import UsageError
from hostops.exitcodes import HELP_TEXT, ExitCode

KEYS_HELP = """Host keys: see them before trusting them, record them, forget old ones.

\b
Examples:
  hostops keys scan -i hosts.yml -l web          # fetch every host's key (no login)
  hostops keys accept -i hosts.yml -l web --fingerprint SHA256:...   # record the keys you checked
  hostops keys forget '[10.0.0.5]:2222'          # drop a changed host's old entry
"""


@click.group("keys", context_settings=CONTEXT, help=KEYS_HELP)
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

class _Judge:
    """The events handler of a scan: a progress line, and each host's key judged against
    known_hosts as its result arrives."""

    def __init__(self, targets: Sequence[Any], known: Callable[[Any], Any], progress: bool | None,
                 color: str = "auto"):
        from hostops.output import make_progress

        self.by_name = {t.name: t for t in targets}
        self.known = known  # target → the KnownHosts its run would check against
        self.progress = make_progress(sys.stderr, len(targets), progress, color)
        self.reports: list[Any] = []

    def started(self, host: str) -> None:
        self.progress.started(host)

    def output(self, host: str, stream: str, data: bytes) -> None:
        pass

    def result(self, result: Any) -> None:
        from hostops.keys import judge

        self.progress.finished(result.host, result.ok)
        target = self.by_name[result.host]
        self.reports.append(judge(result, target, self.known(target)))

    def section(self, title: str, total: int) -> None:
        pass

    def warning(self, message: str) -> None:
        with self.progress.hidden():
            warn(message)

    def finish(self, report: Any) -> None:  # noqa: ARG002  (the Events protocol)
        self.progress.close()


def _scan(inventories: Sequence[str], adhoc_hosts: Sequence[str], pattern: str,
          kw: dict) -> tuple[Any, Any, Any, Any, dict]:
    """Fetch the selected hosts' keys through the worker pool and judge them:
    (key reports, the run's report, options, how to re-select hosts in a hint, name → target)."""
    import dataclasses

    from hostops.cli.hints import reselect_from_context
    from hostops.api import run_rollout
    from hostops.keys import ScanAction
    from hostops.knownhosts import KnownHosts, read_files
    from hostops.rollout import StepRun
    from hostops.settings import resolve

    options = build_options(kw)
    inv, names = load_selection(inventories, adhoc_hosts, pattern)
    targets = resolve(inv, names, options)
    local = [t.name for t in targets if t.connection == "local"]
    if local:
        from hostops.hostlist import compact

        warn(f"skipped {len(local)} host(s) with connection: local (no SSH, no host key): {compact(local)}")
    targets = [t for t in targets if t.connection != "local"]
    loaded: dict[tuple[str, ...], Any] = {}

    def known(target: Any) -> Any:
        """The files this host's run reads: --known-hosts, else ssh_config's UserKnownHostsFile,
        else ~/.ssh/known_hosts{,2} (and the global files)."""
        files = tuple(known_files(target, options))
        if files not in loaded:
            loaded[files] = KnownHosts(read_files(files))
            for warning in loaded[files].warnings:
                warn(warning)
        return loaded[files]

    judged = _Judge(targets, known, kw.get("progress"), kw.get("color") or "auto")
    action = ScanAction()
    try:
        report = run_rollout(list(targets), [StepRun(action.describe(), lambda _target: action)], options,
                             events=judged, warn_unchecked_keys=False)
    finally:
        judged.progress.close()  # gone before any error is printed
    reselect = dataclasses.replace(reselect_from_context(), select=inv.select)
    return judged.reports, report, options, reselect, judged.by_name


def known_files(target: Any, options: Any) -> Sequence[str]:
    """A host's own known_hosts files (ssh_config UserKnownHostsFile, or --known-hosts, which
    :func:`hostops.settings.resolve` puts first), else the run's."""
    return tuple(target.known_hosts) if target is not None and target.known_hosts else tuple(options.known_hosts)


def _finish(reports: Sequence[Any], report: Any, mode: str, *, accepting: bool = False,
            write_path: str = "", reselect: Any = None) -> int:
    import json

    from hostops.hostlist import compact
    from hostops.keys import exit_code, render, summary_line
    from hostops.output import one_line
    from hostops.results import stamp

    if mode == "json":
        for rep in reports:
            sys.stdout.write(json.dumps(stamp({"event": "key", **rep.to_json()}), ensure_ascii=True) + "\n")
        sys.stdout.flush()
    else:
        render(reports, sys.stdout, quiet=(mode == "quiet"), accepting=accepting, write_path=write_path,
               reselect=reselect)
    if report.interrupted and report.not_finished:
        sys.stderr.write(f"interrupted; not scanned ({len(report.not_finished)}): "
                         f"{one_line(compact(report.not_finished))}\n")
    sys.stderr.write(summary_line(reports, len(report.not_finished), report.elapsed, accepting=accepting,
                                  write_path=write_path) + "\n")
    sys.stderr.flush()
    return exit_code(reports, report.interrupted, accepting=accepting)


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
    host could not be scanned. The advice printed under each block is a command that works
    as pasted: the same -i/-H/--known-hosts, -l narrowed to that block's hosts.

    \b
    Examples:
      hostops keys scan -i hosts.yml -l web
      hostops keys scan -H 10.0.0.5:2222 --known-hosts ./known_hosts --json
    """
    mode = _check_modes(kw)
    reports, report, _options, reselect, _targets = _scan(inventories, adhoc_hosts, pattern, kw)
    return _finish(reports, report, mode, reselect=reselect)


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
    else the first UserKnownHostsFile your ssh_config gives each host, else ~/.ssh/known_hosts:
    where the next run checks them.

    With --fingerprint, only keys whose fingerprint is given are recorded (and only then
    the key of an UNVERIFIABLE host). A changed key is never replaced: see hostops keys
    forget. Exit 0 when every selected host's key is now in known_hosts, else 4; also 4 when
    a --fingerprint matches no scanned host's key (one line says which).

    \b
    Examples:
      hostops keys accept -i hosts.yml -l 'web0*' --fingerprint SHA256:...
      hostops keys accept -H 10.0.0.5:2222 --known-hosts ./known_hosts --fingerprint SHA256:...
    """
    from hostops.keys import accept, normalize_fingerprint
    from hostops.knownhosts_write import hash_wanted, write_file

    mode = _check_modes(kw)
    for fp in fingerprints:
        if not normalize_fingerprint(fp)[7:]:
            raise UsageError(f"--fingerprint {fp!r} is empty; give it as ssh-keygen -l prints it (SHA256:…)")
    reports, report, options, reselect, targets = _scan(inventories, adhoc_hosts, pattern, kw)
    by_path: dict[str, list[Any]] = {}  # each key goes where its host's run will look for it
    for rep in reports:
        by_path.setdefault(write_file(known_files(targets.get(rep.host), options)), []).append(rep)
    path = ", ".join(by_path) or write_file(options.known_hosts)
    if hash_known_hosts is None:
        def hashed(name: str) -> bool:  # noqa: ARG001  (per-name callback; one answer for all)
            return hash_wanted(name, options.ssh_config)
    else:
        def hashed(name: str) -> bool:  # noqa: ARG001  (per-name callback; one answer for all)
            return bool(hash_known_hosts)
    if not report.interrupted:
        for file, reps in by_path.items():
            accept(reps, file, fingerprints, hashed)
    code = _finish(reports, report, mode, accepting=True, write_path=path, reselect=reselect)
    seen = {r.fingerprint for r in reports if r.fingerprint}
    unmatched = [fp for fp in fingerprints if normalize_fingerprint(fp) not in seen]
    if unmatched and not report.interrupted:
        from hostops.hostlist import compact
        from hostops.output import one_line

        scanned = f"the {len(reports)} host{'s' if len(reports) != 1 else ''} scanned ({compact(r.host for r in reports)})" \
            if reports else "no host (nothing was scanned)"
        click.echo(f"hostops: error: --fingerprint {one_line(', '.join(unmatched))} matched no key of "
                   f"{one_line(scanned)}; nothing recorded for it. Check -i/-l select the host you meant, and the "
                   "fingerprint (a different key can mean a man in the middle)", err=True)
        code = max(code, int(ExitCode.UNREACHABLE))
    return code


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

    \b
    Examples:
      hostops keys forget '[10.0.0.5]:2222'
      hostops keys forget -i hosts.yml -l db2 --known-hosts ./known_hosts
    """
    from hostops.knownhosts import KnownHosts, read_files, user_files
    from hostops.knownhosts_write import forget_names

    wanted: list[str] = [n.strip() for n in names if n.strip()]
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


__all__ = ["keys_group"]

