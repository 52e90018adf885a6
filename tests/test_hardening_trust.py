"""Issue 11, trust: no password to a host whose key changed (even under --host-key-policy off),
--ask-pass/--ask-sudo-pass on a real terminal (a pty), and local usage mistakes refused
(exit 2, one line) before any host is contacted."""
from __future__ import annotations

import fcntl
import os
import select
import shutil
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import pytest

from conftest import ROOT
from sshlab import SSHD, keygen
from test_trust import SUDO_PASSWORD, SUDO_USER, sudo_lab  # noqa: F401  (the fixture, shared)

pytestmark = pytest.mark.timeout(240)


# ------------------------------------------------------------------ helpers
def wrong_known_hosts(server: SSHD, path: Path, addresses: Optional[Sequence[str]] = None) -> str:
    """known_hosts recording a throwaway key (same type as the server's) for the server's
    addresses: to hostops the host key has changed."""
    other = keygen(str(path.parent / f"{path.name}-other-key"), "not-the-host")
    keytype, b64 = other.split()[:2]
    with open(path, "w") as fh:
        for a in addresses or server.addresses:
            fh.write(f"[{a}]:{server.port} {keytype} {b64}\n")
    return str(path)


def cli_env(home: Path, extra: Optional[dict] = None) -> dict:
    env = dict(os.environ)
    env.pop("SSH_AUTH_SOCK", None)
    env["HOME"] = str(home)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


