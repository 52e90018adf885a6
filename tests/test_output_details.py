"""Issue 14, "Output details users asked for", through the real CLI over the lab sshd:
gathered output in host-name order (and for stdout only), the hosts that did not succeed named
in every output mode, -q, put --checksum and run --dry-run folded, versioned JSON records with
exact bytes, and @failed kept per inventory."""
from __future__ import annotations

import base64
import json
import os
import re
import textwrap

import pytest

from hostops.results import record_bytes
from sshlab import free_port

pytestmark = pytest.mark.timeout(180)

#: Prints the loopback address the host was reached on: outputs differ by address, not by host.
ADDR = "echo $SSH_CONNECTION | cut -d' ' -f3"
#: Fails on the hosts reached on 127.0.0.2 (h002 and h005 of a 6-host inventory over 3 addresses).
FAIL_ON_2 = f'a=$({ADDR}); echo "on $a"; test "$a" != 127.0.0.2'
THREE = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
ISO_MS_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$")


def closed_host(name: str = "closed") -> dict:
    """An inventory entry pointing at a closed loopback port: unreachable at once."""
    return {"name": name, "ansible_host": "127.0.0.1", "ansible_port": free_port()}


def entry(lab, name: str, address: str) -> dict:
    return {"name": name, "ansible_host": address, "ansible_port": lab.port}


def headers(text: str) -> list:
    """The gathered groups' header lines (``hosts (N) | STATUS …``)."""
    return [line for line in text.splitlines() if re.match(r"^\S+ \(\d+\) \| [A-Z]+", line)]


def log_records(path) -> list:
    with open(path) as fh:
        return [json.loads(line) for line in fh]


# ================================================================== gather
def test_gather_groups_in_natural_host_order(hostops, lab, inventory, known_hosts):
    """Groups ordered by host name as dshbak/clush do (web2 before web10; a failed group takes
    its place by name, not by status), hosts folded in each."""
    hosts = [entry(lab, "web10", "127.0.0.3"), entry(lab, "web2", "127.0.0.2"), entry(lab, "web9", "127.0.0.2"),
             entry(lab, "app1", "127.0.0.4"), closed_host("db1")]
    inv = inventory(0, extra_hosts=hosts)
    run = hostops("exec", ADDR, "-i", inv, "--known-hosts", known_hosts, "-b")
    assert run.code == 4, run
    assert headers(run.out) == ["app1 (1) | OK | rc=0", "db1 (1) | UNREACHABLE", "web[2,9] (2) | OK | rc=0",
                                "web10 (1) | OK | rc=0"], run
    assert run.out.count("127.0.0.2\n") == 1  # one body per group
    assert "unreachable (1): db1\n" in run.err, run


def test_gather_stdout_only_and_the_short_flags(hostops, lab, inventory, known_hosts):
    """--gather-stdout (clush -b): stdout gathered, stderr on stderr as 'host: line'; -b, -B
    and --gather (clush -B, and what -b always was) gather both and print the same."""
    inv = inventory(0, extra_hosts=[entry(lab, "n1", "127.0.0.2"), entry(lab, "n2", "127.0.0.2"),
                                    entry(lab, "n3", "127.0.0.3")])
    command = f"echo out; echo err-$({ADDR}) >&2"
    only = hostops("exec", command, "-i", inv, "--known-hosts", known_hosts, "--gather-stdout")
    assert only.code == 0, only
    assert headers(only.out) == ["n[1-3] (3) | OK | rc=0"], only  # stderr differs, stdout does not
    assert "err-" not in only.out and "[stderr]" not in only.out
    assert sorted(line for line in only.err.splitlines() if "err-" in line) == [
        "n1: err-127.0.0.2", "n2: err-127.0.0.2", "n3: err-127.0.0.3"], only
    both = {flag: hostops("exec", command, "-i", inv, "--known-hosts", known_hosts, flag)
            for flag in ("-b", "-B", "--gather")}
    for flag, run in both.items():
        assert run.code == 0, (flag, run)
        assert headers(run.out) == ["n[1-2] (2) | OK | rc=0", "n3 (1) | OK | rc=0"], (flag, run)
        assert "[stderr]\nerr-127.0.0.2\n" in run.out and "err-" not in run.err, (flag, run)
    assert both["-b"].out == both["-B"].out == both["--gather"].out
    clash = hostops("exec", "true", "-i", inv, "--known-hosts", known_hosts, "-b", "--gather-stdout")
    assert clash.code == 2 and "cannot be combined" in clash.err, clash


