"""The command line: a thin click layer over :mod:`hostops.api`.

Library errors become one-line messages and exit codes here, and only here.
Nothing in this module imports paramiko at import time: ``hostops --help`` stays fast.
"""
from __future__ import annotations

import functools
import json
import os
import sys
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Sequence

import click

from hostops import __version__
from hostops.errors import HostopsError, SelectionError, UsageError
from hostops.exitcodes import HELP_TEXT, ExitCode

if TYPE_CHECKING:  # --version and --help import neither YAML nor the inventory code
    from hostops.inventory import Inventory

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _warn(message: str) -> None:
    """One line on stderr: host names and values in it are escaped (see output.one_line)."""
    from hostops.output import one_line

    click.echo(f"hostops: warning: {one_line(message)}", err=True)


# ------------------------------------------------------------------ shared options
def inventory_options(func: Callable) -> Callable:
    @click.option("-i", "--inventory", "inventories", multiple=True, metavar="FILE",
                  help="Inventory file (Ansible YAML, or one host per line). Repeatable: files merge. "
                       "Default: $HOSTOPS_INVENTORY, else the embedded localhost inventory.")
    @click.option("-H", "--host", "adhoc_hosts", multiple=True, metavar="[USER@]HOST[:PORT]",
                  help="Add an ad-hoc host (ranges allowed: web[01:05]). Repeatable.")
    @click.option("-l", "--limit", "pattern", default="all", show_default=True, metavar="PATTERN",
                  help="Host pattern: group, host, web:db, web:&prod, web:!db, web*, ~regex, @file.")
    @functools.wraps(func)
    def wrapper(*args: Any, **kw: Any) -> Any:
        return func(*args, **kw)

    return wrapper


def load_selection(inventories: Sequence[str], adhoc_hosts: Sequence[str], pattern: str,
                   state_file: Optional[str] = None):
    """Load the inventory and select hosts; no match is a usage error (exit 2).
    ``state_file``: where @failed/@ok/… look (the last run's outcome)."""
    from hostops.inventory import Inventory, default_inventory_path

    paths = list(inventories)
    if not paths and not adhoc_hosts:
        paths = [os.environ.get("HOSTOPS_INVENTORY") or default_inventory_path()]
    inv = Inventory.load(paths, adhoc_hosts)
    for warning in inv.warnings:
        _warn(warning)
    names = inv.select(pattern, state_file)
    if not names:
        where = ", ".join(paths + [f"-H {h}" for h in adhoc_hosts]) or "the inventory"
        raise SelectionError(f"no host matched {pattern!r} in {where}; "
                             f"see the hosts with: hostops inventory -i FILE --graph")
    return inv, names


class _Size(click.ParamType):
    """A byte count: 4096, 64K, 4M, 1G."""

    name = "size"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        text = str(value).strip().upper().rstrip("B").rstrip("I")
        scale = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}.get(text[-1:], 1)
        digits = text[:-1] if scale > 1 else text
        try:
            return int(float(digits) * scale)
        except ValueError:
            self.fail(f"{value!r} is not a size such as 65536, 64K, 4M or 1G", param, ctx)


SIZE = _Size()


