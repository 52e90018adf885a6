"""Shell completion (issue 14): the completion entry point invoked as bash, zsh and fish invoke
it (``_HOSTOPS_COMPLETE=…_complete`` with the words typed so far, in a subprocess), and the bash
script sourced by a real bash, its completion function run as bash runs it at a TAB."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys

import click
import pytest
from conftest import ROOT

pytestmark = pytest.mark.timeout(120)

INVENTORY = """\
all:
  children:
    web:
      hosts:
        web01: {ansible_host: 10.0.0.1}
        web02: {ansible_host: 10.0.0.2}
    db:
      hosts:
        db1: {ansible_host: 10.0.1.1}
"""


@pytest.fixture
def inv(tmp_path):
    path = tmp_path / "hosts.yml"
    path.write_text(INVENTORY)
    return str(path)


def _env(isolated_home, extra=None):
    env = dict(os.environ, HOME=str(isolated_home), PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("HOSTOPS_INVENTORY", None)
    env.update(extra or {})
    return env


@pytest.fixture
def complete(isolated_home):
    """``complete(shell, line, env=None) -> (values, proc)``: what SHELL's completion script gets
    back from hostops when the user pressed TAB at the end of ``line``."""
    def run(shell: str, line: str, env=None):
        words = shlex.split(line)
        if line.endswith(" "):
            words.append("")
        if shell == "fish":  # fish passes the line so far and the token being completed
            comp = {"COMP_WORDS": line, "COMP_CWORD": words[-1]}
        else:
            comp = {"COMP_WORDS": line, "COMP_CWORD": str(len(words) - 1)}
        proc = subprocess.run([sys.executable, "-m", "hostops"], capture_output=True, text=True, timeout=60,
                              env=_env(isolated_home, {"_HOSTOPS_COMPLETE": f"{shell}_complete", **comp,
                                                       **(env or {})}))
        if shell == "zsh":  # type, value, description: three lines per candidate
            lines = proc.stdout.splitlines()
            values = [(lines[i], lines[i + 1]) for i in range(0, len(lines) - 2, 3)]
        else:  # type,value[\thelp]
            values = [tuple(item.split("\t")[0].split(",", 1)) for item in proc.stdout.splitlines() if item]
        return values, proc
    return run


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_limit_completes_hosts_and_groups_of_the_given_inventory(complete, inv, shell):
    values, proc = complete(shell, f"hostops exec uptime -i {inv} -l ")
    assert proc.returncode == 0 and proc.stderr == "", proc
    assert sorted(v for _t, v in values) == ["all", "db", "db1", "web", "web01", "web02"]
    values, _ = complete(shell, f"hostops exec uptime -i {inv} -l web0")
    assert [v for _t, v in values] == ["web01", "web02"]
    values, _ = complete(shell, f"hostops keys scan -i {inv} -l web01,d")
    assert [v for _t, v in values] == ["web01,db", "web01,db1"]
    values, _ = complete(shell, f"hostops put a /tmp/a -i {inv} -l web:!w")
    assert [v for _t, v in values] == ["web:!web", "web:!web01", "web:!web02"]


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_commands_and_options_complete(complete, shell):
    values, proc = complete(shell, "hostops ")
    names = {v for _t, v in values}
    assert {"exec", "put", "get", "script", "run", "inventory", "keys", "completion", "man"} <= names, proc
    values, _ = complete(shell, "hostops keys ")
    assert {v for _t, v in values} == {"scan", "accept", "forget"}
    values, _ = complete(shell, "hostops completion ")
    assert {v for _t, v in values} == {"bash", "zsh", "fish"}


def test_inventory_from_the_environment_and_file_names_for_i(complete, inv, isolated_home):
    (isolated_home / "mine.yml").write_text(INVENTORY)
    values, _ = complete("bash", "hostops exec uptime -i ~/mine.yml -l db")  # as typed: bash leaves ~ as is
    assert [v for _t, v in values] == ["db", "db1"]
    values, _ = complete("bash", "hostops exec uptime -l d", env={"HOSTOPS_INVENTORY": inv})
    assert [v for _t, v in values] == ["db", "db1"]
    values, _ = complete("bash", "hostops exec uptime -l d")  # no inventory named: nothing to offer
    assert values == []
    values, _ = complete("bash", "hostops exec uptime -i ho")
    assert values == [("file", "ho")]  # the shell completes file names itself


@pytest.mark.parametrize("content", ["all: [unclosed\n", "all:\n  hosts:\n    a: {ansible_port: 'x'}\n  bad: 1\n"])
@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_a_broken_or_missing_inventory_completes_nothing_quietly(complete, tmp_path, content, shell):
    broken = tmp_path / "broken.yml"
    broken.write_text(content)
    for path in (str(broken), str(tmp_path / "missing.yml")):
        values, proc = complete(shell, f"hostops exec uptime -i {path} -l ")
        assert proc.returncode == 0, proc
        assert proc.stderr == "" and values == [], proc


@pytest.mark.parametrize("shell, marker", [("bash", "complete -o nosort -F _hostops_completion hostops"),
                                           ("zsh", "#compdef hostops"),
                                           ("fish", "complete --no-files --command hostops")])
def test_completion_command_prints_clicks_script(isolated_home, shell, marker):
    proc = subprocess.run([sys.executable, "-m", "hostops", "completion", shell], capture_output=True, text=True,
                          timeout=60, env=_env(isolated_home))
    assert proc.returncode == 0, proc
    assert marker in proc.stdout and "_HOSTOPS_COMPLETE" in proc.stdout.upper()
    helptext = subprocess.run([sys.executable, "-m", "hostops", "completion", "--help"], capture_output=True,
                              text=True, timeout=60, env=_env(isolated_home)).stdout
    assert "~/.config/fish/completions/hostops.fish" in helptext and "eval \"$(hostops completion bash)\"" in helptext


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash on this machine")
def test_bash_sources_the_script_registers_it_and_completes_hosts(isolated_home, tmp_path, inv):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    shim = bindir / "hostops"
    shim.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m hostops \"$@\"\n")
    shim.chmod(0o755)
    script = f"""