# ================================================================== the hosts that did not succeed
@pytest.mark.parametrize("mode", [[], ["-b"], ["--gather-stdout"], ["--stream"], ["--json"], ["-q"]],
                         ids=["blocks", "gather", "gather-stdout", "stream", "json", "quiet"])
def test_summary_names_the_hosts_that_did_not_succeed_in_every_mode(hostops, inventory, known_hosts, mode):
    inv = inventory(6, extra_hosts=[closed_host()], addresses=THREE)
    run = hostops("exec", FAIL_ON_2, "-i", inv, "--known-hosts", known_hosts, *mode)
    assert run.code == 4, run  # an unreachable host outranks a failed one
    err = run.err.splitlines()
    assert err[-3:] == ["failed (2): h[002,005]", "unreachable (1): closed",
                        err[-1]], run
    assert err[-1].startswith("7 hosts: 4 ok, 2 failed, 1 unreachable, 0 timeout in "), run
    if mode == ["--json"]:  # stdout stays JSON only
        assert len(run.json_lines()) == 7


def test_quiet_prints_only_what_did_not_succeed(hostops, inventory, known_hosts):
    """-q: on stdout the blocks of the hosts that did not succeed, nothing of the others; on
    stderr only the not-ok lines and the summary (no progress line, no titles)."""
    inv = inventory(6, extra_hosts=[closed_host()], addresses=THREE)
    run = hostops("exec", FAIL_ON_2, "-i", inv, "--known-hosts", known_hosts, "-q")
    assert run.code == 4, run
    shown = [line.split(" | ")[0] for line in run.out.splitlines() if " | " in line]
    assert sorted(shown) == ["closed", "h002", "h005"], run
    assert "on 127.0.0.1" not in run.out and "on 127.0.0.3" not in run.out
    assert run.out.count("on 127.0.0.2") == 2 and "cannot connect" in run.out, run
    assert run.err.splitlines()[:-1] == ["failed (2): h[002,005]", "unreachable (1): closed"], run
    ok = hostops("exec", "echo fine", "-i", inventory(3, name="ok.yml"), "--known-hosts", known_hosts, "-q")
    assert ok.code == 0 and ok.out == "", ok
    assert ok.err.splitlines() == [ok.err.splitlines()[-1]] and ok.err.startswith("3 hosts: 3 ok"), ok


def test_run_quiet_names_the_step_and_prints_no_titles_or_table(hostops, inventory, known_hosts, tmp_path):
    book = tmp_path / "book.yml"
    book.write_text(textwrap.dedent(f"""
        name: quiet
        hosts: lab
        batch: 3
        max_fail: 5
        steps:
          - name: first
            exec: echo one
          - name: check
            exec: {json.dumps(FAIL_ON_2)}
        """))
    inv = inventory(6, addresses=THREE)
    loud = hostops("run", str(book), "-i", inv, "--known-hosts", known_hosts)
    assert loud.code == 5 and "== batch 1/2" in loud.out, loud
    assert re.search(r"^host +first +check$", loud.out, re.M), loud  # the table -q leaves out
    run = hostops("run", str(book), "-i", inv, "--known-hosts", known_hosts, "-q")
    assert run.code == 5, run
    assert "==" not in run.out and "first" not in run.out and "one\n" not in run.out, run
    blocks = [line for line in run.out.splitlines() if " | " in line]
    assert len(blocks) == 2 and all(re.fullmatch(r"h00[25] \| FAILED \| rc=1 \| [0-9.]+s \| step check", b)
                                    for b in blocks), run
    assert "host " not in run.out, run
    assert run.err.splitlines()[0] == "failed (2): h[002,005]", run
    assert run.err.splitlines()[-1].startswith("6 hosts: 4 ok, 2 failed"), run


