"""The man page, generated from the click command tree: hostops(1) in roff.

Every command's usage, help text (examples included) and options come from the same click
objects that ``--help`` prints, so the page cannot say something the CLI does not do.
``hostops man --generate > hostops/data/hostops.1`` regenerates the shipped page
(tests/test_manpage.py fails when it is stale); ``hostops man`` shows it.

A few lines of roff written here rather than a dependency: headings (.SH/.SS), paragraphs
(.PP), option lists (.TP), and click's ``\\b`` blocks kept as written (.nf/.fi).
Owns: :func:`render`, the ``man`` command. Must not import: hostops.cli (the CLI registers
the command; the command finds the group through its click context).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator

import click

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "hostops.1")

ENVIRONMENT = [
    ("HOSTOPS_INVENTORY", "The inventory used when no -i or -H is given."),
    ("HOSTOPS_START_METHOD", "The multiprocessing start method (fork, spawn, forkserver), as --start-method."),
    ("HOSTOPS_DEBUG", "Set to 1 to see the traceback of an internal error."),
    ("NO_COLOR", "Set to anything: no colour in the output."),
    ("_HOSTOPS_COMPLETE", "Used by the shell completion scripts (see hostops completion)."),
]
FILES = [
    ("~/.ssh/known_hosts", "Host keys checked before any credential is sent; new keys go here unless "
                           "--known-hosts names another file. /etc/ssh/ssh_known_hosts is read too."),
    ("~/.ssh/config", "Read as OpenSSH does (ssh -G): HostName, Port, User, IdentityFile, ProxyJump, "
                      "StrictHostKeyChecking, UserKnownHostsFile, HashKnownHosts."),
]


def esc(text: str) -> str:
    """Text safe in a roff line: backslashes, minus signs, and a leading dot or quote."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    text = "".join(ch if ord(ch) < 128 else f"\\[u{ord(ch):04X}]" for ch in text)  # groff without preconv
    return "\\&" + text if text[:1] in (".", "'") else text


def _paragraphs(text: str) -> Iterator[str]:
    """click help text → roff: plain paragraphs re-flowed, ``\\b`` blocks kept line by line."""
    import inspect

    for block in re.split(r"\n\s*\n", inspect.cleandoc(text or "")):
        lines = block.splitlines()
        if not lines:
            continue
        if lines[0].strip() == "\b":
            yield ".PP\n.nf\n" + "\n".join(esc(line) for line in lines[1:]) + "\n.fi"
        else:
            yield ".PP\n" + esc(" ".join(line.strip() for line in lines))


def _options(ctx: click.Context) -> Iterator[str]:
    for param in ctx.command.get_params(ctx):
        if not isinstance(param, click.Option):  # arguments are in the usage line
            continue
        record = param.get_help_record(ctx)
        if record is None:
            continue
        names, help_text = record
        yield f".TP\n\\fB{esc(names)}\\fR\n{esc(help_text) if help_text else ''}".rstrip()


def _commands(ctx: click.Context) -> Iterator[click.Context]:
    """Every command under ``ctx``, depth first, in the order ``--help`` lists them."""
    command = ctx.command
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is None or sub.hidden:
                continue
            sub_ctx = click.Context(sub, info_name=name, parent=ctx, **sub.context_settings)
            yield sub_ctx
            yield from _commands(sub_ctx)


def render(cli: click.Command, version: str, prog_name: str = "hostops") -> str:
    """The whole page (deterministic: no date, so the committed copy can be compared)."""
    from hostops.exitcodes import HELP_TEXT

    root = click.Context(cli, info_name=prog_name, **cli.context_settings)
    out = [f'.TH HOSTOPS 1 "" "hostops {esc(version)}" "User Commands"',
           ".SH NAME", f"{prog_name} \\- {esc((cli.help or '').strip().splitlines()[0])}",
           ".SH SYNOPSIS", f"\\fB{prog_name}\\fR \\fICOMMAND\\fR [\\fIOPTIONS\\fR] [\\fIARGS\\fR]...",
           ".SH DESCRIPTION"]
    out += list(_paragraphs("\n".join((cli.help or "").splitlines()[1:])))
    out += [".PP", "Every command prints its own help with \\fB\\-h\\fR or \\fB\\-\\-help\\fR."]
    out += [".SH OPTIONS"] + list(_options(root))
    out.append(".SH COMMANDS")
    for ctx in _commands(root):
        path = ctx.command_path
        out.append(f".SS {esc(path)}")
        pieces = ctx.command.collect_usage_pieces(ctx)
        out.append(f".PP\n\\fB{esc(path)}\\fR {esc(' '.join(pieces))}")
        out += list(_paragraphs(ctx.command.help or ""))
        options = list(_options(ctx))
        if options:
            out += [".PP", "Options:", ".RS"] + options + [".RE"]
    out += [".SH EXIT STATUS"] + list(_paragraphs(HELP_TEXT))
    out.append(".SH ENVIRONMENT")
    out += [f".TP\n\\fB{esc(name)}\\fR\n{esc(text)}" for name, text in ENVIRONMENT]
    out.append(".SH FILES")
    out += [f".TP\n\\fI{esc(name)}\\fR\n{esc(text)}" for name, text in FILES]
    out += [".SH SEE ALSO", "\\fBssh\\fR(1), \\fBssh_config\\fR(5), \\fBsshd\\fR(8), \\fBssh\\-keygen\\fR(1), "
            "\\fBansible\\fR(1), \\fBpdsh\\fR(1), \\fBclush\\fR(1)"]
    return "\n".join(out) + "\n"


MAN_HELP = """Show this manual page (hostops(1)).

On a terminal, with man installed, the page opens in man; otherwise its roff source is
printed (hostops man | man -l -). The page is also installed as share/man/man1/hostops.1
beside the package, so "man hostops" works once that directory is on your MANPATH.

\b
Examples:
  hostops man
  hostops man --path          # where the page is: man -l "$(hostops man --path)"
"""


@click.command("man", help=MAN_HELP,
               context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--path", "show_path", is_flag=True, help="Print the page's file name and exit.")
@click.option("--generate", is_flag=True, help="Print the page generated from this hostops's commands (how "
              "hostops/data/hostops.1 is made: hostops man --generate > hostops/data/hostops.1).")
@click.pass_context
def man_cmd(ctx: click.Context, show_path: bool, generate: bool) -> int:
    if show_path:
        click.echo(PAGE)
        return 0
    if generate:
        from hostops import __version__

        root = ctx.find_root()
        click.echo(render(root.command, __version__, root.info_name or "hostops"), nl=False)
        return 0
    man = shutil.which("man")
    if man and sys.stdout.isatty():
        return subprocess.call([man, "-l", PAGE])
    with open(PAGE, encoding="utf-8") as fh:
        click.echo(fh.read(), nl=False)
    return 0