def _take_terminal() -> None:
    """In the child, after setsid (start_new_session): make stdin, the pty, its terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def run_on_pty(args: Sequence[str], home: Path, answers: Sequence[Tuple[bytes, str]], env: Optional[dict] = None,
               timeout: float = 120) -> Tuple[int, str, str, bytes]:
    """Run the CLI with a pty as its controlling terminal (stdout and stderr are pipes), type
    each answer once its prompt shows on the terminal. Returns (code, out, err, what the
    terminal showed)."""
    master, slave = os.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "hostops", *args], stdin=slave, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=cli_env(home, env), cwd=str(home), start_new_session=True,
                            preexec_fn=_take_terminal)
    os.close(slave)
    shown = b""
    todo = list(answers)
    deadline = time.monotonic() + timeout
    try:
        while todo and proc.poll() is None and time.monotonic() < deadline:
            ready, _w, _x = select.select([master], [], [], 0.2)
            if not ready:
                continue
            try:
                shown += os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if todo[0][0] in shown:
                os.write(master, (todo.pop(0)[1] + "\n").encode())
        out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        while select.select([master], [], [], 0.2)[0]:
            try:
                piece = os.read(master, 4096)
            except OSError:
                break
            if not piece:
                break
            shown += piece
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(master)
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"), shown


@pytest.fixture(scope="module")
def password_lab(sudo_lab):  # noqa: F811
    """An sshd that lets the sudo test user log in with its password (and keys), logging
    each accepted and failed password."""
    base = Path(tempfile.mkdtemp(prefix="hostops-pw-", dir="/tmp"))
    os.chmod(base, 0o755)
    server = SSHD(str(base / "lab"), log_level="INFO",
                  extra_config=f"Match User {SUDO_USER}\n  PasswordAuthentication yes")
    server.user = SUDO_USER
    server.start()
    os.chmod(server.workdir, 0o755)
    os.chmod(os.path.join(server.workdir, "authorized_keys"), 0o644)
    yield server
    server.stop()
    shutil.rmtree(base, ignore_errors=True)


def password_attempts(server: SSHD) -> int:
    with open(server.log_path, errors="replace") as fh:
        return sum(1 for line in fh if " password for " in line)


# ------------------------------------------------------------------ 1. no password to a changed key
def test_off_with_changed_key_runs_and_warns_naming_the_host(hostops, lab, inventory, tmp_path):
    kh = wrong_known_hosts(lab, tmp_path / "kh")
    run = hostops("exec", "echo reached", "-i", inventory(2), "--known-hosts", kh, "--host-key-policy", "off",
                  "--json")
    assert run.code == 0, run  # off means the host may still connect
    assert {r["stdout"] for r in run.json_lines()} == {"reached\n"}
    for host in ("h001", "h002"):
        assert any(host in line and "HOST KEY CHANGED" in line and "man-in-the-middle" in line
                   for line in run.err.splitlines()), run


def test_off_with_changed_key_never_gets_the_sudo_password(hostops, sudo_lab, tmp_path):  # noqa: F811
    server, inv, _kh = sudo_lab
    kh = wrong_known_hosts(server, tmp_path / "kh")
    marker = Path(tempfile.mkdtemp(prefix="hostops-ran-", dir="/tmp"))
    os.chmod(marker, 0o777)
    try:
        run = hostops("exec", f"id -un > {marker}/ran-$$", "--sudo", "--sudo-pass-env", "HOSTOPS_TEST_SUDO",
                      "-i", inv, "--known-hosts", kh, "--host-key-policy", "off", "--json",
                      env={"HOSTOPS_TEST_SUDO": SUDO_PASSWORD}, timeout=90)
        assert run.code == 4, run
        lines = run.json_lines()
        assert len(lines) == 3
        for r in lines:
            assert r["status"] == "unreachable" and r["error"].startswith("sudo password not sent"), r
            assert "host key" in r["error"] and r["host"] in r["error"]
        assert list(marker.iterdir()) == []  # the command never ran: sudo -S was never started
        assert SUDO_PASSWORD not in run.out + run.err
    finally:
        shutil.rmtree(marker, ignore_errors=True)


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the ssh client for ssh -G")
def test_ssh_config_strict_no_warns_and_withholds_the_sudo_password(hostops, sudo_lab, tmp_path):  # noqa: F811
    server, inv, _kh = sudo_lab
    kh = wrong_known_hosts(server, tmp_path / "kh")
    cfg = tmp_path / "ssh_config"
    cfg.write_text("Host *\n  StrictHostKeyChecking no\n")
    run = hostops("exec", "id -un", "--sudo", "--sudo-pass-env", "HOSTOPS_TEST_SUDO", "-i", inv, "--known-hosts",
                  kh, "--ssh-config", str(cfg), "--json", env={"HOSTOPS_TEST_SUDO": SUDO_PASSWORD}, timeout=90)
    assert run.code == 4, run
    assert any("host key checking is off for" in line and "StrictHostKeyChecking no" in line
               for line in run.err.splitlines()), run
    assert all(r["error"].startswith("sudo password not sent") for r in run.json_lines()), run
    assert "root" not in run.out


def test_ssh_config_strict_no_warns_like_the_flag(hostops, lab, inventory, known_hosts, tmp_path):
    if shutil.which("ssh") is None:
        pytest.skip("needs the ssh client for ssh -G")
    cfg = tmp_path / "ssh_config"
    cfg.write_text("Host *\n  StrictHostKeyChecking no\n")
    run = hostops("exec", "true", "-i", inventory(2), "--known-hosts", known_hosts, "--ssh-config", str(cfg))
    assert run.code == 0, run
    assert "host key checking is off for h[001-002] (StrictHostKeyChecking no in ssh_config)" in run.err, run


def test_changed_key_under_off_never_tries_the_password(mocker, tmp_path):
    """Unit: the key exchange showed a key that differs from known_hosts, accepted under off:
    the --ask-pass password is never offered (auth_password not called)."""
    import paramiko

    from hostops import ssh, workerctx
    from hostops.errors import ConnectError
    from hostops.hostkeys import HostKeyChecker
    from hostops.secrets import Secrets
    from hostops.settings import Options, Target

    on_record = keygen(str(tmp_path / "recorded"))
    kh = tmp_path / "kh"
    kh.write_text("[10.9.9.9]:2222 " + " ".join(on_record.split()[:2]) + "\n")
    keygen(str(tmp_path / "presented"))
    presented = paramiko.PKey.from_path(str(tmp_path / "presented"))
    user_key = tmp_path / "user"
    keygen(str(user_key))
    checker = HostKeyChecker([str(kh)], "off", global_files=[])
    ctx = workerctx.WorkerContext(Options(secrets=Secrets(ssh_password="hunter2-pw")))
    hs = mocker.MagicMock()
    hs.deadline = time.monotonic() + 60
    hs.remaining.return_value = 5.0
    hs.guard.expired = False
    hs.transport.get_remote_server_key.return_value = presented
    hs.transport.auth_publickey.side_effect = paramiko.AuthenticationException("refused")
    hs.transport.is_authenticated.return_value = False
    hs.transport.is_active.return_value = True
    target = Target("web1", "10.9.9.9", 2222, "deploy", (str(user_key),), identities_only=True)
    with pytest.raises(ConnectError) as info:
        ssh.SSHConnection._login(hs, target, ctx, checker)
    hs.transport.auth_password.assert_not_called()
    assert "man-in-the-middle" in str(info.value) and "web1" in str(info.value)
    # the same host with its key on record: the password is tried, after the key
    kh.write_text("[10.9.9.9]:2222 " + " ".join(presented.get_name().split()) + " " + presented.get_base64() + "\n")
    with pytest.raises(ConnectError):
        ssh.SSHConnection._login(hs, target, ctx, HostKeyChecker([str(kh)], "off", global_files=[]))
    hs.transport.auth_password.assert_called_once_with("deploy", "hunter2-pw")


# ------------------------------------------------------------------ 2. prompts on a real terminal
def test_ask_sudo_pass_on_a_terminal(sudo_lab, isolated_home):  # noqa: F811
    server, inv, kh = sudo_lab
    code, out, err, shown = run_on_pty(["exec", "id -un", "--sudo", "--ask-sudo-pass", "-i", inv, "--known-hosts",
                                        kh, "--json", "--no-progress"], isolated_home,
                                       [(b"sudo password: ", SUDO_PASSWORD)])
    assert b"sudo password: " in shown, (shown, err)
    assert code == 0, (out, err)
    assert {line for line in out.splitlines() if '"status": "ok"' in line} and "needs a terminal" not in err
    assert all('"stdout": "root\\n"' in line for line in out.splitlines())
    assert SUDO_PASSWORD.encode() not in shown  # not echoed
    assert SUDO_PASSWORD not in out + err


def test_ask_pass_on_a_terminal_logs_in_with_the_password(password_lab, isolated_home, tmp_path):
    server = password_lab
    kh = server.write_known_hosts(str(tmp_path / "kh"))
    before = password_attempts(server)
    code, out, err, shown = run_on_pty(["exec", "id -un", "-H", f"{SUDO_USER}@127.0.0.1:{server.port}",
                                        "--known-hosts", kh, "--ask-pass", "--json"], isolated_home,
                                       [(b"SSH password: ", SUDO_PASSWORD)])
    assert code == 0, (out, err, shown)
    assert f'"stdout": "{SUDO_USER}\\n"' in out
    assert SUDO_PASSWORD.encode() not in shown
    assert password_attempts(server) - before == 1  # "Accepted password for ..."


def test_ask_pass_is_not_sent_to_a_changed_key_under_off(password_lab, isolated_home, tmp_path):
    server = password_lab
    kh = wrong_known_hosts(server, tmp_path / "kh")
    before = password_attempts(server)
    code, out, err, shown = run_on_pty(["exec", "id -un", "-H", f"{SUDO_USER}@127.0.0.1:{server.port}",
                                        "--known-hosts", kh, "--host-key-policy", "off", "--ask-pass", "--json"],
                                       isolated_home, [(b"SSH password: ", SUDO_PASSWORD)])
    assert code == 4, (out, err, shown)
    assert "man-in-the-middle" in out and "HOST KEY CHANGED" in err, (out, err)
    assert password_attempts(server) == before  # sshd never saw a password


def test_ask_pass_without_a_terminal_says_what_to_use(hostops, inventory, known_hosts, tmp_path):
    """No controlling terminal (the test's subprocess has none of its own): one line, exit 2."""
    run = hostops("exec", "true", "--sudo", "--ask-sudo-pass", "-i", inventory(1), "--known-hosts", known_hosts)
    if run.code == 0:
        pytest.skip("this test runs with a controlling terminal")
    assert run.code == 2 and "needs a terminal" in run.err, run


# ------------------------------------------------------------------ 3. usage mistakes: exit 2, nothing run
def _usage_cases(tmp_path: Path) -> List[Tuple[str, List[str], dict, str]]:
    notakey = tmp_path / "notakey"
    notakey.write_text("hello\n")
    afile = tmp_path / "a-file"
    afile.write_text("x")
    stdin = tmp_path / "stdin.txt"
    stdin.write_text("data\n")
    return [
        ("missing key", ["-k", str(tmp_path / "nope")], {}, "no such file"),
        ("key is a directory", ["-k", str(tmp_path)], {}, "is a directory"),
        ("not a key", ["-k", str(notakey)], {}, "not a private key"),
        ("start method", [], {"HOSTOPS_START_METHOD": "bogus"}, "HOSTOPS_START_METHOD='bogus'"),
        ("stdin with sudo password", ["--stdin", str(stdin), "--sudo", "--sudo-pass-env", "PW"], {"PW": "pw-123"},
         "--stdin cannot be combined with a sudo password"),
        ("-o is a file", ["-o", str(afile)], {}, "is not a directory"),
    ]


@pytest.mark.parametrize("case", range(6), ids=["missing-key", "key-dir", "not-a-key", "start-method",
                                                "stdin-sudo-pass", "outdir-file"])
def test_local_usage_mistake_is_exit_2_and_nothing_runs(hostops, lab, inventory, known_hosts, tmp_path, case):
    what, args, env, needle = _usage_cases(tmp_path)[case]
    log = tmp_path / "run.jsonl"
    run = hostops("exec", "echo ran", "-i", inventory(2), "--known-hosts", known_hosts, "--log", str(log), *args,
                  env=env, timeout=60)
    assert run.code == 2, (what, run)
    lines = run.err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], (what, run)
    assert run.out == ""
    assert not log.exists() or '"event": "host"' not in log.read_text()  # no host contacted