# ================================================================== folding
def test_put_checksum_folds_unchanged_hosts_into_one_line(hostops, inventory, known_hosts, tmp_path):
    src = tmp_path / "app.conf"
    src.write_text("same everywhere\n")
    dest = tmp_path / "deployed.conf"
    inv = inventory(6)
    first = hostops("put", str(src), str(dest), "-i", inv, "--known-hosts", known_hosts, "-f", "1")
    assert first.code == 0, first
    again = hostops("put", str(src), str(dest), "-i", inv, "--known-hosts", known_hosts, "--checksum")
    assert again.code == 0, again
    assert again.out == f"h[001-006] (6) | UNCHANGED | {dest} already has the same content (sha256)\n", again
    assert "6 hosts: 0 ok, 6 unchanged" in again.err
    src.write_text("changed\n")
    changed = hostops("put", str(src), str(dest), "-i", inventory(1, name="one.yml"), "--known-hosts",
                      known_hosts, "--checksum")
    assert changed.code == 0 and changed.out.startswith("h001 | OK"), changed  # a sent file is not folded


def test_dry_run_folds_hosts_that_differ_only_by_their_name(hostops, lab, inventory, known_hosts, tmp_path):
    book = tmp_path / "book.yml"
    book.write_text(textwrap.dedent(f"""
        name: folded
        hosts: lab
        steps:
          - name: mark
            exec: touch {tmp_path}/{{{{ inventory_hostname }}}}.done
          - name: same
            exec: echo hello
          - name: special
            exec: echo {{{{ note }}}}
        """))
    hosts = [dict(e, note="odd" if e["name"] == "h007" else "plain") for e in lab.host_entries(12)]
    inv = inventory(0, extra_hosts=hosts)
    run = hostops("run", str(book), "-i", inv, "--known-hosts", known_hosts, "--dry-run")
    assert run.code == 0, run
    assert f"       h[001-012]: touch {tmp_path}/{{host}}.done\n" in run.out, run
    assert "       h[001-012]: echo hello\n" in run.out
    assert "       h[001-006,008-012]: echo plain\n       h007: echo odd\n" in run.out, run
    assert "({host} stands for each host's own name)" in run.out
    assert not any(tmp_path.glob("*.done"))


# ================================================================== JSON records
def test_every_json_and_log_record_is_versioned_with_one_time_format(hostops, inventory, known_hosts, tmp_path):
    log = tmp_path / "run.jsonl"
    inv = inventory(6, extra_hosts=[closed_host()], addresses=THREE)
    run = hostops("exec", FAIL_ON_2, "-i", inv, "--known-hosts", known_hosts, "--json", "--log", str(log))
    assert run.code == 4, run
    records = log_records(log)
    everything = run.json_lines() + records
    assert all(r["schema"] == "hostops/1" and ISO_MS_UTC.match(r["time"]) for r in everything), everything
    assert all(ISO_MS_UTC.match(r["start"]) for r in everything if r["event"] == "host" and r["start"])
    assert [r["event"] for r in run.json_lines()] == ["host"] * 7
    assert [r["event"] for r in records] == ["start"] + ["host"] * 7 + ["end"]
    end = records[-1]["summary"]
    assert end["exit_code"] == run.code == 4
    assert end["counts"] == {"ok": 4, "unchanged": 0, "failed": 2, "unreachable": 1, "timeout": 0,
                             "interrupted": 0, "incomplete": 0, "untouched": 0}, end
    assert end["hosts"] == sum(end["counts"].values()) == 7
    assert end["interrupted"] is False and end["stopped"] is None
    # a runbook's end record too: exit code, and counts per host
    book = tmp_path / "book.yml"
    book.write_text(f"name: b\nhosts: lab\nsteps:\n  - exec: echo one\n  - exec: {json.dumps(FAIL_ON_2)}\n")
    blog = tmp_path / "book.jsonl"
    played = hostops("run", str(book), "-i", inventory(6, addresses=THREE, name="b.yml"), "--known-hosts",
                     known_hosts, "--log", str(blog))
    assert played.code == 5, played
    brecords = log_records(blog)
    assert all(r["schema"] == "hostops/1" and ISO_MS_UTC.match(r["time"]) for r in brecords)
    bend = brecords[-1]
    assert bend["event"] == "end" and bend["summary"]["exit_code"] == 5, bend
    assert (bend["summary"]["counts"]["ok"], bend["summary"]["counts"]["failed"], bend["summary"]["hosts"]) == (4, 2, 6)
    plan = hostops("run", str(book), "-i", inventory(2, name="p.yml"), "--known-hosts", known_hosts, "--dry-run",
                   "--json")
    assert plan.code == 0 and json.loads(plan.out)["schema"] == "hostops/1", plan
    keys = hostops("keys", "scan", "-i", inventory(2, name="k.yml"), "--known-hosts", known_hosts, "--json")
    assert keys.code == 0 and [r["schema"] for r in keys.json_lines()] == ["hostops/1"] * 2, keys


