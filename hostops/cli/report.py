"""``hostops report LOG... [-o FILE]``: a run log as one self-contained HTML page.

Owns: the click command (registered on the group by :mod:`hostops.cli`).
Must not import: the other command modules, paramiko or YAML (nothing connects anywhere).
"""
from __future__ import annotations

import sys

import click

from hostops.cli.options import CONTEXT, SIZE
from hostops.report import DEFAULT_MAX_OUTPUT

EPILOG = ("Exit codes: 0 the report was written; 2 a log cannot be read or holds no hostops record, or the "
          "output file cannot be written (a symbolic link, another user's file).")


@click.command("report", context_settings=CONTEXT, epilog=EPILOG)
@click.argument("logs", nargs=-1, required=True, metavar="LOG...")
@click.option("-o", "--output", "output", metavar="FILE", default=None,
              help="Where to write the page (0600, replaced atomically). Default: LOG.html beside the first "
                   "log; '-' for standard output.")
@click.option("--max-output", type=SIZE, default=f"{DEFAULT_MAX_OUTPUT // 1024}K", show_default=True, metavar="SIZE",
              help="Output shown per host and stream (K/M suffixes); longer output is cut, and the page says so.")
def report_cmd(logs: tuple, output: str | None, max_output: int) -> int:
    """Turn --log files into one HTML page: timeline, summary, folded outputs.

    Reads JSON-lines logs written by --log (one run or several per file; '-' reads standard
    input) and writes a page that needs no network to view: a per-host timeline coloured by
    status, each run's summary, identical outputs folded with their host lists (failures first)
    and, for runbooks, the host × step table. Lines that are not log records are skipped and
    counted on the page.

    \b
    hostops exec "uptime" -i hosts.yml --log run.jsonl
    hostops report run.jsonl                 # writes run.jsonl.html
    hostops report a.jsonl b.jsonl -o week.html
    """
    from hostops.report import read_logs
    from hostops.reporthtml import default_output, render, write_report

    data = read_logs(logs, max_output)
    page = render(data)
    target = output or default_output(list(logs))
    if target == "-":
        from hostops.stdstreams import stream_error

        sys.stdout.buffer.write(page.encode("utf-8", errors="replace"))
        sys.stdout.flush()
        if stream_error("stdout") is not None:  # the reader went away (| head): main() says 141, nothing more
            return 0
    else:
        write_report(target, page)
    runs = len(data.runs)
    hosts = sum(len(r.host_names()) for r in data.runs)
    skipped = f", {data.skipped_count} line(s) skipped (not log records; listed on the page)" \
        if data.skipped_count else ""
    where = "standard output" if target == "-" else target
    click.echo(f"hostops: report of {runs} run{'s' if runs != 1 else ''} ({hosts} host{'s' if hosts != 1 else ''}) "
               f"written to {where}{skipped}", err=True)
    return 0
