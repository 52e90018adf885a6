"""The config file in the CLI: :func:`apply_config` (called by the group before any command
runs) and ``hostops config``, which prints the effective settings and where each came from.

click does the precedence: a flag, else the option's environment variable, else the
``default_map`` filled here from the config file, else the option's built-in default.
``ctx.get_parameter_source`` then says which one each value is.

Owns: loading the config for a run, the one "using config" line, the ``config`` command.
Must not import: hostops.cli.commands, hostops.cli.keys, hostops.cli's ``__init__`` (no cycle);
YAML or paramiko at import time.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from hostops.cli.options import (
    CONTEXT,
    connection_options,
    current_config,
    default_inventories,
    inventory_options,
    output_format_option,
    param_source,
    warn,
)


def apply_config(ctx: click.Context) -> None:
    """Read the config file once per run and make its values the commands' defaults.
    Files passed over (./hostops.yml not private) are one warning each; a ./hostops.yml that
    is read is named on stderr when stderr is a terminal (cron output stays clean)."""
    from hostops.config import default_map, load

    config = load()
    for message in config.warnings:
        warn(message)
    if config.found_as == "current directory" and _is_terminal(sys.stderr):
        click.echo(f"hostops: using config {config.path}", err=True)
    ctx.meta["hostops.config"] = config
    _give_env_vars(ctx.command)
    if config.values:
        ctx.default_map = _merge(default_map(ctx.command, config.param_defaults()), dict(ctx.default_map or {}))


def _give_env_vars(command: Any) -> None:
    """Every option a key feeds reads the key's environment variable, also one declared
    without it (keys forget --known-hosts): the environment must beat the file everywhere."""
    from hostops.config import KEYS

    env = {k.param: k.env for k in KEYS if k.env and k.param}
    for sub in getattr(command, "commands", {}).values():
        _give_env_vars(sub)
        for param in getattr(sub, "params", ()):
            if isinstance(param, click.Option) and param.name in env and not param.envvar:
                param.envvar = env[param.name]


def _merge(base: dict, wins: dict) -> dict:
    out = dict(base)
    for name, value in wins.items():
        out[name] = _merge(out.get(name) or {}, value) if isinstance(value, dict) else value
    return out


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


@click.command("config", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="One JSON object: the file read and every setting.")
@inventory_options
@connection_options
@output_format_option
@click.pass_context
def config_cmd(ctx: click.Context, as_json: bool, **_kw: Any) -> int:
    """Print the effective settings and where each came from: a flag, an environment
    variable, the config file (path:line) or the built-in default.

    Takes the same options as exec, to show what they would resolve to.

    \b
    hostops config
    hostops config -f 10 --json | jq .settings.forks
    HOSTOPS_CONFIG=/etc/hostops/cron.yml hostops config
    """
    from hostops.config import KEYS, load, user_config_path

    config = current_config() or load()
    settings = {key.name: _effective(ctx, key, config) for key in KEYS}
    searched = ["$HOSTOPS_CONFIG", os.path.join(".", "hostops.yml"), user_config_path(os.environ)]
    if as_json:
        click.echo(json.dumps({"config_file": config.path, "found_as": config.found_as or None,
                               "searched": searched, "ignored": config.warnings, "settings": settings}, indent=2))
        return 0
    from hostops.output import one_line

    if config.path:
        click.echo(f"# config file: {one_line(config.path)} ({config.found_as})")
    else:
        click.echo(f"# config file: none (looked for {', '.join(searched)})")
    for name, row in settings.items():
        value = row["value"]
        shown = ", ".join(value) if isinstance(value, list) else row["note"] if value is None else value
        if isinstance(shown, bool) or shown is None:
            shown = json.dumps(shown)
        where = {"flag": f"flag {row['where']}", "env": f"env {row['where']}"}.get(row["source"],
                                                                              row["where"] or row["source"])
        click.echo(f"{name + ':':<17}{one_line(str(shown)):<40} # {one_line(str(where))}")
    return 0


def _effective(ctx: click.Context, key: Any, config: Any) -> dict:
    """{"value", "source": flag|env|config|default, "where": flag, $VAR or file:line, "note"}."""
    if key.name == "inventory":
        value, source = ctx.params.get("inventories"), "flag"
        if not value:
            value, named_by = default_inventories()
            source = "env" if named_by.startswith("$") else "config" if named_by else "default"
    elif key.param in ctx.params:
        value, source = ctx.params[key.param], param_source(key.param) or "default"
    elif key.name in config.values:  # a key no option reads yet (e.g. color before --color exists)
        value, source = config.values[key.name], "config"
    else:
        value, source = None, "default"
    if isinstance(value, tuple):
        value = list(value)
    if value == []:
        value = None
    where: str | None = {"env": f"${key.env}", "config": config.where(key.name) if config.path else None,
                         "flag": _flag_of(ctx, key.param or "inventories")}.get(source)
    note = key.default if value is None else None
    if key.name == "state_dir" and value is None:
        from hostops.state import default_state_dir

        value, note = default_state_dir(), None
    return {"value": value, "source": source, "where": where, "note": note}


def _flag_of(ctx: click.Context, param: str | None) -> str | None:
    for p in ctx.command.params:
        if p.name == param and p.opts:
            return max(p.opts, key=len)
    return None
