"""Trust and reach against real sshds: ssh_config fidelity, jump hosts, sudo with a password,
secrets that never leak, hostile host names refused."""
from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import threading
import time

import pytest

from conftest import ROOT
from sshlab import SSHD

pytestmark = pytest.mark.timeout(180)

SUDO_USER = "hostopssudo"
SUDO_PASSWORD = "Corr3ct-Horse-battery"


# ------------------------------------------------------------------ ssh_config
@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the ssh client for ssh -G")
def test_ssh_config_include_and_match_host(hostops, lab, tmp_path, known_hosts):
    """Include pulls in a file holding the Host block; Match host sets the user and key."""
    included = tmp_path / "included.conf"
    included.write_text(f"Host cfg-*\n  HostName 127.0.0.4\n  Port {lab.port}\n")
    cfg = tmp_path / "ssh_config"
    cfg.write_text(f"Include {included}\nMatch host 127.0.0.4\n  User {lab.user}\n  IdentityFile {lab.user_key}\n"
                   "  IdentitiesOnly yes\n")
    run = hostops("exec", 'set -- $SSH_CONNECTION; echo "$3"', "-H", "cfg-[1:4]", "--ssh-config", str(cfg),
                  "--known-hosts", known_hosts, "--json")
    assert run.code == 0, run
    assert {r["host"]: r["stdout"] for r in run.json_lines()} == {f"cfg-{i}": "127.0.0.4\n" for i in range(1, 5)}
    listing = hostops("inventory", "-H", "cfg-1", "--ssh-config", str(cfg), "--json")
    conn = json.loads(listing.out)["_meta"]["hostvars"]["cfg-1"]["hostops_connection"]
    assert (conn["hostname"], conn["port"], conn["user"], conn["identities_only"]) == (
        "127.0.0.4", lab.port, lab.user, True)


def test_command_line_beats_ssh_config_and_inventory_beats_both(hostops, lab, tmp_path):
    cfg = tmp_path / "ssh_config"
    cfg.write_text("Host *\n  Port 2999\n  User from-config\n  ConnectTimeout 42\n")
    inv = tmp_path / "inv.yml"
    inv.write_text("all:\n  hosts:\n    a: {ansible_user: from-inventory}\n    b:\n")
    data = json.loads(hostops("inventory", "-i", str(inv), "--ssh-config", str(cfg), "-p", "2222",
                              "--json").out)["_meta"]["hostvars"]
    assert data["a"]["hostops_connection"]["user"] == "from-inventory"
    assert data["b"]["hostops_connection"]["user"] == "from-config"
    assert data["a"]["hostops_connection"]["port"] == 2222          # -p beats the config's Port
    assert data["b"]["hostops_connection"]["connect_timeout"] == 42  # the config's ConnectTimeout applies


def test_without_the_ssh_client_unsupported_directives_are_refused(tmp_path, monkeypatch):
    from hostops.errors import UsageError
    from hostops.sshconfig import Resolver

    monkeypatch.setattr(shutil, "which", lambda name: None)
    cfg = tmp_path / "ssh_config"
    cfg.write_text("Host web\n  HostName 10.9.9.9\n  Port 2200\n")
    found = Resolver(str(cfg)).lookup("web")
    assert (found.hostname, found.port) == ("10.9.9.9", 2200)
    cfg.write_text("Host web\n  HostName 10.9.9.9\nInclude other.conf\n")
    with pytest.raises(UsageError) as info:
        Resolver(str(cfg))
    assert f"{cfg}:3: Include cannot be honoured without the ssh client" in str(info.value)


def test_proxycommand_is_refused_not_run(hostops, tmp_path):
    marker = tmp_path / "proxycommand-ran"
    cfg = tmp_path / "ssh_config"
    cfg.write_text(f"Host *\n  ProxyCommand touch {marker}\n")
    run = hostops("exec", "true", "-H", "somewhere", "--ssh-config", str(cfg))
    assert run.code == 2, run
    assert "ProxyCommand" in run.err and "ProxyJump" in run.err
    assert not marker.exists()


# ------------------------------------------------------------------ jump hosts
@pytest.fixture(scope="module")
def jump_pair(tmp_path_factory):
    """A jump sshd on 127.0.0.20 (debug log: it records each direct-tcpip it opens) and a
    target sshd on 127.0.0.21 that hostops is only told to reach through the jump."""
    base = tmp_path_factory.mktemp("jump")
    jump = SSHD(str(base / "jump"), addresses=["127.0.0.20"], log_level="DEBUG1").start()
    target = SSHD(str(base / "target"), addresses=["127.0.0.21"], user_key=jump.user_key,
                  log_level="VERBOSE").start()
    kh = base / "known_hosts"
    kh.write_text(jump.known_hosts_line() + "\n" + target.known_hosts_line() + "\n")
    yield jump, target, str(kh)
    target.stop()
    jump.stop()


def _tunnels(jump: SSHD, target: SSHD) -> int:
    with open(jump.log_path, errors="replace") as fh:
        return sum(1 for line in fh if "server_request_direct_tcpip" in line
                   and f"target 127.0.0.21 port {target.port}" in line)