def test_public_key_given_as_k_is_named(hostops, lab, inventory, known_hosts):
    run = hostops("exec", "true", "-i", inventory(1), "--known-hosts", known_hosts, "-k", lab.user_key + ".pub")
    assert run.code == 2 and "is a public key" in run.err, run


def test_runbook_stdin_with_sudo_password_is_refused_before_running(hostops, lab, inventory, known_hosts, tmp_path):
    data = tmp_path / "in.txt"
    data.write_text("x\n")
    book = tmp_path / "book.yml"
    book.write_text(f"name: t\nhosts: all\nsteps:\n  - name: feed\n    exec: cat\n    stdin: {data}\n    sudo: true\n")
    log = tmp_path / "run.jsonl"
    run = hostops("run", str(book), "-i", inventory(2), "--known-hosts", known_hosts, "--log", str(log),
                  "--sudo", "--sudo-pass-env", "PW", env={"PW": "pw-123"}, timeout=60)
    assert run.code == 2, run
    assert "stdin cannot be combined with a sudo password" in run.err
    assert not log.exists() or '"event": "host"' not in log.read_text()


def test_put_with_sudo_password_to_a_changed_key_under_off_installs_nothing(hostops, lab, inventory, tmp_path):
    src = tmp_path / "app.conf"
    src.write_text("setting=1\n")
    dest = tmp_path / "dest"
    dest.mkdir()
    kh = wrong_known_hosts(lab, tmp_path / "kh")
    run = hostops("put", str(src), f"{dest}/app.conf", "--sudo", "--sudo-pass-env", "PW", "-i", inventory(1),
                  "--known-hosts", kh, "--host-key-policy", "off", "--json", env={"PW": "pw-123456"})
    assert run.code == 4, run
    (r,) = run.json_lines()
    assert r["status"] == "unreachable" and r["error"].startswith("sudo password not sent"), r
    assert list(dest.iterdir()) == []  # not even a temporary file
