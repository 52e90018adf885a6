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
        click.option("-i", "--inventory", "inventories", multiple=True, metavar="FILE",
                     help="Inventory file (Ansible YAML, or one host per line). Repeatable: files merge. "
                          "Default: $HOSTOPS_INVENTORY, else the embedded localhost inventory."),
        click.option("-H", "--host", "adhoc_hosts", multiple=True, metavar="[USER@]HOST[:PORT]",
                     help="Add an ad-hoc host (ranges allowed: web[01:05]). Repeatable."),
        click.option("-l", "--limit", "pattern", default="all", show_default=True, metavar="PATTERN",
                     help="Host pattern: group, host, web:db, web:&prod, web:!db, web*, ~regex, @file."),
    ])


def load_selection(inventories: Sequence[str], adhoc_hosts: Sequence[str], pattern: str,
                   state_file: str | None = None) -> tuple[Inventory, list[str]]:
    """Load the inventory and select hosts; no match is a usage error (exit 2).
    ``state_file``: where @failed/@ok/… look (the last run's outcome)."""
    from hostops.inventory import Inventory, default_inventory_path

    paths = list(inventories)
    if not paths and not adhoc_hosts:
        paths = [os.environ.get("HOSTOPS_INVENTORY") or default_inventory_path()]
    inv = Inventory.load(paths, adhoc_hosts)
    for warning in inv.warnings:
        warn(warning)
    names = inv.select(pattern, state_file)
    if not names:
        where = ", ".join(paths + [f"-H {h}" for h in adhoc_hosts]) or "the inventory"
        raise SelectionError(f"no host matched {pattern!r} in {where}; "
                             f"see the hosts with: hostops inventory -i FILE --graph")
    return inv, names


def select_targets(inventories: Sequence[str], adhoc_hosts: Sequence[str], pattern: str,
                   options: Options) -> tuple[list[Target], Options]:
    """(targets, options with the inventory's secret values added)."""
    from hostops.settings import resolve
    from hostops.state import state_path

    inv, names = load_selection(inventories, adhoc_hosts, pattern, state_path(options.log))
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
        click.option("--persist", default=None, metavar="DURATION", envvar="HOSTOPS_PERSIST",
                     help="Keep the connections open in a background keeper for DURATION of idleness (10m, "
                          "2h); the next run with --persist reuses them without a new login. Or $HOSTOPS_PERSIST."),
        click.option("--max-output", type=SIZE, default="4M", show_default=True, metavar="SIZE",
                     help="Output kept per host and stream (K/M/G suffixes); the middle of longer output "
                          "is dropped with a visible marker."),
    ]
    return _apply(func, options)


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


def check_local_usage(kw: dict, stdin: str | None = None) -> None:
    """The operator's own mistakes, refused (exit 2, one line) before a password is asked for
    or a host contacted: a -k file that is no key, a bad start method, -o naming a file,
    --stdin with a sudo password."""
    from hostops.settings import (
        check_identity_file,
        check_outdir,
        check_start_method,
        check_stdin_with_sudo_password,
    )

    for path in kw.get("identity_files") or ():
        check_identity_file(path)
    check_start_method(kw.get("start_method"))
    check_outdir(kw.get("outdir"))
    has_password = bool(kw.get("ask_sudo_pass") or kw.get("sudo_pass_file") or kw.get("sudo_pass_env"))
    check_stdin_with_sudo_password(stdin, bool(kw.get("sudo")), has_password)


def build_options(kw: dict, stdin: str | None = None) -> Options:
    from hostops.keepersock import parse_duration
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
        persist=parse_duration(kw.get("persist")),
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
    return _apply(func, options)


def rollout_spec(kw: dict, batch: str | None = None, max_fail: str | None = None) -> RolloutSpec:
    from hostops.rollout import RolloutSpec, count_of

    spec = RolloutSpec(kw.get("batch") or batch, kw.get("max_fail") if kw.get("max_fail") is not None else max_fail,
                       kw.get("canary") or 0, kw.get("pause") or 0.0)
    for value, what, zero in ((spec.batch, "--batch", False), (spec.max_fail, "--max-fail", True)):
        if value is not None:
            count_of(value, 100, what, allow_zero=zero)
    return spec
