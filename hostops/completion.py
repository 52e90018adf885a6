"""Shell completion for bash, zsh and fish, through click's own mechanism.

``hostops completion SHELL`` prints the script click generates for SHELL; the script calls
hostops back with ``_HOSTOPS_COMPLETE=SHELL_complete`` and the words typed so far, and click
answers with the candidates. On top of click's commands and options, ``-l/--limit`` completes
the host and group names of the inventory given by ``-i`` on the same command line (else the
implicit one, :func:`implicit_inventories`), and ``-i`` completes file names.

Completion runs at every TAB: it must never print an error or a traceback into the user's
prompt. A missing or broken inventory completes nothing.
Owns: the ``completion`` command, :func:`complete_limit`, :func:`complete_file`.
Must not import: hostops.cli (the CLI registers the command), YAML at import time.
"""
from __future__ import annotations

import os
import click
from click.shell_completion import CompletionItem, get_completion_class

SHELLS = ("bash", "zsh", "fish")
COMPLETE_VAR = "_HOSTOPS_COMPLETE"

#: No more candidates than this are offered (an inventory of 100,000 hosts stays usable).
MAX_CANDIDATES = 2000


def implicit_inventories() -> list[str]:
    """The inventory a command line without ``-i``/``-H`` uses, for completion and hints:
    ``$HOSTOPS_INVENTORY`` (FILE[:FILE...]), else the config file's ``inventory`` (the same
    order as :func:`hostops.cli.options.default_inventories`; completion runs before the
    group's callback loads the config, so it is read here). Any problem: none."""
    env = os.environ.get("HOSTOPS_INVENTORY", "")
    if env.strip():
        return [p for p in env.split(os.pathsep) if p]
    try:
        from hostops.config import load

        return list(load().values.get("inventory") or ())
    except Exception:  # noqa: BLE001  (a broken config file completes nothing, never a traceback at TAB)
        return []


def _names(ctx: click.Context) -> list[str]:
    """Host and group names of the inventory this command line names; [] on any failure."""
    params = ctx.params or {}
    # the words as typed: bash passes "~/hosts.yml" unexpanded
    paths = [os.path.expanduser(p) for p in params.get("inventories") or ()] or implicit_inventories()
    adhoc = list(params.get("adhoc_hosts") or ())
    if not paths and not adhoc:
        return []
    try:
        from hostops.inventory import Inventory
        from hostops.inventory_script import is_script

        if any(os.path.isdir(p) or is_script(p) for p in paths):
            return []  # a TAB never runs an inventory script (a directory may hold some)

        inv = Inventory.load(paths, adhoc)
        groups = [g for g in inv.groups if g not in ("all", "ungrouped")]
        return list(dict.fromkeys(["all"] + groups + list(inv.hosts)))
    except Exception:  # noqa: BLE001  (a broken inventory at a TAB: complete nothing, say nothing)
        return []


def complete_limit(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:  # noqa: ARG001
    """Candidates for ``-l``: names completing the last term of the pattern (after ``,`` or
    ``:``, keeping a leading ``&`` or ``!``), each with the pattern typed so far in front."""
    cut = max(incomplete.rfind(","), incomplete.rfind(":") if "[" not in incomplete else -1)
    head, term = incomplete[:cut + 1], incomplete[cut + 1:]
    sign = term[:1] if term[:1] in ("&", "!") else ""
    term = term[len(sign):]
    out = []
    for name in _names(ctx):
        if name.startswith(term):
            out.append(CompletionItem(head + sign + name))
            if len(out) >= MAX_CANDIDATES:
                break
    return out


def complete_file(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:  # noqa: ARG001
    """File names, completed by the shell itself (click's "file" type)."""
    return [CompletionItem(incomplete, type="file")]


def script(shell: str, cli: click.Command, prog_name: str = "hostops") -> str:
    """The completion script click generates for ``shell``."""
    cls = get_completion_class(shell)
    if cls is None:  # pragma: no cover - SHELLS are click's own
        raise click.BadParameter(f"no completion for {shell!r}; choose one of {', '.join(SHELLS)}")
    return cls(cli, {}, prog_name, COMPLETE_VAR).source()


COMPLETION_HELP = """Print the shell completion script for SHELL (bash, zsh or fish).

Completes commands, options, and the host and group names of -l/--limit from the inventory
given by -i on the same command line (else $HOSTOPS_INVENTORY).

\b
Install it once:
  bash:  hostops completion bash > ~/.local/share/bash-completion/completions/hostops
         (or add to ~/.bashrc:  eval "$(hostops completion bash)")
  zsh:   hostops completion zsh > ~/.zfunc/_hostops
         (with  fpath+=~/.zfunc; autoload -Uz compinit; compinit  in ~/.zshrc)
  fish:  hostops completion fish > ~/.config/fish/completions/hostops.fish
Open a new shell afterwards. Bash needs the bash-completion package for the first form.

\b
Example:
  hostops completion bash > ~/.local/share/bash-completion/completions/hostops
"""


@click.command("completion", help=COMPLETION_HELP,
               context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion_cmd(ctx: click.Context, shell: str) -> int:
    root = ctx.find_root()
    click.echo(script(shell, root.command, root.info_name or "hostops"), nl=False)
    return 0


__all__ = ["SHELLS", "complete_file", "complete_limit", "completion_cmd", "implicit_inventories", "script"]
