"""Units of the connection layer (remotecmd, ssh, local, handshake, auth, workerctx) and the
worker: the command loop, error mapping, host-key decisions, timeouts.
paramiko is mocked where it is used, never as a stand-in for a real SSH exchange."""
from __future__ import annotations

import socket
import threading

import paramiko
import pytest

from hostops import auth, connection, handshake, remotecmd, ssh, worker, workerctx
from hostops.errors import CommandTimeout, ConnectError, HostKeyError
from hostops.hostkeys import HostKeyChecker, fingerprint
from hostops.results import FAILED, OK, TIMEOUT, UNREACHABLE
from hostops.settings import Options, Target

TARGET = Target("web01", "10.1.2.3", 2222, "deploy")


@pytest.mark.parametrize("exc, stage, needle", [
    (socket.timeout("timed out"), "timeout", "timed out after 10s"),
    (ConnectionRefusedError(111, "Connection refused"), "connect", "Connection refused"),
    (OSError(113, "No route to host"), "connect", "No route to host"),
])
def test_tcp_errors_map_to_connect_error(mocker, exc, stage, needle):
    import time

    mocker.patch.object(socket.socket, "connect", side_effect=exc)
    ctx = workerctx.WorkerContext(Options())
    with pytest.raises(ConnectError) as info:
        handshake._tcp_connect(TARGET, ctx, time.monotonic() + 10)
    assert info.value.stage == stage
    assert needle in str(info.value) and "10.1.2.3:2222" in str(info.value)


def test_dns_failure_and_dns_timeout(mocker):
    import threading
    import time

    ctx = workerctx.WorkerContext(Options(connect_timeout=0.5))
    mocker.patch("socket.getaddrinfo", side_effect=socket.gaierror(-2, "Name or service not known"))
    with pytest.raises(ConnectError) as info:
        handshake._tcp_connect(Target("w", "no-such-host.invalid"), ctx, time.monotonic() + 5)
    assert info.value.stage == "dns" and "Name or service not known" in str(info.value)
    release = threading.Event()
    mocker.patch("socket.getaddrinfo", side_effect=lambda *a: release.wait(10))  # a resolver that hangs
    try:
        with pytest.raises(ConnectError) as info:
            handshake._tcp_connect(Target("w", "slow-dns.invalid"), ctx, time.monotonic() + 0.5)
        assert info.value.stage == "dns" and "no answer from DNS" in str(info.value)
    finally:
        release.set()


def test_handshake_failure_is_unreachable(mocker):
    sock = mocker.MagicMock()
    mocker.patch("hostops.handshake._tcp_connect", return_value=sock)
    sock.recv.return_value = b""
    fake = mocker.patch("paramiko.Transport").return_value
    fake.start_client.side_effect = paramiko.SSHException("Error reading SSH protocol banner")
    ctx = workerctx.WorkerContext(Options(known_hosts=("/nonexistent",)))
    with pytest.raises(ConnectError) as info:
        ssh.SSHConnection.open(TARGET, ctx)
    assert info.value.stage == "handshake" and "banner" in str(info.value)
    fake.close.assert_called_once()
    sock.close.assert_called_once()


def test_no_key_to_offer_says_so(mocker, isolated_home):
    t = mocker.MagicMock()
    ctx = workerctx.WorkerContext(Options())
    with pytest.raises(ConnectError) as info:
        auth._authenticate(t, Target("a", "a"), ctx, lambda: 5.0)
    assert info.value.stage == "auth" and "no SSH key to offer" in str(info.value)
    t.auth_publickey.assert_not_called()


def test_password_only_server_is_a_clear_auth_failure(mocker, tmp_path):
    import subprocess

    key = tmp_path / "id"

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    t = mocker.MagicMock()
    t.auth_publickey.side_effect = paramiko.BadAuthenticationType("bad", ["password"])
    ctx = workerctx.WorkerContext(Options())
    with pytest.raises(ConnectError) as info:
        auth._authenticate(t, Target("a", "a", identity_files=(str(key),)), ctx, lambda: 5.0)
    assert "accepts only password" in str(info.value)


def test_passphrase_protected_key_is_skipped_with_a_note(mocker, tmp_path):
    import subprocess

    key = tmp_path / "locked"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret-pass", "-f", str(key)], check=True)
    t = mocker.MagicMock()
    ctx = workerctx.WorkerContext(Options())
    with pytest.raises(ConnectError) as info:
        auth._authenticate(t, Target("a", "a", identity_files=(str(key),)), ctx, lambda: 5.0)
    assert "passphrase-protected" in str(info.value)
    assert "secret-pass" not in str(info.value)