@pytest.mark.parametrize("how", ["flag", "inventory", "ansible_ssh_common_args"])
def test_proxyjump_reaches_the_target_through_the_jump(hostops, jump_pair, tmp_path, how):
    jump, target, kh = jump_pair
    hop = f"{jump.user}@127.0.0.20:{jump.port}"
    host_vars = {"flag": "", "inventory": f', proxy_jump: "{hop}"',
                 "ansible_ssh_common_args": f', ansible_ssh_common_args: "-o ProxyJump={hop}"'}[how]
    inv = tmp_path / "inv.yml"
    inv.write_text(f"all:\n  vars: {{ansible_user: {jump.user}, ansible_ssh_private_key_file: {jump.user_key}}}\n"
                   f"  hosts:\n    t[1:6]: {{ansible_host: 127.0.0.21, ansible_port: {target.port}{host_vars}}}\n")
    extra = ["-J", hop] if how == "flag" else []
    before_tunnels, before_logins = _tunnels(jump, target), jump.count_logins()
    run = hostops("exec", 'set -- $SSH_CONNECTION; echo "$3:$4"', "-i", str(inv), "--known-hosts", kh, "--json",
                  "--processes", "2", *extra)
    assert run.code == 0, run
    assert {r["stdout"] for r in run.json_lines()} == {f"127.0.0.21:{target.port}\n"}
    assert _tunnels(jump, target) - before_tunnels == 6          # every host went through the jump
    assert 1 <= jump.count_logins() - before_logins <= 2          # one jump connection per worker


def test_jump_host_key_is_checked_too(hostops, jump_pair, tmp_path):
    jump, target, _kh = jump_pair
    only_target = tmp_path / "kh"
    only_target.write_text(target.known_hosts_line() + "\n")
    run = hostops("exec", "echo reached", "-H", f"127.0.0.21:{target.port}", "-u", jump.user, "-k", jump.user_key,
                  "-J", f"{jump.user}@127.0.0.20:{jump.port}", "--known-hosts", str(only_target), "--json")
    assert run.code == 4, run
    (line,) = run.json_lines()
    assert line["status"] == "unreachable" and "jump host" in line["error"] and "host key unknown" in line["error"]
    assert line["stdout"] == ""


# ------------------------------------------------------------------ sudo with a password
@pytest.fixture(scope="module")
def sudo_lab(tmp_path_factory):
    """A user that needs its password for sudo, and an sshd that lets it log in."""
    if os.geteuid() != 0 or not shutil.which("sudo") or not shutil.which("useradd"):
        pytest.skip("needs root, sudo and useradd to create a user whose sudo asks for a password")
    try:
        pwd.getpwnam(SUDO_USER)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", SUDO_USER], check=True, timeout=30)
    subprocess.run(["chpasswd"], input=f"{SUDO_USER}:{SUDO_PASSWORD}\n", text=True, check=True, timeout=30)
    rule = f"/etc/sudoers.d/{SUDO_USER}"
    with open(rule, "w") as fh:
        fh.write(f"Defaults:{SUDO_USER} !lecture, passwd_tries=3\n{SUDO_USER} ALL=(ALL) ALL\n")
    os.chmod(rule, 0o440)
    import tempfile

    # the sshd reads authorized_keys as that user: pytest's own temp dirs are root-only
    base = __import__("pathlib").Path(tempfile.mkdtemp(prefix="hostops-sudo-", dir="/tmp"))
    os.chmod(base, 0o755)
    server = SSHD(str(base / "lab"))
    server.user = SUDO_USER
    server.start()
    os.chmod(server.workdir, 0o755)
    os.chmod(os.path.join(server.workdir, "authorized_keys"), 0o644)
    kh = str(base / "known_hosts")
    server.write_known_hosts(kh)
    inv = server.write_inventory(str(base / "inv.yml"), 3)
    yield server, inv, kh
    server.stop()
    if os.path.exists(rule):  # another test module using this fixture may have removed it
        os.remove(rule)
    shutil.rmtree(base, ignore_errors=True)


def test_sudo_with_the_right_password(hostops, sudo_lab):
    server, inv, kh = sudo_lab
    run = hostops("exec", "id -un", "--sudo", "--sudo-pass-env", "HOSTOPS_TEST_SUDO", "-i", inv, "--known-hosts", kh,
                  "--json", env={"HOSTOPS_TEST_SUDO": SUDO_PASSWORD})
    assert run.code == 0, run
    assert {(r["status"], r["stdout"], r["stderr"]) for r in run.json_lines()} == {("ok", "root\n", "")}


def test_sudo_with_a_wrong_password_is_a_distinct_failure(hostops, sudo_lab):
    server, inv, kh = sudo_lab
    run = hostops("exec", "id -un", "--sudo", "--sudo-pass-env", "HOSTOPS_TEST_SUDO", "-i", inv, "--known-hosts", kh,
                  "--json", env={"HOSTOPS_TEST_SUDO": "not-the-password"}, timeout=60)
    assert run.code == 5, run
    for r in run.json_lines():
        assert r["status"] == "failed" and r["error"].startswith("sudo: authentication failed")
        assert "root" not in r["stdout"]


