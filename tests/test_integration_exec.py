"""``hostops exec`` end to end against the real test sshd."""
from __future__ import annotations

import json
import os
import re
import stat

import pytest

from sshlab import free_port, keygen

pytestmark = pytest.mark.timeout(180)


def test_fifty_hosts_one_json_line_each(hostops, inventory, known_hosts):
    inv = inventory(50)
    run = hostops("exec", "echo ok", "-i", inv, "--known-hosts", known_hosts, "-f", "50", "--json")
    assert run.code == 0, run
    lines = run.json_lines()
    assert sorted(r["host"] for r in lines) == [f"h{i:03d}" for i in range(1, 51)]
    assert all(r["status"] == "ok" and r["exit_code"] == 0 and r["stdout"] == "ok\n" for r in lines)
    assert set(lines[0]) >= {"host", "status", "exit_code", "stdout", "stderr", "error", "start", "duration"}
    assert "50 hosts: 50 ok, 0 failed, 0 unreachable, 0 timeout" in run.err


def test_two_hundred_hosts_plus_closed_port(hostops, inventory, known_hosts):
    """The issue's "done when": 200 ok, one more on a closed port → 201 lines, exit 4."""
    closed = {"name": "closed", "ansible_host": "127.0.0.1", "ansible_port": free_port()}
    inv = inventory(200, extra_hosts=[closed])
    # a closed port is refused at once; the generous timeout only keeps a loaded machine's
    # slow logins from being counted as unreachable
    run = hostops("exec", "echo ok", "-i", inv, "--known-hosts", known_hosts, "-f", "200", "--json",
                  "--connect-timeout", "30")
    assert run.code == 4, run
    lines = run.json_lines()
    assert len(lines) == 201
    by_host = {r["host"]: r for r in lines}
    assert by_host["closed"]["status"] == "unreachable"
    assert "cannot connect" in by_host["closed"]["error"]
    assert sum(r["status"] == "ok" for r in lines) == 200


def test_nonzero_exit_is_failed_exit_5(hostops, inventory, known_hosts):
    run = hostops("exec", "echo partial; exit 3", "-i", inventory(3), "--known-hosts", known_hosts, "--json")
    assert run.code == 5, run
    assert {(r["status"], r["exit_code"], r["stdout"]) for r in run.json_lines()} == {("failed", 3, "partial\n")}


def test_stdout_and_stderr_kept_apart(hostops, inventory, known_hosts):
    run = hostops("exec", "echo out; echo err >&2; echo out2", "-i", inventory(2), "--known-hosts", known_hosts,
                  "--json")
    assert run.code == 0, run
    for r in run.json_lines():
        assert r["stdout"] == "out\nout2\n"
        assert r["stderr"] == "err\n"


def test_wrong_user_key_is_unreachable_auth(hostops, lab, tmp_path, known_hosts):
    stranger = str(tmp_path / "stranger")
    keygen(stranger)
    inv = lab.write_inventory(str(tmp_path / "inv.yml"), 2)
    text = open(inv).read().replace(lab.user_key, stranger)
    open(inv, "w").write(text)
    run = hostops("exec", "touch should-not-exist", "-i", inv, "--known-hosts", known_hosts, "--json")
    assert run.code == 4, run
    for r in run.json_lines():
        assert r["status"] == "unreachable"
        assert "authentication failed" in r["error"]


def test_unknown_host_key_refused_under_strict(hostops, inventory, tmp_path):
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    run = hostops("exec", "echo ran", "-i", inventory(3), "--known-hosts", str(empty), "--json")
    assert run.code == 4, run
    for r in run.json_lines():
        assert r["status"] == "unreachable"
        assert "host key unknown" in r["error"]
        assert r["stdout"] == ""
    assert empty.read_text() == ""


def test_accept_new_learns_each_key_once(hostops, lab, inventory, tmp_path):
    kh = tmp_path / "learned_known_hosts"
    inv = inventory(48)  # 48 hosts spread over 8 addresses: 6 workers' threads race per address
    run = hostops("exec", "echo ok", "-i", inv, "--known-hosts", str(kh), "--host-key-policy", "accept-new",
                  "-f", "48", "--json")
    assert run.code == 0, run
    lines = kh.read_text().splitlines()
    assert sorted(lines) == sorted(lab.known_hosts_line(a) for a in lab.addresses)
    assert stat.S_IMODE(os.stat(kh).st_mode) == 0o600
    again = hostops("exec", "echo ok", "-i", inv, "--known-hosts", str(kh), "--json")  # strict now passes
    assert again.code == 0, again
    assert kh.read_text().splitlines() == lines


def test_changed_host_key_refused_under_strict_and_accept_new(hostops, lab, inventory, tmp_path):
    other = str(tmp_path / "other_host_key")
    keytype, b64 = keygen(other).split()[:2]
    kh = tmp_path / "kh"
    kh.write_text(f"[127.0.0.1]:{lab.port} {keytype} {b64}\n")
    before = kh.read_text()
    inv = inventory(2, addresses=["127.0.0.1"])
    for policy in ("strict", "accept-new"):
        run = hostops("exec", "echo ran", "-i", inv, "--known-hosts", str(kh), "--host-key-policy", policy,
                      "--json")
        assert run.code == 4, run
        for r in run.json_lines():
            assert r["status"] == "unreachable"
            assert "HOST KEY CHANGED" in r["error"]
            assert r["stdout"] == ""
    assert kh.read_text() == before


