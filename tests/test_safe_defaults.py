"""Issue 14, "Safer defaults for careless commands": no inventory is exit 2 (never a silent run
on this machine), --sudo-user without --sudo is refused, ``exec ""`` is refused, and
``hostops exec echo hello`` joins its words as pdsh and clush do.

Through the real CLI in a subprocess (cwd = the isolated HOME); the word joining also over the
lab's sshd."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.timeout(180)

HINT = "no inventory given: use -i FILE or -H HOST, set HOSTOPS_INVENTORY"


@pytest.fixture
def local_inv(tmp_path):
    path = tmp_path / "local.yml"
    path.write_text("all:\n  hosts:\n    one: {ansible_connection: local}\n    two: {ansible_connection: local}\n")
    return str(path)


def one_error_line(run) -> str:
    lines = [ln for ln in run.err.splitlines() if ln.strip()]
    assert len(lines) == 1, run
    assert lines[0].startswith("hostops: error: "), run
    return lines[0]


# ------------------------------------------------------------------ no inventory: exit 2
@pytest.mark.parametrize("command", [
    ["exec", "touch {marker}"],
    ["exec", "touch {marker}", "-l", "all"],
    ["put", "{src}", "{marker}"],
    ["get", "/etc/hostname", "{marker}"],
    ["script", "{script}"],
    ["run", "{book}"],
    ["inventory"],
    ["keys", "scan"],
])
def test_no_inventory_is_exit_2_with_a_hint_and_nothing_runs(hostops, tmp_path, command):
    """Before issue 14 these ran on this machine through the embedded localhost inventory."""
    marker = tmp_path / "marker"
    src = tmp_path / "src.txt"
    src.write_text("x\n")
    script = tmp_path / "s.sh"
    script.write_text(f"#!/bin/sh\ntouch {marker}\n")
    book = tmp_path / "book.yml"
    book.write_text(f"name: b\nsteps:\n  - name: touch\n    exec: touch {marker}\n")
    args = [a.format(marker=marker, src=src, script=script, book=book) for a in command]
    run = hostops(*args)
    assert run.code == 2, run
    assert HINT in one_error_line(run)
    assert "-l localhost" in run.err  # the way to this machine, named
    assert run.out == ""
    assert not marker.exists()


def test_inventory_from_environment_still_works(hostops, local_inv):
    run = hostops("exec", "echo via-env", "--json", env={"HOSTOPS_INVENTORY": local_inv})
    assert run.code == 0, run
    assert sorted(r["host"] for r in run.json_lines()) == ["one", "two"]


def test_limit_localhost_alone_names_the_embedded_inventory(hostops, tmp_path):
    marker = tmp_path / "marker"
    run = hostops("exec", f"touch {marker}", "-l", "localhost", "--json")
    assert run.code == 0, run
    (line,) = run.json_lines()
    assert line["host"] == "localhost" and line["status"] == "ok"
    assert marker.exists()
    listed = hostops("inventory", "-l", "localhost", "--json")
    assert listed.code == 0, listed
    assert '"connection": "local"' in listed.out


def test_adhoc_localhost_is_an_ssh_host_not_the_embedded_one(hostops):
    """-H always names an SSH host (as pssh -H does); only -l localhost without inventory
    is this machine without SSH."""
    run = hostops("inventory", "-H", "localhost", "--json")
    assert run.code == 0, run
    assert '"connection": "ssh"' in run.out and '"connection": "local"' not in run.out


# ------------------------------------------------------------------ --sudo-user needs --sudo
@pytest.mark.parametrize("command", [["exec", "touch {marker}"], ["put", "{src}", "{marker}"],
                                     ["script", "{script}"], ["keys", "scan"]])
def test_sudo_user_without_sudo_is_refused(hostops, tmp_path, local_inv, command):
    marker = tmp_path / "marker"
    src = tmp_path / "src.txt"
    src.write_text("x\n")
    script = tmp_path / "s.sh"
    script.write_text(f"#!/bin/sh\ntouch {marker}\n")
    args = [a.format(marker=marker, src=src, script=script) for a in command]
    run = hostops(*args, "-i", local_inv, "--sudo-user", "nobody")
    assert run.code == 2, run
    assert "--sudo-user needs --sudo" in one_error_line(run)
    assert not marker.exists()


def test_sudo_user_with_sudo_passes_the_check(hostops, local_inv):
    """With --sudo the option is used (tests/test_trust.py runs it for real over SSH); here it
    only has to get past the usage check, to the next error: the selection."""
    run = hostops("exec", "true", "-i", local_inv, "--sudo", "--sudo-user", "nobody", "-l", "nosuchhost")
    assert run.code == 2, run
    assert "no host matched 'nosuchhost'" in run.err and "--sudo-user" not in run.err


def test_run_accepts_sudo_user_when_a_step_uses_sudo(hostops, tmp_path, local_inv):
    """In a runbook, ``sudo: true`` on a step is what --sudo is to exec: --sudo-user names the
    user those steps run as, so it is accepted without --sudo there, and only there."""
    with_sudo = tmp_path / "with.yml"
    with_sudo.write_text("name: w\nsteps:\n  - name: plain\n    exec: id -un\n"
                         "  - name: root\n    exec: id -un\n    sudo: true\n")
    without = tmp_path / "without.yml"
    without.write_text("name: wo\nsteps:\n  - name: plain\n    exec: id -un\n")
    ok = hostops("run", str(with_sudo), "-i", local_inv, "--sudo-user", "nobody", "--dry-run")
    assert ok.code == 0, ok
    refused = hostops("run", str(without), "-i", local_inv, "--sudo-user", "nobody", "--dry-run")
    assert refused.code == 2, refused
    assert "--sudo-user needs --sudo" in one_error_line(refused)


# ------------------------------------------------------------------ exec's command
@pytest.mark.parametrize("command", ["", "   ", "\t\n"])
def test_empty_command_is_refused(hostops, local_inv, command):
    run = hostops("exec", command, "-i", local_inv)
    assert run.code == 2, run
    assert "exec needs a command to run" in one_error_line(run)
    assert run.out == ""


def test_no_command_at_all_is_a_usage_error(hostops, local_inv):
    run = hostops("exec", "-i", local_inv)
    assert run.code == 2, run
    assert "Missing argument 'COMMAND...'" in run.err


def test_unquoted_words_are_joined_like_pdsh(hostops, local_inv):
    run = hostops("exec", "echo", "hello", "big", "world", "-i", local_inv, "--json")
    assert run.code == 0, run
    assert {r["stdout"] for r in run.json_lines()} == {"hello big world\n"}


def test_options_after_the_words_are_still_options(hostops, local_inv):
    run = hostops("exec", "echo", "tail", "-i", local_inv, "-l", "one", "--json")
    assert run.code == 0, run
    (line,) = run.json_lines()
    assert line["host"] == "one" and line["stdout"] == "tail\n"


def test_double_dash_passes_words_that_start_with_a_dash(hostops, local_inv):
    run = hostops("exec", "-i", local_inv, "-l", "two", "--json", "--", "printf", "%s,", "-l", "--json")
    assert run.code == 0, run
    (line,) = run.json_lines()
    assert line["host"] == "two" and line["stdout"] == "-l,--json,"


def test_one_quoted_command_is_unchanged(hostops, local_inv):
    """Joining is only for several words: one argument is the command exactly as given."""
    run = hostops("exec", "printf '%s\\n' 'a  b'", "-i", local_inv, "-l", "one", "--json")
    assert run.code == 0, run
    (line,) = run.json_lines()
    assert line["stdout"] == "a  b\n"


def test_joined_words_over_ssh(hostops, inventory, known_hosts):
    run = hostops("exec", "echo", "joined", "over", "ssh", "-i", inventory(3), "--known-hosts", known_hosts,
                  "--json")
    assert run.code == 0, run
    lines = run.json_lines()
    assert len(lines) == 3 and {r["stdout"] for r in lines} == {"joined over ssh\n"}
