"""The CLI's option and usage contracts, in-process with click's CliRunner (fast: no
interpreter start, no SSH). Everything goes through :func:`hostops.cli.main`, the one
place where errors become exit codes. Signals and closed pipes stay in subprocess tests
(test_cli.py, test_faults.py, test_hardening_io.py)."""
from __future__ import annotations

import json
import os

import click
import pytest
from click.testing import CliRunner

from hostops import __version__
from hostops.cli import main

pytestmark = pytest.mark.timeout(120)

COMMANDS = ["exec", "put", "get", "script", "run", "inventory", "keys", "keys scan", "keys accept", "keys forget"]
FAST = ["--start-method", "fork", "--processes", "1", "-f", "2", "--no-progress"]


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                 "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def _entry(args) -> None:
    main(list(args))  # exits: CliRunner records the code


@pytest.fixture
def hostops(tmp_path):
    """``hostops(*args) -> click.testing.Result``, with a private HOME and state directory."""
    home = tmp_path / "runner-home"
    home.mkdir(exist_ok=True)
    env = {"HOME": str(home), "XDG_STATE_HOME": str(home / "state"), "HOSTOPS_INVENTORY": None,
           "HOSTOPS_START_METHOD": None, "NO_COLOR": "1", "SSH_AUTH_SOCK": None}

    def run(*args: str, input: str = None):
        return CliRunner().invoke(_entry, list(args), env=env, input=input, catch_exceptions=False)
    return run


@pytest.fixture
def local_inv(tmp_path):
    """Two hosts run on this machine (connection: local): no SSH needed."""
    path = tmp_path / "local.yml"
    path.write_text("all:\n  hosts:\n    one: {ansible_connection: local}\n    two: {ansible_connection: local}\n")
    return str(path)


# ------------------------------------------------------------------ usage: exit 2, nothing run
def test_unknown_option_is_exit_2(hostops):
    result = hostops("exec", "true", "--no-such-option")
    assert result.exit_code == 2, result.output
    assert "No such option" in result.output


def test_unknown_command_is_exit_2(hostops):
    assert hostops("frobnicate").exit_code == 2


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_each_command(hostops, command):
    result = hostops(*command.split(), "--help")
    assert result.exit_code == 0, result.output
    assert f"Usage: hostops {command}" in result.output


def test_version(hostops):
    result = hostops("--version")
    assert result.exit_code == 0
    assert result.output.strip() == f"hostops, version {__version__}"


@pytest.mark.parametrize("modes", [("--json", "-b"), ("--stream", "-q"), ("--json", "--stream"), ("-b", "-q")])
def test_output_modes_are_mutually_exclusive(hostops, local_inv, tmp_path, modes):
    marker = tmp_path / "marker"
    result = hostops("exec", f"touch {marker}", "-i", local_inv, *modes, *FAST)
    assert result.exit_code == 2, result.output
    assert "cannot be combined" in result.output
    assert not marker.exists()


@pytest.mark.parametrize("args, needle", [
    (["--stream"], "--stream does not apply"),
    (["-o", "out"], "-o/--outdir does not apply"),
    (["--json", "-q"], "cannot be combined"),
])
def test_keys_scan_refuses_output_modes_without_meaning(hostops, local_inv, args, needle):
    result = hostops("keys", "scan", "-i", local_inv, *args)
    assert result.exit_code == 2, result.output
    assert needle in result.output


@pytest.mark.parametrize("args, needle", [
    (["--batch", "0"], "must be at least 1"),
    (["--batch", "x"], "must be a number or a percentage"),
    (["--batch", "150%"], "more than 100%"),
    (["--max-fail", "-1"], "must be a number or a percentage"),
    (["--canary", "0"], "--canary"),
])
def test_bad_rollout_options_are_exit_2(hostops, local_inv, tmp_path, args, needle):
    marker = tmp_path / "marker"
    result = hostops("exec", f"touch {marker}", "-i", local_inv, *args, *FAST)
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert not marker.exists()


def test_stdin_with_a_sudo_password_is_one_line_exit_2(hostops, local_inv, tmp_path):
    data = tmp_path / "input"
    data.write_text("x\n")
    result = hostops("exec", "cat", "-i", local_inv, "--stdin", str(data), "--sudo", "--sudo-pass-env", "NOPE",
                     *FAST)
    assert result.exit_code == 2, result.output
    assert "hostops: error:" in result.output and "--stdin" in result.output


def test_get_with_sudo_is_exit_2(hostops, local_inv, tmp_path):
    result = hostops("get", "/etc/hostname", str(tmp_path / "d"), "-i", local_inv, "--sudo", *FAST)
    assert result.exit_code == 2, result.output
    assert "get does not support --sudo" in result.output


def test_no_host_matched_is_exit_2(hostops, local_inv):
    result = hostops("exec", "true", "-i", local_inv, "-l", "nosuch")
    assert result.exit_code == 2
    assert "no host matched 'nosuch'" in result.output