def connection_options(func: Callable) -> Callable:
    options = [
        click.option("-u", "--user", default=None, help="Remote user (inventory ansible_user wins)."),
        click.option("-p", "--port", type=click.IntRange(1, 65535), default=None, help="SSH port."),
        click.option("-k", "--identity", "identity_files", multiple=True, metavar="FILE",
                     help="Private key file. Repeatable."),
        click.option("--ssh-config", metavar="FILE", default=None,
                     help="ssh_config to read (default ~/.ssh/config), resolved with 'ssh -G' as OpenSSH does."),
        click.option("-J", "--jump", default=None, metavar="[USER@]HOST[:PORT][,...]",
                     help="Reach every host through these jump hosts (like ssh -J / ProxyJump)."),
        click.option("--known-hosts", multiple=True, metavar="FILE",
                     help="known_hosts file(s) to use instead of ~/.ssh/known_hosts; new keys go to the first."),
        click.option("--host-key-policy", type=click.Choice(["strict", "accept-new", "off"]), default="strict",
                     show_default=True, help="strict refuses unknown and changed keys; accept-new records unknown "
                                             "keys, refuses changed ones; off accepts anything (unsafe)."),
        click.option("--connect-timeout", type=click.FloatRange(min=0, min_open=True), default=10.0,
                     show_default=True, metavar="S", help="Bound on TCP connect, banner, key exchange and auth."),
        click.option("-t", "--timeout", type=click.FloatRange(min=0, min_open=True), default=None, metavar="S",
                     help="Bound on each host's command; past it the host is reported 'timeout'."),
        click.option("--sudo", is_flag=True, help="Run through sudo: 'sudo -n' (never prompts) unless a sudo "
                                                  "password is given."),
        click.option("--sudo-user", default=None, metavar="USER", help="With --sudo: run as USER (sudo -u)."),
        click.option("--ask-sudo-pass", is_flag=True, help="Ask once, on the terminal, for the sudo password."),
        click.option("--sudo-pass-file", default=None, metavar="FILE",
                     help="Read the sudo password from FILE (must be mode 0600, yours)."),
        click.option("--sudo-pass-env", default=None, metavar="VAR", help="Take the sudo password from $VAR."),
        click.option("--ask-pass", is_flag=True, help="Ask once, on the terminal, for an SSH password (tried "
                                                      "after the keys; never read from inventories)."),
        click.option("--secret-env", multiple=True, metavar="VAR",
                     help="Treat $VAR's value as a secret: shown as ******** everywhere. Repeatable."),
        click.option("-f", "--forks", type=click.IntRange(min=1), default=50, show_default=True, metavar="N",
                     help="Hosts in flight at once, in total."),
        click.option("--processes", type=click.IntRange(min=1), default=None, metavar="P",
                     help="Worker processes (default: CPU count); each runs many hosts on threads."),
        click.option("--start-method", type=click.Choice(["fork", "spawn", "forkserver"]), default=None,
                     help="multiprocessing start method (default: Python's; or $HOSTOPS_START_METHOD)."),
        click.option("--log", "log_path", metavar="FILE", default=None,
                     help="Append JSON lines (run start, one per host, run end) to FILE, created 0600."),
        click.option("--keepalive", type=click.FloatRange(min=0), default=15.0, show_default=True, metavar="S",
                     help="Probe a silent connection every S seconds; 3 unanswered probes drop it (0: off)."),
        click.option("--kill-grace", type=click.FloatRange(min=0), default=5.0, show_default=True, metavar="S",
                     help="When stopping a remote command (timeout, Ctrl-C): TERM, then KILL after S seconds."),
        click.option("--max-output", type=SIZE, default="4M", show_default=True, metavar="SIZE",
                     help="Output kept per host and stream (K/M/G suffixes); the middle of longer output "
                          "is dropped with a visible marker."),
    ]
    for opt in reversed(options):
        func = opt(func)
    return func


def output_options(func: Callable) -> Callable:
    options = [
        click.option("-b", "--gather", is_flag=True, help="At the end, print identical outputs once per host list."),
        click.option("--stream", is_flag=True, help="Print each line as it arrives, prefixed 'host: '."),
        click.option("--json", "as_json", is_flag=True, help="One JSON object per host per line on stdout."),
        click.option("-q", "--quiet", is_flag=True, help="Only failed hosts and the summary."),
        click.option("-o", "--outdir", metavar="DIR", default=None, help="Also write DIR/<host>.out and .err."),
        click.option("--no-progress", is_flag=True, help="No progress line on stderr (shown only on a TTY)."),
        click.option("--raw", is_flag=True, help="Print remote output bytes as they are (terminal escape "
                                                 "sequences are shown escaped unless this is given)."),
    ]
    for opt in reversed(options):
        func = opt(func)
    return func


def build_secrets(kw: dict):
    """Passwords and secret values, asked for or read before anything runs."""
    from hostops.secrets import Secrets, ask, from_env, read_password_file

    given = [flag for flag, on in (("--ask-sudo-pass", kw.get("ask_sudo_pass")),
                                   ("--sudo-pass-file", kw.get("sudo_pass_file")),
                                   ("--sudo-pass-env", kw.get("sudo_pass_env"))) if on]
    if len(given) > 1:
        raise UsageError(f"give the sudo password one way only, not {' and '.join(given)}")
    sudo_password = None
    if kw.get("sudo_pass_file"):
        sudo_password = read_password_file(kw["sudo_pass_file"])
    elif kw.get("sudo_pass_env"):
        sudo_password = from_env(kw["sudo_pass_env"], "--sudo-pass-env")
    elif kw.get("ask_sudo_pass"):
        sudo_password = ask("sudo password: ", "--ask-sudo-pass")
    if sudo_password is not None and not kw.get("sudo"):
        raise UsageError(f"{given[0]} needs --sudo")
    ssh_password = ask("SSH password: ", "--ask-pass") if kw.get("ask_pass") else None
    values = [from_env(name, "--secret-env") for name in kw.get("secret_env") or ()]
    return Secrets(sudo_password, ssh_password, tuple(values))