def test_a_raw_byte_and_its_escaped_text_never_encode_the_same(hostops, inventory, known_hosts, tmp_path):
    """stdout is the raw byte 0xFF, stderr the four characters \\xff: the records differ, and
    each gives its exact bytes back (stdout_b64 when the bytes are not UTF-8)."""
    log = tmp_path / "run.jsonl"
    run = hostops("exec", r"printf '\377'; printf '%s' '\xff' >&2", "-i", inventory(1), "--known-hosts",
                  known_hosts, "--json", "--log", str(log))
    assert run.code == 0, run
    for record in (run.json_lines()[0], log_records(log)[1]):
        assert record["event"] == "host"
        assert record["stdout"] != record["stderr"], record
        assert base64.b64decode(record["stdout_b64"]) == b"\xff" and "stderr_b64" not in record, record
        assert record["stderr"] == "\\xff" and record["stdout"] == "\ufffd"
        assert (record_bytes(record, "stdout"), record_bytes(record, "stderr")) == (b"\xff", b"\\xff")


def test_secret_in_undecodable_output_is_masked_in_the_b64_field_too(hostops, inventory, known_hosts, tmp_path):
    log = tmp_path / "run.jsonl"
    run = hostops("exec", "printf '\\377'; echo hunter2-very-secret", "-i", inventory(1), "--known-hosts",
                  known_hosts, "--json", "--log", str(log), "--secret-env", "HOSTOPS_TEST_SECRET",
                  env={"HOSTOPS_TEST_SECRET": "hunter2-very-secret"})
    assert run.code == 0, run
    for record in (run.json_lines()[0], log_records(log)[1]):
        exact = base64.b64decode(record["stdout_b64"])
        assert exact.startswith(b"\xff") and b"hunter2" not in exact and b"****" in exact, record
    assert "hunter2" not in log.read_text() and "hunter2" not in run.out


# ================================================================== @failed per inventory
def test_failed_state_is_kept_per_inventory(hostops, inventory, known_hosts, tmp_path):
    """A failure on staging never redirects a rerun on prod (same host names in both)."""
    state_home = tmp_path / "state"
    env = {"XDG_STATE_HOME": str(state_home)}
    staging = inventory(6, addresses=THREE, name="staging.yml")
    prod = inventory(6, addresses=["127.0.0.1", "127.0.0.3"], name="prod.yml")
    first = hostops("exec", FAIL_ON_2, "-i", staging, "--known-hosts", known_hosts, env=env)
    assert first.code == 5 and "failed (2): h[002,005]" in first.err, first
    second = hostops("exec", FAIL_ON_2, "-i", prod, "--known-hosts", known_hosts, env=env)
    assert second.code == 0, second
    files = sorted(os.listdir(state_home / "hostops"))
    assert len(files) == 2 and [f.split(".")[1] for f in files] == ["prod", "staging"], files
    # prod: nothing failed, and the error says which state file it read and which run that was
    rerun_prod = hostops("exec", "echo again", "-i", prod, "--known-hosts", known_hosts, "-l", "@failed", env=env)
    assert rerun_prod.code == 2, rerun_prod
    prod_state = str(state_home / "hostops" / files[0])
    assert "no host matched '@failed'" in rerun_prod.err and prod_state in rerun_prod.err, rerun_prod
    assert "0 of 6 hosts" in rerun_prod.err, rerun_prod
    # inventory -l @failed: what a rerun would select, and which run it came from
    staging_state = str(state_home / "hostops" / files[1])
    shown = hostops("inventory", "-i", staging, "-l", "@failed", env=env)
    assert shown.code == 0, shown
    assert [line.split()[0] for line in shown.out.splitlines()] == ["h002", "h005"], shown
    note = shown.err.splitlines()[0]
    assert note.startswith(f"@failed: 2 of 6 hosts (h[002,005]) from the run of {FAIL_ON_2!r} at "), note
    assert note.endswith(f"(state file {staging_state})") and ISO_MS_UTC.match(note.split(" at ")[1].split()[0])
    # the rerun on staging selects exactly those (the same files in another order share the state)
    rerun = hostops("exec", "echo again", "-i", staging, "--known-hosts", known_hosts, "-l", "@failed", "--json",
                    env=env)
    assert rerun.code == 0 and sorted(r["host"] for r in rerun.json_lines()) == ["h002", "h005"], rerun
    missing = hostops("inventory", "-i", inventory(2, name="new.yml"), "-l", "@failed", env=env)
    assert missing.code == 2 and "no previous run recorded" in missing.err, missing
    assert str(state_home / "hostops" / "last-run.new.") in missing.err, missing


