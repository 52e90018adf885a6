"""The man page and the per-command help (issue 14): the shipped hostops(1) is the page the CLI
generates today (a stale page fails here), it is valid roff that groff renders without a
warning, it is packaged, and every command's --help carries an example."""
from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner
from conftest import ROOT

from hostops import __version__, manpage
from hostops.cli import cli

pytestmark = pytest.mark.timeout(120)


def all_commands(group=cli, path="hostops"):
    """(command path, command) for every command and group under the root, the root included."""
    yield path, group
    if isinstance(group, click.Group):
        for name in sorted(group.commands):
            yield from all_commands(group.commands[name], f"{path} {name}")


def test_the_shipped_page_is_the_generated_one():
    with open(manpage.PAGE, encoding="utf-8") as fh:
        shipped = fh.read()
    assert shipped == manpage.render(cli, __version__), (
        "hostops/data/hostops.1 is stale: regenerate it with  python -m hostops man --generate > hostops/data/hostops.1")


def test_the_page_documents_every_command_and_option():
    page = manpage.render(cli, __version__)
    for path, command in all_commands():
        if path != "hostops":
            assert f".SS {manpage.esc(path)}\n" in page, path
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                assert manpage.esc(param.opts[-1]) in page, (path, param.opts)
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "EXIT STATUS", "ENVIRONMENT", "FILES"):
        assert f"\n.SH {section}\n" in page


def test_the_page_is_plain_roff():
    page = manpage.render(cli, __version__)
    macros = {".TH", ".SH", ".SS", ".PP", ".TP", ".RS", ".RE", ".nf", ".fi"}
    for number, line in enumerate(page.splitlines(), 1):
        assert line.isascii(), (number, line)
        if line[:1] in (".", "'"):
            assert line.split(" ", 1)[0] in macros, (number, line)
    assert manpage.esc(".hidden -x \\y") == "\\&.hidden \\-x \\ey"
    assert manpage.esc("a … b") == "a \\[u2026] b"


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed (man-db's renderer)")
def test_groff_renders_the_page_without_warnings():
    proc = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", manpage.PAGE], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    text = subprocess.run(["groff", "-man", "-Tutf8", manpage.PAGE], capture_output=True, text=True,
                          timeout=60).stdout
    plain = re.sub(r".\x08", "", text)  # overstrike bold/underline
    assert "hostops keys accept -i hosts.yml -l 'web0*' --fingerprint SHA256:" in plain.replace("\u2010", "-")


def test_man_command_prints_the_page_and_its_path():
    runner = CliRunner()
    result = runner.invoke(cli, ["man", "--path"])
    assert result.exit_code == 0 and result.output.strip() == manpage.PAGE and os.path.isfile(manpage.PAGE)
    result = runner.invoke(cli, ["man"])  # not a terminal: the roff source
    with open(manpage.PAGE, encoding="utf-8") as fh:
        assert result.exit_code == 0 and result.output == fh.read()


def test_the_page_is_packaged_and_installed_in_man1():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    assert "data/hostops.1" in cfg["options.package_data"]["hostops"]
    assert cfg["options.data_files"]["share/man/man1"].strip() == "hostops/data/hostops.1"


def test_man_generate_prints_the_page_of_this_tree():
    proc = subprocess.run([sys.executable, "-m", "hostops", "man", "--generate"], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == manpage.render(cli, __version__)


# ------------------------------------------------------------------ an example in every --help
@pytest.mark.parametrize("path", [p for p, _c in all_commands()])
def test_every_help_has_an_example(path):
    args = path.split()[1:] + ["--help"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    lines = [line.strip() for line in result.output.splitlines()]
    examples = [line for line in lines if line == path or line.startswith(path + " ")]
    # "hostops keys" lists its subcommands' examples; a command shows itself in use
    assert examples, f"`{path} --help` shows no example line starting with {path!r}"