def inventory_secrets(inv, names) -> list:
    """Values of the variables a host lists in ``hostops_secret_vars`` (to be masked)."""
    out = []
    for name in names:
        hvars = inv.host_vars(name)
        marked = hvars.get("hostops_secret_vars") or []
        if isinstance(marked, str):
            marked = [marked]
        out += [str(hvars[v]) for v in marked if v in hvars and hvars[v] not in (None, "")]
    return out


def check_local_usage(kw: dict, stdin: Optional[str] = None) -> None:
    """The operator's own mistakes, refused (exit 2, one line) before a password is asked for
    or a host contacted: a -k file that is no key, a bad start method, -o naming a file,
    --stdin with a sudo password."""
    from hostops.settings import check_identity_file, check_outdir, check_start_method, \
        check_stdin_with_sudo_password

    for path in kw.get("identity_files") or ():
        check_identity_file(path)
    check_start_method(kw.get("start_method"))
    check_outdir(kw.get("outdir"))
    has_password = bool(kw.get("ask_sudo_pass") or kw.get("sudo_pass_file") or kw.get("sudo_pass_env"))
    check_stdin_with_sudo_password(stdin, bool(kw.get("sudo")), has_password)


def build_options(kw: dict, stdin: Optional[str] = None):
    from hostops.settings import Options

    check_local_usage(kw, stdin)
    return Options(
        user=kw["user"], port=kw["port"], identity_files=tuple(kw["identity_files"]),
        ssh_config=kw["ssh_config"], known_hosts=tuple(kw["known_hosts"]),
        host_key_policy=kw["host_key_policy"], connect_timeout=kw["connect_timeout"], timeout=kw["timeout"],
        sudo=kw["sudo"], forks=kw["forks"], processes=kw["processes"], start_method=kw["start_method"],
        log=kw["log_path"], stream_output=kw.get("stream", False), keepalive=kw["keepalive"],
        kill_grace=kw["kill_grace"], max_output=kw["max_output"], sudo_user=kw.get("sudo_user"),
        secrets=build_secrets(kw), jump=kw.get("jump"), explicit=_given_on_command_line(),
    )


def _given_on_command_line() -> tuple:
    """Names of the options the user gave: they beat ssh_config (defaults do not)."""
    from click.core import ParameterSource

    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return ()
    return tuple(name for name in ("connect_timeout", "keepalive", "host_key_policy")
                 if ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT))


def output_mode(kw: dict) -> str:
    chosen = [name for name, flag in (("gather", kw["gather"]), ("stream", kw["stream"]), ("json", kw["as_json"]),
                                      ("quiet", kw["quiet"])) if flag]
    if len(chosen) > 1:
        raise UsageError("choose one output mode: " + ", ".join("--" + c for c in chosen) + " cannot be combined")
    return chosen[0] if chosen else "blocks"


def rollout_options(func: Callable) -> Callable:
    options = [
        click.option("--batch", default=None, metavar="N|N%",
                     help="Run hosts in batches of N (or N% of them), one batch after another."),
        click.option("--max-fail", default=None, metavar="N|N%",
                     help="Stop (no new batch, no further step) once more than N hosts failed."),
        click.option("--canary", type=click.IntRange(min=1), default=None, metavar="N",
                     help="Run N hosts first, and stop unless they all succeed."),
        click.option("--pause", type=click.FloatRange(min=0), default=0.0, metavar="S",
                     help="Wait S seconds between batches."),
        click.option("--lock", "lock_path", default=None, metavar="FILE",
                     help="Hold FILE locked while running; if another run holds it, exit at once (code 6)."),
    ]
    for opt in reversed(options):
        func = opt(func)
    return func


def rollout_spec(kw: dict, batch=None, max_fail=None):
    from hostops.rollout import RolloutSpec
    from hostops.runbook import count_of

    spec = RolloutSpec(kw.get("batch") or batch, kw.get("max_fail") if kw.get("max_fail") is not None else max_fail,
                       kw.get("canary") or 0, kw.get("pause") or 0.0)
    for value, what, zero in ((spec.batch, "--batch", False), (spec.max_fail, "--max-fail", True)):
        if value is not None:
            count_of(value, 100, what, allow_zero=zero)
    return spec