def test_sudo_without_a_password_never_prompts(hostops, sudo_lab):
    server, inv, kh = sudo_lab
    run = hostops("exec", "id -un", "--sudo", "-i", inv, "--known-hosts", kh, "--json", timeout=60)
    assert run.code == 5, run
    assert all("sudo needs a password" in r["error"] for r in run.json_lines())


def test_sudo_user_runs_as_another_user(hostops, lab, inventory, known_hosts):
    if not shutil.which("sudo"):
        pytest.skip("sudo is not installed")
    run = hostops("exec", "id -un", "--sudo", "--sudo-user", "nobody", "-i", inventory(2), "--known-hosts",
                  known_hosts, "--json")
    assert run.code == 0, run
    assert {r["stdout"] for r in run.json_lines()} == {"nobody\n"}


def test_sudo_pass_file_must_be_private(hostops, tmp_path, inventory, known_hosts):
    pw = tmp_path / "pw"
    pw.write_text("secret-pass\n")
    os.chmod(pw, 0o644)
    run = hostops("exec", "true", "--sudo", "--sudo-pass-file", str(pw), "-i", inventory(1), "--known-hosts",
                  known_hosts)
    assert run.code == 2, run
    assert "readable by others" in run.err and "chmod 600" in run.err
    assert "secret-pass" not in run.err


# ------------------------------------------------------------------ secrets never leak
def test_canary_secret_never_appears_anywhere(lab, inventory, known_hosts, tmp_path, isolated_home):
    """The secret reaches hostops through the environment and is echoed back by the hosts:
    output, JSON, log, the outdir files and every process's argv must not show it."""
    if not shutil.which("sudo"):
        pytest.skip("sudo is not installed")
    canary = "canary-7f3a9c41e2"
    log = tmp_path / "run.jsonl"
    outdir = tmp_path / "out"
    env = dict(os.environ, HOME=str(isolated_home), PYTHONPATH=ROOT, HOSTOPS_CANARY=canary)
    env.pop("SSH_AUTH_SOCK", None)
    cmd = f"sleep 1; echo value={canary}; echo {canary} >&2; exit 3"
    proc = subprocess.Popen([sys.executable, "-m", "hostops", "exec", cmd, "-i", inventory(4), "--known-hosts",
                             known_hosts, "--sudo", "--sudo-pass-env", "HOSTOPS_CANARY", "--log", str(log),
                             "-o", str(outdir), "--stream"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, text=True)
    seen_in_argv = []

    def watch():
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline:
            for pid in os.listdir("/proc"):
                if not pid.isdigit() or int(pid) == os.getpid():
                    continue
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as fh:
                        argv = fh.read()
                except OSError:
                    continue
                if canary.encode() in argv and b"sleep 1; echo value=" not in argv:
                    seen_in_argv.append(argv)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    out, err = proc.communicate(timeout=60)
    watcher.join(30)
    assert proc.returncode == 5, err
    # The remote command line itself holds the canary (the test put it there); hostops' own
    # processes (parent, workers) and the sudo/remote wrappers must not hold the password.
    assert not seen_in_argv, seen_in_argv
    assert canary not in out and canary not in err
    assert "value=********" in out
    text = log.read_text()
    assert canary not in text and "********" in text
    for f in outdir.iterdir():
        assert canary not in f.read_text()


# ------------------------------------------------------------------ hostile names, log files
def test_hostile_host_name_in_inventory_refused(hostops, tmp_path):
    marker = tmp_path / "pwned"
    inv = tmp_path / "inv.yml"
    inv.write_text("all:\n  hosts:\n    web1:\n      ansible_host: \"-oProxyCommand=touch " + str(marker) + "\"\n")
    run = hostops("exec", "true", "-i", str(inv))
    assert run.code == 2, run
    assert f"{inv}:4:" in run.err and "refused" in run.err
    assert not marker.exists()
    inv.write_text("all:\n  hosts:\n    'web;touch x':\n")
    run = hostops("exec", "true", "-i", str(inv))
    assert run.code == 2 and "refused" in run.err, run


def test_log_symlink_and_foreign_log_refused(hostops, tmp_path, inventory, known_hosts):
    target = tmp_path / "elsewhere.log"
    link = tmp_path / "link.log"
    link.symlink_to(target)
    run = hostops("exec", "true", "-i", inventory(1), "--known-hosts", known_hosts, "--log", str(link))
    assert run.code == 2 and "symbolic link" in run.err, run
    assert not target.exists()
    if os.geteuid() == 0:
        foreign = tmp_path / "foreign.log"
        foreign.write_text("")
        os.chown(foreign, 65534, 65534)
        run = hostops("exec", "true", "-i", inventory(1), "--known-hosts", known_hosts, "--log", str(foreign))
        assert run.code == 2 and "belongs to another user" in run.err, run
        assert foreign.read_text() == ""
    made = tmp_path / "new.log"
    run = hostops("exec", "true", "-i", inventory(1), "--known-hosts", known_hosts, "--log", str(made))
    assert run.code == 0, run
    assert stat.S_IMODE(os.stat(made).st_mode) == 0o600