def test_run_start_at_unknown_step_is_exit_2(hostops, local_inv, tmp_path):
    book = tmp_path / "book.yml"
    book.write_text("name: b\nsteps:\n  - name: a\n    exec: 'true'\n")
    result = hostops("run", str(book), "-i", local_inv, "--start-at", "zzz")
    assert result.exit_code == 2, result.output
    assert "no such step" in result.output


# ------------------------------------------------------------------ the lock: exit 6, nothing run
def test_lock_held_is_exit_6_and_nothing_runs(hostops, local_inv, tmp_path):
    from hostops.runlock import RunLock

    marker = tmp_path / "marker"
    lock = RunLock(str(tmp_path / "run.lock")).acquire()
    try:
        result = hostops("exec", f"touch {marker}", "-i", local_inv, "--lock", str(tmp_path / "run.lock"), *FAST)
    finally:
        lock.release()
    assert result.exit_code == 6, result.output
    assert "holds the lock" in result.output
    assert not marker.exists()


def test_lock_free_runs_and_is_released(hostops, local_inv, tmp_path):
    from hostops.runlock import RunLock

    result = hostops("exec", "true", "-i", local_inv, "--lock", str(tmp_path / "run.lock"), *FAST)
    assert result.exit_code == 0, result.output
    RunLock(str(tmp_path / "run.lock")).acquire().release()  # not held any more


# ------------------------------------------------------------------ running (connection: local)
def test_exec_local_ok_is_0(hostops, local_inv):
    result = hostops("exec", "echo hi", "-i", local_inv, "--json", *FAST)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted((d["host"], d["status"], d["stdout"]) for d in lines) == [("one", "ok", "hi\n"),
                                                                            ("two", "ok", "hi\n")]
    assert "2 hosts: 2 ok, 0 failed, 0 unreachable, 0 timeout" in result.stderr


def test_exec_local_failure_is_5_and_recorded_for_at_failed(hostops, local_inv):
    result = hostops("exec", 'test "$(hostname)" = nosuchname', "-i", local_inv, "-l", "one", *FAST)
    assert result.exit_code == 5, result.output
    assert "one | FAILED | rc=1" in result.stdout
    again = hostops("inventory", "-i", local_inv, "-l", "@failed")
    assert again.exit_code == 0, again.output
    assert again.stdout.split()[0] == "one" and "two" not in again.stdout


def test_exec_batches_print_sections(hostops, local_inv):
    result = hostops("exec", "true", "-i", local_inv, "--batch", "1", *FAST)
    assert result.exit_code == 0, result.output
    assert "== batch 1/2 (1 host) ==" in result.stdout and "== batch 2/2 (1 host) ==" in result.stdout


def test_runbook_dry_run_touches_nothing(hostops, local_inv, tmp_path):
    marker = tmp_path / "marker"
    book = tmp_path / "book.yml"
    book.write_text(f"name: b\nsteps:\n  - name: a\n    exec: touch {marker}\n  - name: c\n    exec: 'true'\n")
    result = hostops("run", str(book), "-i", local_inv, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "runbook: b" in result.stdout and "dry run: nothing was touched" in result.stdout
    assert not marker.exists()
    as_json = hostops("run", str(book), "-i", local_inv, "--dry-run", "--json")
    assert json.loads(as_json.stdout)["steps"][1]["name"] == "c"


def test_runbook_table_and_per_host_summary(hostops, local_inv, tmp_path):
    book = tmp_path / "book.yml"
    book.write_text("name: b\nsteps:\n  - name: a\n    exec: 'true'\n  - name: c\n    exec: 'true'\n")
    result = hostops("run", str(book), "-i", local_inv, *FAST)
    assert result.exit_code == 0, result.output
    assert any(line.split() == ["one", "ok", "ok"] for line in result.stdout.splitlines()), result.stdout
    assert "2 hosts: 2 ok, 0 failed in" in result.stderr


def test_inventory_lists_local_hosts(hostops, local_inv):
    result = hostops("inventory", "-i", local_inv)
    assert result.exit_code == 0
    assert result.stdout.splitlines() == ["one  local", "two  local"]
    graph = hostops("inventory", "-i", local_inv, "--graph")
    assert graph.stdout.splitlines() == ["@all:", "  |--@ungrouped:", "  |  |--one", "  |  |--two"]


def test_keys_scan_with_no_ssh_hosts_is_0(hostops, local_inv):
    result = hostops("keys", "scan", "-i", local_inv)
    assert result.exit_code == 0, result.output
    assert "skipped 2 host(s) with connection: local" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("0 hosts: 0 known, 0 new")


def test_keys_forget_needs_a_name(hostops):
    result = hostops("keys", "forget")
    assert result.exit_code == 2
    assert "name the hosts to forget" in result.output


def test_main_is_the_console_entry_point():
    import hostops.cli

    assert hostops.cli.main is main and callable(main)
    assert os.path.basename(hostops.cli.__file__) == "__init__.py"