def run_action(targets, action, options, kw: dict, *, steps=None, spec=None, what: Optional[str] = None,
               keep_connections: bool = False) -> int:
    """Run an action (or a runbook's steps) with the chosen renderer, rolled out per --batch/
    --max-fail/--canary. The first Ctrl-C or SIGTERM stops the run cleanly (running commands
    stopped on their hosts, finished results printed and logged); a second aborts at once."""
    from hostops.api import Session
    from hostops.output import make_renderer
    from hostops.rollout import StepRun, end_record, rollout, summary_line, table
    from hostops.runlock import RunLock
    from hostops.state import state_path

    mode = output_mode(kw)
    lock = RunLock(kw["lock_path"]).acquire() if kw.get("lock_path") else None
    try:
        _warn_unchecked_keys(targets, options)
        renderer = make_renderer(mode, total=len(targets), progress=not kw["no_progress"], outdir=kw["outdir"],
                                 raw=kw.get("raw", False))
        if steps is None:
            steps = [StepRun(getattr(action, "describe", lambda: "run")(), lambda target: action)]
        spec = spec if spec is not None else rollout_spec(kw)
        multi = len(steps) > 1

        def on_step(b: int, nb: int, s: int, step, hosts) -> None:
            if multi or nb > 1:
                where = f"batch {b + 1}/{nb}" + (f" · step {s + 1}/{len(steps)}: {step.name}" if multi else "")
                renderer.section(f"== {where} ({len(hosts)} host{'s' if len(hosts) != 1 else ''}) ==", len(hosts))

        def on_stop(reason: str) -> None:
            renderer.progress.clear()
            _warn(f"stopped: {reason}")

        shown = set()

        def show(result) -> None:
            shown.add(id(result))
            renderer.result(result)

        session = Session(options, len(targets), handle_signals=True, warn=_warn, keep_connections=keep_connections)
        report = None
        error: Optional[BaseException] = None
        unwatch = _watch_stdout(session)
        try:
            session.start(what or steps[0].name, [t.name for t in targets])
            report = rollout(session, targets, steps, spec, on_step=on_step, on_result=show,
                             on_start=renderer.started, on_output=renderer.output if mode == "stream" else None,
                             on_stop=on_stop)
        except KeyboardInterrupt as exc:
            error = exc
            session.summary.interrupted = True
        finally:
            unwatch()
            end = end_record(report, session.summary.elapsed) if (report is not None and multi) else None
            if end is not None and session.summary.output_closed:
                end["output_closed"] = True
            session.close(error, end)
        summary = session.summary
        for result in summary.results:  # reported while closing (abandoned after a second Ctrl-C)
            if id(result) not in shown:
                show(result)
        if report is None:  # aborted by a second Ctrl-C: what finished is in the summary
            done = {r.host for r in summary.results}
            summary.not_finished = [t.name for t in targets if t.name not in done]
            statuses = {r.host: r.status for r in summary.results}
            renderer.finish(summary)
            _save_state(state_path(options.log), what or "run", statuses, summary.not_finished, options.secrets)
            return int(summary.exit_code)
        untouched = report.untouched
        summary.not_finished = untouched
        summary.interrupted = summary.interrupted or report.interrupted
        statuses = {h: report.final_status(h) for h in report.hosts if h not in untouched}
        if report.stopped and untouched:
            _warn(f"not touched ({len(untouched)}): {compact_names(untouched)}")
        if multi:
            renderer.finish(summary, summary_line(report, summary.elapsed), table(report))
        else:
            renderer.finish(summary)
        _save_state(state_path(options.log), what or steps[0].name, statuses, untouched, options.secrets)
        from hostops.exitcodes import for_statuses

        return int(for_statuses(statuses.values(), summary.interrupted))
    finally:
        if lock is not None:
            lock.release()


def _warn_unchecked_keys(targets, options) -> None:
    """Say when host keys go unchecked, whether --host-key-policy off or ssh_config's
    StrictHostKeyChecking no turned the check off (hosts and jump hosts alike)."""
    if options.host_key_policy == "off":
        _warn("host key checking is off (--host-key-policy off): a man in the middle would go unnoticed; "
              "no password is sent to a host whose key differs from known_hosts")
        return
    off: List[str] = []
    for t in targets:
        if t.connection != "local" and t.host_key_policy == "off":
            off.append(t.name)
        off += [f"jump host {hop.name}" for hop in t.jump if hop.host_key_policy == "off"]
    if off:
        _warn(f"host key checking is off for {compact_names(list(dict.fromkeys(off)))} (StrictHostKeyChecking no "
              "in ssh_config): a man in the middle would go unnoticed; no password is sent to a host whose key "
              "differs from known_hosts")