def test_host_key_policy_off_warns_once(hostops, inventory, tmp_path):
    empty = tmp_path / "kh"
    empty.write_text("")
    run = hostops("exec", "echo ok", "-i", inventory(5), "--known-hosts", str(empty), "--host-key-policy", "off")
    assert run.code == 0, run
    assert run.err.count("host key checking is off") == 1
    assert empty.read_text() == ""


def test_timeout(hostops, inventory, known_hosts):
    run = hostops("exec", "echo started; sleep 30", "-i", inventory(2), "--known-hosts", known_hosts, "-t", "1",
                  "--json", timeout=25)
    assert run.code == 3, run
    for r in run.json_lines():
        assert r["status"] == "timeout"
        assert r["stdout"] == "started\n"
        assert "timed out after 1s" in r["error"]


def test_exit_code_priority_timeout_beats_unreachable_beats_failed(hostops, lab, inventory, known_hosts):
    closed = {"name": "closed", "ansible_host": "127.0.0.1", "ansible_port": free_port()}
    inv = inventory(2, extra_hosts=[closed], addresses=["127.0.0.1", "127.0.0.2"])
    # h001 on .1 exits 1; h002 on .2 sleeps past the timeout; "closed" is unreachable
    cmd = 'set -- $SSH_CONNECTION; if [ "$3" = 127.0.0.1 ]; then exit 1; else sleep 20; fi'
    run = hostops("exec", cmd, "-i", inv, "--known-hosts", known_hosts, "-t", "2", "--json", timeout=30)
    assert run.code == 3, run
    assert {r["host"]: r["status"] for r in run.json_lines()} == {
        "h001": "failed", "h002": "timeout", "closed": "unreachable"}
    run = hostops("exec", cmd.replace("sleep 20", "exit 0"), "-i", inv, "--known-hosts", known_hosts, "--json")
    assert run.code == 4, run


def test_default_output_blocks(hostops, inventory, known_hosts):
    run = hostops("exec", "echo hello", "-i", inventory(3), "--known-hosts", known_hosts)
    assert run.code == 0, run
    headers = re.findall(r"^(h\d{3}) \| OK \| rc=0 \| \d+\.\d\ds$", run.out, re.M)
    assert sorted(headers) == ["h001", "h002", "h003"]
    assert run.out.count("hello\n") == 3
    assert "\x1b[" not in run.out  # not a TTY: no colour


def test_gather_output(hostops, inventory, known_hosts):
    cmd = 'set -- $SSH_CONNECTION; echo "from $3"'
    run = hostops("exec", cmd, "-i", inventory(20, addresses=["127.0.0.1", "127.0.0.2"]), "--known-hosts",
                  known_hosts, "-b")
    assert run.code == 0, run
    odd = ",".join(f"h{i:03d}" for i in range(1, 21, 2))
    assert "h[001,003,005,007,009,011,013,015,017,019] (10) | OK | rc=0" in run.out, (odd, run)
    assert "h[002,004,006,008,010,012,014,016,018,020] (10) | OK | rc=0" in run.out
    assert run.out.count("from 127.0.0.1\n") == 1 and run.out.count("from 127.0.0.2\n") == 1


def test_gather_compacts_ranges(hostops, inventory, known_hosts):
    run = hostops("exec", "echo same", "-i", inventory(20), "--known-hosts", known_hosts, "--gather")
    assert run.code == 0, run
    assert "h[001-020] (20) | OK | rc=0" in run.out
    assert run.out.count("same\n") == 1


def test_stream_output(hostops, inventory, known_hosts):
    run = hostops("exec", "echo one; echo two; echo bad >&2", "-i", inventory(3), "--known-hosts", known_hosts,
                  "--stream")
    assert run.code == 0, run
    for h in ("h001", "h002", "h003"):
        assert f"{h}: one\n" in run.out and f"{h}: two\n" in run.out
        assert f"{h}: bad\n" in run.err
        assert run.out.index(f"{h}: one") < run.out.index(f"{h}: two")


def test_quiet_shows_only_failed(hostops, inventory, known_hosts):
    cmd = 'set -- $SSH_CONNECTION; [ "$3" = 127.0.0.1 ] && echo fine || { echo broken; exit 2; }'
    run = hostops("exec", cmd, "-i", inventory(4, addresses=["127.0.0.1", "127.0.0.2"]), "--known-hosts",
                  known_hosts, "-q")
    assert run.code == 5, run
    assert "fine" not in run.out
    assert run.out.count("broken") == 2
    assert "4 hosts: 2 ok, 2 failed" in run.err


