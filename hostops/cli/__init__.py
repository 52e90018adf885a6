"""The command line: a thin click layer over :mod:`hostops.api`.

The group and :func:`main`, the one place where library errors become one-line messages
and exit codes. The commands live in :mod:`hostops.cli.commands` and :mod:`hostops.cli.keys`
(which never import each other), their shared options in :mod:`hostops.cli.options`.
Must not import: paramiko or YAML at import time (``hostops --help`` stays fast).
"""
from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import click

from hostops import __version__
from hostops.cli import commands
from hostops.cli.cluster import cluster_group
from hostops.cli.config import apply_config, config_cmd
from hostops.cli.connections import connections_group
from hostops.cli.keys import keys_group
from hostops.cli.options import CONTEXT
from hostops.cli.report import report_cmd
from hostops.completion import completion_cmd
from hostops.manpage import man_cmd
from hostops.errors import HostopsError
from hostops.exitcodes import HELP_TEXT, ExitCode


@click.group(context_settings=CONTEXT, epilog=HELP_TEXT)
@click.version_option(__version__, "-V", "--version", prog_name="hostops")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Run commands on many hosts over SSH, in parallel.

    \b
    hostops exec "uptime" -i hosts.yml -l web
    hostops exec "df -h /" -i hosts.yml --json --log /var/log/hostops.jsonl
    hostops put app.conf /etc/app/app.conf -i hosts.yml -l web --mode 0644
    hostops get /var/log/app.log ./logs -i hosts.yml
    hostops script ./check.sh -i hosts.yml -- --verbose
    hostops run runbooks/rolling-restart.yml -i hosts.yml --dry-run
    hostops inventory -i hosts.yml --graph
    hostops config

    Defaults come from flags, else HOSTOPS_* environment variables, else a config file
    ($HOSTOPS_CONFIG, ./hostops.yml, ~/.config/hostops/config.yml): see hostops config.
    """
    apply_config(ctx)

for _command in (commands.exec_cmd, commands.put_cmd, commands.get_cmd, commands.script_cmd, commands.run_cmd,
                 commands.inventory_cmd, keys_group, report_cmd, config_cmd, connections_group):
    cli.add_command(_command)
cli.add_command(completion_cmd)  # hostops completion bash|zsh|fish (hostops/completion.py)
cli.add_command(man_cmd)         # hostops man (hostops/manpage.py)
cli.add_command(cluster_group)   # hostops cluster scheduler|worker (hostops/cli/cluster.py)


# ------------------------------------------------------------------ entry point
def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: every error becomes one line on stderr and a documented exit code.
    stdout and stderr are guarded first: a closed pipe or a full disk under them never
    becomes an internal error (see _watch_stdout); a reader gone from stdout exits 141."""
    from hostops.stdstreams import guard_std_streams, reader_gone, stream_error

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
