"""Host-key advice that works as written (issue 14): the hints hostops prints are pasted into a
real shell and must do what they say; ``keys accept --fingerprint`` matching nothing fails;
accept-new says which keys it added; the known_hosts lock leaves no file behind.

Against the real test sshd (8 loopback addresses, one host key): an inventory's hosts h001…
are spread over the addresses, so a known_hosts naming some addresses leaves the others' hosts
"unknown"."""
from __future__ import annotations

import base64
import fcntl
import hashlib
import os
import re
import shlex
import subprocess
import sys
import threading

import pytest
from conftest import ROOT

from hostops import hostkeys
from hostops import knownhosts_write as khw

pytestmark = pytest.mark.timeout(240)
FAST = ["--start-method", "fork", "--processes", "2", "--no-progress", "--connect-timeout", "20"]


def fp_of(pub_line: str) -> str:
    blob = base64.b64decode(pub_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


@pytest.fixture
def shell(tmp_path, isolated_home):
    """``shell(command_line) -> CompletedProcess``: a line run by /bin/sh as a user's paste,
    with ``hostops`` on PATH (a shim running this tree's package)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    shim = bindir / "hostops"
    shim.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m hostops \"$@\"\n")
    shim.chmod(0o755)
    env = dict(os.environ, HOME=str(isolated_home), PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("SSH_AUTH_SOCK", None)
    env.pop("HOSTOPS_INVENTORY", None)

    def run(line: str) -> subprocess.CompletedProcess:
        return subprocess.run(["/bin/sh", "-c", line], capture_output=True, text=True, env=env, timeout=180,
                              cwd=str(isolated_home))
    return run


def pasted_commands(stderr: str) -> list:
    """The lines a user would paste: the hint's indented ``hostops …`` commands."""
    return [line.strip() for line in stderr.splitlines() if line.startswith("  hostops ")]


def _odd_dir(tmp_path):
    """A directory whose name needs quoting in a shell (space, quote, dollar)."""
    d = tmp_path / "ops team's $files"
    d.mkdir()
    return d


# ------------------------------------------------------------------ the end-of-run hint
def test_unknown_key_hint_names_the_run_and_works_when_pasted(hostops, lab, tmp_path, shell):
    d = _odd_dir(tmp_path)
    inv = lab.write_inventory(str(d / "inv.yml"), 12)  # h001-h012 over 8 addresses
    kh = d / "known hosts"
    lab.write_known_hosts(str(kh), lab.addresses[:4])  # .1-.4 known: h001-004, h009-012
    lab_fp = fp_of(lab.host_pub)

    run = hostops("exec", "echo ran", "-i", inv, "-l", "lab", "--known-hosts", str(kh), *FAST)
    assert run.code == 4, run
    assert "4 hosts refused: host key not in known_hosts: h[005-008]" in run.err, run
    commands = pasted_commands(run.err)
    assert len(commands) == 2, run
    scan, accept = commands
    assert shlex.split(scan) == ["hostops", "keys", "scan", "-i", inv, "-l", "h005,h006,h007,h008", "--known-hosts", str(kh)]
    assert shlex.split(accept) == ["hostops", "keys", "accept", "-i", inv, "-l", "h005,h006,h007,h008",
                                   "--known-hosts", str(kh), "--fingerprint", lab_fp]
    # the per-host errors no longer suggest a command that would act on other hosts
    assert "keys accept --fingerprint" not in run.out + run.err

    pasted = shell(scan)
    assert pasted.returncode == 0, pasted
    assert "h[005-008] (4) | NEW" in pasted.stdout, pasted
    assert "4 hosts: 0 known, 4 new" in pasted.stderr, pasted
    before = kh.read_text()
    pasted = shell(accept)
    assert pasted.returncode == 0, pasted
    assert "4 recorded (4 new lines in" in pasted.stderr, pasted
    assert len(kh.read_text().splitlines()) == len(before.splitlines()) + 4

    again = hostops("exec", "echo ran", "-i", inv, "-l", "lab", "--known-hosts", str(kh), *FAST)
    assert again.code == 0, again
    assert "refused" not in again.err and not pasted_commands(again.err)


def test_hint_in_json_mode_is_on_stderr_and_keeps_the_user_pattern_when_narrowing_fails(hostops, lab, tmp_path):
    inv = lab.write_inventory(str(tmp_path / "inv.yml"), 3, extra_hosts=[
        # a host whose name holds a comma: no narrowed -l can name it alone
        {"name": "odd,name", "ansible_host": lab.addresses[5], "ansible_port": lab.port},
        {"name": "web1", "ansible_host": lab.addresses[0], "ansible_port": lab.port}])
    kh = tmp_path / "kh"
    lab.write_known_hosts(str(kh), lab.addresses[:1])  # only web1 (and h001) known
    run = hostops("exec", "echo ran", "-i", inv, "-l", "odd*,web1", "--known-hosts", str(kh), "--json", *FAST)
    assert run.code == 4, run
    records = run.json_lines()  # stdout holds JSON only
    assert {r["host"]: r["status"] for r in records} == {"odd,name": "unreachable", "web1": "ok"}
    scan, accept = pasted_commands(run.err)
    assert shlex.split(scan)[3:] == ["-i", inv, "-l", "odd*,web1", "--known-hosts", str(kh)]  # the user's own -l
    assert "'odd*,web1'" in scan  # quoted: the shell does not glob it


def test_adhoc_hosts_and_port_are_kept_in_the_hint(hostops, lab, tmp_path, shell):
    kh = tmp_path / "kh"
    kh.write_text("")
    user_key = ["-k", lab.user_key, "-u", lab.user]
    run = hostops("exec", "true", "-H", lab.addresses[2], "-H", lab.addresses[3], "-p", str(lab.port),
                  "--known-hosts", str(kh), *user_key, *FAST)
    assert run.code == 4, run
    scan, accept = pasted_commands(run.err)
    argv = shlex.split(accept)
    assert argv[3:9] == ["-H", lab.addresses[2], "-H", lab.addresses[3], "-p", str(lab.port)], accept
    assert argv[-2:] == ["--fingerprint", fp_of(lab.host_pub)]
    pasted = shell(accept)
    assert pasted.returncode == 0, pasted
    assert "2 recorded" in pasted.stderr
    assert hostops("exec", "true", "-H", lab.addresses[2], "-H", lab.addresses[3], "-p", str(lab.port),
                   "--known-hosts", str(kh), *user_key, *FAST).code == 0


def test_hint_records_where_ssh_config_says_the_keys_live(hostops, lab, tmp_path, shell):
    """No --known-hosts, but ssh_config's UserKnownHostsFile names another file: the pasted
    accept must write there, where the next run looks."""
    inv = lab.write_inventory(str(tmp_path / "inv.yml"), 2)
    work = tmp_path / "kh_work"  # (sshconfig.py splits UserKnownHostsFile on spaces, even quoted)
    cfg = tmp_path / "ssh config"
    cfg.write_text(f'Host *\n  UserKnownHostsFile "{work}"\n')
    run = hostops("exec", "true", "-i", inv, "--ssh-config", str(cfg), *FAST)
    assert run.code == 4, run
    scan, accept = pasted_commands(run.err)
    assert shlex.split(accept)[3:11] == ["-i", inv, "--ssh-config", str(cfg), "--known-hosts", str(work),
                                         "--fingerprint", fp_of(lab.host_pub)], accept
    pasted = shell(accept)
    assert pasted.returncode == 0 and "2 recorded" in pasted.stderr, pasted
    assert hostops("exec", "true", "-i", inv, "--ssh-config", str(cfg), *FAST).code == 0


def test_scan_block_advice_names_the_inventory_and_those_hosts(hostops, lab, tmp_path, shell):
    d = _odd_dir(tmp_path)
    inv = lab.write_inventory(str(d / "inv.yml"), 8)
    kh = tmp_path / "kh"
    lab.write_known_hosts(str(kh), lab.addresses[:6])  # h007, h008 new
    run = hostops("keys", "scan", "-i", inv, "--known-hosts", str(kh), *FAST)
    assert run.code == 0, run
    advice = [line for line in run.out.splitlines() if "hostops keys accept" in line]
    assert len(advice) == 1, run
    command = advice[0].split("then: ", 1)[1]
    assert shlex.split(command) == ["hostops", "keys", "accept", "-i", inv, "-l", "h007,h008", "--known-hosts",
                                    str(kh), "--fingerprint", fp_of(lab.host_pub)]
    pasted = shell(command)
    assert pasted.returncode == 0 and "2 recorded" in pasted.stderr, pasted


# ------------------------------------------------------------------ accept --fingerprint matching nothing
def test_accept_with_a_fingerprint_matching_no_host_fails(hostops, lab, tmp_path):
    inv = lab.write_inventory(str(tmp_path / "inv.yml"), 2)
    kh = tmp_path / "kh"
    kh.write_text("")
    wrong = "SHA256:" + "A" * 43
    run = hostops("keys", "accept", "-i", inv, "--known-hosts", str(kh), "--fingerprint", wrong, *FAST)
    assert run.code == 4, run
    lines = [line for line in run.err.splitlines() if "matched no key" in line]
    assert len(lines) == 1 and wrong in lines[0] and "h[001-002]" in lines[0], run
    assert kh.read_text() == ""
    # no -i: no inventory at all is a usage error before anything is scanned (never "0 hosts", exit 0)
    run = hostops("keys", "accept", "--known-hosts", str(kh), "--fingerprint", wrong, *FAST)
    assert run.code == 2 and "no inventory given" in run.err, run
    # the right fingerprint still records, exit 0
    ok = hostops("keys", "accept", "-i", inv, "--known-hosts", str(kh), "--fingerprint", fp_of(lab.host_pub), *FAST)
    assert ok.code == 0 and "matched no key" not in ok.err, ok


# ------------------------------------------------------------------ accept-new says what it added
def test_accept_new_says_permanently_added_per_key(hostops, lab, tmp_path):
    inv = lab.write_inventory(str(tmp_path / "inv.yml"), 3)
    kh = tmp_path / "kh"
    run = hostops("exec", "echo ran", "-i", inv, "--known-hosts", str(kh), "--host-key-policy", "accept-new",
                  "--json", *FAST)
    assert run.code == 0, run
    assert len(run.json_lines()) == 3 and "Permanently" not in run.out  # never in --json stdout
    added = [line for line in run.err.splitlines() if "Permanently added" in line]
    assert len(added) == 3, run
    for i in range(3):
        name = f"[{lab.addresses[i]}]:{lab.port}"
        assert any(f"Permanently added '{name}' (ED25519 {fp_of(lab.host_pub)}) to the list of known hosts "
                   f"({kh}) for h00{i + 1}" in line for line in added), run
    again = hostops("exec", "echo ran", "-i", inv, "--known-hosts", str(kh), "--host-key-policy", "accept-new", *FAST)
    assert again.code == 0 and "Permanently added" not in again.err, again


def test_accept_new_folds_many_keys_into_one_line_and_quiet_hides_it(hostops, lab, tmp_path):
    inv = lab.write_inventory(str(tmp_path / "inv.yml"), 16)  # 8 addresses: 8 keys
    kh = tmp_path / "kh"
    run = hostops("exec", "echo ran", "-i", inv, "--known-hosts", str(kh), "--host-key-policy", "accept-new",
                  "-f", "16", *FAST)
    assert run.code == 0, run
    added = [line for line in run.err.splitlines() if "Permanently added" in line]
    assert len(added) == 1, run
    assert f"Permanently added 8 host keys (ED25519) to the list of known hosts ({kh}): " in added[0]
    assert len(kh.read_text().splitlines()) == 8
    kh2 = tmp_path / "kh2"
    quiet = hostops("exec", "echo ran", "-i", inv, "--known-hosts", str(kh2), "--host-key-policy", "accept-new",
                    "-q", *FAST)
    assert quiet.code == 0 and "Permanently added" not in quiet.err, quiet  # as ssh -q
    assert len(kh2.read_text().splitlines()) == 8


# ------------------------------------------------------------------ no lock file left
def test_no_lock_file_beside_known_hosts_after_runs(hostops, lab, tmp_path, isolated_home):
    inv = lab.write_inventory(str(tmp_path / "inv.yml"), 8)
    ssh_dir = isolated_home / ".ssh"
    ssh_dir.mkdir(mode=0o700)
    (ssh_dir / "known_hosts.lock").write_text("")  # left by an older hostops: removed
    run = hostops("exec", "true", "-i", inv, "--host-key-policy", "accept-new", *FAST)
    assert run.code == 0, run
    run = hostops("keys", "forget", "-i", inv, "-l", "h001")
    assert run.code == 0, run
    assert sorted(os.listdir(ssh_dir)) == ["known_hosts"]
    assert len((ssh_dir / "known_hosts").read_text().splitlines()) == 7


def test_old_lock_file_held_by_another_process_is_left_alone(tmp_path, keys_ab):
    path = str(tmp_path / "known_hosts")
    old = tmp_path / "known_hosts.lock"
    old.write_text("")
    fd = os.open(str(old), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # an older hostops, still running
        khw.record_keys(path, [("h", keys_ab[0].get_name(), keys_ab[0].asbytes())])
        assert old.exists()
    finally:
        os.close(fd)
    khw.record_keys(path, [("h2", keys_ab[0].get_name(), keys_ab[0].asbytes())])
    assert not old.exists()


@pytest.fixture
def keys_ab():
    import paramiko

    return [paramiko.Ed25519Key.from_private_key_file(p) for p in _two_keys()]


def _two_keys():
    import tempfile

    d = tempfile.mkdtemp()
    paths = []
    for name in ("a", "b"):
        p = os.path.join(d, name)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", p], check=True)
        paths.append(p)
    return paths


def test_lock_wait_is_bounded_and_names_the_file(tmp_path, keys_ab, monkeypatch):
    path = tmp_path / "known_hosts"
    path.write_text("")
    monkeypatch.setattr(khw, "LOCK_WAIT", 0.3)
    fd = os.open(str(path), os.O_RDONLY)  # read access is enough to hold an flock: bounded, not endless
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(khw.KnownHostsError, match=f"cannot lock {re.escape(str(path))}"):
            khw.record_keys(str(path), [("h", keys_ab[0].get_name(), keys_ab[0].asbytes())])
    finally:
        os.close(fd)
    assert path.read_text() == ""


def test_a_writer_that_waited_while_the_file_was_replaced_writes_to_the_new_file(tmp_path, keys_ab, monkeypatch):
    """Another process holds the lock and renames a new file into place (as keys forget does);
    a writer that had opened the old file must not append to it once it gets the lock."""
    path = tmp_path / "known_hosts"
    path.write_text("old-content ssh-ed25519 AAAA\n")
    holder = os.open(str(path), os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)
    opened = threading.Event()
    real_open = khw._open_nofollow

    def spy(p, flags, mode=0o600):
        fd = real_open(p, flags, mode)
        opened.set()
        return fd
    monkeypatch.setattr(khw, "_open_nofollow", spy)
    key = keys_ab[0]
    errors = []

    def write():
        try:
            khw.record_keys(str(path), [("h", key.get_name(), key.asbytes())])
        except Exception as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)
    t = threading.Thread(target=write)
    t.start()
    try:
        assert opened.wait(30)
        new = tmp_path / "new"
        new.write_text("new-content ssh-ed25519 BBBB\n")
        os.rename(new, path)
    finally:
        os.close(holder)
    t.join(30)
    assert not t.is_alive() and not errors
    lines = path.read_text().splitlines()
    assert lines[0] == "new-content ssh-ed25519 BBBB" and len(lines) == 2 and lines[1].startswith("h ssh-ed25519 ")


# ------------------------------------------------------------------ units: folding and re-selecting
@pytest.mark.parametrize("hosts, pattern", [
    (["web01", "web02", "web03", "db2"], "db2,web01,web02,web03"),
    (["h10", "h2", "h3", "h2"], "h2,h3,h10"),
    (["x.example.com"], "x.example.com"),
    (["node1a", "node2a", "node10a"], "node1a,node2a,node10a"),
])
def test_host_pattern_lists_names_as_ansible_patterns_have_no_name_ranges(hosts, pattern):
    assert hostkeys.host_pattern(hosts) == pattern


def test_reselect_narrows_only_when_the_inventory_agrees(tmp_path):
    from hostops.inventory import Inventory

    path = tmp_path / "inv.yml"
    path.write_text("web:\n  hosts:\n    web01:\n    web02:\n    web03:\n")
    select = Inventory.load([str(path)]).select  # the real pattern language (names, no name ranges)
    r = hostkeys.Reselect(("inv a.yml",), (), "web", None, None, ("k h",), select)
    assert r.args(["web01", "web02"]) == ["-i", "inv a.yml", "-l", "web01,web02", "--known-hosts", "k h"]
    assert r.args(["web01", "web02", "web03"])[3] == "web"  # the user's pattern is shorter and exact
    assert r.args(["nope"])[3] == "web"  # cannot be narrowed: the user's own
    assert r.command("scan", ["web01"]) == "hostops keys scan -i 'inv a.yml' -l web01 --known-hosts 'k h'"
    assert hostkeys.Reselect().command("scan") == "hostops keys scan"


class _Recorder:
    """The renderer under KeyAdvice: records what reaches it."""

    def __init__(self):
        self.calls = []

    def result(self, result):
        self.calls.append(("result", result.host))

    def warning(self, message):
        self.calls.append(("warning", message))

    def finish(self, report):
        self.calls.append(("finish", report))


def test_jump_host_hint_scans_the_jump_host_directly():
    import io

    from hostops.cli.hints import KeyAdvice
    from hostops.results import HostResult

    inner, err = _Recorder(), io.StringIO()
    advice = KeyAdvice(inner, hostkeys.Reselect(("inv.yml",), known_hosts=("my kh",)), err=err)
    for host in ("web1", "web2"):
        advice.result(HostResult(host, "unreachable", error=(
            "jump host bastion for " + host + ": host key unknown for [10.0.0.9]:2222 (ssh-ed25519 SHA256:abc); "
            "not in my kh. Check the fingerprint, then record it with hostops keys accept")))
    advice.result(HostResult("web3", "ok"))
    advice.finish("report")
    assert [c[0] for c in inner.calls] == ["result", "result", "result", "finish"]  # everything still rendered
    lines = err.getvalue().splitlines()
    assert lines[0].startswith("hostops: jump host [10.0.0.9]:2222 refused (for web[1-2])"), lines
    assert lines[1:] == ["  hostops keys scan -H 10.0.0.9:2222 --known-hosts 'my kh'",
                         "  hostops keys accept -H 10.0.0.9:2222 --known-hosts 'my kh' --fingerprint SHA256:abc"]
