"""The run commands: exec, put, get, script, run, inventory. Each one parses its options,
builds its steps, hands them to :func:`hostops.api.run_rollout` with a renderer as the events
handler, and returns the report's exit code.

Owns: the click commands above (registered on the group by :mod:`hostops.cli`).
Must not import: hostops.cli.keys or hostops.cli's ``__init__`` (no cycle), paramiko at import time.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import click

from hostops.cli.cluster import cluster_options, pool_factory
from hostops.cli.options import (
    CONTEXT,
    build_options,
    connection_options,
    inventory_options,
    inventory_secrets,
    load_selection,
    output_format_option,
    output_mode,
    output_options,
    state_dir_option,
    rollout_options,
    rollout_spec,
    select_targets,
    state_file_for,
)
from hostops.errors import SelectionError, UsageError
from hostops.exitcodes import HELP_TEXT


def roll_out(targets: Sequence[Any], action: Any, options: Any, kw: dict, *, state_file: str,
             steps: list[Any] | None = None, spec: Any = None, what: str | None = None,
             keep_connections: bool = False) -> int:
    """Run an action (or a runbook's steps) through :func:`hostops.api.run_rollout`, rolled out
    per --batch/--max-fail/--canary, with the chosen renderer; the run's exit code."""
    from hostops.api import run_rollout
    from hostops.cli.hints import with_key_advice
    from hostops.output import make_renderer
    from hostops.rollout import StepRun

    mode = output_mode(kw)
    if steps is None:
        steps = [StepRun(action.describe(), lambda _target: action)]
    spec = spec if spec is not None else rollout_spec(kw)
    renderer = make_renderer(mode, total=len(targets), progress=kw.get("progress"), outdir=kw["outdir"],
                             raw=kw.get("raw", False), color=kw.get("color") or "auto")
    events = with_key_advice(renderer, kw, targets)  # "Permanently added …"; pasteable host-key hints (cli/hints.py)
    try:
        report = run_rollout(targets, steps, options, spec, events, lock=kw.get("lock_path"),
                             state_file=state_file, what=what, keep_connections=keep_connections,
                             pool_factory=pool_factory(kw, targets, options))  # --cluster (hostops/cli/cluster.py)
    finally:
        renderer.close()  # the progress line gone before any error is printed
    return int(report.exit_code)


def command_line(words: Sequence[str]) -> str:
    """exec's COMMAND words joined with spaces, as pdsh and clush do; an empty command is refused."""
    command = " ".join(words)
    if not command.strip():
        raise UsageError("exec needs a command to run, not an empty string: hostops exec 'uptime' -i FILE")
    return command


@click.command("exec", context_settings=CONTEXT, epilog=HELP_TEXT)
@click.argument("words", metavar="COMMAND...", nargs=-1, required=True)
@inventory_options
@connection_options
@output_options
@output_format_option
@rollout_options
@cluster_options
@click.option("--stdin", "stdin_file", metavar="FILE", default=None,
              help="Send FILE to the command's stdin on every host.")
def exec_cmd(words: Sequence[str], inventories, adhoc_hosts, pattern, stdin_file, **kw: Any) -> int:
    """Run COMMAND on every selected host (through the remote user's shell).

    Several words are joined with spaces, as pdsh and clush do: 'hostops exec uptime -i FILE'
    and 'hostops exec "df -h /" -i FILE' both work. Quote the command when it holds anything
    your own shell would act on (; | & > $ * quotes), and put it after '--' when a word starts
    with '-': hostops exec -i FILE -- ls -la

    \b
    Examples:
      hostops exec "uptime" -i hosts.yml -l web
      hostops exec "systemctl restart app" -i hosts.yml -l 'web:&prod' --sudo --batch 2
      hostops exec "df -h /" -i hosts.yml -b              # identical outputs once per host list
      hostops exec "uptime" -H web1 -H db1:2222 --json | jq -r .host
    """
    from hostops.transfer import check_stdin
    from hostops.actions import ExecAction

    command = command_line(words)
    options = build_options(kw, stdin_file)
    output_mode(kw)
    check_stdin(stdin_file)
    targets, options = select_targets(inventories, adhoc_hosts, pattern, options)
    action = ExecAction(command, options.timeout, options.sudo, os.path.abspath(stdin_file) if stdin_file else None)
    return roll_out(targets, action, options, kw, state_file=state_file_for(inventories, adhoc_hosts, options.log,
                                                                                  options.state_dir, pattern))


@click.command("put", context_settings=CONTEXT, epilog=HELP_TEXT)
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
@output_format_option
@rollout_options
@cluster_options
def put_cmd(src: str, dest: str, recursive: bool, mode, owner, checksum: bool, inventories, adhoc_hosts, pattern,
            **kw: Any) -> int:
    """Copy SRC (a local file, or a tree with -r) to DEST on every selected host.

    Each file is written to a temporary name beside its destination and renamed into
    place: readers never see a half-written file, and an interrupted transfer leaves the
    old file intact. DEST ending in '/' or naming a directory receives SRC's name.

    \b
    Examples:
      hostops put app.conf /etc/app/app.conf -i hosts.yml -l web --mode 0644 --sudo
      hostops put -r ./site/ /srv/www/ -i hosts.yml -l web --checksum
    """
    from hostops.put import prepare_put

    options = build_options(kw)
    output_mode(kw)
    action = prepare_put(src, dest, recursive, mode, owner, options.sudo, checksum, options.timeout)
    targets, options = select_targets(inventories, adhoc_hosts, pattern, options)
    return roll_out(targets, action, options, kw, state_file=state_file_for(inventories, adhoc_hosts, options.log,
                                                                                  options.state_dir, pattern))


@click.command("get", context_settings=CONTEXT, epilog=HELP_TEXT)
@click.argument("src")
@click.argument("dest")
@click.option("-r", "--recursive", is_flag=True, help="Copy a directory tree.")
@click.option("--follow-links", is_flag=True,
              help="With -r: copy what symbolic links point to, when that stays inside the tree "
                   "(others are skipped with a note). Default: links are recorded as links.")
@inventory_options
@connection_options
@output_options
@output_format_option
@rollout_options
@cluster_options
def get_cmd(src: str, dest: str, recursive: bool, follow_links: bool, inventories, adhoc_hosts, pattern,
            **kw: Any) -> int:
    """Copy SRC from every selected host into DEST/<host>/ (files from different hosts never
    overwrite each other). Partial downloads are removed; files are created 0600.

    \b
    Examples:
      hostops get /var/log/app.log ./logs -i hosts.yml -l web      # ./logs/web01/app.log, …
      hostops get -r /etc/nginx ./nginx-conf -i hosts.yml
    """
    from hostops.get import prepare_get

    options = build_options(kw)
    output_mode(kw)
    if options.sudo:
        raise UsageError("get does not support --sudo; copy the file somewhere readable first (hostops exec)")
    targets, options = select_targets(inventories, adhoc_hosts, pattern, options)
    action = prepare_get(src, dest, recursive, options.timeout, follow_links=follow_links)
    return roll_out(targets, action, options, kw, state_file=state_file_for(inventories, adhoc_hosts, options.log,
                                                                                  options.state_dir, pattern))


@click.command("script", context_settings=dict(CONTEXT, ignore_unknown_options=False), epilog=HELP_TEXT)
@click.argument("script")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("--stdin", "stdin_file", metavar="FILE", default=None,
              help="Send FILE to the script's stdin on every host.")
@inventory_options
@connection_options
@output_options
@output_format_option
@rollout_options
@cluster_options
def script_cmd(script: str, args, stdin_file, inventories, adhoc_hosts, pattern, **kw: Any) -> int:
    """Upload SCRIPT to a private temporary directory on every selected host, run it with
    ARGS (after '--'), and remove it afterwards whatever happened.

    \b
    Examples:
      hostops script ./check.sh -i prod.yml -- --verbose
      hostops script ./migrate.sh -i prod.yml -l db --sudo --stdin input.sql
    """
    from hostops.script import prepare_script

    options = build_options(kw, stdin_file)
    output_mode(kw)
    action = prepare_script(script, args, options.sudo, options.timeout, stdin_file)
    targets, options = select_targets(inventories, adhoc_hosts, pattern, options)
    return roll_out(targets, action, options, kw, state_file=state_file_for(inventories, adhoc_hosts, options.log,
                                                                                  options.state_dir, pattern))


@click.command("run", context_settings=CONTEXT, epilog=HELP_TEXT)
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
@output_format_option
@rollout_options
@cluster_options
def run_cmd(runbook: str, extra, dry_run: bool, start_at, no_reuse: bool, inventories, adhoc_hosts, pattern,
            **kw: Any) -> int:
    """Play RUNBOOK: ordered steps (exec, put, get, script) over the runbook's hosts (or -l),
    in batches, stopping when more than max_fail hosts failed.

    \b
    Examples:
      hostops run runbooks/rolling-restart.yml -i prod.yml
      hostops run deploy.yml -i prod.yml --dry-run
      hostops run deploy.yml -i prod.yml -l @failed --start-at restart
    """
    import dataclasses

    from hostops import runbook as rb
    from hostops.rollout import StepRun
    from hostops.settings import resolve

    book = rb.load(runbook)  # first: a sudo step makes --sudo-user meaningful without --sudo
    options = build_options(kw, sudo_steps=any(step.sudo for step in book.steps))
    mode = output_mode(kw)
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
    state_file = state_file_for(inventories, adhoc_hosts, options.log, options.state_dir, pattern)
    inv, names = load_selection(inventories, adhoc_hosts, book.hosts, state_file, limit=pattern)
    if limit != book.hosts:  # -l narrows the runbook's hosts, as Ansible's --limit does
        wanted = set(inv.select(limit, state_file))
        names = [n for n in names if n in wanted]
        if not names:
            raise SelectionError(f"no host of the runbook's {book.hosts!r} matched -l {limit!r}")
    plans = rb.plan(book, inv, names, extra_vars, options)
    options = dataclasses.replace(options, secrets=options.secrets.with_values(inventory_secrets(inv, names)))
    targets = resolve(inv, names, options)
    if dry_run:
        if mode == "json":
            click.echo(json.dumps(rb.plan_json(book, plans, names, spec)))
        else:
            click.echo(rb.render_plan(book, plans, names, spec))
        return 0
    steps_to_run = [StepRun(p.step.name, p.for_target, p.step.when_failed) for p in plans]
    return roll_out(targets, None, options, kw, state_file=state_file, steps=steps_to_run, spec=spec,
                    what=f"run {book.name}",
                    keep_connections=not no_reuse)


@click.command("inventory", context_settings=CONTEXT)
@inventory_options
@click.option("--json", "as_json", is_flag=True, help="JSON, like ansible-inventory --list.")
@click.option("--graph", is_flag=True, help="The group tree, like ansible-inventory --graph.")
@click.option("-u", "--user", default=None, envvar="HOSTOPS_USER", show_envvar=True,
              help="As for exec: shows the resolved user.")
@click.option("-p", "--port", type=click.IntRange(1, 65535), default=None, help="As for exec.")
@click.option("--ssh-config", metavar="FILE", default=None, help="As for exec.")
@click.option("--log", "log_path", metavar="FILE", default=None,
              help="As for exec: -l @failed (@ok…) reads the outcome recorded beside this log.")
@state_dir_option()
def inventory_cmd(inventories, adhoc_hosts, pattern, as_json: bool, graph: bool, user, port, ssh_config,
                  log_path, state_dir) -> int:
    """List the selected hosts with their resolved connection settings. With -l @failed (@ok,
    @unreachable, @untouched): the hosts a rerun would select, and (stderr) which run they come from.

    \b
    Examples:
      hostops inventory -i hosts.yml -l 'web:&prod'
      hostops inventory -i hosts.yml --graph
      hostops inventory -i hosts.yml --json
      hostops inventory -i prod.yml -l @failed
    """
    from hostops.inventory_view import inventory_graph, render_json
    from hostops.output import inventory_lines, one_line
    from hostops.selection import describe_state
    from hostops.settings import Options, resolve

    state_file = state_file_for(inventories, adhoc_hosts, log_path, state_dir, pattern)
    inv, names = load_selection(inventories, adhoc_hosts, pattern, state_file)
    for line in describe_state(inv, pattern, state_file):
        click.echo(one_line(line), err=True)
    targets = resolve(inv, names, Options(user=user, port=port, ssh_config=ssh_config))
    if graph:
        click.echo(inventory_graph(inv, set(names)))
    elif as_json:
        click.echo(render_json(inv, targets))
    else:
        for line in inventory_lines(targets):
            click.echo(line)
        click.echo(f"{len(targets)} host{'s' if len(targets) != 1 else ''}", err=True)
    return 0

