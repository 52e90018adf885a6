"""``hostops run`` (runbooks) and the rollout controls of every command, end to end against
the real test sshd.

All lab hosts are one sshd on one file system, so per-host behaviour comes from
``{{ inventory_hostname }}`` in commands and paths (marker files ``REMOTE/<host>``), from
inventory variables, or (for ``exec``, which has no templates) from the server address the
host connects to (``set -- $SSH_CONNECTION; $3``).
"""
from __future__ import annotations

import datetime
import json
import os
import re
import secrets
import stat
import subprocess
import sys
import textwrap
import time
from typing import Dict, List

import pytest
import yaml

from conftest import ROOT
from hostops.state import state_path
from sshlab import SSHD


# ------------------------------------------------------------------ helpers
def hosts(n: int, first: int = 1) -> List[str]:
    return [f"h{i:03d}" for i in range(first, n + 1)]


@pytest.fixture
def remote(tmp_path):
    """The "remote" directory the steps write markers into (same file system as the test)."""
    path = tmp_path / "remote"
    path.mkdir()
    return path


def write_book(tmp_path, text: str, name: str = "book.yml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(path)


def lines(path) -> List[str]:
    try:
        with open(path) as fh:
            return fh.read().splitlines()
    except FileNotFoundError:
        return []


def markers(remote) -> Dict[str, List[str]]:
    """host → the lines its marker file holds (only hosts whose file exists)."""
    return {name: lines(remote / name) for name in sorted(os.listdir(remote)) if re.fullmatch(r"h\d{3}", name)}


def sections(out: str):
    """Default output → [(batch, nbatches, step or None, [hosts shown under it])]."""
    found = []
    for line in out.splitlines():
        m = re.fullmatch(r"== batch (\d+)/(\d+)(?: · step \d+/\d+: (.+?))? \((\d+) hosts?\) ==", line)
        if m:
            found.append((int(m.group(1)), int(m.group(2)), m.group(3), []))
            continue
        m = re.match(r"^(h\d{3}) \| [A-Z]+ \|", line)
        if m and found:
            found[-1][3].append(m.group(1))
    return found


def results_by_host(run) -> Dict[str, List[dict]]:
    out: Dict[str, List[dict]] = {}
    for r in run.json_lines():
        out.setdefault(r["host"], []).append(r)
    return out


def one_line_error(run) -> str:
    err = run.err.strip()
    assert "\n" not in err, run
    assert err.startswith("hostops: error: "), run
    return err


def inventory_with_vars(lab, path, count: int, host_vars=None, group_vars=None, all_vars=None,
                        addresses=None) -> str:
    """An inventory of ``count`` lab hosts with extra variables."""
    entries = lab.host_entries(count, addresses=addresses)
    hosts_map = {}
    for entry in entries:
        name = entry.pop("name")
        hosts_map[name] = {**entry, **(host_vars or {}).get(name, {})}
    data = {"all": {"vars": {"ansible_user": lab.user, "ansible_ssh_private_key_file": lab.user_key,
                             **(all_vars or {})},
                    "children": {"lab": {"vars": dict(group_vars or {}), "hosts": hosts_map}}}}
    with open(path, "w") as fh:
        yaml.safe_dump(data, fh, sort_keys=False)
    return str(path)


def start_hostops(home, *args: str) -> subprocess.Popen:
    env = dict(os.environ, HOME=str(home), PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("SSH_AUTH_SOCK", None)
    return subprocess.Popen([sys.executable, "-m", "hostops", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=str(home), start_new_session=True)


def wait_for(predicate, timeout: float, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(("hostops ended early", proc.returncode, proc.communicate()))
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


@pytest.fixture
def lab_args(known_hosts):
    def make(inv: str) -> List[str]:
        return ["-i", inv, "--known-hosts", known_hosts]
    return make


# ================================================================== steps
@pytest.mark.timeout(120)
def test_steps_run_in_order_on_every_host(hostops, inventory, lab_args, tmp_path, remote):
    book = write_book(tmp_path, f"""
        name: order
        vars: {{dir: {remote}}}
        steps:
          - name: first
            exec: echo first >> {{{{ dir }}}}/{{{{ inventory_hostname }}}}
          - name: second
            exec: sleep 0.$(( 1$(echo {{{{ inventory_hostname }}}} | tr -dc 0-9) % 3 )); echo second >> {{{{ dir }}}}/{{{{ inventory_hostname }}}}
          - name: third
            exec: echo third >> {{{{ dir }}}}/{{{{ inventory_hostname }}}}
          - name: fourth
            exec: echo fourth >> {{{{ dir }}}}/{{{{ inventory_hostname }}}}; echo done {{{{ inventory_hostname }}}}
        """)
    run = hostops("run", book, *lab_args(inventory(20)), "--json")
    assert run.code == 0, run
    assert markers(remote) == {h: ["first", "second", "third", "fourth"] for h in hosts(20)}
    per_host = results_by_host(run)
    assert sorted(per_host) == hosts(20)
    for host, results in per_host.items():
        assert [r["step"] for r in results] == ["first", "second", "third", "fourth"], run
        assert all(r["status"] == "ok" for r in results)
        assert results[-1]["stdout"] == f"done {host}\n"
    assert "20 hosts: 20 ok, 0 failed" in run.err


@pytest.mark.timeout(120)
def test_put_script_get_steps(hostops, inventory, lab_args, tmp_path, remote):
    import hashlib

    payload = secrets.token_bytes(300_000) + b"\x00\xff\r\n" * 10
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "payload.bin").write_bytes(payload)
    (tmp_path / "check.sh").write_text('#!/bin/sh\nset -e\nsha256sum "$1" | cut -c1-64 > "$1.sum"\n'
                                       'echo "checked $2 $(cat "$1.sum")"\n')
    book = write_book(tmp_path, f"""
        name: transfer
        vars: {{dir: {remote}}}
        steps:
          - name: push
            put: {{src: files/payload.bin, dest: "{{{{ dir }}}}/{{{{ inventory_hostname }}}}.bin", mode: "0640"}}
          - name: check
            script: {{src: check.sh, args: ["{{{{ dir }}}}/{{{{ inventory_hostname }}}}.bin", "{{{{ inventory_hostname }}}}"]}}
          - name: fetch
            get: {{src: "{{{{ dir }}}}/{{{{ inventory_hostname }}}}.bin.sum", dest: fetched}}
          - name: fetch back
            get: {{src: "{{{{ dir }}}}/{{{{ inventory_hostname }}}}.bin", dest: fetched}}
        """)
    run = hostops("run", book, *lab_args(inventory(20)), "--json")
    assert run.code == 0, run
    digest = hashlib.sha256(payload).hexdigest()
    per_host = results_by_host(run)
    assert sorted(per_host) == hosts(20)
    for host in hosts(20):
        steps = {r["step"]: r for r in per_host[host]}
        assert all(r["status"] == "ok" for r in steps.values()), steps
        assert steps["check"]["stdout"] == f"checked {host} {digest}\n"
        assert (remote / f"{host}.bin").read_bytes() == payload
        assert stat.S_IMODE(os.stat(remote / f"{host}.bin").st_mode) == 0o640
        # get lands in DEST/<host>/, DEST relative to the runbook's directory
        assert (tmp_path / "fetched" / host / f"{host}.bin").read_bytes() == payload
        assert (tmp_path / "fetched" / host / f"{host}.bin.sum").read_text() == digest + "\n"
    assert sorted(os.listdir(tmp_path / "fetched")) == hosts(20)


# ================================================================== batches
def batch_book(tmp_path, remote, batch: str) -> str:
    return write_book(tmp_path, f"""
        name: batches
        batch: {batch}
        vars: {{dir: {remote}}}
        steps:
          - name: start
            exec: date +%s%N > {{{{ dir }}}}/{{{{ inventory_hostname }}}}.start
          - name: work
            exec: sleep 0.3; echo work >> {{{{ dir }}}}/{{{{ inventory_hostname }}}}
          - name: end
            exec: date +%s%N > {{{{ dir }}}}/{{{{ inventory_hostname }}}}.end
        """)


def check_batches_in_sequence(remote, batches: List[List[str]]) -> None:
    """No host of batch i+1 started before every host of batch i had finished its last step."""
    start = {h: int(lines(remote / f"{h}.start")[0]) for b in batches for h in b}
    end = {h: int(lines(remote / f"{h}.end")[0]) for b in batches for h in b}
    for before, after in zip(batches, batches[1:]):
        last_end = max(end[h] for h in before)
        first_start = min(start[h] for h in after)
        assert last_end < first_start, (before, after, last_end, first_start)


@pytest.mark.timeout(120)
def test_batch_as_number(hostops, inventory, lab_args, tmp_path, remote):
    run = hostops("run", batch_book(tmp_path, remote, "7"), *lab_args(inventory(20)))
    assert run.code == 0, run
    found = sections(run.out)
    assert [(b, n, s, len(hs)) for b, n, s, hs in found] == [
        (b, 3, s, size) for b, size in ((1, 7), (2, 7), (3, 6)) for s in ("start", "work", "end")], run
    batches = [sorted(hs) for b, n, s, hs in found if s == "start"]
    assert batches == [hosts(7), hosts(14, 8), hosts(20, 15)]
    for b, _n, _s, hs in found:  # every step of a batch ran on exactly that batch's hosts
        assert sorted(hs) == batches[b - 1]
    check_batches_in_sequence(remote, batches)
    assert markers(remote) == {h: ["work"] for h in hosts(20)}


@pytest.mark.timeout(120)
def test_batch_as_percentage_json(hostops, inventory, lab_args, tmp_path, remote):
    run = hostops("run", batch_book(tmp_path, remote, "30%"), *lab_args(inventory(20)), "--json")
    assert run.code == 0, run
    results = run.json_lines()
    assert len(results) == 60
    # results come batch after batch: 6 hosts × 3 steps, three times, then 2 hosts × 3 steps
    sizes = [6, 6, 6, 2]
    batches, chunks, i = [], [], 0
    for size in sizes:
        chunk = results[i:i + 3 * size]
        i += 3 * size
        names = sorted({r["host"] for r in chunk})
        assert len(names) == size, chunk
        assert [r["step"] for r in chunk] == ["start"] * size + ["work"] * size + ["end"] * size
        batches.append(names)
        chunks.append(chunk)
    assert batches == [hosts(6), hosts(12, 7), hosts(18, 13), hosts(20, 19)]
    check_batches_in_sequence(remote, batches)

    # the JSON times agree: no result of a batch began before every result of the batch before had ended
    def began(r):
        return datetime.datetime.fromisoformat(r["start"]).timestamp()

    for before, after in zip(chunks, chunks[1:]):
        assert min(began(r) for r in after) >= max(began(r) + r["duration"] for r in before) - 0.005


# ================================================================== max_fail
FAIL_BOOK = """
    name: failing
    batch: 5
    max_fail: {max_fail}
    vars: {{dir: {remote}}}
    steps:
      - name: one
        exec: echo one >> {{{{ dir }}}}/{{{{ inventory_hostname }}}}; case {{{{ inventory_hostname }}}} in {fail}) exit 3;; esac
      - name: two
        exec: echo two >> {{{{ dir }}}}/{{{{ inventory_hostname }}}}
    """


@pytest.mark.timeout(120)
def test_failure_below_max_fail_lets_the_next_batches_run(hostops, inventory, lab_args, tmp_path, remote):
    book = write_book(tmp_path, FAIL_BOOK.format(max_fail=1, remote=remote, fail="h003"))
    run = hostops("run", book, *lab_args(inventory(20)))
    assert run.code == 5, run
    expected = {h: ["one", "two"] for h in hosts(20)}
    expected["h003"] = ["one"]  # a failed host skips the rest of its steps
    assert markers(remote) == expected
    assert [b for b, n, s, hs in sections(run.out) if s == "one"] == [1, 2, 3, 4]
    assert "not touched" not in run.err and "stopped" not in run.err
    assert "20 hosts: 19 ok, 1 failed" in run.err
    assert re.search(r"^h003 +failed +skipped$", run.out, re.M), run


@pytest.mark.timeout(120)
def test_failure_above_max_fail_stops_before_the_next_batch(hostops, inventory, lab_args, tmp_path, remote):
    state_home = tmp_path / "state"
    book = write_book(tmp_path, FAIL_BOOK.format(max_fail=1, remote=remote, fail="h002|h004"))
    run = hostops("run", book, *lab_args(inventory(20)), env={"XDG_STATE_HOME": str(state_home)})
    assert run.code == 5, run
    assert "stopped: 2 host(s) failed, more than max_fail 1: h[002,004]" in run.err
    assert "not touched (15): h[006-020]" in run.err
    # batch 1 ran step one only (the step where the threshold was crossed was the last); nothing else ran
    assert markers(remote) == {h: ["one"] for h in hosts(5)}
    assert [(b, s) for b, n, s, hs in sections(run.out)] == [(1, "one")]
    assert re.search(r"^h010 +untouched +untouched$", run.out, re.M), run
    # the never-touched hosts are recorded: @untouched selects them
    listed = hostops("inventory", "-i", inventory(20), "-l", "@untouched",
                     env={"XDG_STATE_HOME": str(state_home)})
    assert listed.code == 0, listed
    assert [line.split()[0] for line in listed.out.splitlines()] == hosts(20, 6)


@pytest.mark.timeout(120)
def test_max_fail_percentage(hostops, inventory, lab_args, tmp_path, remote):
    """10% of 20 hosts = 2: two failures are tolerated, a third stops the rollout."""
    book = write_book(tmp_path, FAIL_BOOK.format(max_fail="10%", remote=remote, fail="h002|h004"))
    run = hostops("run", book, *lab_args(inventory(20)), "-q")
    assert run.code == 5, run
    assert len(markers(remote)) == 20 and "not touched" not in run.err
    book = write_book(tmp_path, FAIL_BOOK.format(max_fail="10%", remote=remote, fail="h002|h004|h008"),
                      name="three.yml")
    for path in remote.iterdir():
        path.unlink()
    run = hostops("run", book, *lab_args(inventory(20)), "-q")
    assert run.code == 5, run
    assert sorted(markers(remote)) == hosts(10)  # stopped after batch 2, where the third failure was
    assert "not touched (10): h[011-020]" in run.err


@pytest.mark.timeout(120)
def test_when_failed_steps_run_only_where_an_earlier_step_failed(hostops, inventory, lab_args, tmp_path,
                                                                  remote):
    book = write_book(tmp_path, f"""
        name: rescue
        max_fail: 100%
        vars: {{dir: {remote}}}
        steps:
          - name: one
            exec: echo one >> {{{{ dir }}}}/{{{{ inventory_hostname }}}}
          - name: two
            exec: echo two >> {{{{ dir }}}}/{{{{ inventory_hostname }}}}; case {{{{ inventory_hostname }}}} in h005|h013) exit 1;; esac
          - name: three
            exec: echo three >> {{{{ dir }}}}/{{{{ inventory_hostname }}}}
          - name: rescue
            exec: echo rescue >> {{{{ dir }}}}/{{{{ inventory_hostname }}}}
            when_failed: true
        """)
    run = hostops("run", book, *lab_args(inventory(20)), "--json")
    assert run.code == 5, run
    expected = {h: ["one", "two", "three"] for h in hosts(20)}
    expected.update({h: ["one", "two", "rescue"] for h in ("h005", "h013")})
    assert markers(remote) == expected
    rescued = sorted(r["host"] for r in run.json_lines() if r["step"] == "rescue")
    assert rescued == ["h005", "h013"]
    assert "20 hosts: 18 ok, 2 failed" in run.err  # a rescued host still counts as failed


# ================================================================== retries
@pytest.mark.timeout(120)
def test_retries_with_delay(hostops, inventory, lab_args, tmp_path, remote):
    delay = 1.0
    book = write_book(tmp_path, f"""
        name: flaky
        max_fail: 100%
        vars: {{dir: {remote}}}
        steps:
          - name: flaky
            exec: f={{{{ dir }}}}/{{{{ inventory_hostname }}}}.count; n=$(( $(cat $f 2>/dev/null || echo 0) + 1 )); echo $n > $f; echo attempt $n; [ $n -ge {{{{ need }}}} ]
            retries: 3
            delay: {delay}
          - name: after
            exec: echo after >> {{{{ dir }}}}/{{{{ inventory_hostname }}}}
        """)
    run = hostops("run", book, *lab_args(inventory(20)), "-e", "need=3", "--json")
    assert run.code == 0, run
    flaky = [r for r in run.json_lines() if r["step"] == "flaky"]
    assert sorted(r["host"] for r in flaky) == hosts(20)
    for r in flaky:
        assert r["status"] == "ok" and r["stdout"] == "attempt 3\n", r
        assert r["duration"] >= 2 * delay, r
    assert {h: lines(remote / f"{h}.count") for h in hosts(20)} == {h: ["3"] for h in hosts(20)}
    assert markers(remote) == {h: ["after"] for h in hosts(20)}


@pytest.mark.timeout(120)
def test_retries_exhausted_fail_the_host(hostops, inventory, lab_args, tmp_path, remote):
    book = write_book(tmp_path, """
        steps:
          - name: never
            exec: f={{ dir }}/{{ inventory_hostname }}.count; n=$(( $(cat $f 2>/dev/null || echo 0) + 1 )); echo $n > $f; exit 7
            retries: 2
            delay: 0.2
        """)
    run = hostops("run", book, *lab_args(inventory(3)), "-e", f"dir={remote}", "--json")
    assert run.code == 5, run
    for r in run.json_lines():
        assert (r["status"], r["exit_code"], r["error"]) == ("failed", 7, "after 3 attempts"), r
        assert r["duration"] >= 0.4
    assert {h: lines(remote / f"{h}.count") for h in hosts(3)} == {h: ["3"] for h in hosts(3)}


# ================================================================== dry run
@pytest.mark.timeout(120)
def test_dry_run_touches_nothing_and_shows_the_plan(hostops, inventory, lab_args, tmp_path, remote):
    state_home = tmp_path / "state"
    (tmp_path / "app.conf").write_text("conf\n")
    book = write_book(tmp_path, f"""
        name: planned
        batch: 30%
        max_fail: 2
        vars: {{dir: {remote}, greeting: hello}}
        steps:
          - name: touch
            exec: touch {{{{ dir }}}}/{{{{ inventory_hostname }}}}
          - name: push
            put: {{src: app.conf, dest: "{{{{ dir }}}}/{{{{ inventory_hostname }}}}.conf"}}
          - name: greet
            exec: echo {{{{ greeting }}}} {{{{ who }}}}
            retries: 2
            delay: 1
          - name: fetch
            get: {{src: /etc/hostname, dest: fetched}}
        """)
    log = tmp_path / "run.jsonl"
    run = hostops("run", book, *lab_args(inventory(20)), "--dry-run", "-e", "who=world", "--log", str(log),
                  env={"XDG_STATE_HOME": str(state_home)})
    assert run.code == 0, run
    assert os.listdir(remote) == []
    assert not (tmp_path / "fetched").exists()
    assert not log.exists() and not os.path.exists(str(log) + ".last-run.json") and not state_home.exists()
    out = run.out
    assert f"runbook: planned ({book})" in out
    assert "hosts: 20 (h[001-020])" in out
    assert "batches: 4" in out and "max_fail: 2" in out
    for text in ("batch 1: h[001-006] (6)", "batch 2: h[007-012] (6)", "batch 3: h[013-018] (6)",
                 "batch 4: h[019-020] (2)"):
        assert f"  {text}\n" in out, out
    assert "  1. touch [exec]\n" in out
    # hosts whose step differs only by their own name share one line ({host} in its place)
    assert f"       h[001-020]: touch {remote}/{{host}}\n" in out, out
    assert all(f"touch {remote}/{h}" not in out for h in hosts(20)), out
    assert f"       h[001-020]: put {tmp_path / 'app.conf'} {remote}/{{host}}.conf\n" in out, out
    assert "({host} stands for each host's own name)\n" in out
    assert "  3. greet [exec] (retries 2, delay 1s)\n" in out
    assert "       h[001-020]: echo hello world (retries 2, delay 1s)\n" in out  # variables filled in
    assert "  4. fetch [get]" in out
    assert out.rstrip().endswith("dry run: nothing was touched")


# ================================================================== connection reuse
@pytest.fixture(scope="module")
def counting_lab(tmp_path_factory):
    """An sshd of our own with LogLevel INFO, so logins can be counted."""
    server = SSHD(str(tmp_path_factory.mktemp("sshd-info")), addresses=["127.0.0.1", "127.0.0.2"],
                  log_level="INFO")
    server.start()
    yield server
    server.stop()


@pytest.mark.timeout(180)
def test_connection_reuse_one_login_per_host(hostops, counting_lab, tmp_path, remote):
    inv = counting_lab.write_inventory(str(tmp_path / "inv.yml"), 20)
    kh = counting_lab.write_known_hosts(str(tmp_path / "kh"))
    steps = "\n".join(f"  - name: s{i}\n    exec: echo s{i} >> {remote}/{{{{ inventory_hostname }}}}"
                      for i in range(1, 6))
    book = write_book(tmp_path, "name: reuse\nsteps:\n" + steps + "\n")

    def logins(*extra: str) -> int:
        before = counting_lab.count_logins()
        run = hostops("run", book, "-i", inv, "--known-hosts", kh, "-q", *extra)
        assert run.code == 0, run
        time.sleep(0.3)  # sshd's log line may trail the session by a moment
        return counting_lab.count_logins() - before

    assert logins() == 20
    assert markers(remote) == {h: [f"s{i}" for i in range(1, 6)] for h in hosts(20)}
    assert logins("--no-reuse") == 100
    assert markers(remote) == {h: [f"s{i}" for i in range(1, 6)] * 2 for h in hosts(20)}


# ================================================================== state: @failed, @ok
@pytest.mark.timeout(180)
def test_state_after_a_runbook_selects_failed_and_ok(hostops, inventory, lab_args, tmp_path, remote):
    failing = ("h004", "h011", "h017")
    book = write_book(tmp_path, f"""
        name: partly failing
        max_fail: 100%
        vars: {{dir: {remote}}}
        steps:
          - name: deploy
            exec: case {{{{ inventory_hostname }}}} in {"|".join(failing)}) exit 1;; esac
          - name: restart
            exec: echo restart >> {{{{ dir }}}}/{{{{ inventory_hostname }}}}
        """)
    log = tmp_path / "run.jsonl"
    inv = inventory(20)
    run = hostops("run", book, *lab_args(inv), "-q", "--log", str(log))
    assert run.code == 5, run
    state = tmp_path / "run.jsonl.last-run.json"
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o600
    recorded = json.loads(state.read_text())
    assert recorded["hosts"] == {h: ("failed" if h in failing else "ok") for h in hosts(20)}
    for other in ("ok.jsonl", "failed.jsonl"):  # the same state for two more readers
        (tmp_path / (other + ".last-run.json")).write_text(state.read_text())
    # run: rerun the failed hosts from 'restart' on
    for path in remote.iterdir():
        path.unlink()
    again = hostops("run", book, *lab_args(inv), "-l", "@failed", "--start-at", "restart", "--json",
                    "--log", str(tmp_path / "failed.jsonl"))
    assert again.code == 0, again
    assert sorted(r["host"] for r in again.json_lines()) == list(failing)
    assert markers(remote) == {h: ["restart"] for h in failing}
    # exec: @ok selects exactly the others
    ok = hostops("exec", "echo fine", *lab_args(inv), "-l", "@ok", "--json", "--log", str(tmp_path / "ok.jsonl"))
    assert ok.code == 0, ok
    assert sorted(r["host"] for r in ok.json_lines()) == [h for h in hosts(20) if h not in failing]
    # and the rerun's own outcome replaced the state it read
    assert json.loads((tmp_path / "failed.jsonl.last-run.json").read_text())["hosts"] == {
        h: "ok" for h in failing}


@pytest.mark.timeout(180)
def test_state_after_exec_selects_failed_and_ok(hostops, lab, tmp_path):
    state_home = tmp_path / "state"
    env = {"XDG_STATE_HOME": str(state_home)}
    kh = lab.write_known_hosts(str(tmp_path / "kh"))
    inv = lab.write_inventory(str(tmp_path / "inv.yml"), 20, addresses=["127.0.0.1", "127.0.0.2", "127.0.0.3",
                                                                        "127.0.0.4"])
    failing = [h for i, h in enumerate(hosts(20)) if i % 4 == 2]  # the hosts on 127.0.0.3
    cmd = 'set -- $SSH_CONNECTION; [ "$3" != 127.0.0.3 ]'
    run = hostops("exec", cmd, "-i", inv, "--known-hosts", kh, "--json", env=env)
    assert run.code == 5, run
    assert sorted(r["host"] for r in run.json_lines() if r["status"] == "failed") == failing
    state = state_home / "hostops" / os.path.basename(state_path(None, [inv]))  # this inventory's own
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o600
    listed = hostops("inventory", "-i", inv, "-l", "@failed", env=env)  # reads the state, writes none
    assert listed.code == 0, listed
    assert [line.split()[0] for line in listed.out.splitlines()] == failing
    listed = hostops("inventory", "-i", inv, "-l", "@ok:!h001", env=env)
    assert [line.split()[0] for line in listed.out.splitlines()] == [
        h for h in hosts(20) if h not in failing and h != "h001"]
    rerun = hostops("exec", "echo again", "-i", inv, "--known-hosts", kh, "-l", "@failed", "--json", env=env)
    assert rerun.code == 0, rerun
    assert sorted(r["host"] for r in rerun.json_lines()) == failing  # only those hosts ran
    # the rerun recorded its own outcome: nothing has failed any more
    listed = hostops("inventory", "-i", inv, "-l", "@failed", env=env)
    assert listed.code == 2 and "no host matched '@failed'" in listed.err, listed


# ================================================================== canary
CANARY_BOOK = """
    name: canary
    max_fail: 100%
    vars: {{dir: {remote}}}
    steps:
      - name: one
        exec: echo one >> {{{{ dir }}}}/{{{{ inventory_hostname }}}}; [ {{{{ inventory_hostname }}}} != {fail} ]
      - name: two
        exec: echo two >> {{{{ dir }}}}/{{{{ inventory_hostname }}}}
    """


@pytest.mark.timeout(120)
def test_canary_failing_stops_everything(hostops, inventory, lab_args, tmp_path, remote):
    book = write_book(tmp_path, CANARY_BOOK.format(remote=remote, fail="h002"))
    run = hostops("run", book, *lab_args(inventory(20)), "--canary", "2", "--batch", "5")
    assert run.code == 5, run
    assert markers(remote) == {"h001": ["one", "two"], "h002": ["one"]}  # max_fail 100%: the canary stops it
    assert "canary" in run.err and "not touched (18): h[003-020]" in run.err
    assert [(b, n, len(hs)) for b, n, s, hs in sections(run.out) if s == "one"] == [(1, 5, 2)]


@pytest.mark.timeout(120)
def test_canary_passing_lets_the_rest_run(hostops, inventory, lab_args, tmp_path, remote):
    book = write_book(tmp_path, CANARY_BOOK.format(remote=remote, fail="nobody"))
    run = hostops("run", book, *lab_args(inventory(20)), "--canary", "2", "--batch", "9")
    assert run.code == 0, run
    assert markers(remote) == {h: ["one", "two"] for h in hosts(20)}
    assert [(b, sorted(hs)) for b, n, s, hs in sections(run.out) if s == "one"] == [
        (1, hosts(2)), (2, hosts(11, 3)), (3, hosts(20, 12))]


@pytest.mark.timeout(120)
def test_exec_canary(hostops, lab, tmp_path):
    kh = lab.write_known_hosts(str(tmp_path / "kh"))
    log = tmp_path / "ran.log"
    entries = lab.host_entries(20, addresses=["127.0.0.1"])
    entries[0]["ansible_host"] = "127.0.0.3"  # h001, a canary, fails
    inv = lab.write_inventory(str(tmp_path / "inv.yml"), 0, extra_hosts=entries)
    cmd = f'set -- $SSH_CONNECTION; echo "$3" >> {log}; [ "$3" != 127.0.0.3 ]'
    run = hostops("exec", cmd, "-i", inv, "--known-hosts", kh, "--canary", "3", "--json")
    assert run.code == 5, run
    assert sorted(r["host"] for r in run.json_lines()) == hosts(3)
    assert sorted(lines(log)) == ["127.0.0.1", "127.0.0.1", "127.0.0.3"]
    assert "not touched (17): h[004-020]" in run.err


# ================================================================== exec: --batch, --max-fail, --pause
@pytest.fixture
def host3_fails(lab, tmp_path):
    """20 hosts; h003 connects to 127.0.0.3, where the command fails; every run appends to LOG."""
    kh = lab.write_known_hosts(str(tmp_path / "kh"))
    entries = lab.host_entries(20, addresses=["127.0.0.1"])
    entries[2]["ansible_host"] = "127.0.0.3"
    inv = lab.write_inventory(str(tmp_path / "inv3.yml"), 0, extra_hosts=entries)
    log = tmp_path / "ran.log"
    cmd = f'set -- $SSH_CONNECTION; echo "$3 $(date +%s%N)" >> {log}; [ "$3" != 127.0.0.3 ]'
    return ["-i", inv, "--known-hosts", kh], cmd, log


@pytest.mark.timeout(120)
def test_exec_batch_max_fail_stops_after_first_batch(hostops, host3_fails):
    args, cmd, log = host3_fails
    run = hostops("exec", cmd, *args, "--batch", "5", "--max-fail", "0", "--json")
    assert run.code == 5, run
    results = {r["host"]: r["status"] for r in run.json_lines()}
    assert results == {"h001": "ok", "h002": "ok", "h003": "failed", "h004": "ok", "h005": "ok"}
    ran = [line.split()[0] for line in lines(log)]
    assert sorted(ran) == ["127.0.0.1"] * 4 + ["127.0.0.3"]  # five commands ran, no more
    assert "not touched (15): h[006-020]" in run.err
    assert "20 hosts:" in run.err


@pytest.mark.timeout(120)
def test_exec_batch_failure_within_max_fail_runs_all(hostops, host3_fails):
    args, cmd, log = host3_fails
    run = hostops("exec", cmd, *args, "--batch", "25%", "--max-fail", "1")
    assert run.code == 5, run
    assert len(lines(log)) == 20
    assert [(b, n, len(hs)) for b, n, s, hs in sections(run.out)] == [(i, 4, 5) for i in (1, 2, 3, 4)]
    assert "not touched" not in run.err


@pytest.mark.timeout(120)
def test_exec_without_max_fail_never_stops(hostops, host3_fails):
    args, cmd, log = host3_fails
    run = hostops("exec", cmd, *args, "--batch", "2", "-q")
    assert run.code == 5, run
    assert len(lines(log)) == 20 and "not touched" not in run.err


@pytest.mark.timeout(120)
def test_exec_pause_between_batches(hostops, lab, tmp_path):
    kh = lab.write_known_hosts(str(tmp_path / "kh"))
    inv = lab.write_inventory(str(tmp_path / "inv.yml"), 20)
    log = tmp_path / "ran.log"
    run = hostops("exec", f"date +%s%N >> {log}", "-i", inv, "--known-hosts", kh, "--batch", "10",
                  "--pause", "2", "--json")
    assert run.code == 0, run
    stamps = sorted(int(x) / 1e9 for x in lines(log))
    assert len(stamps) == 20
    assert stamps[10] - stamps[9] >= 2.0, stamps  # the second batch began after the pause
    starts = [r["start"] for r in run.json_lines()]
    assert min(starts[10:]) > max(starts[:10])


# ================================================================== --lock
@pytest.mark.timeout(120)
def test_lock_second_run_exits_at_once_with_code_6(hostops, isolated_home, inventory, lab_args, tmp_path,
                                                   remote):
    """The first run holds the lock in a step that lasts until the test says so (at most 30 s), so a
    second run that waited for the lock instead of leaving at once could not finish in time."""
    lock = tmp_path / "deploy.lock"
    release = tmp_path / "release"
    book = write_book(tmp_path, f"""
        name: slow
        steps:
          - name: hold
            exec: touch {remote}/started-{{{{ inventory_hostname }}}}; i=0; while [ ! -e {release} ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
          - name: done
            exec: echo done >> {remote}/{{{{ inventory_hostname }}}}
        """)
    inv = inventory(3)
    first = start_hostops(isolated_home, "run", book, *lab_args(inv), "--lock", str(lock), "-q")
    try:
        wait_for(lambda: all((remote / f"started-{h}").exists() for h in hosts(3)), 60, first)
        second = hostops("run", book, *lab_args(inv), "--lock", str(lock), "-q", timeout=25)
        assert second.code == 6, second
        err = one_line_error(second)
        assert f"another hostops run holds the lock {lock} (pid {first.pid}); not starting" in err
        assert first.poll() is None, "the first run should still hold the lock"
        exec_second = hostops("exec", "touch should-not-exist", *lab_args(inv), "--lock", str(lock), timeout=25)
        assert exec_second.code == 6, exec_second
        assert first.poll() is None
        release.write_text("")
        out, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
    assert first.returncode == 0, (out, err)
    # the second run did not wait for the lock: it ended while the first still held it (above)
    assert markers(remote) == {h: ["done"] for h in hosts(3)}  # the second run added nothing
    assert not (isolated_home / "should-not-exist").exists()
    third = hostops("exec", "true", *lab_args(inv), "--lock", str(lock), "-q")  # released: runs again
    assert third.code == 0, third


# ================================================================== --start-at, variables
START_BOOK = """
    name: start at
    vars: {{dir: {remote}}}
    steps:
      - name: one
        exec: echo one >> {{{{ dir }}}}/{{{{ inventory_hostname }}}}
      - name: two
        exec: echo two >> {{{{ dir }}}}/{{{{ inventory_hostname }}}}
      - name: three
        exec: echo three >> {{{{ dir }}}}/{{{{ inventory_hostname }}}}
      - name: four
        exec: echo four >> {{{{ dir }}}}/{{{{ inventory_hostname }}}}
    """


@pytest.mark.timeout(120)
def test_start_at_skips_earlier_steps(hostops, inventory, lab_args, tmp_path, remote):
    book = write_book(tmp_path, START_BOOK.format(remote=remote))
    run = hostops("run", book, *lab_args(inventory(20)), "--start-at", "three", "--json")
    assert run.code == 0, run
    assert markers(remote) == {h: ["three", "four"] for h in hosts(20)}
    assert {r["step"] for r in run.json_lines()} == {"three", "four"}
    for path in remote.iterdir():
        path.unlink()
    run = hostops("run", book, *lab_args(inventory(20)), "--start-at", "2", "-q")  # by number
    assert run.code == 0, run
    assert markers(remote) == {h: ["two", "three", "four"] for h in hosts(20)}


@pytest.mark.timeout(120)
def test_extra_vars_beat_runbook_vars_beat_inventory_vars(hostops, lab, known_hosts, tmp_path):
    inv = inventory_with_vars(lab, tmp_path / "inv.yml", 20,
                              all_vars={"a": "inv-all", "b": "inv-all", "c": "inv-all", "d": "inv-all"},
                              group_vars={"a": "inv-group", "b": "inv-group", "c": "inv-group"},
                              host_vars={"h001": {"a": "inv-h001", "b": "inv-h001", "c": "inv-h001"}})
    book = write_book(tmp_path, """
        name: vars
        vars: {b: book, c: book}
        steps:
          - name: show
            exec: echo a={{ a }} b={{ b }} c={{ c }} d={{ d }} host={{ inventory_hostname }}
        """)
    run = hostops("run", book, "-i", inv, "--known-hosts", known_hosts, "-e", "c=cli", "-e", "d=cli d", "--json")
    assert run.code == 0, run
    out = {r["host"]: r["stdout"] for r in run.json_lines()}
    assert sorted(out) == hosts(20)
    assert out["h001"] == "a=inv-h001 b=book c=cli d=cli d host=h001\n"
    for h in hosts(20, 2):
        assert out[h] == f"a=inv-group b=book c=cli d=cli d host={h}\n"


# ================================================================== broken runbooks
MARK = "touch {remote}/ran-{{{{ inventory_hostname }}}}"
BROKEN = {
    "unknown step kind": ("steps:\n  - name: a\n    exec: {mark}\n  - name: b\n    shell: ls\n", 5,
                          "unknown step kind 'shell'"),
    "unknown step key": ("steps:\n  - name: a\n    exec: {mark}\n    retry: 3\n", 4, "unknown key 'retry'"),
    "unknown top-level key": ("name: x\nstep:\n  - exec: ls\nsteps:\n  - exec: {mark}\n", 2,
                              "unknown key 'step'"),
    "bad batch": ("name: x\nbatch: ten\nsteps:\n  - exec: {mark}\n", 2, "batch 'ten' must be a number"),
    "bad max_fail": ("name: x\nmax_fail: 150%\nsteps:\n  - exec: {mark}\n", 2, "max_fail '150%' is more than 100%"),
    "missing put src": ("steps:\n  - name: a\n    exec: {mark}\n  - name: push\n    put: {{src: nope.txt, dest: /tmp/x}}\n",
                        4, "nope.txt: no such file or directory"),
    "YAML syntax error": ("steps:\n  - name: a\n    exec: {mark}\n   oops: [\n", 4, "YAML syntax error"),
    "missing variable": ("steps:\n  - name: a\n    exec: {mark}\n  - name: b\n    exec: echo {{{{ nope }}}}\n", 4,
                         "variable 'nope' is not defined"),
    "two kinds": ("steps:\n  - name: a\n    exec: {mark}\n  - name: b\n    exec: ls\n    get: {{src: /a, dest: b}}\n",
                  4, "must have exactly one of exec, put, get, script"),
    "duplicate names": ("steps:\n  - name: a\n    exec: {mark}\n  - name: a\n    exec: ls\n", 4,
                        "two steps are named 'a'"),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_runbook_exit_2_file_and_line_nothing_run(hostops, inventory, lab_args, tmp_path, remote, case):
    text, line, fragment = BROKEN[case]
    book = tmp_path / "broken.yml"
    book.write_text(text.format(mark=MARK.format(remote=remote)))
    run = hostops("run", str(book), *lab_args(inventory(20)))
    assert run.code == 2, run
    err = one_line_error(run)
    assert err.startswith(f"hostops: error: {book}:{line}: "), err
    assert fragment in err, err
    assert os.listdir(remote) == [] and run.out == ""


@pytest.mark.timeout(120)
def test_start_at_unknown_step(hostops, inventory, lab_args, tmp_path, remote):
    book = write_book(tmp_path, START_BOOK.format(remote=remote))
    run = hostops("run", book, *lab_args(inventory(20)), "--start-at", "five")
    assert run.code == 2, run
    err = one_line_error(run)
    # the mistake is on the command line, not in the file: the file is named, with its steps
    assert f"--start-at 'five': no such step in {book} (steps: one, two, three, four)" in err
    assert os.listdir(remote) == [] and run.out == ""


# ================================================================== kept connections and batches
def established_to(port: int) -> int:
    """Established TCP connections whose local (server) port is ``port``: the sshd's side."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                rows = fh.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


@pytest.mark.timeout(120)
def test_finished_batches_do_not_keep_their_connections(hostops, isolated_home, lab, inventory, lab_args,
                                                        tmp_path, remote):
    book = write_book(tmp_path, f"""
        name: idle connections
        batch: 5
        steps:
          - name: a
            exec: "true"
          - name: b
            exec: touch {remote}/{{{{ inventory_hostname }}}}.b; sleep 2
        """)
    proc = start_hostops(isolated_home, "run", book, *lab_args(inventory(20)), "-q")
    try:
        wait_for(lambda: all((remote / f"{h}.b").exists() for h in hosts(20, 16)), 60, proc)
        during_last_batch = established_to(lab.port)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, (out, err)
    assert during_last_batch == 5, f"{during_last_batch} SSH connections open while only batch 4 (5 hosts) runs"


@pytest.mark.timeout(120)
def test_log_end_record_counts_hosts_not_step_results(hostops, inventory, lab_args, tmp_path, remote):
    book = write_book(tmp_path, START_BOOK.format(remote=remote), name="steps.yml")
    log = tmp_path / "run.jsonl"
    run = hostops("run", book, *lab_args(inventory(20)), "-q", "--log", str(log))
    assert run.code == 0, run
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records[0]["event"] == "start" and len(records[0]["hosts"]) == 20
    assert sum(1 for r in records if r["event"] == "host") == 80  # one record per host and step
    end = records[-1]
    assert end["event"] == "end"
    assert (end["summary"]["hosts"], end["summary"]["counts"]["ok"]) == (20, 20), end
