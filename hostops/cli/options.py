"""The CLI's shared options: click decorators, turning what was given into Options and
Secrets (asking for passwords), the operator's own mistakes refused before anything runs
(exit 2), and loading the inventory selection.

Owns: option decorators, build_options/build_secrets, output_mode, rollout_spec, load_selection.
Must not import: the other hostops.cli modules (every command module imports this one),
paramiko or YAML at import time (``hostops --help`` stays fast).
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import click

from hostops.completion import complete_file, complete_limit
from hostops.errors import SelectionError, UsageError

if TYPE_CHECKING:  # --version and --help import neither YAML nor the inventory code
    from hostops.inventory import Inventory
    from hostops.rollout import RolloutSpec
    from hostops.secrets import Secrets
    from hostops.settings import Options, Target

CONTEXT: dict = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def warn(message: str) -> None:
    """One line on stderr: host names and values in it are escaped (see output.one_line)."""
    from hostops.output import one_line

    click.echo(f"hostops: warning: {one_line(message)}", err=True)


def _apply(func: Callable, options: list[Callable]) -> Callable:
    for opt in reversed(options):
        func = opt(func)
    return func


# ------------------------------------------------------------------ shared options
def inventory_options(func: Callable) -> Callable:
    return _apply(func, [
        click.option("-i", "--inventory", "inventories", multiple=True, metavar="SOURCE", shell_complete=complete_file,
                     help="Inventory: an Ansible YAML or INI file, a directory (with group_vars/, "
                          "host_vars/), a script, --list JSON, or one host per line. Repeatable: sources merge. "
                          "Without -i and -H: $HOSTOPS_INVENTORY (FILE[:FILE...]), else the config file's "
                          "'inventory'; none otherwise (-l localhost alone runs on this machine)."),
        click.option("-H", "--host", "adhoc_hosts", multiple=True, metavar="[USER@]HOST[:PORT]",
                     help="Add an ad-hoc host (ranges allowed: web[01:05]). Repeatable."),
        click.option("-l", "--limit", "pattern", default="all", show_default=True, metavar="PATTERN",
                     shell_complete=complete_limit,
                     help="Host pattern: group, host, web:db, web:&prod, web:!db, web*, ~regex, @file."),
    ])


#: The one line for a run given no inventory at all (never a silent run on this machine).
NO_INVENTORY = ("no inventory given: use -i FILE or -H HOST, set HOSTOPS_INVENTORY, or set 'inventory:' in a "
                "config file (hostops config shows which is read); for this machine only: -l localhost")


def load_selection(inventories: Sequence[str], adhoc_hosts: Sequence[str], pattern: str,
                   state_file: str | None = None, limit: str | None = None) -> tuple[Inventory, list[str]]:
    """Load the inventory and select hosts; no match is a usage error (exit 2).
    ``state_file``: where @failed/@ok/… look (the last run's outcome; default: this
    inventory's state file, :func:`state_file_for`).

    Without -i and -H, :func:`default_inventories`; -H without -i means those hosts only. No
    inventory at all is a usage error, except ``-l localhost`` (``limit``, else ``pattern``),
    which names the embedded localhost inventory (no SSH)."""
    from hostops.inventory import Inventory
    from hostops.selection import describe_state

    limit = limit if limit is not None else pattern
    paths = inventory_sources(inventories, adhoc_hosts, limit)
    state_file = state_file or state_file_for(inventories, adhoc_hosts, None, limit=limit)
    inv = Inventory.load(paths, adhoc_hosts)
    for warning in inv.warnings:
        warn(warning)
    names = inv.select(pattern, state_file)
    ctx = click.get_current_context(silent=True)
    if ctx is not None:  # --cluster reads the zones (hostops_zone) of what was selected: hostops/cli/cluster.py
        ctx.meta["hostops.selection"] = (inv, names)
    if not names:
        from hostops.selection import no_match_hint

        where = ", ".join(paths + [f"-H {h}" for h in adhoc_hosts]) or "the inventory"
        from_state = "; ".join(describe_state(inv, pattern, state_file))
        raise SelectionError(f"no host matched {pattern!r} in {where}" + (f" ({from_state})" if from_state else "")
                             + f"{no_match_hint(inv, pattern)}; see the hosts with: hostops inventory -i FILE --graph")
    return inv, names


def default_inventories() -> tuple[list[str], str]:
    """The inventory of a command given neither -i nor -H, and where it was named:
    $HOSTOPS_INVENTORY (FILE[:FILE...]), else the config file's ``inventory``, else ([], "").
    Read here, when a command needs hosts, rather than as -i's default: a command whose
    inventory is optional (keys forget) must not act on every host of a default one."""
    env = os.environ.get("HOSTOPS_INVENTORY", "")
    if env.strip():
        return [p for p in env.split(os.pathsep) if p], "$HOSTOPS_INVENTORY"
    config = current_config()
    if config is not None and "inventory" in config.values:
        return list(config.values["inventory"]), config.where("inventory")
    return [], ""


def inventory_sources(inventories: Sequence[str], adhoc_hosts: Sequence[str], limit: str | None = None) -> list[str]:
    """The inventory files a run loads: the -i files, else :func:`default_inventories`; with
    none at all, only ``-l localhost`` (``limit``) names the embedded localhost inventory, and
    anything else is a usage error (never a silent run on this machine)."""
    from hostops.inventory import default_inventory_path

    paths = list(inventories)
    if paths or adhoc_hosts:
        return paths
    paths, where = default_inventories()
    for path in paths:
        if not os.path.exists(path):
            raise UsageError(f"{path}: no such inventory file (named by {where}); fix it there, or give -i")
    if not paths and limit != "localhost":
        raise UsageError(NO_INVENTORY)
    return paths or [default_inventory_path()]


def state_file_for(inventories: Sequence[str], adhoc_hosts: Sequence[str], log: str | None,
                   state_dir: str | None = None, limit: str | None = None) -> str:
    """The run's state file (@failed…): beside --log, else this inventory's own in the state
    directory (hostops.state)."""
    from hostops.state import state_path

    return state_path(log, inventory_sources(inventories, adhoc_hosts, limit), adhoc_hosts, state_dir)


def select_targets(inventories: Sequence[str], adhoc_hosts: Sequence[str], pattern: str,
                   options: Options) -> tuple[list[Target], Options]:
    """(targets, options with the inventory's secret values added)."""
    from hostops.settings import resolve

    inv, names = load_selection(inventories, adhoc_hosts, pattern,
                                state_file_for(inventories, adhoc_hosts, options.log, options.state_dir, pattern))
    options = dataclasses.replace(options, secrets=options.secrets.with_values(inventory_secrets(inv, names)))
    return resolve(inv, names, options), options


class _Size(click.ParamType):
    """A byte count: 4096, 64K, 4M, 1G."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
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
        click.option("-u", "--user", default=None, envvar="HOSTOPS_USER", show_envvar=True,
                     help="Remote user (inventory ansible_user wins)."),
        click.option("-p", "--port", type=click.IntRange(1, 65535), default=None, help="SSH port."),
        click.option("-k", "--identity", "identity_files", multiple=True, metavar="FILE", type=click.Path(),
                     envvar="HOSTOPS_IDENTITY", show_envvar=True, help="Private key file. Repeatable."),
        click.option("--ssh-config", metavar="FILE", default=None,
                     help="ssh_config to read (default ~/.ssh/config), resolved with 'ssh -G' as OpenSSH does."),
        click.option("-J", "--jump", default=None, metavar="[USER@]HOST[:PORT][,...]",
                     help="Reach every host through these jump hosts (like ssh -J / ProxyJump)."),
        click.option("--known-hosts", multiple=True, metavar="FILE", type=click.Path(),
                     envvar="HOSTOPS_KNOWN_HOSTS", show_envvar=True,
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
                     envvar="HOSTOPS_FORKS", show_envvar=True, help="Hosts in flight at once, in total."),
        click.option("--processes", type=click.IntRange(min=1), default=None, metavar="P",
                     help="Worker processes (default: CPU count); each runs many hosts on threads."),
        click.option("--start-method", type=click.Choice(["fork", "spawn", "forkserver"]), default=None,
                     help="multiprocessing start method (default: Python's; or $HOSTOPS_START_METHOD)."),
        click.option("--log", "log_path", metavar="FILE", default=None, envvar="HOSTOPS_LOG", show_envvar=True,
                     help="Append JSON lines (run start, one per host, run end) to FILE, created 0600."),
        state_dir_option(),
        click.option("--keepalive", type=click.FloatRange(min=0), default=15.0, show_default=True, metavar="S",
                     help="Probe a silent connection every S seconds; 3 unanswered probes drop it (0: off)."),
        click.option("--kill-grace", type=click.FloatRange(min=0), default=5.0, show_default=True, metavar="S",
                     help="When stopping a remote command (timeout, Ctrl-C): TERM, then KILL after S seconds."),
        click.option("--persist", default=None, metavar="DURATION", envvar="HOSTOPS_PERSIST",
                     help="Keep the connections open in a background keeper for DURATION of idleness (10m, "
                          "2h); the next run with --persist reuses them without a new login. Or $HOSTOPS_PERSIST."),
        click.option("--max-output", type=SIZE, default="4M", show_default=True, metavar="SIZE",
                     help="Output kept per host and stream (K/M/G suffixes); the middle of longer output "
                          "is dropped with a visible marker."),
    ]
    return _apply(func, options)


def state_dir_option() -> Callable:
    return click.option("--state-dir", metavar="DIR", default=None, envvar="HOSTOPS_STATE_DIR", show_envvar=True,
                        help="Keep last-run.json (for -l @failed) in DIR; default $XDG_STATE_HOME/hostops "
                             "(beside FILE with --log FILE).")


#: --output / the config key ``output`` → the renderer's mode names.
OUTPUT_MODES = {"text": "blocks", "json": "json", "stream": "stream", "gather": "gather", "quiet": "quiet"}


def output_format_option(func: Callable) -> Callable:
    """--output MODE: the long form of -b/--stream/--json/-q, and what the config key
    ``output`` sets (a flag given on the command line wins over it)."""
    return click.option("--output", "output", type=click.Choice(list(OUTPUT_MODES)), default=None,
                        help="Output mode: text (the default), json, stream, gather or quiet; the same as "
                             "--json, --stream, -b, -q. Default: the config file's 'output'.")(func)


def output_options(func: Callable) -> Callable:
    options = [
        click.option("-b", "-B", "--gather", is_flag=True,
                     help="At the end, print identical outputs (stdout and stderr) once per host list, "
                          "in host-name order (clush -B; -b kept as before)."),
        click.option("--gather-stdout", is_flag=True,
                     help="Like --gather for stdout only; stderr lines go to stderr as 'host: line' "
                          "(clush -b)."),
        click.option("--stream", is_flag=True, help="Print each line as it arrives, prefixed 'host: '."),
        click.option("--json", "as_json", is_flag=True, help="One JSON object per host per line on stdout."),
        click.option("-q", "--quiet", is_flag=True, help="Only failed hosts and the summary."),
        click.option("-o", "--outdir", metavar="DIR", default=None, help="Also write DIR/<host>.out and .err."),
        click.option("--progress/--no-progress", "progress", default=None,
                     help="Force the progress line on stderr on or off (default: only on a terminal, "
                          "not with TERM=dumb)."),
        click.option("--color", type=click.Choice(["auto", "always", "never"]), default="auto", show_default=True,
                     help="Colour: auto (only on a terminal, off with NO_COLOR or TERM=dumb), always "
                          "(also through a pipe, e.g. | less -R; beats NO_COLOR), never."),
        click.option("--raw", is_flag=True, help="Print remote output bytes as they are (terminal escape "
                                                 "sequences are shown escaped unless this is given)."),
    ]
    return _apply(func, options)


def build_secrets(kw: dict) -> Secrets:
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


def inventory_secrets(inv: Inventory, names: Sequence[str]) -> list[str]:
    """Values of the variables a host lists in ``hostops_secret_vars`` (to be masked)."""
    out = []
    for name in names:
        hvars = inv.host_vars(name)
        marked = hvars.get("hostops_secret_vars") or []
        if isinstance(marked, str):
            marked = [marked]
        out += [str(hvars[v]) for v in marked if v in hvars and hvars[v] not in (None, "")]
    return out


def check_local_usage(kw: dict, stdin: str | None = None, sudo_steps: bool = False) -> None:
    """The operator's own mistakes, refused (exit 2, one line) before a password is asked for
    or a host contacted: --sudo-user without --sudo (unless a runbook step has sudo:
    ``sudo_steps``), a -k file that is no key, a bad start method, -o naming a file,
    --stdin with a sudo password."""
    from hostops.settings import (
        check_identity_file,
        check_outdir,
        check_start_method,
        check_stdin_with_sudo_password,
    )

    if kw.get("sudo_user") and not kw.get("sudo") and not sudo_steps:
        raise UsageError("--sudo-user needs --sudo (it is the user sudo runs the command as)")
    for path in kw.get("identity_files") or ():
        check_identity_file(path, origin("identity_files", "-k"))
    check_start_method(kw.get("start_method"))
    check_outdir(kw.get("outdir"))
    has_password = bool(kw.get("ask_sudo_pass") or kw.get("sudo_pass_file") or kw.get("sudo_pass_env"))
    check_stdin_with_sudo_password(stdin, bool(kw.get("sudo")), has_password)


def build_options(kw: dict, stdin: str | None = None, sudo_steps: bool = False) -> Options:
    from hostops.keepersock import parse_duration
    from hostops.settings import Options

    check_local_usage(kw, stdin, sudo_steps)
    return Options(
        user=kw["user"], port=kw["port"], identity_files=tuple(kw["identity_files"]),
        ssh_config=kw["ssh_config"], known_hosts=tuple(kw["known_hosts"]),
        host_key_policy=kw["host_key_policy"], connect_timeout=kw["connect_timeout"], timeout=kw["timeout"],
        sudo=kw["sudo"], forks=kw["forks"], processes=kw["processes"], start_method=kw["start_method"],
        log=kw["log_path"], stream_output=_streams(kw), keepalive=kw["keepalive"],
        kill_grace=kw["kill_grace"], max_output=kw["max_output"], sudo_user=kw.get("sudo_user"),
        secrets=build_secrets(kw), jump=kw.get("jump"), explicit=_given_on_command_line(),
        state_dir=kw.get("state_dir"),
        persist=parse_duration(kw.get("persist")),
    )


def _streams(kw: dict) -> bool:
    """Whether workers send output as it comes: --stream, or --output stream / ``output: stream``."""
    if "output" in kw:  # the run commands: whatever chose the mode
        return output_mode(kw) == "stream"
    return bool(kw.get("stream", False))


def _given_on_command_line() -> tuple:
    """Names of the options the user gave (flag, environment or config file): they beat
    ssh_config (built-in defaults do not)."""
    from click.core import ParameterSource

    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return ()
    return tuple(name for name in ("connect_timeout", "keepalive", "host_key_policy")
                 if ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT))


def output_mode(kw: dict) -> str:
    """The renderer's mode: -b/--gather-stdout/--stream/--json/-q or --output on the command
    line, else the config file's ``output``, else text ("blocks")."""
    chosen = [name for name, flag in (("gather", kw["gather"]), ("gather-stdout", kw.get("gather_stdout")),
                                      ("stream", kw["stream"]), ("json", kw["as_json"]), ("quiet", kw["quiet"]))
              if flag]
    flags = ["--" + c for c in chosen]
    given = kw.get("output")
    if given and param_source("output") == "flag" and OUTPUT_MODES[given] not in chosen:
        chosen.append(OUTPUT_MODES[given])
        flags.append(f"--output {given}")
    if len(chosen) > 1:
        raise UsageError("choose one output mode: " + ", ".join(flags) + " cannot be combined")
    if chosen:
        return chosen[0]
    return OUTPUT_MODES[given] if given else "blocks"


def param_source(name: str) -> str | None:
    """Where the current command's parameter ``name`` came from: "flag", "env", "config",
    "default", or None outside a click command (a library caller)."""
    from click.core import ParameterSource

    ctx = click.get_current_context(silent=True)
    source = ctx.get_parameter_source(name) if ctx is not None else None
    if source is None:
        return None
    names = {ParameterSource.COMMANDLINE: "flag", ParameterSource.ENVIRONMENT: "env",
             ParameterSource.DEFAULT_MAP: "config"}
    return names.get(source, "default")


def origin(name: str, flag: str) -> str:
    """How to name parameter ``name`` in a message: its flag, its environment variable, or
    the config file's key and line, whichever set it."""
    from hostops.config import KEYS

    source = param_source(name)
    key = next((k for k in KEYS if k.param == name), None)
    if source == "env" and key is not None and key.env:
        return f"${key.env}"
    config = current_config()
    if source == "config" and key is not None and config is not None and config.path:
        return f"{key.name} ({config.where(key.name)})"
    return flag


def current_config() -> Any:
    """The :class:`hostops.config.Config` the group loaded for this run (None outside the CLI)."""
    ctx = click.get_current_context(silent=True)
    return ctx.meta.get("hostops.config") if ctx is not None else None


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
    return _apply(func, options)


def rollout_spec(kw: dict, batch: str | None = None, max_fail: str | None = None) -> RolloutSpec:
    from hostops.rollout import RolloutSpec, count_of

    spec = RolloutSpec(kw.get("batch") or batch, kw.get("max_fail") if kw.get("max_fail") is not None else max_fail,
                       kw.get("canary") or 0, kw.get("pause") or 0.0)
    for value, what, zero in ((spec.batch, "--batch", False), (spec.max_fail, "--max-fail", True)):
        if value is not None:
            count_of(value, 100, what, allow_zero=zero)
    return spec
