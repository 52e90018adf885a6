"""``hostops connections [list | close [PATTERN] | stop]``: what the connection keeper
(``--persist``) holds, closing some, or stopping it.

Must not import: the other command modules (:mod:`hostops.cli.commands`, :mod:`hostops.cli.keys`).
"""
from __future__ import annotations

import json

import click

from hostops.cli.options import CONTEXT


def _ask(what: str, pattern: str | None = None):
    from hostops.keeperclient import control

    return control(what, pattern)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@click.group("connections", context_settings=CONTEXT, invoke_without_command=True)
@click.pass_context
def connections_group(ctx: click.Context) -> None:
    """The connections kept warm by --persist (default: list them).

    \b
    Examples:
      hostops exec uptime -i hosts.yml --persist 10m   # the keeper holds the logins 10 minutes
      hostops connections                              # what it holds
      hostops connections close 'web*'
      hostops connections stop
    """
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_cmd)


@connections_group.command("list", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per connection.")
def list_cmd(as_json: bool = False) -> None:
    """Held connections: host, user, age, idle time, runs served.

    \b
    Examples:
      hostops connections list
      hostops connections list --json | jq -r .host
    """
    from hostops.output import one_line

    answer = _ask("list")
    if answer is None:
        click.echo("hostops: no connection keeper is running", err=True)
        return
    rows = sorted(answer.rows, key=lambda r: r["host"])
    if as_json:
        for row in rows:
            click.echo(json.dumps(row, sort_keys=True))
        return
    click.echo(f"{'HOST':<24} {'USER':<12} {'ADDRESS':<24} {'AGE':>8} {'IDLE':>8} {'RUNS':>5}")
    for r in rows:
        address = f"{r['address']}:{r['port']}"
        click.echo(f"{one_line(r['host'])[:24]:<24} {one_line(r['user'])[:12]:<12} {one_line(address)[:24]:<24} "
                   f"{_duration(r['age']):>8} {_duration(r['idle']):>8} {r['runs']:>5}")
    click.echo(f"{len(rows)} connection{'s' if len(rows) != 1 else ''} held", err=True)


@connections_group.command("close", context_settings=CONTEXT)
@click.argument("pattern", default="*")
def close_cmd(pattern: str) -> None:
    """Close the held connections whose host matches PATTERN (shell wildcards; default all).

    \b
    Examples:
      hostops connections close 'db*'
      hostops connections close
    """
    answer = _ask("close", pattern)
    if answer is None:
        click.echo("hostops: no connection keeper is running", err=True)
        return
    click.echo(f"closed {answer.closed} connection{'s' if answer.closed != 1 else ''}", err=True)


@connections_group.command("stop", context_settings=CONTEXT)
def stop_cmd() -> None:
    """Stop the keeper: every held connection is closed.

    \b
    Examples:
      hostops connections stop
    """
    answer = _ask("stop")
    if answer is None:
        click.echo("hostops: no connection keeper is running", err=True)
        return
    click.echo(f"keeper stopped ({len(answer.rows)} connection{'s' if len(answer.rows) != 1 else ''} closed)",
               err=True)