def test_outdir(hostops, inventory, known_hosts, tmp_path):
    outdir = tmp_path / "out"
    run = hostops("exec", "echo o; echo e >&2", "-i", inventory(3), "--known-hosts", known_hosts, "-o",
                  str(outdir), "-q")
    assert run.code == 0, run
    for h in ("h001", "h002", "h003"):
        assert (outdir / f"{h}.out").read_text() == "o\n"
        assert (outdir / f"{h}.err").read_text() == "e\n"
        assert stat.S_IMODE(os.stat(outdir / f"{h}.out").st_mode) == 0o600


def test_escape_sequences_made_visible(hostops, inventory, known_hosts):
    cmd = r"printf 'a\033]52;c;aGk=\007b\033[2Jc\r\n'"
    run = hostops("exec", cmd, "-i", inventory(1), "--known-hosts", known_hosts)
    assert run.code == 0, run
    assert "\x1b" not in run.out and "\x07" not in run.out
    assert r"a\x1b]52;c;aGk=\x07b\x1b[2Jc" in run.out


def test_log_lines_intact_when_fifty_hosts_finish_at_once(hostops, inventory, known_hosts, tmp_path):
    log = tmp_path / "run.jsonl"
    big = "x" * 20000  # lines longer than a pipe buffer would tear without the Lock
    run = hostops("exec", f"printf '%s' {big}", "-i", inventory(50), "--known-hosts", known_hosts, "-f", "50",
                  "--processes", "4", "--log", str(log), "-q")
    assert run.code == 0, run
    assert stat.S_IMODE(os.stat(log).st_mode) == 0o600
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records[0]["event"] == "start" and len(records[0]["hosts"]) == 50
    assert records[-1]["event"] == "end" and records[-1]["summary"]["counts"]["ok"] == 50
    hosts = [r for r in records if r["event"] == "host"]
    assert sorted(r["host"] for r in hosts) == [f"h{i:03d}" for i in range(1, 51)]
    assert all(r["stdout"] == big for r in hosts)
    # appending: a second run adds its own records after the first
    hostops("exec", "true", "-i", inventory(2), "--known-hosts", known_hosts, "--log", str(log), "-q")
    assert len(log.read_text().splitlines()) == len(records) + 4


@pytest.mark.parametrize("method", ["spawn", "forkserver", "fork"])
def test_start_methods(hostops, inventory, known_hosts, method):
    run = hostops("exec", "echo ok", "-i", inventory(12), "--known-hosts", known_hosts, "--start-method", method,
                  "--processes", "3", "-f", "6", "--json")
    assert run.code == 0, run
    assert len(run.json_lines()) == 12


def test_sudo_never_prompts(hostops, inventory, known_hosts):
    import shutil

    if shutil.which("sudo") is None:
        pytest.skip("sudo is not installed on this machine")
    run = hostops("exec", "id -u", "-i", inventory(2), "--known-hosts", known_hosts, "--sudo", "--json")
    assert run.code == 0, run
    assert {r["stdout"] for r in run.json_lines()} == {"0\n"}


def test_adhoc_hosts_and_cli_settings(hostops, lab, known_hosts):
    run = hostops("exec", "echo adhoc", "-H", f"{lab.user}@127.0.0.1:{lab.port}", "-H", "127.0.0.2",
                  "-p", str(lab.port), "-k", lab.user_key, "--known-hosts", known_hosts, "--json")
    assert run.code == 0, run
    # an entry given with a user or a port is named as written (user@address:port identifies it)
    assert {r["host"] for r in run.json_lines()} == {f"{lab.user}@127.0.0.1:{lab.port}", "127.0.0.2"}


def test_ssh_config_supplies_hostname_port_user_identity(hostops, lab, tmp_path, known_hosts):
    cfg = tmp_path / "ssh_config"
    cfg.write_text(f"Host alias-*\n  HostName 127.0.0.3\n  Port {lab.port}\n  User {lab.user}\n"
                   f"  IdentityFile {lab.user_key}\n")
    run = hostops("exec", "echo via-config", "-H", "alias-[1:3]", "--ssh-config", str(cfg), "--known-hosts",
                  known_hosts, "--json")
    assert run.code == 0, run
    assert sorted(r["host"] for r in run.json_lines()) == ["alias-1", "alias-2", "alias-3"]


def test_limit_pattern_selects_hosts(hostops, inventory, known_hosts):
    run = hostops("exec", "true", "-i", inventory(10), "--known-hosts", known_hosts, "-l", "lab:!lab[0:4]",
                  "--json")
    assert run.code == 0, run
    assert sorted(r["host"] for r in run.json_lines()) == ["h006", "h007", "h008", "h009", "h010"]


def test_library_api_without_cli(lab, tmp_path, known_hosts):
    from hostops import Inventory, Options, resolve, run_command

    inv = Inventory.load([lab.write_inventory(str(tmp_path / "api.yml"), 5)])
    options = Options(known_hosts=(known_hosts,), forks=5, processes=2)
    targets = resolve(inv, inv.select("lab[0:2]"), options)
    results = list(run_command(targets, "echo api", options))
    assert sorted(r.host for r in results) == ["h001", "h002", "h003"]
    assert all(r.ok and r.stdout == b"api\n" for r in results)