def _watch_stdout(session) -> Callable[[], None]:
    """Standard output's reader went away (``| head -1``, ``| true``): stop the run as a first
    Ctrl-C does (no new host starts, running commands are stopped on their hosts, every host
    is logged and recorded for @failed), like a tool stopped by SIGPIPE but with the record
    kept; main() then exits 141. Any other write error (a full disk under ``> file``) only
    stops the output: the run goes on, its hosts' outcome in --log, -o and the state file."""
    from hostops.output import reader_gone, stream_error, when_broken

    def broken(exc: OSError) -> None:
        if reader_gone(exc):
            session.summary.output_closed = True
            _warn("standard output was closed (its reader went away); stopping the run as an interrupt "
                  "does: running commands are stopped on their hosts, and each host is still logged")
            session.request_stop()
        else:
            _warn(f"could not write standard output ({exc.strerror or exc}); output is dropped from here "
                  "on, the run goes on (see --log, -o)")

    if stream_error("stdout") is not None:
        broken(stream_error("stdout"))  # type: ignore[arg-type]
        return lambda: None
    return when_broken("stdout", broken)


def compact_names(names) -> str:
    from hostops.hostlist import compact

    return compact(names)


def _save_state(path: str, what: str, statuses: dict, untouched, secrets=None) -> None:
    from hostops.state import write_state

    try:
        write_state(path, what, statuses, untouched, secrets)
    except OSError as exc:
        _warn(f"could not record this run's outcome in {path}: {exc.strerror or exc} (-l @failed will not see it)")


# ------------------------------------------------------------------ commands
@click.group(context_settings=CONTEXT, epilog=HELP_TEXT)
@click.version_option(__version__, "-V", "--version", prog_name="hostops")
def cli() -> None:
    """Run commands on many hosts over SSH, in parallel.

    \b
    hostops exec "uptime" -i hosts.yml -l web
    hostops exec "df -h /" -i hosts.yml --json --log /var/log/hostops.jsonl
    hostops put app.conf /etc/app/app.conf -i hosts.yml -l web --mode 0644
    hostops get /var/log/app.log ./logs -i hosts.yml
    hostops script ./check.sh -i hosts.yml -- --verbose
    hostops run runbooks/rolling-restart.yml -i hosts.yml --dry-run
    hostops inventory -i hosts.yml --graph
    """


@cli.command("exec", context_settings=CONTEXT, epilog=HELP_TEXT)
@click.argument("command")
@inventory_options
@connection_options
@output_options
@rollout_options
@click.option("--stdin", "stdin_file", metavar="FILE", default=None, help="Send FILE to the command's stdin on every host.")
def exec_cmd(command: str, inventories, adhoc_hosts, pattern, stdin_file, **kw: Any) -> int:
    """Run COMMAND on every selected host."""
    from hostops.transfer import check_stdin
    from hostops.actions import ExecAction

    options = build_options(kw, stdin_file)
    output_mode(kw)
    check_stdin(stdin_file)
    targets, options = _targets(inventories, adhoc_hosts, pattern, options)
    action = ExecAction(command, options.timeout, options.sudo, os.path.abspath(stdin_file) if stdin_file else None)
    return run_action(targets, action, options, kw)


def _targets(inventories, adhoc_hosts, pattern, options):
    """(targets, options with the inventory's secret values added)."""
    import dataclasses

    from hostops.settings import resolve
    from hostops.state import state_path

    inv, names = load_selection(inventories, adhoc_hosts, pattern, state_path(options.log))
    options = dataclasses.replace(options, secrets=options.secrets.with_values(inventory_secrets(inv, names)))
    return resolve(inv, names, options), options


@cli.command("put", context_settings=CONTEXT, epilog=HELP_TEXT)
@click.argument("src")
@click.argument("dest")
@click.option("-r", "--recursive", is_flag=True, help="Copy a directory tree.")
@click.option("--mode", default=None, metavar="MODE", help="Octal mode of the remote file(s), e.g. 0644. "
              "Default: the replaced file's mode, else the local file's (minus group/other write).")
@click.option("--owner", default=None, metavar="USER[:GROUP]", help="chown the remote file(s) (needs --sudo "
              "unless you are that user).")
@click.option("--checksum", is_flag=True, help="Skip hosts whose file already has the same SHA-256 "
              "(reported 'unchanged').")