set -e
source <(hostops completion bash)
complete -p hostops
COMP_WORDS=(hostops exec uptime -i {shlex.quote(inv)} -l web)
COMP_CWORD=6
_hostops_completion hostops
printf 'reply:%s\\n' "${{COMPREPLY[@]}}"
"""
    proc = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], capture_output=True, text=True,
                          timeout=60, env=_env(isolated_home, {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}))
    assert proc.returncode == 0, proc
    lines = proc.stdout.splitlines()
    assert lines[0] == "complete -o nosort -F _hostops_completion hostops", proc
    assert sorted(line[6:] for line in lines[1:]) == ["web", "web01", "web02"], proc


def test_a_tab_never_runs_an_inventory_script(tmp_path):
    """Completion reads inventory files, but an executable inventory (or a directory, which may
    hold one) is code: pressing TAB must not run it."""
    import stat

    from hostops.completion import _names

    marker = tmp_path / "ran"
    script = tmp_path / "inv.py"
    script.write_text(f"#!/bin/sh\ntouch {marker}\necho '{{\"web\": {{\"hosts\": [\"w1\"]}}}}'\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    ctx = click.Context(click.Command("x"))
    ctx.params = {"inventories": (str(script),), "adhoc_hosts": ()}
    assert _names(ctx) == []
    assert not marker.exists()
    plain = tmp_path / "inv.yml"
    plain.write_text("web:\n  hosts:\n    w1:\n")
    ctx.params = {"inventories": (str(plain),), "adhoc_hosts": ()}
    assert "w1" in _names(ctx) and "web" in _names(ctx)