def test_sudo_wrapping_never_prompts_and_quotes():
    assert remotecmd.wrap_command("echo hi", False) == "echo hi"
    assert remotecmd.wrap_command("echo 'a b'; id", True) == "sudo -n -- sh -c 'echo '\"'\"'a b'\"'\"'; id'"


# ------------------------------------------------------------------ worker error mapping
class _Action:
    timeout = 7.0
    sudo = False
    needs_connection = True

    def __init__(self, exc=None, outcome=None):
        self.exc, self.outcome = exc, outcome

    def run(self, conn, target, ctx, on_output):
        if self.exc:
            raise self.exc
        return self.outcome


@pytest.mark.parametrize("connect_exc, action, status, needle", [
    (ConnectError("cannot connect to x:22: Connection refused", "connect"), None, UNREACHABLE, "refused"),
    (HostKeyError("HOST KEY CHANGED for x"), None, UNREACHABLE, "HOST KEY CHANGED"),
    (None, _Action(exc=CommandTimeout(b"part", b"")), TIMEOUT, "timed out after 7s"),
    (None, _Action(exc=RuntimeError("boom")), FAILED, "unexpected error: RuntimeError: boom"),
    (None, _Action(outcome=connection.CommandOutcome(1, b"", b"sudo: a password is required\n")), FAILED,
     "sudo needs a password"),
    (None, _Action(outcome=connection.CommandOutcome(None, b"", b"", "killed by signal 9")), FAILED, "signal 9"),
    (None, _Action(outcome=connection.CommandOutcome(0, b"fine", b"")), OK, None),
])
def test_execute_maps_every_outcome_to_a_result(mocker, connect_exc, action, status, needle):
    conn = mocker.MagicMock()
    mocker.patch("hostops.workerctx.connect", side_effect=connect_exc, return_value=conn)
    job = worker.Job(1, TARGET, action or _Action())
    result = worker.execute(job, ctx=None)
    assert result.status == status
    assert result.host == "web01"
    if needle:
        assert needle in result.error
    else:
        assert result.error is None and result.stdout == b"fine"
    if connect_exc is None:
        conn.close.assert_called_once()


def test_line_splitter_sends_whole_lines():
    sent = []
    split = worker._LineSplitter(lambda s, d: sent.append((s, d)))
    split("stdout", b"a\nb")
    split("stderr", b"e1\n")
    split("stdout", b"c\nd")
    split.flush()
    assert sent == [("stdout", b"a\n"), ("stderr", b"e1\n"), ("stdout", b"bc\n"), ("stdout", b"d")]


# ------------------------------------------------------------------ host keys
def _key(path):
    import subprocess

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return paramiko.PKey.from_path(str(path))


def test_strict_refuses_unknown_key(tmp_path):
    k = _key(tmp_path / "k")
    checker = HostKeyChecker([str(tmp_path / "known_hosts")], "strict")
    with pytest.raises(HostKeyError) as info:
        checker.check("[10.0.0.1]:2222", k)
    assert info.value.stage == "hostkey-unknown" and fingerprint(k) in str(info.value)


def test_known_key_accepted_also_when_hashed(tmp_path):
    k = _key(tmp_path / "k")
    hashed = paramiko.HostKeys.hash_host("[10.0.0.1]:2222")
    kh = tmp_path / "known_hosts"
    kh.write_text(f"# a comment\n{hashed} {k.get_name()} {k.get_base64()}\n")
    HostKeyChecker([str(kh)], "strict").check("[10.0.0.1]:2222", k)


def test_changed_key_refused_even_under_accept_new(tmp_path):
    old, new = _key(tmp_path / "old"), _key(tmp_path / "new")
    kh = tmp_path / "known_hosts"
    kh.write_text(f"10.0.0.1 {old.get_name()} {old.get_base64()}\n")
    for policy in ("strict", "accept-new"):
        with pytest.raises(HostKeyError) as info:
            HostKeyChecker([str(kh)], policy).check("10.0.0.1", new)
        assert info.value.stage == "hostkey-changed"
        assert fingerprint(old) in str(info.value) and fingerprint(new) in str(info.value)
    HostKeyChecker([str(kh)], "off").check("10.0.0.1", new)
    assert kh.read_text().count("\n") == 1