@inventory_options
@connection_options
@output_options
@rollout_options
def put_cmd(src: str, dest: str, recursive: bool, mode, owner, checksum: bool, inventories, adhoc_hosts, pattern,
            **kw: Any) -> int:
    """Copy SRC (a local file, or a tree with -r) to DEST on every selected host.

    Each file is written to a temporary name beside its destination and renamed into
    place: readers never see a half-written file, and an interrupted transfer leaves the
    old file intact. DEST ending in '/' or naming a directory receives SRC's name.
    """
    from hostops.transfer import prepare_put

    options = build_options(kw)
    output_mode(kw)
    action = prepare_put(src, dest, recursive, mode, owner, options.sudo, checksum, options.timeout)
    targets, options = _targets(inventories, adhoc_hosts, pattern, options)
    return run_action(targets, action, options, kw)


@cli.command("get", context_settings=CONTEXT, epilog=HELP_TEXT)
@click.argument("src")
@click.argument("dest")
@click.option("-r", "--recursive", is_flag=True, help="Copy a directory tree.")
@click.option("--follow-links", is_flag=True,
              help="With -r: copy what symbolic links point to, when that stays inside the tree "
                   "(others are skipped with a note). Default: links are recorded as links.")
@inventory_options
@connection_options
@output_options
@rollout_options
def get_cmd(src: str, dest: str, recursive: bool, follow_links: bool, inventories, adhoc_hosts, pattern,
            **kw: Any) -> int:
    """Copy SRC from every selected host into DEST/<host>/ (files from different hosts never
    overwrite each other). Partial downloads are removed; files are created 0600."""
    from hostops.transfer import prepare_get

    options = build_options(kw)
    output_mode(kw)
    if options.sudo:
        raise UsageError("get does not support --sudo; copy the file somewhere readable first (hostops exec)")
    targets, options = _targets(inventories, adhoc_hosts, pattern, options)
    action = prepare_get(src, dest, recursive, options.timeout, follow_links=follow_links)
    return run_action(targets, action, options, kw)


@cli.command("script", context_settings=dict(CONTEXT, ignore_unknown_options=False), epilog=HELP_TEXT)
@click.argument("script")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("--stdin", "stdin_file", metavar="FILE", default=None, help="Send FILE to the script's stdin on every host.")
@inventory_options
@connection_options
@output_options
@rollout_options
def script_cmd(script: str, args, stdin_file, inventories, adhoc_hosts, pattern, **kw: Any) -> int:
    """Upload SCRIPT to a private temporary directory on every selected host, run it with
    ARGS (after '--'), and remove it afterwards whatever happened.

    \b
    hostops script ./check.sh -i prod.yml -- --verbose
    """
    from hostops.transfer import prepare_script

    options = build_options(kw, stdin_file)
    output_mode(kw)
    action = prepare_script(script, args, options.sudo, options.timeout, stdin_file)
    targets, options = _targets(inventories, adhoc_hosts, pattern, options)
    return run_action(targets, action, options, kw)


@cli.command("run", context_settings=CONTEXT, epilog=HELP_TEXT)
@click.argument("runbook")
@click.option("-e", "--extra-vars", "extra", multiple=True, metavar="KEY=VALUE",
              help="Set a variable (wins over inventory and runbook vars). Repeatable.")
@click.option("--dry-run", is_flag=True, help="Print the resolved plan (batches, hosts, steps with variables "
              "filled in) and touch nothing.")
@click.option("--start-at", default=None, metavar="STEP", help="Skip the steps before STEP (its name or number).")
@click.option("--no-reuse", is_flag=True, help="Reconnect for every step instead of keeping one connection per "
              "host (slower; for comparison).")