def test_inventory_failed_reads_the_state_beside_a_log(hostops, inventory, known_hosts, tmp_path):
    log = tmp_path / "deploy.jsonl"
    inv = inventory(6, addresses=THREE)
    run = hostops("exec", FAIL_ON_2, "-i", inv, "--known-hosts", known_hosts, "--log", str(log))
    assert run.code == 5, run
    shown = hostops("inventory", "-i", inv, "-l", "@failed", "--log", str(log))
    assert shown.code == 0 and [line.split()[0] for line in shown.out.splitlines()] == ["h002", "h005"], shown
    assert f"(state file {log}.last-run.json)" in shown.err, shown
    without = hostops("inventory", "-i", inv, "-l", "@failed")  # no --log: this inventory's own, never run
    assert without.code == 2 and "no previous run recorded" in without.err, without


def test_log_masks_secrets_inside_b64_fields(tmp_path):
    """The log's own masking pass (after the worker's) reaches the bytes of a _b64 field too."""
    from hostops.log import RunLog
    from hostops.secrets import Secrets

    path = tmp_path / "log.jsonl"
    log = RunLog(str(path), Secrets(values=("hunter2-very-secret",)))
    raw = b"\xff hunter2-very-secret"
    log.write({"event": "host", "stdout": "x", "stdout_b64": base64.b64encode(raw).decode()})
    log.close()
    record = log_records(path)[0]
    assert base64.b64decode(record["stdout_b64"]) == b"\xff ********" and "hunter2" not in path.read_text()
    assert record["schema"] == "hostops/1" and ISO_MS_UTC.match(record["time"])


# ================================================================== units
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40), st.binary(max_size=40))
def test_json_bytes_round_trips_and_never_confuses_two_outputs(a, b):
    from hostops.results import json_bytes

    ea, eb = json_bytes("stdout", a), json_bytes("stdout", b)
    assert record_bytes(json.loads(json.dumps(ea)), "stdout") == a
    assert (ea == eb) == (a == b)


def test_state_path_is_one_per_inventory(tmp_path, monkeypatch):
    from hostops.state import state_path

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prod.yml").write_text("")
    (tmp_path / "zz.yml").write_text("")
    prod = state_path(None, ["prod.yml", "zz.yml"])
    assert prod == state_path(None, [str(tmp_path / "zz.yml"), "./prod.yml"])  # order, spelling
    assert os.path.basename(prod).startswith("last-run.prod.") and os.path.dirname(prod) == str(
        tmp_path / "state" / "hostops")
    assert len({prod, state_path(None, ["prod.yml"]), state_path(None, ["prod.yml"], ["web1"]),
                state_path(None, [], ["web1"])}) == 4
    assert state_path("/var/log/x.jsonl", ["prod.yml"]) == "/var/log/x.jsonl.last-run.json"  # --log keys it


def test_old_state_file_with_epoch_time_still_reads(tmp_path):
    from hostops.state import read_state

    path = tmp_path / "old.json"
    path.write_text(json.dumps({"time": 1700000000.0, "what": "uptime", "hosts": {"a": "failed", "b": "ok"}}))
    last = read_state(str(path))
    assert last.select("failed") == ["a"] and last.time == "2023-11-14T22:13:20.000+00:00"
    assert last.describe() == f"the run of 'uptime' at 2023-11-14T22:13:20.000+00:00 (state file {path})"


def test_fold_plan_folds_exact_and_name_only_differences():
    from hostops.runbook import fold_plan

    texts = {"web1": "touch /x/web1", "web2": "touch /x/web2", "db1": "touch /x/db1.conf", "web3": "same",
             "web4": "same", "a": "cat a.txt"}
    assert fold_plan(texts) == [(["web1", "web2"], "touch /x/{host}"), (["db1"], "touch /x/db1.conf"),
                                (["web3", "web4"], "same"), (["a"], "cat a.txt")]