def test_accept_new_from_many_threads_and_checkers_writes_one_line(tmp_path):
    k = _key(tmp_path / "k")
    kh = tmp_path / "sub" / "known_hosts"
    checkers = [HostKeyChecker([str(kh)], "accept-new") for _ in range(4)]  # as four worker processes
    barrier = threading.Barrier(32)

    def learn(i):
        barrier.wait()
        checkers[i % 4].check("[127.0.0.1]:2200", k)

    threads = [threading.Thread(target=learn, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert kh.read_text() == f"[127.0.0.1]:2200 {k.get_name()} {k.get_base64()}\n"
    assert (kh.stat().st_mode & 0o777) == 0o600


# ------------------------------------------------------------------ one command loop, the step's sudo
class _SilentChannel:
    """A channel whose command reports its pid, then says nothing (until killed)."""

    def __init__(self):
        import os

        self._r, self._w = os.pipe()
        self._stderr = [b"\x1eHOSTOPS-PID 4242\n"]
        self.closed = False
        self.eof_received = False
        self.exit_status = None
        self.status_event = threading.Event()

    def fileno(self):
        return self._r

    def exec_command(self, command):
        self.command = command

    def shutdown_write(self):
        pass

    def recv_ready(self):
        return False

    def recv_stderr_ready(self):
        return bool(self._stderr)

    def recv_stderr(self, n):
        return self._stderr.pop(0)

    def close(self):
        import os

        if not self.closed:
            self.closed = True
            os.close(self._r)
            os.close(self._w)


@pytest.mark.parametrize("run_sudo, step_sudo", [(False, True), (True, False)])
def test_ssh_timeout_kills_with_the_steps_sudo_not_the_runs(mocker, run_sudo, step_sudo):
    """issue 12: the SSH loop once killed with the run's --sudo; the one CommandRun passes the
    step's own ``sudo`` (the command's) to the kill."""
    import time

    chan = _SilentChannel()
    transport = mocker.MagicMock()
    transport.open_session.return_value = chan
    ctx = workerctx.WorkerContext(Options(sudo=run_sudo, keepalive=0))
    guard = mocker.MagicMock(last_recv=time.monotonic())
    conn = ssh.SSHConnection(transport, TARGET, guard, ctx)
    kill = mocker.patch.object(ssh.SSHConnection, "kill_remote", return_value="the remote command was stopped (TERM)")
    with pytest.raises(CommandTimeout) as info:
        conn.run("sleep 60", timeout=0.2, sudo=step_sudo)
    kill.assert_called_once_with(4242, step_sudo)
    assert "timed out after 0.2s" in str(info.value) and "stopped (TERM)" in str(info.value)
    assert chan.command.count("sudo -n") == int(step_sudo)


@pytest.mark.parametrize("run_sudo, step_sudo", [(False, True), (True, False)])
def test_local_timeout_kills_with_the_steps_sudo_not_the_runs(mocker, run_sudo, step_sudo):
    """The same CommandRun for ``connection: local``: its kill gets the step's sudo too."""
    from hostops import local

    mocker.patch("hostops.local.sudo_prelude", side_effect=lambda cmd, *_a: (cmd, None))  # no real sudo here
    ctx = workerctx.WorkerContext(Options(sudo=run_sudo))
    conn = local.LocalConnection(ctx)
    kill = mocker.spy(local.LocalConnection, "kill")
    with pytest.raises(CommandTimeout) as info:
        conn.run("sleep 60", timeout=0.2, sudo=step_sudo)
    assert kill.call_count == 1 and kill.call_args.args[2] == step_sudo
    assert "timed out after 0.2s" in str(info.value) and "stopped (TERM)" in str(info.value)


def test_local_answers_sudos_prompt_once_and_streams_what_it_held(mocker):
    """Local runs through the same prompt answering as SSH: the password once on stdin, the
    prompt taken out of stderr."""
    from hostops import local
    from hostops.secrets import Secrets

    prompt = "[hostops-sudo-feedc0de]"
    script = f"printf '{prompt}' >&2; read pw; echo got=$pw; printf 'tail[' >&2"
    mocker.patch("hostops.local.sudo_prelude", return_value=(script, prompt))
    ctx = workerctx.WorkerContext(Options(secrets=Secrets(sudo_password="s3cret")))
    seen = []
    out = local.LocalConnection(ctx).run("ignored", timeout=30, on_output=lambda s, d: seen.append((s, d)), sudo=True)
    assert out.exit_code == 0 and out.error is None
    assert b"got=" in out.stdout and prompt.encode() not in out.stderr
    assert b"".join(d for s, d in seen if s == "stderr") == out.stderr == b"tail["