@inventory_options
@connection_options
@output_options
@rollout_options
def run_cmd(runbook: str, extra, dry_run: bool, start_at, no_reuse: bool, inventories, adhoc_hosts, pattern,
            **kw: Any) -> int:
    """Play RUNBOOK: ordered steps (exec, put, get, script) over the runbook's hosts (or -l),
    in batches, stopping when more than max_fail hosts failed.

    \b
    hostops run runbooks/rolling-restart.yml -i prod.yml
    hostops run deploy.yml -i prod.yml --dry-run
    hostops run deploy.yml -i prod.yml -l @failed --start-at restart
    """
    import dataclasses

    from hostops import runbook as rb
    from hostops.rollout import StepRun
    from hostops.settings import resolve
    from hostops.state import state_path

    options = build_options(kw)
    output_mode(kw)
    book = rb.load(runbook)
    spec = rollout_spec(kw, book.batch, book.max_fail)
    extra_vars = rb.parse_extra_vars(extra)
    steps = book.steps
    if start_at is not None:
        index = next((i for i, s in enumerate(steps) if s.name == start_at or str(s.index) == start_at), None)
        if index is None:
            raise UsageError(f"--start-at {start_at!r}: no such step in {runbook} "
                             f"(steps: {', '.join(s.name for s in steps)})")
        steps = steps[index:]
        book.steps = steps
    limit = pattern if pattern != "all" else book.hosts
    inv, names = load_selection(inventories, adhoc_hosts, book.hosts, state_path(options.log))
    if limit != book.hosts:  # -l narrows the runbook's hosts, as Ansible's --limit does
        wanted = set(inv.select(limit, state_path(options.log)))
        names = [n for n in names if n in wanted]
        if not names:
            raise SelectionError(f"no host of the runbook's {book.hosts!r} matched -l {limit!r}")
    plans = rb.plan(book, inv, names, extra_vars, options)
    options = dataclasses.replace(options, secrets=options.secrets.with_values(inventory_secrets(inv, names)))
    targets = resolve(inv, names, options)
    if dry_run:
        if kw["as_json"]:
            click.echo(json.dumps(plan_json(book, plans, names, spec)))
        else:
            click.echo(render_plan(book, plans, names, spec))
        return 0
    steps_to_run = [StepRun(p.step.name, p.for_target, p.step.when_failed) for p in plans]
    return run_action(targets, None, options, kw, steps=steps_to_run, spec=spec, what=f"run {book.name}",
                      keep_connections=not no_reuse)


def plan_json(book, plans, names, spec) -> dict:
    """--dry-run --json: the same plan as data (one JSON document on stdout)."""
    from hostops.rollout import make_batches
    from hostops.runbook import describe_action

    return {"runbook": book.name, "path": book.path, "hosts": list(names),
            "batches": make_batches(names, spec.batch, spec.canary), "max_fail": spec.max_fail,
            "canary": spec.canary or None,
            "steps": [{"index": p.step.index, "name": p.step.name, "kind": p.step.kind,
                       "when_failed": p.step.when_failed, "sudo": p.step.sudo, "retries": p.step.retries,
                       "delay": p.step.delay, "timeout": p.step.timeout,
                       "hosts": {h: describe_action(p.actions[h]) for h in names}} for p in plans],
            "dry_run": True}


def render_plan(book, plans, names, spec) -> str:
    from hostops.hostlist import compact as compact_raw
    from hostops.output import one_line
    from hostops.rollout import make_batches
    from hostops.runbook import describe_action

    def compact(hosts) -> str:  # host names may hold controls: escaped
        return one_line(compact_raw(hosts))

    batches = make_batches(names, spec.batch, spec.canary)
    lines = [f"runbook: {book.name} ({book.path})", f"hosts: {len(names)} ({compact(names)})",
             f"batches: {len(batches)}" + (f" (canary {spec.canary} first)" if spec.canary else ""),
             f"max_fail: {spec.max_fail if spec.max_fail is not None else 'no limit'}"]
    for i, batch in enumerate(batches, 1):
        lines.append(f"  batch {i}: {compact(batch)} ({len(batch)})")
    lines.append("steps:")
    for p in plans:
        flags = [f for f, on in (("when_failed", p.step.when_failed), ("sudo", p.step.sudo)) if on]
        if p.step.retries:
            flags.append(f"retries {p.step.retries}, delay {p.step.delay:g}s")
        if p.step.timeout:
            flags.append(f"timeout {p.step.timeout:g}s")
        lines.append(f"  {p.step.index}. {p.step.name} [{p.step.kind}]" + (f" ({'; '.join(flags)})" if flags else ""))
        by_text: dict = {}
        for host in names:
            by_text.setdefault(describe_action(p.actions[host]), []).append(host)
        for text, hosts in by_text.items():
            lines.append(f"       {compact(hosts)}: {text}")
    lines.append("dry run: nothing was touched")
    return "\n".join(lines)


@cli.command("inventory", context_settings=CONTEXT)
@inventory_options
@click.option("--json", "as_json", is_flag=True, help="JSON, like ansible-inventory --list.")
@click.option("--graph", is_flag=True, help="The group tree, like ansible-inventory --graph.")
@click.option("-u", "--user", default=None, help="As for exec: shows the resolved user.")
@click.option("-p", "--port", type=click.IntRange(1, 65535), default=None, help="As for exec.")
@click.option("--ssh-config", metavar="FILE", default=None, help="As for exec.")
def inventory_cmd(inventories, adhoc_hosts, pattern, as_json: bool, graph: bool, user, port, ssh_config) -> int:
    """List the selected hosts with their resolved connection settings."""
    from hostops.output import one_line
    from hostops.settings import Options, resolve

    inv, names = load_selection(inventories, adhoc_hosts, pattern)
    targets = resolve(inv, names, Options(user=user, port=port, ssh_config=ssh_config))
    if graph:
        click.echo(render_graph(inv, set(names)))
    elif as_json:
        click.echo(json.dumps(inventory_json(inv, targets), indent=2, sort_keys=False))
    else:
        shown = {t.name: one_line(t.name) for t in targets}  # names may hold controls: escaped
        width = max(len(s) for s in shown.values())
        for t in targets:
            where = "local" if t.connection == "local" else f"{t.user}@{t.hostname}:{t.port}"
            keys = f"  key={','.join(t.identity_files)}" if t.identity_files else ""
            click.echo(f"{shown[t.name]:<{width}}  {one_line(where + keys)}")
        click.echo(f"{len(targets)} host{'s' if len(targets) != 1 else ''}", err=True)
    return 0


