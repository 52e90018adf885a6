"""``hostops keys scan | accept | forget`` and host-key checking end to end, against the real
test sshd and a second sshd with another host key (the "changed" case)."""
from __future__ import annotations

import base64
import hashlib
import os
import re
import shlex
import shutil
import stat
import struct
import subprocess
import sys

import pytest
from conftest import ROOT
from sshlab import SSHD, free_port

pytestmark = pytest.mark.timeout(180)


def fp_of(pub_line: str) -> str:
    blob = base64.b64decode(pub_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


@pytest.fixture
def other(lab, tmp_path):
    """A second sshd on 127.0.0.1 (another port) with its own host key; same user key."""
    server = SSHD(str(tmp_path / "other-sshd"), addresses=["127.0.0.1"], user_key=lab.user_key,
                  host_key_name="ssh_host_ed25519_other")
    server.start()
    yield server
    server.stop()


def by_host(run):
    return {r["host"]: r for r in run.json_lines()}


@pytest.mark.timeout(120)
def test_scan_known_new_changed_error_on_thirty_hosts(hostops, lab, other, tmp_path):
    closed = {"name": "closed", "ansible_host": "127.0.0.1", "ansible_port": free_port()}
    twins = [{"name": f"other{i}", "ansible_host": "127.0.0.1", "ansible_port": other.port} for i in (1, 2)]
    inv = lab.write_inventory(str(tmp_path / "inv.yml"), 30, extra_hosts=twins + [closed])
    kh = tmp_path / "known_hosts"
    # .1-.4 known; the second sshd's address claims the first sshd's key: "changed"
    lab.write_known_hosts(str(kh), lab.addresses[:4])
    with open(kh, "a") as fh:
        fh.write(f"[127.0.0.1]:{other.port} {' '.join(lab.host_pub.split()[:2])}\n")
    before = kh.read_text()
    lab_fp, other_fp = fp_of(lab.host_pub), fp_of(other.host_pub)

    run = hostops("keys", "scan", "-i", inv, "--known-hosts", str(kh), "--json", "--connect-timeout", "5")
    assert run.code == 4, run  # a changed key (and an unreachable host) is not a clean scan
    hosts = by_host(run)
    assert len(hosts) == 33
    for i in range(1, 31):
        r = hosts[f"h{i:03d}"]
        addr = lab.addresses[(i - 1) % 8]
        assert r["address"] == f"[{addr}]:{lab.port}"
        assert (r["key_type"], r["fingerprint"]) == ("ssh-ed25519", lab_fp)
        assert r["state"] == ("known" if addr in lab.addresses[:4] else "new"), r
    for name in ("other1", "other2"):
        r = hosts[name]
        assert r["state"] == "changed" and r["fingerprint"] == other_fp
        assert r["known"] == [{"key_type": "ssh-ed25519", "fingerprint": lab_fp, "file": str(kh), "line": 5}]
    assert hosts["closed"]["state"] == "error" and "cannot connect" in hosts["closed"]["error"]
    assert kh.read_text() == before  # a scan writes nothing

    run = hostops("keys", "scan", "-i", inv, "--known-hosts", str(kh), "--connect-timeout", "5")
    assert run.code == 4, run
    out = run.out
    known_hosts = "h[001-004,009-012,017-020,025-028] (16) | KNOWN"
    new_hosts = "h[005-008,013-016,021-024,029-030] (14) | NEW"
    assert known_hosts in out and new_hosts in out, run
    block = out[out.index(new_hosts):]
    assert f"ssh-ed25519 {lab_fp}" in block.splitlines()[2]
    assert "other[1-2] (2) | HOST KEY CHANGED" in out
    changed = out[out.index("other[1-2] (2) | HOST KEY CHANGED"):]
    assert f"@@@ HOST KEY CHANGED for [127.0.0.1]:{other.port} @@@" in changed
    assert f"known_hosts has: ssh-ed25519 {lab_fp}  ({kh}:5)" in changed
    assert f"the host sent:   ssh-ed25519 {other_fp}" in changed
    assert f"hostops keys forget '[127.0.0.1]:{other.port}'" in changed
    assert "closed (1) | ERROR" in out
    assert out.index("| KNOWN") < out.index("| NEW") < out.index("| HOST KEY CHANGED") < out.index("| ERROR")
    assert "33 hosts: 16 known, 14 new, 0 unverifiable, 0 revoked, 2 changed, 1 error" in run.err

    run = hostops("keys", "scan", "-i", inv, "--known-hosts", str(kh), "-q", "-l", "h*")
    assert run.code == 0, run
    assert "KNOWN" not in run.out and new_hosts in run.out


@pytest.mark.timeout(150)
def test_accept_then_forget_on_thirty_hosts(hostops, lab, other, tmp_path):
    twins = [{"name": f"other{i}", "ansible_host": "127.0.0.1", "ansible_port": other.port} for i in (1, 2)]
    inv = lab.write_inventory(str(tmp_path / "inv.yml"), 30, extra_hosts=twins)
    kh = tmp_path / "known_hosts"
    claimed = f"[127.0.0.1]:{other.port} {' '.join(lab.host_pub.split()[:2])}"
    kh.write_text(claimed + "\n")
    os.chmod(kh, 0o644)
    lab_fp, other_fp = fp_of(lab.host_pub), fp_of(other.host_pub)

    # a fingerprint that matches nothing: nothing is written
    run = hostops("keys", "accept", "-i", inv, "--known-hosts", str(kh), "--fingerprint", "SHA256:" + "A" * 43,
                  "--json")
    assert run.code == 4, run
    assert kh.read_text() == claimed + "\n"
    assert all(not r["recorded"] for r in run.json_lines())

    run = hostops("keys", "accept", "-i", inv, "--known-hosts", str(kh), "--fingerprint", lab_fp)
    assert run.code == 4, run  # the two changed hosts are not accepted
    lines = kh.read_text().splitlines()
    assert lines[0] == claimed  # never replaced
    assert sorted(lines[1:]) == sorted(lab.known_hosts_line(a) for a in lab.addresses)
    assert stat.S_IMODE(os.stat(kh).st_mode) == 0o644  # the file keeps its mode
    assert "h[001-030] (30) | RECORDED" in run.out
    assert "other[1-2] (2) | HOST KEY CHANGED" in run.out
    assert f"32 hosts: 30 recorded (8 new lines in {kh}), 0 already known, 2 not recorded (2 changed)" in run.err, run

    again = hostops("keys", "accept", "-i", inv, "--known-hosts", str(kh), "-l", "h*", "--json")
    assert again.code == 0, again
    assert {r["state"] for r in again.json_lines()} == {"known"}
    assert kh.read_text().splitlines() == lines  # nothing twice

    run = hostops("exec", "echo ok", "-i", inv, "--known-hosts", str(kh), "--json")
    assert run.code == 4, run
    states = {r["host"]: r for r in run.json_lines()}
    assert all(states[f"h{i:03d}"]["status"] == "ok" for i in range(1, 31))
    assert "HOST KEY CHANGED" in states["other1"]["error"] and states["other1"]["stdout"] == ""

    # forget the changed one: the only way past it; then accept its new key, checked
    run = hostops("keys", "forget", f"[127.0.0.1]:{other.port}", "--known-hosts", str(kh))
    assert run.code == 0, run
    assert f"removed  [127.0.0.1]:{other.port}: ssh-ed25519 {lab_fp} from {kh}:1" in run.out
    assert claimed not in kh.read_text()
    run = hostops("keys", "accept", "-i", inv, "--known-hosts", str(kh), "-l", "other*", "--fingerprint", other_fp)
    assert run.code == 0, run
    run = hostops("exec", "echo ok", "-i", inv, "--known-hosts", str(kh), "--json")
    assert run.code == 0, run

    # forget the thirty hosts by inventory: their eight addresses go, the other one stays
    run = hostops("keys", "forget", "-i", inv, "-l", "h*", "--known-hosts", str(kh))
    assert run.code == 0, run
    assert run.out.count("removed  ") == 8
    assert kh.read_text().splitlines() == [f"[127.0.0.1]:{other.port} {' '.join(other.host_pub.split()[:2])}"]
    assert stat.S_IMODE(os.stat(kh).st_mode) == 0o644
    run = hostops("keys", "forget", "[127.0.0.99]:1", "--known-hosts", str(kh))
    assert run.code == 0 and "nothing on record for [127.0.0.99]:1" in run.err


def test_accept_defaults_to_home_known_hosts(hostops, lab, tmp_path, isolated_home):
    inv = lab.write_inventory(str(tmp_path / "inv.yml"), 3, addresses=["127.0.0.1"])
    run = hostops("keys", "accept", "-i", inv)
    assert run.code == 0, run
    path = isolated_home / ".ssh" / "known_hosts"
    assert path.read_text() == lab.known_hosts_line("127.0.0.1") + "\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert hostops("exec", "true", "-i", inv).code == 0


def _blob(type_name: str) -> str:
    raw = struct.pack(">I", len(type_name)) + type_name.encode() + struct.pack(">I", 32) + b"\x01" * 32
    return base64.b64encode(raw).decode()


def test_every_kind_of_line_in_a_real_run(hostops, lab, tmp_path):
    """A known_hosts with comments, hashed names, several names a line, wildcards, negation,
    markers, an unknown key type and malformed lines: everything usable is used, the rest is
    named with file and line, and nothing stops the run."""
    from hostops.knownhosts_write import hash_name

    key = " ".join(lab.host_pub.split()[:2])
    p = lab.port
    kh = tmp_path / "known_hosts"
    kh.write_text("\n".join([
        "# hand-kept known_hosts",                                                   # 1
        f"{hash_name(f'[127.0.0.1]:{p}')} {key}",                                   # 2  .1 hashed
        f"[127.0.0.2]:{p},[127.0.0.3]:{p},web.example.com {key} two names",          # 3  .2 .3
        f"[127.0.0.*]:{p},![127.0.0.6]:{p},![127.0.0.7]:{p},![127.0.0.8]:{p} {key}",  # 4  .4 .5 (wildcard)
        f"[127.0.0.?]:{p}x {key}",                                                   # 5  ? that matches nothing here
        f"[127.0.0.7]:{p} ssh-foo {_blob('ssh-foo')}",                               # 6  .7: unknown type only
        f"@cert-authority [127.0.0.8]:{p} {key}",                                    # 7  .8: a CA only
        f"@revoked *.revoked.example {key}",                                         # 8  not about the lab
        "garbage",                                                                   # 9  malformed
        f"[127.0.0.9]:{p} ssh-ed25519 AAAA%%%%",                                     # 10 malformed
    ]) + "\n")
    inv = lab.write_inventory(str(tmp_path / "inv.yml"), 8)
    run = hostops("keys", "scan", "-i", inv, "--known-hosts", str(kh), "--json")
    assert run.code == 0, run
    states = {r["address"]: r["state"] for r in run.json_lines()}
    assert states == {f"[127.0.0.{i}]:{p}": s for i, s in
                      [(1, "known"), (2, "known"), (3, "known"), (4, "known"), (5, "known"), (6, "new"),
                       (7, "unverifiable"), (8, "unverifiable")]}
    notes = {r["address"]: r["note"] for r in run.json_lines()}
    assert "ssh-foo" in notes[f"[127.0.0.7]:{p}"] and "certificate" in notes[f"[127.0.0.8]:{p}"]
    warnings = [line for line in run.err.splitlines() if line.startswith("hostops: warning:")]
    assert len(warnings) == 3, run.err
    assert f"{kh}:6: key type ssh-foo is not supported" in warnings[0]
    assert f"{kh}:9: malformed line skipped" in warnings[1]
    assert f"{kh}:10: malformed line skipped" in warnings[2]

    run = hostops("exec", "echo ran", "-i", inv, "--known-hosts", str(kh), "--json", "--host-key-policy",
                  "accept-new")
    assert run.code == 4, run
    res = {r["host"]: r for r in run.json_lines()}
    assert [res[f"h00{i}"]["status"] for i in range(1, 7)] == ["ok"] * 6  # .6 learned under accept-new
    for h, needle in (("h007", "ssh-foo"), ("h008", "cannot validate SSH host certificates")):
        assert res[h]["status"] == "unreachable" and res[h]["stdout"] == ""
        assert "host key unverifiable" in res[h]["error"] and needle in res[h]["error"]
    assert kh.read_text().count(f"[127.0.0.6]:{p} {key}") == 1
    assert f"[127.0.0.7]:{p} {key}" not in kh.read_text().splitlines()
    assert f"[127.0.0.8]:{p} {key}" not in kh.read_text().splitlines()


def test_revoked_key_refuses_the_host(hostops, lab, tmp_path):
    key = " ".join(lab.host_pub.split()[:2])
    kh = tmp_path / "known_hosts"
    lab.write_known_hosts(str(kh))
    with open(kh, "a") as fh:
        fh.write(f"@revoked [127.0.0.2]:{lab.port} {key}\n")
    inv = lab.write_inventory(str(tmp_path / "inv.yml"), 2, addresses=["127.0.0.1", "127.0.0.2"])
    for policy in ("strict", "accept-new", "off"):
        run = hostops("exec", "echo ran", "-i", inv, "--known-hosts", str(kh), "--json", "--host-key-policy", policy)
        assert run.code == 4, run
        res = by_host(run)
        assert res["h001"]["status"] == "ok"
        assert res["h002"]["status"] == "unreachable" and res["h002"]["stdout"] == ""
        assert "HOST KEY REVOKED" in res["h002"]["error"] and f"{kh}:9" in res["h002"]["error"]
    run = hostops("keys", "scan", "-i", inv, "--known-hosts", str(kh))
    assert run.code == 4 and "h002 (1) | HOST KEY REVOKED" in run.out, run
    run = hostops("keys", "accept", "-i", inv, "--known-hosts", str(kh), "--json")
    assert run.code == 4 and by_host(run)["h002"]["state"] == "revoked"


@pytest.mark.timeout(240)
def test_two_runs_learning_at_once_write_one_line_per_host(lab, tmp_path, isolated_home):
    kh = tmp_path / "known_hosts"
    invs = [lab.write_inventory(str(tmp_path / f"inv{i}.yml"), 40, prefix=f"r{i}h") for i in (1, 2)]
    env = dict(os.environ, HOME=str(isolated_home), PYTHONPATH=ROOT)
    env.pop("SSH_AUTH_SOCK", None)
    procs = [subprocess.Popen([sys.executable, "-m", "hostops", "exec", "echo ok", "-i", inv, "--known-hosts",
                               str(kh), "--host-key-policy", "accept-new", "-f", "40", "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for inv in invs]
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert out.count('"status": "ok"') == 40
    lines = kh.read_text().splitlines()
    assert sorted(lines) == sorted(lab.known_hosts_line(a) for a in lab.addresses)
    assert stat.S_IMODE(os.stat(kh).st_mode) == 0o600


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen")
def test_hash_known_hosts_from_ssh_config(hostops, lab, tmp_path, isolated_home):
    ssh = isolated_home / ".ssh"
    ssh.mkdir(mode=0o700)
    (ssh / "config").write_text("Host *\n    HashKnownHosts yes\n")
    inv = lab.write_inventory(str(tmp_path / "inv.yml"), 4, addresses=["127.0.0.1", "127.0.0.2"])
    kh = tmp_path / "known_hosts"
    run = hostops("exec", "true", "-i", inv, "--known-hosts", str(kh), "--host-key-policy", "accept-new")
    assert run.code == 0, run
    lines = kh.read_text().splitlines()
    assert len(lines) == 2 and all(re.match(r"^\|1\|[A-Za-z0-9+/=]+\|[A-Za-z0-9+/=]+ ssh-ed25519 ", x) for x in lines)
    assert "127.0.0" not in kh.read_text()
    # OpenSSH finds them, and a strict run verifies against them
    found = subprocess.run(["ssh-keygen", "-F", f"[127.0.0.2]:{lab.port}", "-f", str(kh)], capture_output=True,
                           text=True)
    assert found.returncode == 0 and lab.host_pub.split()[1] in found.stdout
    assert hostops("exec", "true", "-i", inv, "--known-hosts", str(kh)).code == 0

    kh2 = tmp_path / "known_hosts2"
    run = hostops("keys", "accept", "-i", inv, "--known-hosts", str(kh2))
    assert run.code == 0 and kh2.read_text().startswith("|1|"), run
    run = hostops("keys", "scan", "-i", inv, "--known-hosts", str(kh2), "--json")
    assert {r["state"] for r in run.json_lines()} == {"known"}
    run = hostops("keys", "forget", f"[127.0.0.1]:{lab.port}", "--known-hosts", str(kh2))
    assert run.code == 0 and run.out.count("removed  ") == 1, run
    assert len(kh2.read_text().splitlines()) == 1
    kh3 = tmp_path / "known_hosts3"
    run = hostops("keys", "accept", "-i", inv, "--known-hosts", str(kh3), "--no-hash-known-hosts")
    assert run.code == 0 and kh3.read_text().startswith("[127.0.0."), run


def test_keys_usage_errors(hostops, lab, tmp_path):
    inv = lab.write_inventory(str(tmp_path / "inv.yml"), 1)
    for args, needle in ((["scan", "--stream"], "--stream"), (["scan", "-o", "x"], "--outdir"),
                         (["scan", "--json", "-b"], "cannot be combined"), (["forget"], "name the hosts"),
                         (["forget", "-l", "web"], "give -i or -H")):
        run = hostops("keys", *args, *(["-i", inv] if args[0] == "scan" else []))
        assert run.code == 2 and needle in run.err, (args, run)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "real")
    run = hostops("keys", "accept", "-i", inv, "--known-hosts", str(link))
    assert run.code == 2 and "symbolic link" in run.err, run
    assert not (tmp_path / "real").exists()


def test_scan_and_accept_use_the_ssh_config_user_known_hosts_file(hostops, lab, tmp_path, isolated_home):
    """ssh_config's UserKnownHostsFile names where a run checks keys: keys accept records there
    (not in ~/.ssh/known_hosts, which the run would never read), and scan judges against it."""
    ssh = isolated_home / ".ssh"
    ssh.mkdir(mode=0o700)
    fleet = tmp_path / "fleet_known_hosts"
    (ssh / "config").write_text(f"Host *\n    UserKnownHostsFile {fleet}\n")
    inv = lab.write_inventory(str(tmp_path / "inv.yml"), 3, addresses=["127.0.0.1", "127.0.0.2"])
    assert hostops("exec", "true", "-i", inv).code == 4  # strict: nothing known yet
    run = hostops("keys", "accept", "-i", inv)
    assert run.code == 0, run
    assert str(fleet) in run.err, run  # the summary names the file written
    assert sorted(fleet.read_text().splitlines()) == sorted(
        lab.known_hosts_line(a) for a in ("127.0.0.1", "127.0.0.2"))
    assert not (ssh / "known_hosts").exists()
    run = hostops("keys", "scan", "-i", inv, "--json")
    assert {r["state"] for r in run.json_lines()} == {"known"}, run
    assert hostops("exec", "true", "-i", inv).code == 0
    # a changed key there: the advice's forget edits that file (the default files do not hold it)
    lines = fleet.read_text().splitlines()
    fake = f"{lines[0].split()[0]} ssh-ed25519 {_blob('ssh-ed25519')}"
    fleet.write_text("\n".join([fake] + lines[1:]) + "\n")
    run = hostops("keys", "scan", "-i", inv)
    assert run.code == 4, run
    forget = re.findall(r"`(hostops keys forget [^`]*)`", run.out)
    assert forget and all(f"--known-hosts {fleet}" in f for f in forget), run
    done = hostops(*shlex.split(forget[0])[1:])
    assert done.code == 0, done
    assert fake not in fleet.read_text() and len(fleet.read_text().splitlines()) == 1