def inventory_json(inv: Inventory, targets) -> dict:
    selected = {t.name for t in targets}
    hostvars = {}
    for t in targets:
        hv = dict(inv.host_vars(t.name))
        hv["hostops_connection"] = t.to_json()
        hostvars[t.name] = hv
    data: dict = {"_meta": {"hostvars": hostvars}}
    for name, group in inv.groups.items():
        hosts = [h for h in group.hosts if h in selected]
        children = [c for c in group.children if any(h in selected for h in inv.group_hosts(c))]
        if hosts or children:
            entry: dict = {}
            if children:
                entry["children"] = children
            if hosts:
                entry["hosts"] = hosts
            data[name] = entry
    return data


def render_graph(inv: Inventory, selected: set) -> str:
    from hostops.output import one_line  # group and host names may hold controls: escaped

    lines: List[str] = []

    def walk(group: str, prefix: str) -> None:
        lines.append(f"{prefix}@{one_line(group)}:")
        inner = prefix.replace("|--", "|  ") + "|--" if prefix else "  |--"
        for child in inv.groups[group].children:
            if any(h in selected for h in inv.group_hosts(child)):
                walk(child, inner)
        for host in inv.groups[group].hosts:
            if host in selected and (group != "all"):
                lines.append(f"{inner}{one_line(host)}")

    walk("all", "")
    return "\n".join(lines)


from hostops import cli_keys  # noqa: E402,F401  (registers 'hostops keys')


# ------------------------------------------------------------------ entry point
def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console entry point: every error becomes one line on stderr and a documented exit code.
    stdout and stderr are guarded first: a closed pipe or a full disk under them never
    becomes an internal error (see _watch_stdout); a reader gone from stdout exits 141."""
    from hostops.output import guard_std_streams, reader_gone, stream_error

    try:
        guard_std_streams()
    except (OSError, ValueError):  # pragma: no cover - an odd environment: run unguarded
        pass
    try:
        code = cli.main(args=list(argv) if argv is not None else None, prog_name="hostops", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("hostops: interrupted", err=True)
        code = ExitCode.INTERRUPTED
    except click.ClickException as exc:
        exc.show()
        code = ExitCode.USAGE if exc.exit_code == 2 else exc.exit_code
    except HostopsError as exc:
        from hostops.output import one_line

        click.echo(f"hostops: error: {one_line(str(exc))}", err=True)
        code = exc.exit_code
    except KeyboardInterrupt:
        click.echo("hostops: interrupted", err=True)
        code = ExitCode.INTERRUPTED
    except BrokenPipeError:  # an unguarded stream (should not happen): the reader went away
        code = ExitCode.OUTPUT_CLOSED
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        except OSError:
            pass
    except Exception as exc:  # a bug: say so in one line, keep the traceback for whoever debugs
        if os.environ.get("HOSTOPS_DEBUG"):
            raise
        click.echo(f"hostops: internal error: {type(exc).__name__}: {exc} "
                   "(set HOSTOPS_DEBUG=1 for the traceback, and please report it)", err=True)
        code = ExitCode.INTERNAL
    if reader_gone(stream_error("stdout")) and int(code or 0) in _OUTCOME_CODES:
        code = ExitCode.OUTPUT_CLOSED  # like a tool stopped by SIGPIPE (128 + 13); the log has the rest
    sys.exit(int(code or 0))


#: Exit codes that describe the hosts' outcome: a closed stdout turns them into 141.
_OUTCOME_CODES = {int(c) for c in (ExitCode.OK, ExitCode.TIMEOUT, ExitCode.UNREACHABLE, ExitCode.FAILED,
                                   ExitCode.INTERRUPTED)}


if __name__ == "__main__":  # pragma: no cover
    main()
